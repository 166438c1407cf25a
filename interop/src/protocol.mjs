// The labelmesh protocol, version 1, written from PROTOCOL.md revision 2.0 (sections 4-8,
// 10-11): genesis and network id, messages of the six kinds (encode, decode, sign, verify,
// validate), roots, sync frames and fingerprints, finality leaders and certificates.
// The ledger's state machine (section 16) is ledger.mjs. No I/O here.
import crypto from 'node:crypto'
import { DecodeError, compareBytes, concat, decode, encode, equalBytes, hex } from './msgpack.mjs'
import { sign, verify } from './ed25519.mjs'

const ascii = (s) => new TextEncoder().encode(s)
const tag = (s) => concat([ascii(s), Uint8Array.of(0)])
export const sha256 = (...parts) => new Uint8Array(crypto.createHash('sha256').update(concat(parts)).digest())

export const KIND = { TASK: 1, BATCH: 2, GOLD: 3, ATTESTATION: 4, TRANSFER: 5, LEDGER_VOTE: 6 }
export const KIND_NAMES = { 1: 'task', 2: 'batch', 3: 'gold', 4: 'attestation', 5: 'transfer', 6: 'ledger_vote' }
export const VERSION = 1
export const DOMAIN_TAGS = {
  1: tag('labelmesh/task/v1'),
  2: tag('labelmesh/batch/v1'),
  3: tag('labelmesh/gold/v1'),
  4: tag('labelmesh/attestation/v1'),
  5: tag('labelmesh/transfer/v1'),
  6: tag('labelmesh/ledger-vote/v1')
}
export const GENESIS_TAG = tag('labelmesh/genesis/v1')
export const DOMAIN_TOPIC_TAG = tag('labelmesh/domain-topic/v1')
export const GOLD_COMMIT_TAG = tag('labelmesh/gold-commitment/v1')
export const SET_ROOT_TAG = tag('labelmesh/set-root/v1')
export const RESULT_ROOT_TAG = tag('labelmesh/result-root/v1')
export const FP_TAG = tag('labelmesh/fp/v1')
export const LEADER_TAG = tag('labelmesh/finality-leader/v1')
const FIELD_COUNT = { 1: 13, 2: 6, 3: 7, 4: 10, 5: 8, 6: 5 }
const MAX_I63 = (1n << 63n) - 1n
/** The ledger bucket (6.3): the pseudo task id of transfers and ledger votes. */
export const LEDGER_BUCKET = new Uint8Array(32)

// ------------------------------------------------------------------ params and genesis (section 4)

export const DEFAULT_PARAMS = {
  max_message_bytes: 960 * 1024,
  max_items_per_task: 10000,
  max_classes: 64,
  max_labels_per_batch: 10000,
  max_string_bytes: 256,
  max_inline_item_bytes: 4096,
  max_blob_bytes: 64 * 1024 * 1024,
  max_batch_ids_per_attestation: 20000,
  max_bounty: 10 ** 15,
  max_redundancy: 1000,
  clock_skew_ms: 30000,
  min_task_duration_ms: 1000,
  max_task_duration_ms: 90 * 86400000,
  grace_period_ms: 5000,
  round_timeout_ms: 5000,
  fresh_weight: 64,
  reputation_lag_ms: 600000,
  max_weight: 1 << 20,
  max_votes_per_ledger_vote: 4096,
  ledger_seq_window: 256,
  ledger_fee_bps: 0,
  ledger_fee_to: 0
}

const DAY = 86400000
/** The range of each parameter (4.1): a genesis with a value outside is refused. */
const PARAM_RANGES = {
  max_message_bytes: [1024, 983040],
  max_items_per_task: [1, 100000],
  max_classes: [2, 1024],
  max_labels_per_batch: [1, 100000],
  max_string_bytes: [8, 4096],
  max_inline_item_bytes: [0, 2 ** 20],
  max_blob_bytes: [0, 2 ** 32],
  max_batch_ids_per_attestation: [1, 30000],
  max_bounty: [0, 2 ** 62],
  max_redundancy: [1, 100000],
  clock_skew_ms: [0, 3600000],
  min_task_duration_ms: [0, DAY],
  max_task_duration_ms: [1, 3650 * DAY],
  grace_period_ms: [0, DAY],
  round_timeout_ms: [100, 3600000],
  fresh_weight: [0, 65536],
  reputation_lag_ms: [0, 365 * DAY],
  max_weight: [1, 2 ** 30],
  max_votes_per_ledger_vote: [1, 10000],
  ledger_seq_window: [1, 65536],
  ledger_fee_bps: [0, 10000],
  ledger_fee_to: [0, 1]
}

function cmpCodePoints (a, b) {
  const x = Array.from(a, c => c.codePointAt(0))
  const y = Array.from(b, c => c.codePointAt(0))
  for (let i = 0; i < Math.min(x.length, y.length); i++) if (x[i] !== y[i]) return x[i] - y[i]
  return x.length - y.length
}

function cmpTuple (a, b) {
  for (let i = 0; i < a.length; i++) {
    const x = a[i]; const y = b[i]
    let c
    if (x instanceof Uint8Array) c = compareBytes(x, y)
    else if (typeof x === 'string') c = cmpCodePoints(x, y)
    else c = x < y ? -1 : x > y ? 1 : 0
    if (c !== 0) return c
  }
  return 0
}

