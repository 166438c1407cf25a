// Replay tests/vectors/*.json with the JavaScript implementation of PROTOCOL.md.
// Usage: node interop/verify-vectors.mjs [vectors dir]   (exit 0 iff every check passes)
import { readFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { DecodeError, decode, encode, equalBytes, hex, unhex } from './src/msgpack.mjs'
import { keyFromSeed, verify, verifyOpenSSLOnly } from './src/ed25519.mjs'
import * as P from './src/protocol.mjs'
import * as T from './src/tally.mjs'
import { LedgerState } from './src/ledger.mjs'

const here = dirname(fileURLToPath(import.meta.url))
const dir = process.argv[2] ?? join(here, '..', 'tests', 'vectors')
const load = (f) => {
  const d = JSON.parse(readFileSync(join(dir, f), 'utf8'))
  if (d.format !== 1) throw new Error(`${f}: unknown vector format ${d.format}`)
  return d
}
const big = (v) => typeof v === 'string' ? BigInt(v) : v // integers above 2^53 are decimal strings

let checks = 0
const failures = []
function check (cond, what) {
  checks++
  if (!cond) failures.push(what)
}
const eq = (a, b, what) => check(a === b, `${what}: got ${a}, want ${b}`)

// ------------------------------------------------------------------ the decoder alone (section 2)
const cod = load('codec.json')
eq(cod.max_depth, 8, 'codec max depth')
for (const c of cod.cases) {
  const lim = { maxBytes: cod.limits.max_bytes, maxArray: cod.limits.max_array, maxBin: cod.limits.max_bin, maxStr: cod.limits.max_str }
  let got
  try { got = hex(encode(decode(unhex(c.hex), lim))) } catch (e) { got = e instanceof DecodeError ? null : `${e}` }
  if (c.ok) eq(got, c.hex, `codec ${c.name} decodes (and re-encodes to the same bytes)`)
  else eq(got, null, `codec ${c.name} is refused`)
}

// ------------------------------------------------------------------ genesis
const gen = load('genesis.json')
const genesis = P.genesisFromJson(gen.cases[0].json)
for (const c of gen.cases) {
  const g = P.genesisFromJson(c.json)
  eq(hex(g.canonical), c.canonical_hex, `genesis ${c.name} canonical bytes`)
  eq(hex(g.networkId), c.network_id, `genesis ${c.name} network id`)
  for (const [k, name] of Object.entries(P.KIND_NAMES)) eq(P.topicFor(g.networkId, Number(k)), c.topics[name], `genesis ${c.name} topic ${name}`)
  eq(P.syncProtocolFor(g.networkId), c.sync_protocol, `genesis ${c.name} sync protocol id`)
  for (const [k, v] of Object.entries(c.params)) if (k in g.params) eq(g.params[k], v, `genesis ${c.name} param ${k}`)
}
for (const c of gen.invalid ?? []) {
  let refused = false
  try { P.genesisFromJson(c.json) } catch { refused = true }
  check(refused, `invalid genesis ${c.name} was accepted`)
}
const genesisByName = Object.fromEntries(gen.cases.map(c => [c.name, P.genesisFromJson(c.json)]))
for (const a of gen.accounts) eq(hex(keyFromSeed(unhex(a.seed)).publicKey), a.public_key, `account ${a.name} public key`)
const NET = genesis.networkId
const params = genesis.params

// ------------------------------------------------------------------ valid messages
const bodyFromJson = (kind, b) => {
  const h = unhex
  if (kind === 1) {
    return {
      kind, requester: h(b.requester), nonce: big(b.nonce), created_at: big(b.created_at), deadline: big(b.deadline),
      title: b.title, schema: b.schema, redundancy: b.redundancy, bounty: big(b.bounty), reward_rule: b.reward_rule,
      gold_commitment: b.gold_commitment === null ? null : h(b.gold_commitment),
      items: b.items.map(it => it.type === 0 ? it : it.type === 1
        ? { type: 1, payload: h(it.payload), media_type: it.media_type }
        : { type: 2, sha256: h(it.sha256), size: big(it.size), media_type: it.media_type })
    }
  }
  if (kind === 2) return { kind, annotator: h(b.annotator), task_id: h(b.task_id), created_at: big(b.created_at), labels: b.labels }
  if (kind === 3) return { kind, requester: h(b.requester), task_id: h(b.task_id), created_at: big(b.created_at), salt: h(b.salt), answers: b.answers }
  if (kind === 5) {
    return {
      kind, sender: h(b.sender), seq: big(b.seq), created_at: big(b.created_at), amount: big(b.amount), dest_type: b.dest_type, dest: h(b.dest)
    }
  }
  if (kind === 6) return { kind, validator: h(b.validator), created_at: big(b.created_at), votes: b.votes.map(([s, n, o]) => [h(s), big(n), h(o)]) }
  return {
    kind, validator: h(b.validator), task_id: h(b.task_id), created_at: big(b.created_at), round: b.round, phase: b.phase,
    set_root: h(b.set_root), result_root: h(b.result_root), batch_ids: b.batch_ids.map(h)
  }
}
/** JSON with every integer as a decimal string: Number and BigInt compare equal. */
const ints = (v) => JSON.stringify(v, (k, x) => typeof x === 'bigint' || typeof x === 'number' ? String(x) : x)
const canon = (v) => JSON.stringify(v, (k, x) => {
  if (typeof x === 'bigint') return x.toString()
  if (x instanceof Uint8Array) return hex(x)
  if (x && typeof x === 'object' && !Array.isArray(x)) return Object.fromEntries(Object.entries(x).sort(([a], [b]) => a < b ? -1 : 1))
  return x
})

const msgs = load('messages.json')
const byName = {}
for (const m of msgs.messages) {
  byName[m.name] = m
  const key = keyFromSeed(unhex(m.signer.seed))
  eq(hex(key.publicKey), m.signer.public_key, `${m.name} signer key`)
  const body = bodyFromJson(m.kind, m.body)
  const s = P.signMessage(body, key, NET)
  eq(hex(s.bodyBytes), m.body_hex, `${m.name} body bytes`)
  eq(hex(P.DOMAIN_TAGS[m.kind]), m.domain_tag_hex, `${m.name} domain tag`)
  eq(hex(P.signedBytes(m.kind, NET, s.bodyBytes)), m.signed_bytes_hex, `${m.name} signed bytes`)
  eq(hex(s.signature), m.signature_hex, `${m.name} signature`)
  eq(hex(s.raw), m.envelope_hex, `${m.name} envelope`)
  eq(hex(s.id), m.id, `${m.name} id`)
  eq(P.topicFor(NET, m.kind), m.topic, `${m.name} topic`)
  const d = P.decodeMessage(unhex(m.envelope_hex), params)
  check(P.verifyMessage(d, NET), `${m.name}: signature does not verify`)
  eq(hex(P.messageId(d, NET)), m.id, `${m.name} id of the decoded envelope`)
  eq(canon(d.body), canon(body), `${m.name} decoded fields`)
  eq(P.validateBasic(d, params), null, `${m.name} validate_basic`)
}

// ------------------------------------------------------------------ invalid (and valid) envelopes through the pipeline
const inv = load('invalid.json')
const tasks = {}
for (const [name, tid] of Object.entries(inv.task_names)) {
  const d = P.decodeMessage(unhex(byName[name].envelope_hex), params)
  eq(hex(P.messageId(d, NET)), tid, `task id of ${name}`)
  tasks[name] = d.body
}
let reasonMatches = 0
for (const c of inv.cases) {
  const held = new Map(c.context.tasks.map(n => [inv.task_names[n], tasks[n]]))
  const ctx = { getTask: (id) => held.get(hex(id)) ?? null, validatorWeight: (a) => genesis.validators.get(hex(a)) ?? 0n }
  const r = P.checkMessage(unhex(c.envelope_hex), ctx, NET, c.context.now_ms, params)
  eq(r.outcome, c.expected, `${c.name} outcome (${r.reason})`)
  eq(r.stage, c.stage, `${c.name} stage (${r.reason})`)
  if (r.reason.includes(c.reason)) reasonMatches++
}
// cases for another genesis (its own network id and params)
{
  const pc = inv.param_cases
  const g = genesisByName[pc.genesis]
  check(g !== undefined, `param_cases genesis ${pc.genesis} is in genesis.json`)
  for (const c of pc.cases) {
    const ctx = { getTask: () => null, validatorWeight: (a) => g.validators.get(hex(a)) ?? 0n }
    const r = P.checkMessage(unhex(c.envelope_hex), ctx, g.networkId, c.context.now_ms, g.params)
    eq(r.outcome, c.expected, `${pc.genesis}/${c.name} outcome (${r.reason})`)
    eq(r.stage, c.stage, `${pc.genesis}/${c.name} stage (${r.reason})`)
  }
}
// the small-order vector is exactly what a bare RFC 8032 verifier gets wrong
const so = inv.cases.find(c => c.name === 'small_order_public_key')
{
  const env = decode(unhex(so.envelope_hex), { maxBytes: 1 << 20, maxArray: 2, maxBin: 1 << 20, maxStr: 0 })
  const m = P.decodeMessage(unhex(so.envelope_hex), params)
  const sb = P.signedBytes(m.kind, NET, env[0])
  check(!verify(m.body.annotator, sb, env[1]), 'small-order key accepted by verify()')
  const bare = verifyOpenSSLOnly(m.body.annotator, sb, env[1])
  console.log(`note: node:crypto alone ${bare ? 'ACCEPTS' : 'refuses'} the small-order vector (libsodium rules refuse it)`)
}

// ------------------------------------------------------------------ roots
const roots = load('roots.json')
eq(hex(P.SET_ROOT_TAG), roots.set_root_tag_hex, 'set root tag')
eq(hex(P.GOLD_COMMIT_TAG), roots.gold_commit_tag_hex, 'gold commitment tag')
eq(hex(P.RESULT_ROOT_TAG), roots.result_root_tag_hex, 'result root tag')
for (const c of roots.set_roots) eq(hex(P.computeSetRoot(unhex(c.task_id), c.batch_ids.map(unhex))), c.set_root, 'set root')
for (const c of roots.gold_commitments) {
  const sorted = [...c.answers].sort((a, b) => a[0] - b[0])
  eq(hex(encode(sorted.flat())), c.answers_msgpack_hex, 'gold answers encoding')
  eq(hex(P.computeGoldCommitment(unhex(c.salt), c.answers)), c.commitment, 'gold commitment')
}

// ------------------------------------------------------------------ the estimators (PROTOCOL-APPENDIX-consensus.md)
const agg = load('aggregate.json')
eq(agg.layout.join(','), 'version,ONE,label,confidence,agreement,annotator_accuracy,alpha', 'aggregate encoding layout (A.8)')
eq(T.tableDigest(T.LT), agg.constants.log2_table_sha256, 'log2 table digest')
eq(T.tableDigest(T.EH), agg.constants.exp2_hi_table_sha256, 'exp2 high table digest')
eq(T.tableDigest(T.EL), agg.constants.exp2_lo_table_sha256, 'exp2 low table digest')
for (const c of agg.cases) {
  const i = c.input
  const { votes, equivocations } = T.canonicalVotes(i.votes)
  eq(canon(equivocations), canon(c.equivocations), `aggregate ${c.name} equivocations`)
  const inp = { n: i.n_items, k: i.n_classes, m: i.n_annotators, votes, w: i.prior_weight.map(BigInt), gold: new Map(i.gold ?? []) }
  for (const [est, fn] of [['consensus', T.consensus], ['plurality', T.plurality]]) {
    const r = c[est]
    const got = fn(inp)
    eq(ints([got.label, got.confidence, got.agreement, got.accuracy, got.alpha]),
      ints([r.label, r.confidence, r.agreement, r.annotator_accuracy, r.alpha]), `aggregate ${c.name} ${est} outputs`)
    eq(hex(T.aggregateEncoding(got)), r.encoded_hex, `aggregate ${c.name} ${est} encoding rebuilt from the inputs`)
    const want = [1, agg.constants.ONE, r.label, r.confidence, r.agreement, r.annotator_accuracy, r.alpha]
    eq(hex(encode(want)), r.encoded_hex, `aggregate ${c.name} ${est} encoding of the listed outputs`)
    eq(canon(decode(unhex(r.encoded_hex), { maxBytes: 1 << 24, maxArray: 1 << 20, maxBin: 0, maxStr: 0 })), canon(want), `aggregate ${c.name} ${est} decoding`)
  }
}

// ------------------------------------------------------------------ tally: the whole task result and both roots
const tally = load('tally.json')
for (const c of tally.cases) {
  const r = c.result
  const d = decode(unhex(r.canonical_hex), { maxBytes: 1 << 24, maxArray: 1 << 20, maxBin: 32, maxStr: 0 })
  eq(hex(d[0]), c.task_id, `tally ${c.name} task id`)
  eq(hex(d[1]), r.set_root, `tally ${c.name} set root field`)
  eq(canon(d.slice(2, 6)), canon([r.label, r.confidence, r.agreement, r.votes]), `tally ${c.name} per-item fields`)
  eq(canon(d[6]), canon(r.annotators.map(a => [a.account, a.labels, a.equivocations, a.accuracy, a.score, a.reward, a.trust])),
    `tally ${c.name} annotator rows`)
  eq(canon(d.slice(8)), canon([r.alpha, r.refund, r.gold_items, r.fee]), `tally ${c.name} alpha, refund, gold items, fee`)
  eq(hex(P.computeResultRoot(unhex(r.canonical_hex))), r.result_root, `tally ${c.name} result root of the listed bytes`)
  const pinned = c.batch_ids.map(unhex)
  if (c.gold) pinned.push(unhex(byName[c.gold].id))
  eq(hex(P.computeSetRoot(unhex(c.task_id), pinned)), r.set_root, `tally ${c.name} set root`)
  const feeBps = (c.params ?? {}).ledger_fee_bps ?? params.ledger_fee_bps
  const bounty = BigInt(tasks[c.task] ? tasks[c.task].bounty : 0)
  let paid = BigInt(r.refund) + BigInt(r.fee)
  for (const a of r.annotators) paid += BigInt(a.reward)
  if (tasks[c.task]) eq(paid, bounty, `tally ${c.name} rewards + refund + fee = bounty`)
  eq(BigInt(r.fee), (bounty * BigInt(feeBps)) / 10000n, `tally ${c.name} fee = bounty * ledger_fee_bps // 10000`)
  // recompute the whole result from the signed messages (section 10 and the appendix)
  const body = (name) => P.decodeMessage(unhex(byName[name].envelope_hex), params).body
  const weights = new Map(c.weights.map(x => [x.account, BigInt(x.weight)]))
  const got = T.computeTaskResult(unhex(c.task_id), body(c.task), c.batches.map(n => ({ id: unhex(byName[n].id), body: body(n) })),
    c.gold ? { id: unhex(byName[c.gold].id), body: body(c.gold) } : null, (a) => weights.get(a) ?? BigInt(c.fresh_weight), feeBps)
  eq(hex(got.bytes), r.canonical_hex, `tally ${c.name} task result recomputed from the messages`)
  eq(hex(got.resultRoot), r.result_root, `tally ${c.name} result root recomputed from the messages`)
}

// ------------------------------------------------------------------ sync
const sync = load('sync.json')
eq(hex(P.FP_TAG), sync.fp_tag_hex, 'fingerprint tag')
for (const [k, v] of Object.entries(sync.constants)) eq(P.SYNC[k], v, `sync constant ${k}`)
for (const c of sync.fingerprints) eq(hex(P.computeFingerprint(c.ids.map(unhex))), c.fingerprint, 'fingerprint')
const bnd = (x) => x === null ? null : unhex(x) // a bound or cursor: hex, "" = empty, null = nil
for (const f of sync.frames) {
  const i = f.inputs
  let built
  if (f.name.includes('request')) {
    built = i.kind === 0 ? P.encodeSummaryRequest(bnd(i.cursor), i.limit)
      : i.kind === 1 ? P.encodeRangeRequest(unhex(i.task_id), bnd(i.lo), bnd(i.hi)) : P.encodeGetRequest(i.ids.map(unhex))
    const r = P.decodeSyncRequest(unhex(f.hex)) // and the decoder reads the inputs back
    const back = r.kind === 0 ? { kind: 0, cursor: hex(r.cursor), limit: r.limit }
      : r.kind === 1 ? { kind: 1, task_id: hex(r.taskId), lo: hex(r.lo), hi: r.hi === null ? null : hex(r.hi) } : { kind: 2, ids: r.ids.map(hex) }
    eq(canon(back), canon(i), `sync frame ${f.name} decodes to its inputs`)
  } else if (f.name.startsWith('summary_response')) {
    built = P.encodeSummaryResponse(i.rows.map(([t, c, fp]) => [unhex(t), c, unhex(fp)]), bnd(i.next_cursor))
    const d = P.decodeSummaryResponse(unhex(f.hex))
    eq(d.rows.length, i.rows.length, `sync frame ${f.name} rows`)
  } else if (f.name.startsWith('range_response')) {
    built = P.encodeRangeResponse(i.ids.map(unhex), bnd(i.lo), bnd(i.hi))
    const d = P.decodeRangeResponse(unhex(f.hex))
    if (d.mode === 'split') {
      eq(hex(d.parts[0][0]), i.lo, `sync frame ${f.name}: the first piece starts at the request's lo`)
      eq(d.parts.at(-1)[1] === null ? null : hex(d.parts.at(-1)[1]), i.hi, `sync frame ${f.name}: the last piece ends at the request's hi`)
    }
  } else if (f.name.startsWith('get_response')) {
    built = P.encodeGetResponse(i.envelopes.map(n => unhex(byName[n].envelope_hex)))
    eq(P.decodeGetResponse(unhex(f.hex), params.max_message_bytes).map(hex).join(','), i.envelopes.map(n => byName[n].envelope_hex).join(','), `sync frame ${f.name} decodes`)
  }
  eq(built === undefined ? undefined : hex(built), f.hex, `sync frame ${f.name} rebuilt from its inputs`)
}
for (const b of sync.bad_requests) {
  let threw = false
  try { P.decodeSyncRequest(unhex(b.hex)) } catch { threw = true }
  check(threw, `sync bad request ${b.name} was accepted`)
}
for (const f of sync.framing) {
  if ('body_len' in f) { eq(hex(P.uvarint(f.body_len)), f.prefix_hex, 'uvarint'); continue }
  const body = unhex(f.body_hex)
  const status = { request: [], response_ok: [0], response_error: [1] }[f.name]
  eq(hex(Uint8Array.from([...P.uvarint(body.length + status.length), ...status, ...body])), f.stream_hex, `framing ${f.name}`)
}

// ------------------------------------------------------------------ finality
const fin = load('finality.json')
eq(hex(P.LEADER_TAG), fin.leader_tag_hex, 'leader tag')
const vals = new Map(fin.validators.map(v => [v.account, BigInt(v.weight)]))
check(canon([...vals]) === canon([...genesis.validators]), 'finality validators = genesis validators')
for (const c of fin.leaders) eq(P.computeLeader(unhex(fin.task_id), c.round, vals), c.leader, `leader of round ${c.round}`)
for (const c of fin.rounds) {
  const round = P.computeRound(fin.deadline, c.now_ms, params)
  eq(round, c.round, `round at ${c.now_ms}`)
  eq(P.roundHorizon(round, params), c.horizon, `round horizon at ${c.now_ms}`)
}
for (const c of fin.quorum) eq(P.isQuorum(c.weight, c.total), c.quorum, `quorum ${c.weight}/${c.total}`)
for (const c of fin.certificates) {
  const r = P.verifyCertificate(unhex(c.encoded_hex), vals, NET, params)
  eq(r.valid, c.valid, `certificate by ${c.signers.join(',')}`)
  eq(Number(r.weight), c.weight, `certificate weight by ${c.signers.join(',')}`)
}
for (const c of fin.malformed_certificates) {
  let threw = false
  try { P.decodeCertificate(unhex(c.encoded_hex), params) } catch (e) { threw = e instanceof DecodeError }
  check(threw, `malformed certificate ${c.name} decoded`)
}

// ------------------------------------------------------------------ reputation (PROTOCOL.md section 12), integers only
const rep = load('reputation.json')
{
  eq(ints([rep.ONE, rep.PRIOR_LABELS, rep.EQUIVOCATION_PENALTY]), ints([T.ONE, T.PRIOR_LABELS, T.EQUIVOCATION_PENALTY]), 'reputation constants')
  const rp = { ...params, fresh_weight: rep.fresh_weight, max_weight: rep.max_weight }
  const window = rep.outcomes.filter(o => BigInt(o.deadline) <= BigInt(rep.created_at) - BigInt(rep.reputation_lag_ms))
  eq(canon(window.map(o => o.task_id)), canon(rep.in_window), 'reputation window')
  for (const o of rep.outcomes) for (const a of o.annotators) check(a.trust !== undefined, `reputation outcome ${o.task_id.slice(0, 8)}: annotator without trust`)
  const earned = T.earnedReputation(window)
  eq(canon([...earned.keys()].sort()), canon(rep.earned.map(e => `${e.account}/${e.domain}`)), 'earned reputation keys')
  for (const e of rep.earned) eq(earned.get(`${e.account}/${e.domain}`), BigInt(e.earned), `earned reputation ${e.account.slice(0, 8)}/${e.domain}`)
  const entries = (list) => list.map(g => [g.account, g.domain, g.weight])
  for (const w of rep.weights) {
    eq(T.reputationWeight(w.account, w.domain, earned, entries(rep.genesis_reputation), rp), BigInt(w.weight), `reputation weight of ${w.name} in '${w.domain}'`)
  }
  for (const w of rep.genesis_weights.cases) {
    eq(T.reputationWeight(w.account, w.domain, earned, entries(rep.genesis_weights.genesis_reputation), rp), BigInt(w.weight),
      `genesis_weights: weight of ${w.name} in '${w.domain}'`)
  }
}

// ------------------------------------------------------------------ the ledger (PROTOCOL.md 16)
const led = load('ledger.json')
eq(led.network_id, hex(NET), 'ledger network id')
eq(ints([...led.validators].sort()), ints([...genesis.validators].sort()), 'ledger validators = genesis validators')
/** A deterministic shuffle (xorshift32 seeded by the scenario's name and the round). */
function shuffled (xs, seedText) {
  let x = new DataView(P.sha256(new TextEncoder().encode(seedText)).buffer).getUint32(0) || 1
  const out = [...xs]
  for (let i = out.length - 1; i > 0; i--) {
    x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0
    const j = x % (i + 1);
    [out[i], out[j]] = [out[j], out[i]]
  }
  return out
}
const LEDGER_ORDERS = 50
/** One ledger input: ['task', {task_id, requester, bounty}] | ['order', [id, body]] | ['vote', body] | ['release', {...}]. */
function feedLedger (st, [kind, x]) {
  if (kind === 'task') st.addTask(x.task_id, x.requester, x.bounty)
  else if (kind === 'order') st.addOrder(x[0], x[1])
  else if (kind === 'vote') st.addVote(x)
  else st.addRelease(x)
}
for (const sc of led.scenarios) {
  const lp = { ...params, ...sc.params }
  const validators = new Map(led.validators.map(([a, w]) => [a, BigInt(w)]))
  const ctx = { getTask: () => null, validatorWeight: (a) => validators.get(hex(a)) ?? 0n }
  const inputs = sc.tasks.map(t => ['task', { ...t, bounty: big(t.bounty) }])
  for (const kind of ['orders', 'votes']) {
    for (const m of sc[kind]) {
      // every envelope goes through the pipeline of 6.2 (decode, basic, signature, context) first
      const r = P.checkMessage(unhex(m.envelope_hex), ctx, NET, 1800000000000, lp)
      eq(r.outcome, 'ACCEPT', `ledger ${sc.name}: ${kind} ${m.id.slice(0, 8)} is valid (${r.reason})`)
      if (!r.msg) continue
      eq(hex(P.messageId(r.msg, NET)), m.id, `ledger ${sc.name}: ${kind} ${m.id.slice(0, 8)} id`)
      eq(canon(r.msg.body), canon(bodyFromJson(kind === 'orders' ? 5 : 6, m.body)), `ledger ${sc.name}: ${kind} ${m.id.slice(0, 8)} fields`)
      inputs.push(kind === 'orders' ? ['order', [m.id, r.msg.body]] : ['vote', r.msg.body])
    }
  }
  for (const rel of sc.releases) inputs.push(['release', { ...rel, rewards: rel.rewards.map(([a, c]) => [a, big(c)]), fee: big(rel.fee) }])
  const want = ints(sc.expected)
  const runs = [inputs, [...inputs].reverse()]
  for (let k = 0; k < LEDGER_ORDERS; k++) runs.push(shuffled(inputs, `${sc.name}/${k}`))
  let same = 0
  let supplyHeld = true
  runs.forEach((run, k) => {
    const st = new LedgerState(new Map(sc.balances.map(([a, c]) => [a, BigInt(big(c))])), validators, lp)
    for (const input of run) {
      feedLedger(st, input)
      supplyHeld &&= st.checkSupply()
    }
    const got = st.report()
    if (k === 0) for (const f of Object.keys(sc.expected)) eq(ints(got[f]), ints(sc.expected[f]), `ledger ${sc.name}: ${f}, inputs in the file's order`)
    if (ints(got) === want) same++
  })
  eq(same, runs.length, `ledger ${sc.name}: the same state in ${runs.length} orders of arrival`)
  check(supplyHeld, `ledger ${sc.name}: supply invariant broken at some step`)
}

// ------------------------------------------------------------------ gossip bundles
const bun = load('bundles.json')
eq(P.BUNDLE_TAG, bun.bundle_tag, 'bundle tag')
eq(P.MAX_BUNDLE_ENVELOPES, bun.max_envelopes, 'bundle max envelopes')
eq(P.MAX_GOSSIP_PAYLOAD_BYTES, bun.max_payload_bytes, 'gossip payload limit')
for (const c of bun.valid) {
  let got = []
  try { got = P.splitPayload(unhex(c.payload_hex), params).map(hex) } catch (e) { got = [`error: ${e.message}`] }
  eq(got.join(','), c.envelopes.map(n => byName[n].envelope_hex).join(','), `bundle ${c.name}`)
}
for (const c of bun.invalid) {
  let threw = false
  try { for (const raw of P.splitPayload(unhex(c.payload_hex), params)) P.decodeMessage(raw, params) } catch { threw = true }
  check(threw, `invalid bundle ${c.name} was accepted`)
}

// ------------------------------------------------------------------ the keep rule
const keep = load('keep.json')
for (const c of keep.cases) {
  const rows = c.batches.map(b => ({ id: unhex(b.id), annotator: unhex(b.annotator), labels: b.labels }))
  eq([...P.computeKeptBatches(rows)].sort().join(','), c.kept.join(','), `keep rule ${c.name}`)
  // arrival by arrival: what the node holds is the rule over what it has seen
  for (let n = 1; n <= rows.length; n++) {
    const now = P.computeKeptBatches(rows.slice(0, n))
    const before = P.computeKeptBatches(rows.slice(0, n - 1))
    const a = c.arrivals[n - 1]
    eq(now.has(hex(rows[n - 1].id)), a.kept, `keep rule ${c.name}: arrival ${a.batch} kept`)
    eq([...before].filter(i => !now.has(i)).sort().join(','), a.displaces.join(','), `keep rule ${c.name}: ${a.batch} displaces`)
  }
}

// ------------------------------------------------------------------ partial replication (sections 7.2, 8.4)
const repl = load('replica.json')
eq(hex(P.DOMAIN_TOPIC_TAG), repl.domain_topic_tag_hex, 'domain topic tag')
for (const [k, v] of Object.entries(repl.constants)) eq(P.REPLICA[k], v, `replica constant ${k}`)
for (const c of repl.domain_topics) {
  eq(P.domainTag(c.domain), c.tag, `domain tag of ${JSON.stringify(c.domain)}`)
  eq(P.domainTopicFor(unhex(repl.network_id), c.domain), c.topic, `domain topic of ${JSON.stringify(c.domain)}`)
}
eq(hex(P.computeResultRoot(unhex(repl.result.canonical_hex))), repl.result.result_root, 'replica: R hashes to the result root')
const tallyR = tally.cases.find(c => c.name === 'fresh_only').result.canonical_hex
eq(repl.result.canonical_hex, tallyR, 'replica: R is the canonical result of tally fresh_only')
for (const c of repl.certified_checks) {
  const got = P.checkCertified(unhex(c.task_id), unhex(c.certificate_hex), unhex(c.result_hex), vals, unhex(repl.network_id), params)
  eq(got.valid, c.valid, `certified check ${c.name} (${got.error ?? 'valid'})`)
  if (!c.valid) eq(got.error, c.error, `certified check ${c.name}: the reason`)
}
for (const f of repl.frames) {
  if (f.name === 'certified_request') {
    eq(hex(P.encodeCertifiedRequest(f.inputs.ids.map(unhex))), f.hex, 'certified request rebuilt')
    const r = P.decodeSyncRequest(unhex(f.hex))
    eq(canon({ kind: r.kind, ids: r.ids.map(hex) }), canon(f.inputs), 'certified request decodes to its inputs')
  } else {
    eq(hex(P.encodeCertifiedResponse(f.inputs.rows.map(r => r.map(unhex)))), f.hex, 'certified response rebuilt')
    eq(canon(P.decodeCertifiedResponse(unhex(f.hex)).map(r => r.map(hex))), canon(f.inputs.rows), 'certified response decodes')
  }
}
for (const b of repl.bad_requests) {
  let threw = false
  try { P.decodeSyncRequest(unhex(b.hex)) } catch { threw = true }
  check(threw, `replica bad request ${b.name} was accepted`)
}

// ------------------------------------------------------------------ verdict
console.log(`verify-vectors: ${checks} checks, ${failures.length} failed; ${reasonMatches}/${inv.cases.length} validation reasons also match the reference's wording`)
for (const f of failures.slice(0, 50)) console.log(`FAIL ${f}`)
process.exit(failures.length ? 1 : 0)
