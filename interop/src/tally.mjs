// The tally and the consensus estimator, written from PROTOCOL.md section 10 and
// PROTOCOL-APPENDIX-consensus.md only: from a task's pinned set to its task result and
// result_root; and reputation (section 12) from certified task results. Exact integers
// (BigInt) throughout; slow but small. No I/O here.
import { compareBytes, encode, hex } from './msgpack.mjs'
import { RESULT_ROOT_TAG, computeSetRoot, sha256 } from './protocol.mjs'

// ------------------------------------------------------------------ constants (A.1)
export const ONE = 65536n
const WEIGHT_ONE = 65536n
const PROB_ONE = 1n << 30n
const CONFUSION_PRIOR = 107374182n
const CLASS_PRIOR = 1n << 30n
const ITER = 20
const GOLD_FOLDS = 3
const GOLD_SELECT_MARGIN = 5n << 20n
const TEMPERATURE_STEPS = 32n
const LOG2E_Q32 = 6196328019n
const MODELS = [{ map: false, v: 0n }, { map: true, v: 1n }, { map: false, v: 1n }] // A.6

const bitLength = (x) => x === 0n ? 0 : x.toString(2).length
const min = (a, b) => a < b ? a : b
const max = (a, b) => a > b ? a : b
const maxOf = (xs) => xs.reduce(max)
const sum = (xs) => xs.reduce((a, b) => a + b, 0n)
/** argmax with ties to the lowest index (A.1). */
const argmax = (xs) => { let best = 0; for (let c = 1; c < xs.length; c++) if (xs[c] > xs[best]) best = c; return best }

function isqrt (n) {
  if (n < 2n) return n
  let x = 1n << BigInt(Math.ceil(bitLength(n) / 2))
  for (;;) {
    const y = (x + n / x) >> 1n
    if (y >= x) return x
    x = y
  }
}

// ------------------------------------------------------------------ tables and primitives (A.3)
function buildLT () {
  const out = []
  for (let i = 0; i <= 4096; i++) {
    if (i === 4096) { out.push(1n << 28n); continue }
    let m = (1n << 64n) + (BigInt(i) << 52n)
    let bits = 0n
    for (let r = 0; r < 30; r++) {
      m = (m * m) >> 64n
      bits <<= 1n
      if (m >= (1n << 65n)) { m >>= 1n; bits += 1n }
    }
    out.push((bits + 2n) >> 2n)
  }
  return out
}

function buildExp2 () {
  const c = [null, isqrt(1n << 123n)]
  for (let b = 1; b <= 19; b++) c.push(isqrt(c[b] << 62n))
  const table = (first) => Array.from({ length: 1024 }, (_, a) => {
    let v = 1n << 62n
    for (let j = 0; j < 10; j++) if ((a >> j) & 1) v = (v * c[first + 10 - j]) >> 62n
    return (v + (1n << 31n)) >> 32n
  })
  return [table(0), table(10)]
}

export const LT = buildLT()
export const [EH, EL] = buildExp2()

/** SHA-256 hex of a table written as 8-byte little-endian signed integers (A.3). */
export function tableDigest (t) {
  const b = Buffer.alloc(8 * t.length)
  t.forEach((v, i) => b.writeBigInt64LE(v, 8 * i))
  return hex(sha256(new Uint8Array(b)))
}

export function log2 (x) {
  const e = bitLength(x) - 1
  const m = (e <= 30 ? x << BigInt(30 - e) : x >> BigInt(e - 30)) - (1n << 30n)
  const idx = Number(m >> 18n)
  const rem = m & ((1n << 18n) - 1n)
  return (BigInt(e) << 20n) + ((LT[idx] + (((LT[idx + 1] - LT[idx]) * rem) >> 18n)) >> 8n)
}

export function exp2neg (d) {
  const f = d & ((1n << 20n) - 1n)
  return ((EH[Number(f >> 10n)] * EL[Number(f & 1023n)]) >> 30n) >> min(d >> 20n, 62n)
}