const hex32 = (s, where) => {
  const b = new Uint8Array(Buffer.from(String(s), 'hex'))
  if (b.length !== 32 || hex(b) !== String(s).toLowerCase()) throw new Error(`${where}: expected a 64-character hex public key`)
  return b
}

/**
 * Parse a genesis JSON document: { name, canonical, networkId, params, validators: Map(hex -> weight),
 * reputation, balances: Map(hex -> credits, summed per account), supply }.
 */
export function genesisFromJson (doc) {
  if (typeof doc === 'string') doc = JSON.parse(doc)
  const version = doc.version ?? 1
  if (version !== 1) throw new Error(`unsupported genesis version ${version}`)
  // 1..64 Unicode code points (not UTF-8 bytes, not UTF-16 code units: [...s] iterates code points)
  if (typeof doc.name !== 'string' || [...doc.name].length < 1 || [...doc.name].length > 64) throw new Error('genesis name must be 1..64 code points')
  const validators = (doc.validators ?? []).map(v => [hex32(v.account, 'validators'), BigInt(v.weight)]).sort(cmpTuple)
  const reputation = (doc.reputation ?? []).map(r => [hex32(r.account, 'reputation'), String(r.domain ?? ''), BigInt(r.weight)]).sort(cmpTuple)
  const balances = (doc.balances ?? []).map(b => [hex32(b.account, 'balances'), BigInt(b.credits)]).sort(cmpTuple)
  const overrides = Object.entries(doc.params ?? {}).map(([k, v]) => [k, BigInt(v)]).sort(cmpTuple)
  if (validators.length < 1) throw new Error('genesis needs at least one validator')
  const params = { ...DEFAULT_PARAMS }
  for (const [k, v] of overrides) {
    if (!(k in params)) throw new Error(`unknown param ${k}`)
    const [lo, hi] = PARAM_RANGES[k]
    if (v < BigInt(lo) || v > BigInt(hi)) throw new Error(`param ${k} must be ${lo}..${hi}, got ${v}`)
    params[k] = Number(v)
  }
  if (params.min_task_duration_ms > params.max_task_duration_ms) throw new Error('min_task_duration_ms exceeds max_task_duration_ms')
  const credits = new Map()
  for (const [a, c] of balances) {
    if (c < 0n || c > MAX_I63) throw new Error('balances: credits must be 0..2^63-1')
    credits.set(hex(a), (credits.get(hex(a)) ?? 0n) + c)
  }
  const canonical = encode([version, doc.name, doc.genesis_time_ms, validators, reputation, balances, overrides])
  const networkId = sha256(GENESIS_TAG, canonical)
  return {
    name: doc.name,
    canonical,
    networkId,
    params,
    validators: new Map(validators.map(([a, w]) => [hex(a), w])),
    reputation,
    balances: credits,
    supply: balances.reduce((s, [, c]) => s + c, 0n)
  }
}

/** Gossip topic of a message kind. */
export const topicFor = (networkId, kind) => `/labelmesh/${hex(networkId).slice(0, 16)}/${KIND_NAMES[kind]}/1`
/** The gossip topic of a label-schema domain's batches, gold reveals and attestations (section 7.2). */
export const domainTag = (domain) => hex(sha256(DOMAIN_TOPIC_TAG, new TextEncoder().encode(domain))).slice(0, 16)
export const domainTopicFor = (networkId, domain) => `/labelmesh/${hex(networkId).slice(0, 16)}/domain/${domainTag(domain)}/1`
export const syncProtocolFor = (networkId) => `/labelmesh/${hex(networkId).slice(0, 16)}/sync/1`

// ------------------------------------------------------------------ messages (section 5)

/** Body array of a named-field body (the shape decodeMessage returns). */
export function bodyFields (b) {
  switch (b.kind) {
    case 1: return [1, VERSION, b.requester, b.nonce, b.created_at, b.deadline, b.title,
      [b.schema.type, b.schema.domain, b.schema.labels],
      b.items.map(it => it.type === 0 ? [0, it.text] : it.type === 1 ? [1, it.payload, it.media_type] : [2, it.sha256, it.size, it.media_type]),
      b.redundancy, b.bounty, b.gold_commitment, b.reward_rule]
    case 2: return [2, VERSION, b.annotator, b.task_id, b.created_at, b.labels.flat()]
    case 3: return [3, VERSION, b.requester, b.task_id, b.created_at, b.salt, b.answers.flat()]
    case 4: return [4, VERSION, b.validator, b.task_id, b.created_at, b.round, b.phase, b.set_root, b.result_root, b.batch_ids]
    case 5: return [5, VERSION, b.sender, b.seq, b.created_at, b.amount, b.dest_type, b.dest]
    case 6: return [6, VERSION, b.validator, b.created_at, b.votes.flat()]
  }
  throw new Error(`unknown kind ${b.kind}`)
}

export const signerOf = (b) => ({ 2: b.annotator, 4: b.validator, 5: b.sender, 6: b.validator })[b.kind] ?? b.requester

/** The task a message belongs to (6.3): a task to itself, transfers and ledger votes to the ledger bucket. */
export const bucketOf = (msg, id) => msg.kind === KIND.TASK ? id
  : msg.kind === KIND.TRANSFER || msg.kind === KIND.LEDGER_VOTE ? LEDGER_BUCKET : msg.body.task_id

