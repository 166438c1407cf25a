// Ed25519 with libsodium's verification rules (PROTOCOL.md section 3), on node:crypto.
//
// node:crypto (OpenSSL) already refuses S >= L; libsodium also refuses small-order
// R and A and a non-canonical A, which we check before calling OpenSSL.
import crypto from 'node:crypto'
import { concat, unhex } from './msgpack.mjs'

const PKCS8_PREFIX = unhex('302e020100300506032b657004220420')
const SPKI_PREFIX = unhex('302a300506032b6570032100')

const SMALL_ORDER = [
  '0000000000000000000000000000000000000000000000000000000000000000',
  '0100000000000000000000000000000000000000000000000000000000000000',
  '26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05',
  'c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a',
  'ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f',
  'edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f',
  'eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f'
].map(unhex)

const L = 2n ** 252n + 27742317777372353535851937790883648493n

function hasSmallOrder (p) {
  return SMALL_ORDER.some(s => {
    for (let i = 0; i < 31; i++) if (p[i] !== s[i]) return false
    return (p[31] & 0x7f) === s[31]
  })
}

function isCanonicalPoint (p) { // y < 2^255 - 19, sign bit ignored
  if ((p[31] & 0x7f) !== 0x7f) return true
  for (let i = 30; i >= 1; i--) if (p[i] !== 0xff) return true
  return p[0] < 0xed
}

function scalarIsReduced (s) {
  let v = 0n
  for (let i = 31; i >= 0; i--) v = (v << 8n) | BigInt(s[i])
  return v < L
}

/** { seed, publicKey, privateKey (KeyObject) } from a 32-byte seed. */
export function keyFromSeed (seed) {
  if (seed.length !== 32) throw new Error('an ed25519 seed is 32 bytes')
  const privateKey = crypto.createPrivateKey({ key: Buffer.from(concat([PKCS8_PREFIX, seed])), format: 'der', type: 'pkcs8' })
  const spki = crypto.createPublicKey(privateKey).export({ format: 'der', type: 'spki' })
  return { seed, publicKey: new Uint8Array(spki.subarray(spki.length - 32)), privateKey }
}

export function sign (key, message) {
  return new Uint8Array(crypto.sign(null, Buffer.from(message), key.privateKey))
}

/** True iff sig is a valid signature of message by publicKey under libsodium's rules. */
export function verify (publicKey, message, sig) {
  if (publicKey.length !== 32 || sig.length !== 64) return false
  const R = sig.subarray(0, 32)
  if (!scalarIsReduced(sig.subarray(32)) || hasSmallOrder(R)) return false
  if (!isCanonicalPoint(publicKey) || hasSmallOrder(publicKey)) return false
  try {
    const pk = crypto.createPublicKey({ key: Buffer.from(concat([SPKI_PREFIX, publicKey])), format: 'der', type: 'spki' })
    return crypto.verify(null, Buffer.from(message), pk, Buffer.from(sig))
  } catch {
    return false // not a point on the curve
  }
}

/** The bare RFC 8032 check of node:crypto, without libsodium's extra rules (for the vectors' demonstration). */
export function verifyOpenSSLOnly (publicKey, message, sig) {
  try {
    const pk = crypto.createPublicKey({ key: Buffer.from(concat([SPKI_PREFIX, publicKey])), format: 'der', type: 'spki' })
    return crypto.verify(null, Buffer.from(message), pk, Buffer.from(sig))
  } catch {
    return false
  }
}
