// A labelmesh peer on js-libp2p, written from PROTOCOL.md.
//
// It joins a network (genesis JSON + a bootstrap multiaddr), subscribes to the six
// gossip topics with its own three-way validator, serves the sync protocol from what
// it holds, keeps the ledger (section 16) from the transfers and ledger votes it meets,
// and annotates tasks: for every open task it learns (from gossip, or by pulling sync
// SUMMARY/GET from its peers), once the task's bounty is escrowed in its own view, it
// signs one AnnotationBatch with its own ed25519 account key, publishes it on the batch
// topic and then asks a peer for it back over sync GET, which proves the peer validated
// and stored it.
//
// Usage:
//   node src/peer.mjs --genesis G.json --bootstrap /ip4/127.0.0.1/tcp/P/p2p/ID [--bootstrap ...]
//        [--seed HEX32] [--tasks N] [--timeout-s S] [--label-offset K] [--linger-s S]
//
// Output: one JSON object per line on stdout ("event": ready | task | funded | published |
// confirmed | done | error ...); diagnostics on stderr. Exit 0 once N tasks are
// confirmed (then it lingers --linger-s seconds serving sync), 1 on timeout or error.
import './polyfill.mjs'
import crypto from 'node:crypto'
import { readFileSync } from 'node:fs'
import { parseArgs } from 'node:util'
import { createLibp2p } from 'libp2p'
import { tcp } from '@libp2p/tcp'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { identify } from '@libp2p/identify'
import { gossipsub, TopicValidatorResult } from '@libp2p/gossipsub'
import { multiaddr } from '@multiformats/multiaddr'
import { compareBytes, concat, equalBytes, hex, unhex } from './msgpack.mjs'
import { keyFromSeed } from './ed25519.mjs'
import * as P from './protocol.mjs'
import { LedgerState } from './ledger.mjs'

const { values: opt } = parseArgs({
  options: {
    genesis: { type: 'string' },
    bootstrap: { type: 'string', multiple: true, default: [] },
    seed: { type: 'string' },
    tasks: { type: 'string', default: '1' },
    'timeout-s': { type: 'string', default: '60' },
    'label-offset': { type: 'string', default: '0' },
    'linger-s': { type: 'string', default: '0' }
  }
})
if (!opt.genesis || opt.bootstrap.length === 0) {
  console.error('usage: node src/peer.mjs --genesis GENESIS.json --bootstrap MULTIADDR [--seed HEX] [--tasks N] [--timeout-s S]')
  process.exit(2)
}

const emit = (event, fields = {}) => process.stdout.write(JSON.stringify({ event, t_ms: Date.now(), ...fields }) + '\n')
const log = (...a) => console.error('[js-peer]', ...a)
const sleep = (ms) => new Promise(resolve => setTimeout(resolve, ms))

const genesis = P.genesisFromJson(readFileSync(opt.genesis, 'utf8'))
const NET = genesis.networkId
const params = genesis.params
const account = keyFromSeed(opt.seed ? unhex(opt.seed) : new Uint8Array(crypto.randomBytes(32)))
const topics = Object.fromEntries(Object.keys(P.KIND_NAMES).map(k => [Number(k), P.topicFor(NET, Number(k))]))
const kindOfTopic = Object.fromEntries(Object.entries(topics).map(([k, t]) => [t, Number(k)]))
const SYNC_PROTOCOL = P.syncProtocolFor(NET)
const wantTasks = Number(opt.tasks)
const deadlineAt = Date.now() + Number(opt['timeout-s']) * 1000
const labelOffset = Number(opt['label-offset'])

// ------------------------------------------------------------------ local state: the set of valid messages (PROTOCOL.md 6.3)
const store = new Map() // id hex -> raw envelope
const taskIds = new Map() // task id hex (or the ledger bucket) -> sorted array of message ids (Uint8Array)
const tasks = new Map() // task id hex -> TaskAnnouncement body
const annotated = new Map() // task id hex -> { batchId, via, confirmed }
const unfunded = new Map() // task id hex -> via: open tasks waiting for their escrow (section 16)
// The ledger of this node's view: the genesis balances, then every stored task, transfer and
// ledger vote. It follows no certificate, so it never sees a release: it tells which tasks are
// funded (open for labels), not the balances after rewards.
const ledger = new LedgerState(genesis.balances, genesis.validators, params)
const LEDGER_HEX = hex(P.LEDGER_BUCKET)

const ctx = {
  getTask: (id) => tasks.get(hex(id)) ?? null,
  validatorWeight: (a) => genesis.validators.get(hex(a)) ?? 0n
}