export function psi2 (x) {
  const num = 1n << 50n
  let corr = 0n
  while (x < 4n * PROB_ONE) { corr += num / x; x += PROB_ONE }
  const r = num / x
  const r2 = (r * r) >> 20n
  const r4 = (r2 * r2) >> 20n
  const r6 = (r4 * r2) >> 20n
  corr += (r >> 1n) + r2 / 12n - r4 / 120n + r6 / 252n
  return log2(x) - (30n << 20n) - ((corr * LOG2E_Q32) >> 32n)
}

function norm (row) {
  const top = maxOf(row)
  const u = row.map(s => exp2neg(top - s))
  const total = sum(u)
  return u.map(v => (v << 30n) / total)
}

// ------------------------------------------------------------------ estimators (A.2-A.7)
// input: { n, k, m, votes: [[i, a, l], ...] (one per pair), w: [BigInt], gold: Map(item -> label) }

function finish (inp, label, confidence, accuracy) { // A.7
  const { n, k, votes, w } = inp
  const cnt = Array.from({ length: n }, () => Array(k).fill(0n))
  for (const [i, a, l] of votes) if (w[a] > 0n) cnt[i][l] += 1n
  const agreement = label.map((lab, i) => {
    const mi = sum(cnt[i])
    return lab < 0 || mi === 0n ? 0n : (cnt[i][lab] * ONE) / mi
  })
  return { label, confidence, agreement, accuracy, alpha: alpha(cnt, k) }
}

function alpha (cnt, k) {
  const units = cnt.filter(row => sum(row) >= 2n)
  const N = sum(units.map(sum))
  if (N < 2n) return 0n
  const Nc = Array.from({ length: k }, (_, c) => sum(units.map(row => row[c])))
  const De = N * N - sum(Nc.map(x => x * x))
  if (De === 0n) return ONE
  let D = 0n
  for (const row of units) {
    const mi = sum(row)
    const x = mi * mi - sum(row.map(v => v * v))
    const Q = x / (mi - 1n)
    const R = x - Q * (mi - 1n)
    D += (Q << 32n) + (R << 32n) / (mi - 1n)
  }
  const num = (N - 1n) * D * ONE
  const den = De << 32n
  return ONE - (num + den - 1n) / den // ceil (num >= 0)
}

export function plurality (inp) { // A.4
  const { n, k, m, votes, w, gold } = inp
  const score = Array.from({ length: n }, () => Array(k).fill(0n))
  for (const [i, a, l] of votes) score[i][l] += w[a]
  const label = []
  const confidence = []
  for (let i = 0; i < n; i++) {
    const total = sum(score[i])
    if (total === 0n) { label.push(-1); confidence.push(0n); continue }
    const lab = argmax(score[i])
    const h = BigInt(Math.max(bitLength(total) - 46, 0))
    label.push(lab)
    confidence.push(((score[i][lab] >> h) * ONE) / (total >> h))
  }
  for (const [i, g] of gold) { label[i] = g; confidence[i] = ONE }
  const right = Array(m).fill(0n)
  const cnt = Array(m).fill(0n)
  for (const [i, a, l] of votes) {
    if (label[i] < 0) continue
    cnt[a] += 1n
    if (l === label[i]) right[a] += 1n
  }
  return finish(inp, label, confidence, cnt.map((c, a) => c === 0n ? 0n : (ONE * right[a]) / c))
}

