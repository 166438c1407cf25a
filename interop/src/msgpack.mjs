// Canonical msgpack (PROTOCOL.md section 2): one encoding per value.
//
// Values: integers (Number when |v| <= 2^53 - 1, BigInt otherwise; both accepted by
// encode), Uint8Array (bin), string (str, UTF-8), Array, null (nil), boolean.
// decode() refuses maps, floats, ext types, trailing bytes, anything over its limits
// (checked before allocating), nesting deeper than 8, and every non-canonical
// encoding (it re-encodes and compares).

export class DecodeError extends Error {}

const utf8 = new TextEncoder()
const utf8Strict = new TextDecoder('utf-8', { fatal: true })

function concat (parts) {
  let n = 0
  for (const p of parts) n += p.length
  const out = new Uint8Array(n)
  let o = 0
  for (const p of parts) { out.set(p, o); o += p.length }
  return out
}

function uintBytes (v, n) { // big-endian, v a BigInt
  const out = new Uint8Array(n)
  for (let i = n - 1; i >= 0; i--) { out[i] = Number(v & 0xffn); v >>= 8n }
  return out
}

function encodeInt (v) {
  const b = BigInt(v)
  if (b >= 0n) {
    if (b < 128n) return Uint8Array.of(Number(b))
    if (b < 0x100n) return Uint8Array.of(0xcc, Number(b))
    if (b < 0x10000n) return concat([Uint8Array.of(0xcd), uintBytes(b, 2)])
    if (b < 0x100000000n) return concat([Uint8Array.of(0xce), uintBytes(b, 4)])
    if (b < 0x10000000000000000n) return concat([Uint8Array.of(0xcf), uintBytes(b, 8)])
    throw new RangeError('integer does not fit in 64 bits')
  }
  if (b >= -32n) return Uint8Array.of(Number(b) & 0xff)
  if (b >= -0x80n) return concat([Uint8Array.of(0xd0), uintBytes(b & 0xffn, 1)])
  if (b >= -0x8000n) return concat([Uint8Array.of(0xd1), uintBytes(b & 0xffffn, 2)])
  if (b >= -0x80000000n) return concat([Uint8Array.of(0xd2), uintBytes(b & 0xffffffffn, 4)])
  if (b >= -0x8000000000000000n) return concat([Uint8Array.of(0xd3), uintBytes(b & 0xffffffffffffffffn, 8)])
  throw new RangeError('integer does not fit in 64 bits')
}

function lenHeader (n, fix, fixMax, c8, c16, c32) {
  if (fix !== null && n <= fixMax) return Uint8Array.of(fix | n)
  if (c8 !== null && n < 0x100) return Uint8Array.of(c8, n)
  if (n < 0x10000) return Uint8Array.of(c16, n >> 8, n & 0xff)
  return concat([Uint8Array.of(c32), uintBytes(BigInt(n), 4)])
}

function encodeParts (v, parts) {
  if (v === null || v === undefined) { parts.push(Uint8Array.of(0xc0)); return }
  if (v === false) { parts.push(Uint8Array.of(0xc2)); return }
  if (v === true) { parts.push(Uint8Array.of(0xc3)); return }
  if (typeof v === 'bigint') { parts.push(encodeInt(v)); return }
  if (typeof v === 'number') {
    if (!Number.isSafeInteger(v)) throw new TypeError(`not an integer (floats are not allowed): ${v}`)
    parts.push(encodeInt(v)); return
  }
  if (typeof v === 'string') {
    const b = utf8.encode(v)
    parts.push(lenHeader(b.length, 0xa0, 31, 0xd9, 0xda, 0xdb), b); return
  }
  if (v instanceof Uint8Array) {
    parts.push(lenHeader(v.length, null, 0, 0xc4, 0xc5, 0xc6), v); return
  }
  if (Array.isArray(v)) {
    parts.push(lenHeader(v.length, 0x90, 15, null, 0xdc, 0xdd))
    for (const x of v) encodeParts(x, parts)
    return
  }
  throw new TypeError(`cannot encode ${typeof v} in canonical msgpack`)
}

/** Canonical encoding of v. */
export function encode (v) {
  const parts = []
  encodeParts(v, parts)
  return concat(parts)
}

export const MAX_DEPTH = 8

/**
 * Decode canonical msgpack with explicit limits:
 * { maxBytes, maxArray, maxBin, maxStr } (elements / bytes). Throws DecodeError.
 */