function addToIndex (taskIdHex, id) {
  let ids = taskIds.get(taskIdHex)
  if (!ids) { ids = []; taskIds.set(taskIdHex, ids) }
  const [at] = P.rangeSlice(ids, id, null)
  if (at < ids.length && equalBytes(ids[at], id)) return
  ids.splice(at, 0, id)
}

function removeFromIndex (taskIdHex, idHex) {
  store.delete(idHex)
  const ids = taskIds.get(taskIdHex)
  const at = ids.findIndex(x => hex(x) === idHex)
  if (at >= 0) ids.splice(at, 1)
}

/** The keep rule (PROTOCOL.md 6.3) after storing a batch or gold reveal of a task: drop
 * what it does not keep; false if the new message itself is not kept. */
function applyKeepRule (taskIdHex, b, idHex) {
  const mine = []
  for (const id of taskIds.get(taskIdHex)) {
    const m = P.decodeMessage(store.get(hex(id)), params)
    if (m.kind === b.kind && (b.kind === P.KIND.GOLD || equalBytes(m.body.annotator, b.annotator))) {
      mine.push({ id, annotator: m.body.annotator ?? m.body.requester, labels: m.body.labels })
    }
  }
  const kept = b.kind === P.KIND.GOLD
    ? new Set([mine.map(x => hex(x.id)).sort()[0]])
    : P.computeKeptBatches(mine)
  for (const x of mine) if (!kept.has(hex(x.id))) removeFromIndex(taskIdHex, hex(x.id))
  return kept.has(idHex)
}

/** Run the validation pipeline and store what it accepts: returns the check result. */
function ingest (raw, via) {
  const probe = P.checkMessage(raw, ctx, NET, Date.now(), params)
  if (probe.msg) {
    const id = P.messageId(probe.msg, NET)
    if (store.has(hex(id))) return { ...probe, outcome: 'IGNORE', reason: 'duplicate', id }
    if (probe.outcome !== 'ACCEPT') return { ...probe, id }
    const b = probe.msg.body
    // a batch of a task not funded in our view: IGNORE (no penalty); sync brings it back later (6.2, 16)
    if (b.kind === P.KIND.BATCH && !ledger.isFunded(hex(b.task_id))) return { ...probe, outcome: 'IGNORE', reason: 'task not funded yet', id }
    store.set(hex(id), raw)
    const tid = P.bucketOf(probe.msg, id)
    addToIndex(hex(tid), id)
    if ((b.kind === P.KIND.BATCH || b.kind === P.KIND.GOLD) && !applyKeepRule(hex(tid), b, hex(id))) {
      return { ...probe, outcome: 'IGNORE', reason: 'not stored: redundant (keep rule)', id }
    }
    if (b.kind === P.KIND.TASK) {
      tasks.set(hex(id), b)
      ledger.addTask(hex(id), hex(b.requester), b.bounty)
      onTask(id, b, via)
    } else if (b.kind === P.KIND.TRANSFER) ledger.addOrder(hex(id), b)
    else if (b.kind === P.KIND.LEDGER_VOTE) ledger.addVote(b)
    if (b.kind === P.KIND.TASK || b.kind === P.KIND.TRANSFER || b.kind === P.KIND.LEDGER_VOTE) onLedger(via)
    return { ...probe, id }
  }
  return probe
}

// ------------------------------------------------------------------ libp2p host
const node = await createLibp2p({
  addresses: { listen: ['/ip4/127.0.0.1/tcp/0'] },
  transports: [tcp()],
  connectionEncrypters: [noise()],
  streamMuxers: [yamux()],
  services: {
    identify: identify(),
    pubsub: gossipsub({
      globalSignaturePolicy: 'StrictSign', // PROTOCOL.md 7.2: every pubsub message signed by its publisher
      allowPublishToZeroTopicPeers: false,
      emitSelf: false,
      heartbeatInterval: 1000
    })
  }
})
const pubsub = node.services.pubsub