function fit (inp, start0, voted, G, model, bothStarts) { // A.5
  const { n, k, m, votes, w } = inp
  const t = w.map(x => min(x, WEIGHT_ONE))
  const f = model.map ? log2 : psi2
  const evid = voted.map((v, i) => v || G.has(i))
  const nEvid = BigInt(evid.filter(Boolean).length)
  const clamp = (q) => q.map((row, i) => G.has(i)
    ? row.map((_, c) => c === G.get(i) ? PROB_ONE : 0n)
    : evid[i] ? row : Array(k).fill(0n))
  const run = (q) => {
    let S
    for (let step = 0; step <= ITER; step++) {
      const C = Array.from({ length: m }, () => Array.from({ length: k }, () => Array(k).fill(0n)))
      for (const [i, a, l] of votes) for (let c = 0; c < k; c++) C[a][c][l] += q[i][c]
      const pool = Array.from({ length: k }, () => Array(k).fill(0n))
      if (model.v) {
        for (let c = 0; c < k; c++) {
          const Pc = Array.from({ length: k }, (_, l) => sum(C.map(ca => ca[c][l])))
          const T = sum(Pc)
          const h = BigInt(Math.max(bitLength(T) - 52, 0))
          for (let l = 0; l < k; l++) pool[c][l] = ((((Pc[l] >> h) << 10n) / max(T >> h, 1n)) * model.v) << 20n
        }
      }
      const E = C.map((ca, a) => ca.map((row, c) => {
        const A = row.map((x, l) => x + CONFUSION_PRIOR + (c === l ? w[a] << 14n : 0n) + pool[c][l])
        const fs = f(sum(A))
        return A.map(x => f(x) - fs)
      }))
      const N = Array.from({ length: k }, (_, c) => sum(q.map(row => row[c])) + CLASS_PRIOR)
      const fN = psi2(sum(N))
      const P = N.map(x => psi2(x) - fN)
      S = Array.from({ length: n }, () => [...P])
      for (const [i, a, l] of votes) for (let c = 0; c < k; c++) S[i][c] += (E[a][c][l] * t[a]) >> 16n
      if (step === ITER) break
      const q2 = clamp(S.map(norm))
      let change = 0n
      for (let i = 0; i < n; i++) for (let c = 0; c < k; c++) { const d = q2[i][c] - q[i][c]; change += d < 0n ? -d : d }
      if (change <= (nEvid * PROB_ONE) >> 14n) break
      q = q2
    }
    return S
  }
  let S = run(clamp(start0))
  if (bothStarts && G.size) {
    const S2 = run(clamp(Array.from({ length: n }, () => Array(k).fill(0n))))
    let b = 0n; let c = 0n
    for (const [g, y] of G) {
      const alt = argmax(S2[g]) === y
      const base = argmax(S[g]) === y
      if (alt && !base) b++
      if (base && !alt) c++
    }
    if (b > c && (b - c) ** 2n > 4n * (b + c)) S = S2
  }
  return { S, evid, clamp }
}

function selectModel (inp, start0, voted) { // A.6
  const { k, gold } = inp
  const items = [...gold.keys()].sort((x, y) => x - y)
  const L = MODELS.map(model => {
    const H = []
    for (let F = 0; F < GOLD_FOLDS; F++) {
      const hidden = items.filter((_, j) => j % GOLD_FOLDS === F)
      if (!hidden.length) continue
      const G = new Map(items.filter((_, j) => j % GOLD_FOLDS !== F).map(i => [i, gold.get(i)]))
      const { S, evid } = fit(inp, start0, voted, G, model, false)
      for (const g of hidden) H.push([evid[g] ? norm(S[g]) : Array(k).fill(0n), gold.get(g)])
    }
    let best = null
    for (let t = 1n; t <= TEMPERATURE_STEPS; t++) {
      let ll = 0n
      for (const [q, y] of H) {
        const z = q.map(x => ((log2(max(x, 1n)) - (30n << 20n)) * t) >> 4n)
        const top = maxOf(z)
        ll += z[y] - top - (log2(sum(z.map(x => exp2neg(top - x)))) - (30n << 20n))
      }
      if (best === null || ll > best) best = ll
    }
    return best
  })
  const best = argmax(L)
  return L[best] - L[0] > GOLD_SELECT_MARGIN ? best : 0
}

export function consensus (inp) { // A.5, A.6
  const { n, k, m, votes, w, gold } = inp
  const voted = Array(n).fill(false)
  for (const [i, a] of votes) if (w[a] > 0n) voted[i] = true
  const score = Array.from({ length: n }, () => Array(k).fill(0n))
  for (const [i, a, l] of votes) score[i][l] += w[a]
  const start0 = score.map(row => {
    const s = BigInt(Math.max(bitLength(sum(row)) - 33, 0))
    const sc = row.map(x => x >> s)
    const total = max(sum(sc), 1n)
    return sc.map(x => (x << 30n) / total)
  })
  const model = MODELS[gold.size ? selectModel(inp, start0, voted) : 0]
  const { S, evid, clamp } = fit(inp, start0, voted, gold, model, true)
  // the support rule: argmax over the classes the item's effective votes name
  const named = Array.from({ length: n }, () => new Set())
  for (const [i, a, l] of votes) if (w[a] > 0n) named[i].add(l)
  const supported = (row, i) => { let best = -1; for (let c = 0; c < k; c++) if (named[i].has(c) && (best < 0 || row[c] > row[best])) best = c; return best }
  const label = S.map((row, i) => gold.has(i) ? gold.get(i) : evid[i] ? supported(row, i) : -1)
  const q = clamp(S.map(norm))
  const confidence = label.map((lab, i) => lab < 0 ? 0n : q[i][lab] >> 14n)
  const right = Array(m).fill(0n)
  const cnt = Array(m).fill(0n)
  for (const [i, a, l] of votes) {
    if (!evid[i]) continue
    right[a] += q[i][l] >> 14n
    cnt[a] += 1n
  }
  return finish(inp, label, confidence, cnt.map((c, a) => c === 0n ? 0n : right[a] / c))
}

