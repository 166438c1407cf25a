// The ledger (PROTOCOL.md section 16), written from the specification: balances from the
// genesis, debit orders (Transfer) certified by a quorum of validator votes (LedgerVote),
// applied one slot at a time when covered, escrowed bounties released by certified results.
// Inputs come in any order; the state is the least fixpoint of the rules, so every order of
// arrival gives the same state. Exact integers (BigInt); accounts, ids and tasks are hex
// strings. No I/O here.
import { hex } from './msgpack.mjs'
import { isQuorum } from './protocol.mjs'

const slotKey = (sender, seq) => `${sender}/${seq}`
const add = (map, key, x) => map.set(key, (map.get(key) ?? 0n) + x)

export class LedgerState {
  /** balances: Map(accountHex -> credits) of the genesis; validators: Map(accountHex -> weight). */
  constructor (balances, validators, params) {
    this.params = params
    this.validators = validators
    this.totalWeight = [...validators.values()].reduce((a, w) => a + BigInt(w), 0n)
    this.balance = new Map([...balances].map(([a, c]) => [a, BigInt(c)]))
    this.supply = [...this.balance.values()].reduce((a, c) => a + c, 0n)
    this.burned = 0n
    this.escrow = new Map() // task -> credits held now
    this.escrowed = new Map() // task -> credits ever escrowed
    this.nextSeq = new Map() // account -> its next unapplied sequence number (absent = 0)
    this.applied = new Set() // order ids
    this.released = new Set() // task ids
    this.tasks = new Map() // task -> { requester, bounty }
    this.orders = new Map() // order id -> { sender, seq, amount, dest_type, dest } (hex, BigInt)
    this.slots = new Map() // "sender/seq" -> Set(order id) held for that slot
    this.signers = new Map() // "sender/seq/order id" -> Set(validator) that listed that triple
    this.signed = new Map() // "validator/sender/seq" -> Set(order id): two or more is evidence
    this.releases = new Map() // task -> { requester, rewards: [[account, credits]], fee }
  }

  addTask (taskId, requester, bounty) {
    this.tasks.set(taskId, { requester, bounty: BigInt(bounty) })
    this.settle()
  }

  /** A stored Transfer: its id and decoded body (section 5.7). */
  addOrder (id, body) {
    const o = {
      sender: hex(body.sender), seq: BigInt(body.seq), amount: BigInt(body.amount), dest_type: Number(body.dest_type), dest: hex(body.dest)
    }
    this.orders.set(id, o)
    const key = slotKey(o.sender, o.seq)
    if (!this.slots.has(key)) this.slots.set(key, new Set())
    this.slots.get(key).add(id)
    this.settle()
  }

  /** A stored LedgerVote body (section 5.8): every triple is one signature. */
  addVote (body) {
    const v = hex(body.validator)
    for (const [sender, seq, orderId] of body.votes) {
      const slot = slotKey(hex(sender), BigInt(seq))
      const triple = `${slot}/${hex(orderId)}`
      if (!this.signers.has(triple)) this.signers.set(triple, new Set())
      this.signers.get(triple).add(v)
      const mine = `${v}/${slot}`
      if (!this.signed.has(mine)) this.signed.set(mine, new Set())
      this.signed.get(mine).add(hex(orderId))
    }
    this.settle()
  }

  /** A certified task's release: { task_id, requester, rewards: [[account, reward > 0]], fee } (hex, BigInt). */
  addRelease (r) {
    this.releases.set(r.task_id, { requester: r.requester, rewards: r.rewards.map(([a, c]) => [a, BigInt(c)]), fee: BigInt(r.fee) })
    this.settle()
  }

  weightOf (id) {
    const o = this.orders.get(id)
    let w = 0n
    for (const v of this.signers.get(`${slotKey(o.sender, o.seq)}/${id}`) ?? []) w += BigInt(this.validators.get(v) ?? 0n)
    return w
  }

  isCertified (id) { return isQuorum(this.weightOf(id), this.totalWeight) }

  isFunded (taskId) {
    const t = this.tasks.get(taskId)
    return t !== undefined && (t.bounty === 0n || (this.escrowed.get(taskId) ?? 0n) >= t.bounty)
  }