export function signedBytes (kind, networkId, bodyBytes) {
  return concat([DOMAIN_TAGS[kind], networkId, bodyBytes])
}

/** Encode and sign a named-field body with an ed25519 key ({publicKey, privateKey}). */
export function signMessage (body, key, networkId) {
  if (!equalBytes(signerOf(body), key.publicKey)) throw new Error("signing key does not match the message's signer field")
  const bodyBytes = encode(bodyFields(body))
  const sb = signedBytes(body.kind, networkId, bodyBytes)
  const signature = sign(key, sb)
  return { body, bodyBytes, signature, raw: encode([bodyBytes, signature]), id: sha256(sb) }
}

function limits (p) {
  return {
    maxBytes: p.max_message_bytes,
    maxArray: Math.max(p.max_items_per_task, 2 * p.max_labels_per_batch, p.max_batch_ids_per_attestation,
      3 * p.max_votes_per_ledger_vote, p.max_classes, 16),
    maxBin: Math.max(p.max_inline_item_bytes, 64),
    maxStr: Math.max(p.max_string_bytes, p.max_inline_item_bytes)
  }
}

const need = (c, what) => { if (!c) throw new DecodeError(what) }
const isInt = (v) => typeof v === 'bigint' || Number.isInteger(v)
const uint = (v, name) => { need(isInt(v) && v >= 0, `${name} must be a non-negative integer`); return v }
const bin = (v, name, len) => {
  need(v instanceof Uint8Array, `${name} must be bytes`)
  if (len !== undefined) need(v.length === len, `${name} must be ${len} bytes, got ${v.length}`)
  return v
}
const str = (v, name) => { need(typeof v === 'string', `${name} must be a string`); return v }
const list = (v, name) => { need(Array.isArray(v), `${name} must be an array`); return v }
const pairs = (v, name) => {
  list(v, name)
  need(v.length % 2 === 0, `${name} must hold (item, label) pairs: even length`)
  for (const x of v) need(isInt(x) && x >= 0, `${name} entries must be non-negative integers`)
  const out = []
  for (let i = 0; i < v.length; i += 2) out.push([v[i], v[i + 1]])
  return out
}

const triples = (v, name) => {
  list(v, name)
  need(v.length % 3 === 0, `${name} must hold (sender, seq, order id) triples: length a multiple of 3`)
  const out = []
  for (let i = 0; i < v.length; i += 3) {
    out.push([bin(v[i], 'vote sender', 32), uint(v[i + 1], 'vote seq'), bin(v[i + 2], 'vote order id', 32)])
  }
  return out
}

function decodeItem (x) {
  list(x, 'item')
  need(x.length >= 2, 'item must be [type, ...]')
  const t = uint(x[0], 'item type')
  if (t === 0) { need(x.length === 2, 'text item must be [0, text]'); return { type: 0, text: str(x[1], 'item text') } }
  if (t === 1) {
    need(x.length === 3, 'bytes item must be [1, payload, media_type]')
    return { type: 1, payload: bin(x[1], 'item payload'), media_type: str(x[2], 'media type') }
  }
  if (t === 2) {
    need(x.length === 4, 'blob item must be [2, sha256, size, media_type]')
    return { type: 2, sha256: bin(x[1], 'blob digest', 32), size: uint(x[2], 'blob size'), media_type: str(x[3], 'media type') }
  }
  throw new DecodeError(`unknown item type ${t}`)
}

// ------------------------------------------------------------------ gossip payloads (PROTOCOL.md 7.3)
export const BUNDLE_TAG = 0
export const MAX_BUNDLE_ENVELOPES = 256
export const MAX_GOSSIP_PAYLOAD_BYTES = 1024 * 1024 - 64 * 1024

/** The envelopes one gossip payload carries: [payload] for a plain envelope, the list for a bundle. Throws DecodeError. */
export function splitPayload (payload, params) {
  if (!(payload.length >= 2 && payload[0] === 0x92 && payload[1] === BUNDLE_TAG)) return [payload]
  const lim = limits(params)
  const v = decode(payload, { maxBytes: MAX_GOSSIP_PAYLOAD_BYTES, maxArray: MAX_BUNDLE_ENVELOPES, maxBin: lim.maxBytes, maxStr: 0 })
  need(Array.isArray(v) && v.length === 2 && isInt(v[0]) && Number(v[0]) === BUNDLE_TAG, `bundle must be [${BUNDLE_TAG}, [envelope, ...]]`)
  need(Array.isArray(v[1]) && v[1].length >= 1, `bundle must hold 1..${MAX_BUNDLE_ENVELOPES} envelopes`)
  const seen = new Set()
  for (const e of v[1]) {
    need(e instanceof Uint8Array, 'each bundled envelope must be bin')
    const h = hex(e)
    need(!seen.has(h), 'bundle holds the same envelope twice')
    seen.add(h)
  }
  return v[1]
}

