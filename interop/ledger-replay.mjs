// Feed ledger inputs to src/ledger.mjs and print the reported state of each case (PROTOCOL.md 16).
// Usage: node interop/ledger-replay.mjs < cases.json > states.json
//   cases:  [{ validators: [[hex, weight]], balances: [[hex, credits]], params: { ledger_fee_to },
//              inputs: [['task', {task_id, requester, bounty}] | ['order', id, {sender, seq, amount, dest_type, dest}]
//                       | ['vote', {validator, votes: [[sender, seq, order id]]}]
//                       | ['release', {task_id, requester, rewards: [[account, credits]], fee}]] }]  (bytes in hex)
//   states: [{ balances, escrow, burned, supply, next_seq, applied, certified_not_applied, released, funded,
//              evidence, supply_held }]  (integers as JSON numbers, exact)
// tests/test_interop.py feeds it random inputs and compares with the reference node's ledger.
import { readFileSync } from 'node:fs'
import { unhex } from './src/msgpack.mjs'
import { LedgerState } from './src/ledger.mjs'

const cases = JSON.parse(readFileSync(0, 'utf8'))
const states = cases.map(c => {
  const st = new LedgerState(new Map(c.balances.map(([a, x]) => [a, BigInt(x)])), new Map(c.validators.map(([a, w]) => [a, BigInt(w)])), c.params)
  let held = true
  for (const [kind, x, y] of c.inputs) {
    if (kind === 'task') st.addTask(x.task_id, x.requester, x.bounty)
    else if (kind === 'order') st.addOrder(x, { ...y, sender: unhex(y.sender), dest: unhex(y.dest) })
    else if (kind === 'vote') st.addVote({ validator: unhex(x.validator), votes: x.votes.map(([s, n, o]) => [unhex(s), n, unhex(o)]) })
    else if (kind === 'release') st.addRelease(x)
    else throw new Error(`unknown ledger input ${kind}`)
    held &&= st.checkSupply()
  }
  return { ...st.report(), supply_held: held }
})
// BigInt as exact JSON numbers
process.stdout.write(JSON.stringify(states, (k, v) => typeof v === 'bigint' ? `#${v}#` : v).replace(/"#(-?\d+)#"/g, '$1') + '\n')