/** Rows (i, a, l) in any order -> { votes: one per pair, equivocations: [[i, a], ...] } (10.1). */
export function canonicalVotes (rows) {
  const seen = new Map()
  for (const [i, a, l] of rows) {
    const key = `${i}/${a}`
    if (!seen.has(key)) seen.set(key, { i, a, labels: new Set() })
    seen.get(key).labels.add(l)
  }
  const votes = []
  const equivocations = []
  for (const { i, a, labels } of seen.values()) {
    if (labels.size === 1) votes.push([i, a, [...labels][0]])
    else equivocations.push([i, a])
  }
  const byPair = (x, y) => x[0] - y[0] || x[1] - y[1]
  return { votes: votes.sort(byPair), equivocations: equivocations.sort(byPair) }
}

/** The encoding of A.8 (test vectors only). */
export const aggregateEncoding = (r) => encode([1, ONE, r.label, r.confidence, r.agreement, r.accuracy, r.alpha])

// ------------------------------------------------------------------ the tally (PROTOCOL.md 10.1-10.5)

export const EQUIVOCATION_PENALTY = 10n // labels' worth of pay (10.4) and of reputation (12) per equivocated item
export const PRIOR_LABELS = 20n // section 12
const floorDiv = (a, b) => { const q = a / b; return (a % b !== 0n && (a < 0n) !== (b < 0n)) ? q - 1n : q }

/**
 * Trust of each annotator (10.4): the mean capped prior weight of the task's other witnesses,
 * the annotators with a counted vote and the requester if a gold reveal is pinned (a set).
 * accounts: hex keys; capped[j], labels[j] per annotator; requester: hex or null (no gold).
 */
function computeTrust (accounts, capped, labels, requester, requesterCapped) {
  const witnesses = new Map()
  accounts.forEach((a, j) => { if (labels[j] >= 1n) witnesses.set(a, capped[j]) })
  if (requester !== null) witnesses.set(requester, requesterCapped)
  return accounts.map(a => {
    const others = [...witnesses].filter(([x]) => x !== a)
    return others.length ? sum(others.map(([, c]) => c)) / BigInt(others.length) : 0n
  })
}

/**
 * task: a decoded TaskAnnouncement body; batches: [{ id, body }] (AnnotationBatch bodies);
 * gold: { id, body } of the pinned GoldReveal or null; weightOf(accountHex) -> BigInt prior weight;
 * feeBps: the genesis' ledger_fee_bps.
 * Returns { result (the array of 10.5), bytes, resultRoot, setRoot, fee, rewards }.
 */