/** Decode an envelope: { kind, body (named fields), bodyBytes, signature, raw }. Throws DecodeError. */
export function decodeMessage (raw, params) {
  const lim = limits(params)
  const env = decode(raw, { maxBytes: lim.maxBytes, maxArray: 2, maxBin: lim.maxBytes, maxStr: 0 })
  need(Array.isArray(env) && env.length === 2, 'envelope must be [body, signature]')
  const bodyBytes = bin(env[0], 'body')
  const signature = bin(env[1], 'signature', 64)
  const f = decode(bodyBytes, lim)
  need(Array.isArray(f) && f.length >= 3, 'body must be an array [kind, version, signer, ...]')
  need(isInt(f[0]), 'kind must be an integer')
  need(isInt(f[1]), 'version must be an integer')
  const kind = f[0]
  need(KIND_NAMES[kind] !== undefined, `unknown message kind ${kind}`)
  need(f[1] === VERSION, `unsupported ${KIND_NAMES[kind]} version ${f[1]}; this node speaks version ${VERSION}`)
  const signer = bin(f[2], 'signer', 32)
  need(f.length === FIELD_COUNT[kind], `wrong number of fields: ${KIND_NAMES[kind]} has ${FIELD_COUNT[kind]}`)
  let body
  if (kind === 1) {
    const sch = list(f[7], 'schema')
    need(sch.length === 3, 'schema must be [type, domain, labels]')
    const labels = list(sch[2], 'schema labels').map(x => str(x, 'label name'))
    const schema = { type: uint(sch[0], 'schema type'), domain: str(sch[1], 'schema domain'), labels }
    const items = list(f[8], 'items').map(decodeItem)
    const gc = f[11] === null ? null : bin(f[11], 'gold_commitment', 32)
    body = {
      kind,
      requester: signer,
      nonce: uint(f[3], 'nonce'),
      created_at: uint(f[4], 'created_at'),
      deadline: uint(f[5], 'deadline'),
      title: str(f[6], 'title'),
      schema,
      items,
      redundancy: uint(f[9], 'redundancy'),
      bounty: uint(f[10], 'bounty'),
      gold_commitment: gc,
      reward_rule: uint(f[12], 'reward_rule')
    }
  } else if (kind === 2) {
    body = { kind, annotator: signer, task_id: bin(f[3], 'task_id', 32), created_at: uint(f[4], 'created_at'), labels: pairs(f[5], 'labels') }
  } else if (kind === 3) {
    body = {
      kind, requester: signer, task_id: bin(f[3], 'task_id', 32), created_at: uint(f[4], 'created_at'),
      salt: bin(f[5], 'salt', 32), answers: pairs(f[6], 'answers')
    }
  } else if (kind === 5) {
    body = {
      kind,
      sender: signer,
      seq: uint(f[3], 'seq'),
      created_at: uint(f[4], 'created_at'),
      amount: uint(f[5], 'amount'),
      dest_type: uint(f[6], 'dest_type'),
      dest: bin(f[7], 'dest', 32)
    }
  } else if (kind === 6) {
    body = { kind, validator: signer, created_at: uint(f[3], 'created_at'), votes: triples(f[4], 'votes') }
  } else {
    body = {
      kind,
      validator: signer,
      task_id: bin(f[3], 'task_id', 32),
      created_at: uint(f[4], 'created_at'),
      round: uint(f[5], 'round'),
      phase: uint(f[6], 'phase'),
      set_root: bin(f[7], 'set_root', 32),
      result_root: bin(f[8], 'result_root', 32),
      batch_ids: list(f[9], 'batch_ids').map(x => bin(x, 'batch id', 32))
    }
  }
  return { kind, body, bodyBytes, signature, raw }
}

export const messageId = (msg, networkId) => sha256(signedBytes(msg.kind, networkId, msg.bodyBytes))

export function verifyMessage (msg, networkId) {
  return verify(signerOf(msg.body), signedBytes(msg.kind, networkId, msg.bodyBytes), msg.signature)
}

const utf8len = (s) => Buffer.byteLength(s, 'utf8')
/** Order of two slots [sender, seq, ...]: bytewise on the sender, then the integer (5.8). */
export const compareSlots = (x, y) => compareBytes(x[0], y[0]) || (BigInt(x[1]) < BigInt(y[1]) ? -1 : BigInt(x[1]) > BigInt(y[1]) ? 1 : 0)
const increasing = (ps) => ps.every((p, i) => i === 0 || BigInt(p[0]) > BigInt(ps[i - 1][0]))