export function decode (data, { maxBytes, maxArray, maxBin, maxStr }) {
  if (!(data instanceof Uint8Array)) throw new DecodeError('message must be bytes')
  if (data.length > maxBytes) throw new DecodeError(`message is ${data.length} bytes; the limit is ${maxBytes}`)
  if (data.length === 0) throw new DecodeError('message is empty')
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength)
  let pos = 0
  const need = (n) => { if (pos + n > data.length) throw new DecodeError('malformed msgpack: incomplete input') }
  const u = (n) => {
    need(n)
    let v = 0n
    for (let i = 0; i < n; i++) v = (v << 8n) | BigInt(data[pos + i])
    pos += n
    return v
  }
  const num = (b) => (b >= -9007199254740991n && b <= 9007199254740991n) ? Number(b) : b
  const str = (n) => {
    if (n > maxStr) throw new DecodeError(`malformed msgpack: ${n} exceeds max_str_len(${maxStr})`)
    need(n)
    let s
    try { s = utf8Strict.decode(data.subarray(pos, pos + n)) } catch { throw new DecodeError('malformed msgpack: invalid UTF-8') }
    pos += n
    return s
  }
  const bin = (n) => {
    if (n > maxBin) throw new DecodeError(`malformed msgpack: ${n} exceeds max_bin_len(${maxBin})`)
    need(n)
    const b = data.slice(pos, pos + n)
    pos += n
    return b
  }
  const arr = (n, depth) => {
    if (n > maxArray) throw new DecodeError(`malformed msgpack: ${n} exceeds max_array_len(${maxArray})`)
    if (depth > MAX_DEPTH) throw new DecodeError(`nesting deeper than ${MAX_DEPTH}`)
    const out = []
    for (let i = 0; i < n; i++) out.push(value(depth + 1))
    return out
  }
  const value = (depth) => {
    need(1)
    const t = data[pos++]
    if (t <= 0x7f) return t
    if (t >= 0xe0) return t - 0x100
    if (t >= 0xa0 && t <= 0xbf) return str(t & 0x1f)
    if (t >= 0x90 && t <= 0x9f) return arr(t & 0x0f, depth)
    if (t >= 0x80 && t <= 0x8f) throw new DecodeError('malformed msgpack: maps are not allowed')
    switch (t) {
      case 0xc0: return null
      case 0xc2: return false
      case 0xc3: return true
      case 0xc4: return bin(Number(u(1)))
      case 0xc5: return bin(Number(u(2)))
      case 0xc6: return bin(Number(u(4)))
      case 0xca: case 0xcb: throw new DecodeError('floats are not allowed in labelmesh messages')
      case 0xcc: return num(u(1))
      case 0xcd: return num(u(2))
      case 0xce: return num(u(4))
      case 0xcf: return num(u(8))
      case 0xd0: need(1); pos += 1; return view.getInt8(pos - 1)
      case 0xd1: need(2); pos += 2; return view.getInt16(pos - 2)
      case 0xd2: need(4); pos += 4; return view.getInt32(pos - 4)
      case 0xd3: need(8); pos += 8; return num(view.getBigInt64(pos - 8))
      case 0xd9: return str(Number(u(1)))
      case 0xda: return str(Number(u(2)))
      case 0xdb: return str(Number(u(4)))
      case 0xdc: return arr(Number(u(2)), depth)
      case 0xdd: return arr(Number(u(4)), depth)
      case 0xde: case 0xdf: throw new DecodeError('malformed msgpack: maps are not allowed')
      default: throw new DecodeError(`malformed msgpack: type byte 0x${t.toString(16)} is not allowed`)
    }
  }
  const v = value(0)
  if (pos !== data.length) throw new DecodeError('trailing bytes after the message')
  if (!equalBytes(encode(v), data)) throw new DecodeError('non-canonical encoding (re-encoding gives different bytes)')
  return v
}

export function equalBytes (a, b) {
  if (a.length !== b.length) return false
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false
  return true
}

export function compareBytes (a, b) {
  const n = Math.min(a.length, b.length)
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return a[i] - b[i]
  return a.length - b.length
}

export const hex = (b) => Buffer.from(b).toString('hex')
export const unhex = (s) => new Uint8Array(Buffer.from(s, 'hex'))
export { concat }