export function computeTaskResult (taskId, task, batches, gold, weightOf, feeBps = 0) {
  const n = task.items.length
  const k = task.schema.labels.length
  const accounts = [...new Map(batches.map(b => [hex(b.body.annotator), b.body.annotator])).values()].sort(compareBytes)
  const index = new Map(accounts.map((a, j) => [hex(a), j]))
  const rows = []
  for (const b of batches) for (const [i, l] of b.body.labels) rows.push([Number(i), index.get(hex(b.body.annotator)), Number(l)])
  const { votes, equivocations } = canonicalVotes(rows)
  const cap = (a) => min(max(BigInt(weightOf(a)), 0n), ONE)
  const capped = accounts.map(a => cap(hex(a)))
  const top = capped.length ? maxOf(capped) : 0n
  const w = capped.map(c => top === 0n ? 0n : (c * ONE) / top)
  const goldMap = new Map((gold ? gold.body.answers : []).map(([i, l]) => [Number(i), Number(l)]))
  const inp = { n, k, m: accounts.length, votes, w, gold: goldMap }
  const res = votes.length ? consensus(inp) : plurality(inp)
  const nVotes = Array(n).fill(0)
  const labels = Array(accounts.length).fill(0n)
  const score = Array(accounts.length).fill(0n)
  for (const [i, a, l] of votes) {
    nVotes[i]++
    labels[a] += 1n
    if (goldMap.has(i)) score[a] += l === goldMap.get(i) ? ONE : 0n
    else score[a] += l === res.label[i] ? res.confidence[i] : 0n
  }
  const eqCount = Array(accounts.length).fill(0)
  for (const [, a] of equivocations) eqCount[a]++
  // 10.4: pay nets out chance (1/k of the labels) and ten labels' worth per equivocated item
  const pay = score.map((s, a) => max(0n, s - (labels[a] * ONE) / BigInt(k) - EQUIVOCATION_PENALTY * ONE * BigInt(eqCount[a])))
  const total = sum([0n, ...pay])
  const bounty = BigInt(task.bounty)
  const fee = (bounty * BigInt(feeBps)) / 10000n
  const net = bounty - fee
  const reward = pay.map(p => total === 0n ? 0n : (net * p) / total)
  const refund = net - sum([0n, ...reward])
  const requester = gold ? hex(task.requester) : null
  const trust = computeTrust(accounts.map(hex), capped, labels, requester, requester && cap(requester))
  const eqList = equivocations.map(([i, a]) => [accounts[a], i])
    .sort((x, y) => compareBytes(x[0], y[0]) || x[1] - y[1])
  const pinned = batches.map(b => b.id).concat(gold ? [gold.id] : [])
  const setRoot = computeSetRoot(taskId, pinned)
  const result = [taskId, setRoot, res.label, res.confidence, res.agreement, nVotes,
    accounts.map((a, j) => [a, labels[j], eqCount[j], res.accuracy[j], score[j], reward[j], trust[j]]),
    eqList, res.alpha, refund, goldMap.size, fee]
  const bytes = encode(result)
  const rewards = accounts.map((a, j) => [a, reward[j]]).filter(([, r]) => r > 0n)
  return { result, bytes, setRoot, resultRoot: sha256(RESULT_ROOT_TAG, bytes), fee, refund, rewards }
}

// ------------------------------------------------------------------ reputation (PROTOCOL.md 12)

/**
 * Earned reputation per "accountHex/domain" from the certified task results in the window
 * (section 12): outcomes = [{ domain, n_classes, annotators: [{ account, labels, score,
 * equivocations, trust }] }], each task once. Returns Map("account/domain" -> BigInt).
 */
export function earnedReputation (outcomes) {
  const acc = new Map()
  for (const o of outcomes) {
    const k = BigInt(Math.max(o.n_classes, 1))
    for (const a of o.annotators) {
      const key = `${a.account}/${o.domain}`
      const v = acc.get(key) ?? { gain: 0n, labels: 0n, eq: 0n }
      const excess = BigInt(a.score) - (BigInt(a.labels) * ONE) / k
      v.gain += floorDiv(excess * BigInt(a.trust), ONE) // floor toward -inf for a negative excess
      v.labels += BigInt(a.labels)
      v.eq += BigInt(a.equivocations)
      acc.set(key, v)
    }
  }
  const earned = new Map()
  for (const [key, v] of acc) earned.set(key, max(0n, v.gain - EQUIVOCATION_PENALTY * ONE * v.eq) / (v.labels + PRIOR_LABELS))
  return earned
}

/**
 * weight(a, d) = min(max_weight, max(fresh_weight, earned(a, d) + G(a, d))) (section 12), where
 * G counts each genesis entry [account, domain, weight] of domain d or "" once.
 */
export function reputationWeight (accountHex, domain, earned, genesisReputation, params) {
  let x = earned.get(`${accountHex}/${domain}`) ?? 0n
  for (const [a, d, w] of genesisReputation) if (a === accountHex && (d === '' || d === domain)) x += BigInt(w)
  return min(BigInt(params.max_weight), max(BigInt(params.fresh_weight), x))
}