/** Stateless size and range checks: null if fine, else the REJECT reason. */
export function validateBasic (msg, p) {
  const b = msg.body
  if (msg.raw.length > p.max_message_bytes) return `message is ${msg.raw.length} bytes; limit ${p.max_message_bytes}`
  if (b.kind === 1) {
    const s = b.schema
    if (s.type !== 0) return `unsupported schema type ${s.type}`
    if (s.labels.length < 2 || s.labels.length > p.max_classes) return `schema must have 2..${p.max_classes} labels`
    if (new Set(s.labels).size !== s.labels.length) return 'label names must be distinct'
    for (const t of [b.title, s.domain, ...s.labels]) if (utf8len(t) > p.max_string_bytes) return 'string too long'
    if (s.labels.some(l => l === '')) return 'label names must not be empty'
    if (b.items.length < 1 || b.items.length > p.max_items_per_task) return `task must have 1..${p.max_items_per_task} items`
    for (const it of b.items) {
      if (it.type === 0 && utf8len(it.text) > p.max_inline_item_bytes) return 'inline item too long'
      if (it.type === 1 && it.payload.length > p.max_inline_item_bytes) return 'inline item too long'
      if (it.type === 2 && BigInt(it.size) > BigInt(p.max_blob_bytes)) return 'blob too big'
      if (utf8len(it.media_type ?? '') > p.max_string_bytes) return 'media type too long'
    }
    const d = BigInt(b.deadline) - BigInt(b.created_at)
    if (d < BigInt(p.min_task_duration_ms) || d > BigInt(p.max_task_duration_ms)) return 'deadline out of bounds'
    if (b.redundancy < 1 || b.redundancy > p.max_redundancy) return 'redundancy out of range'
    if (BigInt(b.bounty) > BigInt(p.max_bounty)) return 'bounty too big'
    if (b.reward_rule !== 0) return `unknown reward rule ${b.reward_rule}`
  } else if (b.kind === 2) {
    if (b.labels.length < 1 || b.labels.length > p.max_labels_per_batch) return `batch must hold 1..${p.max_labels_per_batch} labels`
    if (!increasing(b.labels)) return 'batch items must be strictly increasing'
  } else if (b.kind === 3) {
    if (b.answers.length > p.max_items_per_task) return 'too many gold answers'
    if (!increasing(b.answers)) return 'gold items must be strictly increasing'
  } else if (b.kind === 5) {
    if (BigInt(b.amount) < 1n || BigInt(b.amount) > MAX_I63) return `amount must be 1..${MAX_I63} credits, got ${b.amount}`
    if (BigInt(b.seq) > MAX_I63) return `seq must be 0..${MAX_I63}`
    if (b.dest_type !== 0 && b.dest_type !== 1) return `unknown transfer destination type ${b.dest_type}; 0 = account, 1 = task escrow`
    if (b.dest_type === 0 && equalBytes(b.dest, b.sender)) return 'a transfer to oneself moves nothing'
    if (equalBytes(b.dest, LEDGER_BUCKET)) return 'transfer destination must not be 32 zero bytes'
  } else if (b.kind === 6) {
    const n = b.votes.length
    if (n < 1 || n > p.max_votes_per_ledger_vote) return `ledger vote must hold 1..${p.max_votes_per_ledger_vote} votes, holds ${n}`
    for (let i = 0; i < n; i++) {
      if (BigInt(b.votes[i][1]) > MAX_I63) return `vote seq must be 0..${MAX_I63}`
      if (i && compareSlots(b.votes[i - 1], b.votes[i]) >= 0) return 'ledger votes must be sorted by (sender, seq), one per slot'
    }
  } else {
    if (b.phase !== 0 && b.phase !== 1) return `unknown attestation phase ${b.phase}`
    if (b.batch_ids.length > p.max_batch_ids_per_attestation) return 'too many batch ids'
    for (let i = 1; i < b.batch_ids.length; i++) if (compareBytes(b.batch_ids[i - 1], b.batch_ids[i]) >= 0) return 'batch ids must be sorted and distinct'
    if (b.phase === 0 && !equalBytes(computeSetRoot(b.task_id, b.batch_ids), b.set_root)) return 'set_root does not match the listed batch ids'
    if (b.phase === 1 && b.batch_ids.length) return 'a precommit lists no batch ids'
  }
  return null
}

/**
 * The whole pipeline of PROTOCOL.md section 6.2.
 * ctx = { getTask(taskIdBytes) -> body | null, validatorWeight(accountBytes) -> bigint }.
 * Returns { outcome: 'ACCEPT'|'REJECT'|'IGNORE', stage, reason, msg }.
 */
export function checkMessage (raw, ctx, networkId, nowMs, params) {
  let msg
  try {
    msg = decodeMessage(raw, params)
  } catch (e) {
    if (!(e instanceof DecodeError)) throw e
    return { outcome: 'REJECT', stage: 'decode', reason: `decode: ${e.message}`, msg: null }
  }
  const basic = validateBasic(msg, params)
  if (basic) return { outcome: 'REJECT', stage: 'basic', reason: basic, msg }
  if (!verifyMessage(msg, networkId)) return { outcome: 'REJECT', stage: 'signature', reason: 'bad signature', msg }
  const [outcome, reason] = validateInContext(msg.body, ctx, BigInt(nowMs), params)
  return { outcome, stage: outcome === 'ACCEPT' ? 'accept' : 'context', reason, msg }
}

function validateInContext (b, ctx, now, p) {
  if (BigInt(b.created_at) > now + BigInt(p.clock_skew_ms)) return ['IGNORE', 'created_at is in the future beyond the clock-skew tolerance']
  if (b.kind === KIND.TASK || b.kind === KIND.TRANSFER) return ['ACCEPT', ''] // funding is section 16's business
  if (b.kind === KIND.LEDGER_VOTE) {
    if (!(ctx.validatorWeight(b.validator) > 0n)) return ['REJECT', 'ledger vote signer is not a validator of this network']
    return ['ACCEPT', '']
  }
  const task = ctx.getTask(b.task_id)
  if (!task) return ['IGNORE', 'unknown task (not received yet)']
  const nItems = task.items.length; const nClasses = task.schema.labels.length
  if (b.kind === 2) {
    for (const [i, l] of b.labels) {
      if (i >= nItems) return ['REJECT', `item ${i} out of range`]
      if (l >= nClasses) return ['REJECT', `label ${l} out of range`]
    }
    if (BigInt(b.created_at) > BigInt(task.deadline)) return ['IGNORE', 'signed after the task deadline']
    return ['ACCEPT', '']
  }
  if (b.kind === 3) {
    if (!equalBytes(b.requester, task.requester)) return ['REJECT', "gold reveal not signed by the task's requester"]
    if (task.gold_commitment === null) return ['REJECT', 'task has no gold commitment']
    if (BigInt(b.created_at) < BigInt(task.deadline)) return ['REJECT', 'gold revealed before the deadline']
    for (const [i, l] of b.answers) if (i >= nItems || l >= nClasses) return ['REJECT', 'gold answer out of range']
    if (!equalBytes(computeGoldCommitment(b.salt, b.answers), task.gold_commitment)) return ['REJECT', "gold reveal does not match the task's commitment"]
    return ['ACCEPT', '']
  }
  if (!(ctx.validatorWeight(b.validator) > 0n)) return ['REJECT', 'attestation signer is not a validator of this network']
  const start = BigInt(task.deadline) + BigInt(p.grace_period_ms) + BigInt(b.round) * BigInt(p.round_timeout_ms)
  if (BigInt(b.created_at) < start) return ['REJECT', `attestation for round ${b.round} signed at ${b.created_at}, before the round starts at ${start}`]
  return ['ACCEPT', '']
}