for (const [kind, topic] of Object.entries(topics)) {
  pubsub.topicValidators.set(topic, (peerId, msg) => {
    if (msg.type !== 'signed') return TopicValidatorResult.Reject
    // One envelope, or a bundle of envelopes of this topic's kind (PROTOCOL.md 7.3): REJECT if
    // any is invalid, ACCEPT if all are now held and one was new, IGNORE otherwise.
    let envelopes
    try { envelopes = P.splitPayload(msg.data, params) } catch (e) {
      log(`gossip ${P.KIND_NAMES[kind]} from ${peerId}: REJECT ${e.message}`)
      return TopicValidatorResult.Reject
    }
    let accepted = 0
    let complete = true
    for (const raw of envelopes) {
      const r = ingest(raw, 'gossip')
      if (r.msg && r.msg.kind !== Number(kind)) return TopicValidatorResult.Reject // kind must match the topic
      if (r.outcome === 'REJECT') {
        log(`gossip ${P.KIND_NAMES[kind]} from ${peerId}: REJECT ${r.reason}`)
        return TopicValidatorResult.Reject
      }
      if (r.outcome === 'ACCEPT') accepted++
      else if (r.reason !== 'duplicate') { complete = false; log(`gossip ${P.KIND_NAMES[kind]} from ${peerId}: IGNORE ${r.reason}`) }
    }
    return accepted && complete ? TopicValidatorResult.Accept : TopicValidatorResult.Ignore
  })
}

// ------------------------------------------------------------------ request/response framing (PROTOCOL.md 8.1)
async function readFrame (stream, limit) {
  let buf = new Uint8Array(0)
  let length = null
  let headerLen = 0
  for await (const chunk of stream) {
    buf = concat([buf, chunk.subarray ? chunk.subarray() : chunk])
    if (length === null) {
      let v = 0n
      for (let i = 0; i < Math.min(buf.length, 10); i++) {
        v |= BigInt(buf[i] & 0x7f) << BigInt(7 * i)
        if ((buf[i] & 0x80) === 0) { length = Number(v); headerLen = i + 1; break }
      }
      if (length === null && buf.length >= 10) throw new Error('length prefix longer than 10 bytes')
      if (length !== null && length > limit) throw new Error(`frame of ${length} bytes exceeds the limit of ${limit}`)
    }
    if (length !== null && buf.length >= headerLen + length) {
      if (buf.length > headerLen + length) throw new Error('bytes after the frame')
      return buf.subarray(headerLen, headerLen + length)
    }
  }
  throw new Error('stream ended before a whole frame')
}

const frame = (body) => concat([P.uvarint(body.length), body])

async function request (peerId, body, timeoutMs = 10000) {
  const signal = AbortSignal.timeout(timeoutMs)
  const stream = await node.dialProtocol(peerId, SYNC_PROTOCOL, { signal })
  try {
    stream.send(frame(body))
    const resp = await readFrame(stream, P.SYNC.MAX_RESPONSE_BYTES + 1)
    if (resp.length === 0) throw new Error('empty response')
    if (resp[0] === 1) throw new Error(`remote refused: ${new TextDecoder().decode(resp.subarray(1))}`)
    if (resp[0] !== 0) throw new Error(`unknown status ${resp[0]}`)
    return resp.subarray(1)
  } finally {
    await stream.close().catch(() => stream.abort(new Error('close failed')))
  }
}

// Sync server: answer SUMMARY / RANGE / GET from our own set (PROTOCOL.md 8.2).
function answer (req) {
  if (req.kind === 0) {
    const all = [...taskIds.keys()].sort()
    const start = req.cursor.length ? all.findIndex(t => t > hex(req.cursor)) : 0
    const page = start < 0 ? [] : all.slice(start, start + req.limit)
    const rows = page.map(t => [unhex(t), taskIds.get(t).length, P.computeFingerprint(taskIds.get(t))])
    const more = start >= 0 && start + req.limit < all.length && page.length
    return P.encodeSummaryResponse(rows, more ? unhex(page[page.length - 1]) : null)
  }
  if (req.kind === 1) return P.encodeRangeResponse(taskIds.get(hex(req.taskId)) ?? [], req.lo, req.hi)
  const out = []
  let used = 0
  for (const id of req.ids) {
    const raw = store.get(hex(id))
    if (!raw) continue
    if (out.length && used + raw.length + 8 > P.SYNC.MAX_RESPONSE_BYTES - 1024) break
    out.push(raw)
    used += raw.length + 8
  }
  return P.encodeGetResponse(out)
}

let served = 0
await node.handle(SYNC_PROTOCOL, async (stream, connection) => {
  try {
    const body = await readFrame(stream, P.SYNC.MAX_REQUEST_BYTES)
    let resp
    try {
      resp = concat([Uint8Array.of(0), answer(P.decodeSyncRequest(body))])
    } catch (e) {
      resp = concat([Uint8Array.of(1), new TextEncoder().encode(String(e.message).slice(0, 256))])
    }
    stream.send(frame(resp))
    served++
    await stream.close()
  } catch (e) {
    log(`serving sync to ${connection.remotePeer}: ${e.message}`)
    stream.abort(e)
  }
})