  /** The order that takes slot (sender, seq): the certified one with the lowest id, or null. */
  slotOrder (sender, seq) {
    const ids = [...(this.slots.get(slotKey(sender, seq)) ?? [])].filter(id => this.isCertified(id)).sort()
    return ids.length ? ids[0] : null
  }

  /** Apply every certified, covered order and every release that can take effect, until nothing moves. */
  settle () {
    for (let moved = true; moved;) {
      moved = false
      for (const sender of new Set([...this.orders.values()].map(o => o.sender))) {
        const id = this.slotOrder(sender, this.nextSeq.get(sender) ?? 0n)
        if (id !== null && this.apply(id)) moved = true
      }
      for (const taskId of this.releases.keys()) if (this.release(taskId)) moved = true
    }
  }

  apply (id) {
    const o = this.orders.get(id)
    if ((this.balance.get(o.sender) ?? 0n) < o.amount) return false // waits for credits
    add(this.balance, o.sender, -o.amount)
    this.nextSeq.set(o.sender, o.seq + 1n)
    this.applied.add(id)
    if (o.dest_type === 0) add(this.balance, o.dest, o.amount)
    else if (this.released.has(o.dest)) add(this.balance, o.sender, o.amount) // escrow after the release: refunded at once
    else { add(this.escrow, o.dest, o.amount); add(this.escrowed, o.dest, o.amount) }
    return true
  }

  release (taskId) {
    if (this.released.has(taskId) || !this.isFunded(taskId)) return false
    const r = this.releases.get(taskId)
    const held = this.escrow.get(taskId) ?? 0n
    const paid = r.rewards.reduce((s, [, c]) => s + c, 0n) + r.fee
    if (paid > held) throw new Error(`release of ${taskId} pays ${paid} out of an escrow of ${held}`)
    for (const [a, c] of r.rewards) add(this.balance, a, c)
    let burned = r.fee
    if (this.params.ledger_fee_to === 1) {
      for (const v of [...this.validators.keys()].sort()) {
        const share = (r.fee * BigInt(this.validators.get(v))) / this.totalWeight
        add(this.balance, v, share)
        burned -= share
      }
    }
    this.burned += burned
    add(this.balance, r.requester, held - paid)
    this.escrow.set(taskId, 0n)
    this.released.add(taskId)
    return true
  }

  /** The reported state of section 16 (the fields of ledger.json → expected), every list sorted. */
  report () {
    const byKey = ([a], [b]) => a < b ? -1 : a > b ? 1 : 0
    const nonzero = (m) => [...m].filter(([, c]) => c !== 0n).sort(byKey)
    return {
      balances: nonzero(this.balance),
      escrow: nonzero(this.escrow),
      burned: this.burned,
      supply: this.supply,
      next_seq: [...this.nextSeq].sort(byKey),
      applied: [...this.applied].sort(),
      certified_not_applied: this.certifiedNotApplied(),
      released: [...this.released].sort(),
      funded: [...this.tasks.keys()].filter(t => this.isFunded(t)).sort(),
      evidence: this.evidence()
    }
  }

  /** Σ balance + Σ escrow + burned = supply, nothing negative (the invariant of section 16). */
  checkSupply () {
    const terms = [...this.balance.values(), ...this.escrow.values()]
    return terms.every(x => x >= 0n) && terms.reduce((a, x) => a + x, this.burned) === this.supply
  }

  /** For each slot none of whose orders is applied, its certified order if any: waiting for credits or an earlier slot. */
  certifiedNotApplied () {
    const out = []
    for (const [key, ids] of this.slots) {
      if ([...ids].some(id => this.applied.has(id))) continue
      const [sender, seq] = key.split('/')
      const id = this.slotOrder(sender, BigInt(seq))
      if (id !== null) out.push(id)
    }
    return out.sort()
  }

  /** Validators that signed two or more orders of one slot: [[validator, sender, seq, [order ids sorted]]], sorted. */
  evidence () {
    const out = []
    for (const [key, ids] of this.signed) {
      if (ids.size < 2) continue
      const [v, sender, seq] = key.split('/')
      out.push([v, sender, BigInt(seq), [...ids].sort()])
    }
    return out.sort((x, y) => x[0] < y[0] ? -1 : x[0] > y[0] ? 1 : x[1] < y[1] ? -1 : x[1] > y[1] ? 1 : x[2] < y[2] ? -1 : x[2] > y[2] ? 1 : 0)
  }
}