// ------------------------------------------------------------------ roots (sections 5.4, 5.5, 10.5)

export function computeSetRoot (taskId, ids) {
  return sha256(SET_ROOT_TAG, taskId, ...[...ids].sort(compareBytes))
}

export function computeGoldCommitment (salt, answers) {
  const sorted = [...answers].sort((a, b) => (BigInt(a[0]) < BigInt(b[0]) ? -1 : BigInt(a[0]) > BigInt(b[0]) ? 1 : 0))
  return sha256(GOLD_COMMIT_TAG, salt, encode(sorted.flat()))
}

export const computeResultRoot = (canonicalResultBytes) => sha256(RESULT_ROOT_TAG, canonicalResultBytes)

// ------------------------------------------------------------------ the keep rule (section 6.3)

/**
 * Which of one task's batches a node keeps: a Set of id hex strings. ``batches`` are
 * {id: Uint8Array, annotator: Uint8Array, labels: [[item, label], ...]}. Per annotator and
 * item, the counted labels are the two smallest label indexes it gave; the owner of a counted
 * (item, label) is the batch with the smallest id carrying it; a batch is kept iff it owns one.
 */
export function computeKeptBatches (batches) {
  const kept = new Set()
  const byAnnotator = new Map()
  for (const b of batches) {
    const a = hex(b.annotator)
    if (!byAnnotator.has(a)) byAnnotator.set(a, [])
    byAnnotator.get(a).push(b)
  }
  for (const rows of byAnnotator.values()) {
    const labelsOf = new Map() // item -> Set of labels
    const owner = new Map() // "item/label" -> smallest id hex carrying it
    for (const b of rows) {
      const id = hex(b.id)
      for (const [item, label] of b.labels) {
        const i = Number(item)
        const l = Number(label)
        if (!labelsOf.has(i)) labelsOf.set(i, new Set())
        labelsOf.get(i).add(l)
        const k = `${i}/${l}`
        if (!owner.has(k) || id < owner.get(k)) owner.set(k, id) // same-length lowercase hex: bytewise order
      }
    }
    for (const [i, ls] of labelsOf) {
      for (const l of [...ls].sort((x, y) => x - y).slice(0, 2)) kept.add(owner.get(`${i}/${l}`))
    }
  }
  return kept
}

// ------------------------------------------------------------------ sync (section 8.2)

export const SYNC = { LEAF_IDS: 128, FANOUT: 16, MAX_SUMMARY_TASKS: 1024, MAX_GET_IDS: 1024, MAX_REQUEST_BYTES: 64 * 1024, MAX_RESPONSE_BYTES: 8 * 1024 * 1024 }
const MOD256 = 1n << 256n
export const idInt = (id) => BigInt('0x' + (hex(id) || '0'))

export function fingerprintFromSum (total, count) {
  const t = ((total % MOD256) + MOD256) % MOD256
  const sum = new Uint8Array(Buffer.from(t.toString(16).padStart(64, '0'), 'hex'))
  const cnt = new Uint8Array(8)
  new DataView(cnt.buffer).setBigUint64(0, BigInt(count))
  return sha256(FP_TAG, sum, cnt).slice(0, 16)
}

export function computeFingerprint (ids) {
  let total = 0n
  for (const i of ids) total += idInt(i)
  return fingerprintFromSum(total, ids.length)
}

/** Index range [a, b) of sortedIds with lo <= id < hi (hi null = unbounded). */
export function rangeSlice (sortedIds, lo, hi) {
  const lower = (x) => { let a = 0; let b = sortedIds.length; while (a < b) { const m = (a + b) >> 1; if (compareBytes(sortedIds[m], x) < 0) a = m + 1; else b = m } return a }
  const a = lower(lo)
  const b = hi === null ? sortedIds.length : lower(hi)
  return [a, Math.max(a, b)]
}

export const encodeSummaryRequest = (cursor, limit) => encode([0, cursor, limit])
export const encodeRangeRequest = (taskId, lo, hi) => encode([1, taskId, lo, hi])
export const encodeGetRequest = (ids) => encode([2, ids])

const isBound = (v, allowNull) => v === null ? allowNull : (v instanceof Uint8Array && v.length <= 32)