/** GET the ids we lack (in chunks of MAX_GET_IDS) and run each envelope through the pipeline. */
async function fetchIds (peerId, ids) {
  for (let i = 0; i < ids.length; i += P.SYNC.MAX_GET_IDS) {
    const raws = P.decodeGetResponse(await request(peerId, P.encodeGetRequest(ids.slice(i, i + P.SYNC.MAX_GET_IDS))), params.max_message_bytes)
    for (const raw of raws) ingest(raw, 'sync')
  }
}

/** The ids of one bucket that peerId holds and we lack: RANGE, recursing into the parts that differ (8.2). */
async function missingIds (peerId, bucket, lo = new Uint8Array(0), hi = null, depth = 0) {
  const r = P.decodeRangeResponse(await request(peerId, P.encodeRangeRequest(bucket, lo, hi)))
  const mine = taskIds.get(hex(bucket)) ?? []
  if (r.mode === 'ids') return r.ids.filter(id => !store.has(hex(id)))
  if (depth >= 16) throw new Error('sync: range recursion deeper than 16')
  const out = []
  for (const [subLo, subHi, count, fp] of r.parts) {
    const [a, b] = P.rangeSlice(mine, subLo, subHi)
    if (count > 0 && (count !== b - a || !equalBytes(fp, P.computeFingerprint(mine.slice(a, b))))) {
      out.push(...await missingIds(peerId, bucket, subLo, subHi, depth + 1))
    }
  }
  return out
}

// Sync client: learn the tasks we do not hold (SUMMARY, then GET each announcement by its id),
// and the ledger bucket's transfers and votes (RANGE, then GET what differs); withTasks false:
// the ledger bucket only.
async function pullTasks (peerId, withTasks = true) {
  let cursor = new Uint8Array(0)
  for (let page = 0; page < 100; page++) {
    const { rows, next } = P.decodeSummaryResponse(await request(peerId, P.encodeSummaryRequest(cursor, P.SYNC.MAX_SUMMARY_TASKS)))
    const ids = rows.map(r => r[0])
    if (withTasks) await fetchIds(peerId, ids.filter(t => !tasks.has(hex(t)) && hex(t) !== LEDGER_HEX))
    const lrow = rows.find(r => hex(r[0]) === LEDGER_HEX)
    const mine = taskIds.get(LEDGER_HEX) ?? []
    if (lrow && (lrow[1] !== mine.length || !equalBytes(lrow[2], P.computeFingerprint(mine)))) {
      await fetchIds(peerId, await missingIds(peerId, P.LEDGER_BUCKET))
    }
    if (!next) return
    cursor = next
  }
}

/** Does peerId hold message id? (sync GET returns it iff the peer stored it) */
async function peerHolds (peerId, id) {
  const raws = P.decodeGetResponse(await request(peerId, P.encodeGetRequest([id])), params.max_message_bytes)
  return raws.some(r => equalBytes(P.messageId(P.decodeMessage(r, params), NET), id))
}

// ------------------------------------------------------------------ annotating
const pending = []

function onTask (id, task, via) {
  const tid = hex(id)
  const labels = task.schema.labels
  emit('task', { task_id: tid, via, title: task.title, items: task.items.length, labels, deadline_ms: Number(task.deadline) })
  if (annotated.has(tid)) return
  if (BigInt(Date.now()) > BigInt(task.deadline)) { emit('skipped', { task_id: tid, reason: 'deadline passed' }); return }
  unfunded.set(tid, via)
}

/** After a ledger input: every waiting task that is now funded is open for labels (section 16). */
function onLedger (via) {
  for (const [tid, taskVia] of unfunded) {
    if (!ledger.isFunded(tid)) continue
    unfunded.delete(tid)
    const orders = [...ledger.orders].filter(([id, o]) => o.dest_type === 1 && o.dest === tid && ledger.applied.has(id)).map(([id]) => id)
    emit('funded', { task_id: tid, via, bounty: Number(tasks.get(tid).bounty), escrowed: Number(ledger.escrowed.get(tid) ?? 0n), orders })
    annotated.set(tid, { via: taskVia, batchId: null, confirmed: false })
    pending.push(unhex(tid))
  }
}