export function decodeSyncRequest (data) {
  const f = decode(data, { maxBytes: SYNC.MAX_REQUEST_BYTES, maxArray: SYNC.MAX_GET_IDS, maxBin: 32, maxStr: 0 })
  need(Array.isArray(f) && f.length >= 2 && isInt(f[0]), 'sync request must be [kind, ...]')
  if (f[0] === 0) {
    need(f.length === 3 && isBound(f[1], false) && isInt(f[2]) && f[2] >= 1 && f[2] <= SYNC.MAX_SUMMARY_TASKS, 'summary request must be [0, cursor, limit 1..1024]')
    return { kind: 0, cursor: f[1], limit: f[2] }
  }
  if (f[0] === 1) {
    need(f.length === 4 && f[1] instanceof Uint8Array && f[1].length === 32 && isBound(f[2], false) && isBound(f[3], true), 'range request must be [1, task_id, lo, hi|nil]')
    return { kind: 1, taskId: f[1], lo: f[2], hi: f[3] }
  }
  if (f[0] === 2) {
    need(f.length === 2 && Array.isArray(f[1]) && f[1].length >= 1 && f[1].length <= SYNC.MAX_GET_IDS && f[1].every(i => i instanceof Uint8Array && i.length === 32), 'get request must be [2, [id, ...]]')
    return { kind: 2, ids: f[1] }
  }
  if (f[0] === 3) {
    need(f.length === 2 && Array.isArray(f[1]) && f[1].length >= 1 && f[1].length <= REPLICA.MAX_CERTIFIED_TASKS && f[1].every(i => i instanceof Uint8Array && i.length === 32), 'certified request must be [3, [task_id, ...]]')
    return { kind: 3, ids: f[1] }
  }
  throw new DecodeError(`unknown sync request kind ${f[0]}`)
}

// CERTIFIED (section 8.4): a task's certificate and its result bytes R, for a node without its batches
export const REPLICA = { MAX_CERTIFIED_TASKS: 64, MAX_CERTIFIED_BIN: 8 * 1024 * 1024 }
export const encodeCertifiedRequest = (taskIds) => encode([3, taskIds])
export const encodeCertifiedResponse = (rows) => encode(rows.map(([t, c, r]) => [t, c, r]))
export function decodeCertifiedResponse (data) {
  const f = decode(data, { maxBytes: SYNC.MAX_RESPONSE_BYTES, maxArray: REPLICA.MAX_CERTIFIED_TASKS, maxBin: REPLICA.MAX_CERTIFIED_BIN, maxStr: 0 })
  need(Array.isArray(f) && f.every(r => Array.isArray(r) && r.length === 3 && r[0] instanceof Uint8Array && r[0].length === 32 &&
    r[1] instanceof Uint8Array && r[2] instanceof Uint8Array), 'certified response must be [[task_id, certificate, result], ...]')
  return f
}

/** Whether (certificate, R) proves task taskId's result: a valid certificate of that task whose result_root
 * is sha256(RESULT_ROOT_TAG || R), R over the certified set. { valid, error }. */
export function checkCertified (taskId, certBytes, resultBytes, validators, networkId, params) {
  try {
    const c = verifyCertificate(certBytes, validators, networkId, params)
    const cert = decodeCertificate(certBytes, params)
    if (!equalBytes(cert.taskId, taskId)) return { valid: false, error: 'certificate is for another task' }
    if (!c.valid) return { valid: false, error: 'certificate does not verify (signatures or quorum)' }
    if (!equalBytes(computeResultRoot(resultBytes), cert.resultRoot)) return { valid: false, error: 'result bytes do not hash to the certified result_root' }
    const r = decode(resultBytes, { maxBytes: REPLICA.MAX_CERTIFIED_BIN, maxArray: 1 << 20, maxBin: 32, maxStr: 0 })
    if (!(Array.isArray(r) && r.length === 12 && equalBytes(r[0], taskId) && equalBytes(r[1], cert.setRoot))) return { valid: false, error: 'result is not over the certified set' }
    return { valid: true }
  } catch (e) {
    return { valid: false, error: String(e.message) }
  }
}

export const encodeSummaryResponse = (rows, nextCursor) => encode([rows.map(([t, c, fp]) => [t, c, fp]), nextCursor])

export function decodeSummaryResponse (data) {
  const f = decode(data, { maxBytes: SYNC.MAX_RESPONSE_BYTES, maxArray: SYNC.MAX_SUMMARY_TASKS, maxBin: 32, maxStr: 0 })
  need(Array.isArray(f) && f.length === 2 && Array.isArray(f[0]) && isBound(f[1], true), 'summary response must be [[row...], next_cursor|nil]')
  for (const r of f[0]) need(Array.isArray(r) && r.length === 3 && r[0] instanceof Uint8Array && r[0].length === 32 && isInt(r[1]) && r[2] instanceof Uint8Array && r[2].length === 16, 'bad summary row')
  return { rows: f[0], next: f[1] }
}

export function encodeRangeResponse (sortedIds, lo, hi) {
  const [a, b] = rangeSlice(sortedIds, lo, hi)
  const n = b - a
  if (n <= SYNC.LEAF_IDS) return encode([0, sortedIds.slice(a, b)])
  const parts = []
  const step = Math.ceil(n / SYNC.FANOUT)
  for (let start = a; start < b; start += step) {
    const end = Math.min(b, start + step)
    parts.push([start === a ? lo : sortedIds[start], end === b ? hi : sortedIds[end], end - start, computeFingerprint(sortedIds.slice(start, end))])
  }
  return encode([1, parts])
}

export function decodeRangeResponse (data) {
  const f = decode(data, { maxBytes: SYNC.MAX_RESPONSE_BYTES, maxArray: Math.max(SYNC.LEAF_IDS, SYNC.FANOUT), maxBin: 32, maxStr: 0 })
  need(Array.isArray(f) && f.length === 2 && Array.isArray(f[1]), 'range response must be [mode, list]')
  if (f[0] === 0) return { mode: 'ids', ids: f[1] }
  if (f[0] === 1) return { mode: 'split', parts: f[1] }
  throw new DecodeError(`unknown range response mode ${f[0]}`)
}

export const encodeGetResponse = (raws) => encode(raws)
export function decodeGetResponse (data, maxMessageBytes) {
  const f = decode(data, { maxBytes: SYNC.MAX_RESPONSE_BYTES, maxArray: SYNC.MAX_GET_IDS, maxBin: maxMessageBytes, maxStr: 0 })
  need(Array.isArray(f) && f.every(x => x instanceof Uint8Array), 'get response must be [raw, ...]')
  return f
}

// ------------------------------------------------------------------ request/response framing (section 8.1)

export function uvarint (n) {
  const out = []
  let v = BigInt(n)
  do {
    let b = Number(v & 0x7fn)
    v >>= 7n
    if (v) b |= 0x80
    out.push(b)
  } while (v)
  return Uint8Array.from(out)
}

// ------------------------------------------------------------------ finality (section 11)

export const isQuorum = (weight, total) => 3n * BigInt(weight) > 2n * BigInt(total)

/** The round in progress at nowMs: -1 before round 0 starts (section 11). */
export function computeRound (deadline, nowMs, params) {
  const start = BigInt(deadline) + BigInt(params.grace_period_ms)
  const now = BigInt(nowMs)
  return now < start ? -1 : Number((now - start) / BigInt(params.round_timeout_ms))
}

/** Highest round accepted from other validators when the node's current round is `round` (section 11). */
export const roundHorizon = (round, params) => Math.max(round, 0) + Math.floor(params.clock_skew_ms / params.round_timeout_ms) + 1

export function computeLeader (taskId, round, validators /* Map hex -> bigint weight */) {
  let total = 0n
  for (const w of validators.values()) total += BigInt(w)
  const r = new Uint8Array(8)
  new DataView(r.buffer).setBigUint64(0, BigInt(round))
  let x = idInt(sha256(LEADER_TAG, taskId, r)) % total
  for (const account of [...validators.keys()].sort()) {
    x -= BigInt(validators.get(account))
    if (x < 0n) return account
  }
  throw new Error('unreachable')
}

export const MAX_CERT_ATTESTATIONS = 1000

/**
 * Decode a certificate [1, [precommit envelope, ...]] (section 11): structure only.
 * Returns { taskId, round, setRoot, resultRoot, msgs }; throws DecodeError if malformed.
 */
export function decodeCertificate (data, params) {
  const top = decode(data, { maxBytes: params.max_message_bytes, maxArray: MAX_CERT_ATTESTATIONS, maxBin: params.max_message_bytes, maxStr: 0 })
  need(Array.isArray(top) && top.length === 2, 'certificate must be [version, [attestations]]')
  need(top[0] === 1, `unsupported certificate version ${top[0]}`) // a boolean is not 1
  need(Array.isArray(top[1]) && top[1].length > 0, 'certificate must hold at least one attestation')
  need(top[1].every(x => x instanceof Uint8Array), 'certificate attestations must be message envelopes (bytes)')
  const msgs = top[1].map(raw => decodeMessage(raw, params))
  for (const m of msgs) need(m.kind === KIND.ATTESTATION && m.body.phase === 1, 'a certificate holds precommit attestations only')
  for (let i = 1; i < msgs.length; i++) need(compareBytes(msgs[i - 1].body.validator, msgs[i].body.validator) < 0, 'certificate attestations must be sorted by validator, one each')
  const f = msgs[0].body
  for (const { body: b } of msgs) {
    need(equalBytes(b.task_id, f.task_id) && b.round === f.round && equalBytes(b.set_root, f.set_root) &&
      equalBytes(b.result_root, f.result_root), 'certificate attestations disagree on task, round or value')
    need(b.batch_ids.length === 0, 'a precommit lists no batch ids')
  }
  return { taskId: f.task_id, round: f.round, setRoot: f.set_root, resultRoot: f.result_root, msgs }
}

/**
 * Decode and verify a certificate: every signature, every signer a validator, a quorum.
 * No created_at check (section 11). Returns { valid, weight, total, taskId, round }; throws if malformed.
 */
export function verifyCertificate (data, validators, networkId, params) {
  const c = decodeCertificate(data, params)
  let weight = 0n
  let valid = true
  for (const m of c.msgs) {
    const w = validators.get(hex(m.body.validator))
    if (!w || !verifyMessage(m, networkId)) valid = false
    else weight += w
  }
  let total = 0n
  for (const w of validators.values()) total += w
  return { valid: valid && isQuorum(weight, total), weight, total, taskId: c.taskId, round: c.round }
}