async function annotate (taskId) {
  const tid = hex(taskId)
  const task = tasks.get(tid)
  const k = task.schema.labels.length
  const n = Math.min(task.items.length, params.max_labels_per_batch)
  const pairs = []
  for (let i = 0; i < n; i++) pairs.push([i, (i + labelOffset) % k]) // items strictly increasing, labels in range
  const body = { kind: P.KIND.BATCH, annotator: account.publicKey, task_id: taskId, created_at: Date.now(), labels: pairs }
  const msg = P.signMessage(body, account, NET)
  const check = ingest(msg.raw, 'local') // our own validator must accept what we publish
  if (check.outcome !== 'ACCEPT') throw new Error(`own batch not valid: ${check.reason}`)
  const topic = topics[P.KIND.BATCH]
  while (true) {
    try {
      const r = await pubsub.publish(topic, msg.raw)
      emit('published', { task_id: tid, batch_id: hex(msg.id), labels: pairs.length, recipients: r.recipients.map(String), topic })
      break
    } catch (e) {
      if (Date.now() > deadlineAt) throw e
      log(`publish: ${e.message}; retrying`)
      await sleep(200)
    }
  }
  annotated.get(tid).batchId = msg.id
}

// ------------------------------------------------------------------ main
const timer = setTimeout(() => { emit('error', { error: 'timeout' }); shutdown(1) }, Math.max(0, deadlineAt - Date.now()))
async function shutdown (code) {
  clearTimeout(timer)
  try { await Promise.race([node.stop(), sleep(3000)]) } catch {}
  process.exit(code)
}
process.on('SIGTERM', () => shutdown(1))
process.on('SIGINT', () => shutdown(1))

try {
  const boots = opt.bootstrap.map(a => multiaddr(a))
  const peers = []
  for (const ma of boots) {
    const conn = await node.dial(ma, { signal: AbortSignal.timeout(10000) })
    peers.push(conn.remotePeer)
  }
  // Tasks posted before we joined come through sync (pulled before we subscribe, so the
  // "via" of each task event tells which path delivered it).
  for (const p of peers) await pullTasks(p)
  for (const topic of Object.values(topics)) pubsub.subscribe(topic)
  // Ready = every topic's mesh holds a bootstrap peer: from now on gossip reaches us directly.
  const bootIds = new Set(peers.map(String))
  while (!Object.values(topics).every(t => pubsub.getMeshPeers(t).some(p => bootIds.has(String(p))))) {
    if (Date.now() > deadlineAt) throw new Error('no gossip mesh with the bootstrap peers')
    await sleep(100)
  }
  emit('ready', {
    peer_id: String(node.peerId),
    account: hex(account.publicKey),
    network_id: hex(NET),
    listen_addrs: node.getMultiaddrs().map(String),
    topics: Object.values(topics),
    tasks_known: tasks.size
  })
  let lastPull = Date.now()
  let lastLedgerPull = lastPull
  while (true) {
    while (pending.length) await annotate(pending.shift())
    for (const [tid, a] of annotated) {
      if (a.batchId && !a.confirmed) {
        const holders = []
        for (const p of peers) if (await peerHolds(p, a.batchId).catch(() => false)) holders.push(String(p))
        if (holders.length === peers.length) {
          a.confirmed = true
          emit('confirmed', { task_id: tid, batch_id: hex(a.batchId), stored_by: holders })
        }
      }
    }
    const done = [...annotated.values()].filter(a => a.confirmed).length
    if (done >= wantTasks) break
    for (const tid of unfunded.keys()) if (BigInt(Date.now()) > BigInt(tasks.get(tid).deadline)) { unfunded.delete(tid); emit('skipped', { task_id: tid, reason: 'deadline passed before the escrow was certified' }) }
    // a task or ledger message that gossip failed to bring: sync repairs (the ledger bucket every
    // second while a task waits for its escrow, everything every 15 s)
    const full = Date.now() - lastPull > 15000
    if (full || (unfunded.size && Date.now() - lastLedgerPull > 1000)) {
      for (const p of peers) await pullTasks(p, full).catch(e => log(`pull: ${e.message}`))
      lastLedgerPull = Date.now()
      if (full) lastPull = lastLedgerPull
    }
    await sleep(100)
  }
  const linger = Number(opt['linger-s']) * 1000
  const ledgerView = { orders: ledger.orders.size, applied: ledger.applied.size, votes: (taskIds.get(LEDGER_HEX) ?? []).length - ledger.orders.size, supply_ok: ledger.checkSupply() }
  emit('done', { tasks: [...annotated.keys()], served_sync_requests: served, lingering_s: linger / 1000, ledger: ledgerView })
  if (linger) await sleep(Math.min(linger, Math.max(0, deadlineAt - Date.now())))
  emit('exit', { served_sync_requests: served })
  await shutdown(0)
} catch (e) {
  emit('error', { error: String(e && e.stack ? e.stack : e) })
  await shutdown(1)
}
