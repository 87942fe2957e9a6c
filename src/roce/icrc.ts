/**
 * The Invariant CRC (IBA 7.8.1, RoCEv2 Annex A17.3.3, rxe_icrc.c).
 *
 * ICRC = CRC-32 (IEEE 802.3 / zlib) over:
 *   8 bytes of 0xFF                (the absent LRH, fully masked)
 *   the network header, masked     IPv4: TOS, TTL, header checksum → 1s
 *                                  IPv6 / RoCEv1 GRH: TClass, Flow Label, Hop Limit → 1s
 *   RoCEv2 only: the UDP header    checksum → 1s
 *   the BTH                        byte 4 (FECN, BECN, resv6a) → 1s
 *   the rest of the IB packet      extended headers, payload and pad, as sent
 * and goes on the wire least-significant byte first.
 *
 * Note what is *not* masked for IPv4: the Identification and the flags /
 * fragment offset. A sender must know the ID the kernel puts on its datagram
 * (IP_PMTUDISC_DO gives ID 0), and a receiver behind a UDP socket never sees
 * it. Where the real header can be read (a raw socket, native-link.ts) the check
 * is the full CRC-32 (`checkIcrcV4` with a known ID). Otherwise the ICRC is
 * linear in the ID bits, so the ID that makes the CRC match can be solved for
 * (`inferIpv4IdDf`), and `Ipv4IdWindow` accepts it only if Linux's ID counter
 * could have produced it. See the README, "ICRC outcomes", for what each way
 * guarantees.
 *
 * Hot path: the masked pseudo-header is built in a preallocated scratch
 * buffer; the CRC then continues over the packet in place.
 */
import { monoMs } from './clock.js';
import { putU32 } from './wire/bytes.js';
import * as zlib from 'node:zlib';

// ---------------------------------------------------------------- CRC-32 ---

const TABLE = new Int32Array(256 * 8);
for (let n = 0; n < 256; n++) {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  TABLE[n] = c;
}
for (let n = 0; n < 256; n++) {
  let c = TABLE[n]!;
  for (let k = 1; k < 8; k++) {
    c = TABLE[c & 0xff]! ^ (c >>> 8);
    TABLE[k * 256 + n] = c;
  }
}

/**
 * Slicing-by-8 CRC-32 over buf[off, end), chained like zlib.crc32(data, crc), as a signed 32-bit
 * value. The ICRC's own path uses this form: a CRC of 2^31 or more as a JS number is a heap number
 * (a small integer is at most 2^31 - 1), and one per packet returned from a call that was not
 * inlined filled the young generation (issue 15's heap check; the ACKs a responder builds).
 * `crc` may be given in either form.
 */
function crc32S(crc: number, buf: Uint8Array, off: number, end: number): number {
  const T = TABLE;
  let c = ~crc;
  while (off + 8 <= end) {
    c ^= buf[off]! | (buf[off + 1]! << 8) | (buf[off + 2]! << 16) | (buf[off + 3]! << 24);
    const hi = buf[off + 4]! | (buf[off + 5]! << 8) | (buf[off + 6]! << 16) | (buf[off + 7]! << 24);
    c =
      T[1792 + (c & 0xff)]! ^
      T[1536 + ((c >>> 8) & 0xff)]! ^
      T[1280 + ((c >>> 16) & 0xff)]! ^
      T[1024 + (c >>> 24)]! ^
      T[768 + (hi & 0xff)]! ^
      T[512 + ((hi >>> 8) & 0xff)]! ^
      T[256 + ((hi >>> 16) & 0xff)]! ^
      T[hi >>> 24]!;
    off += 8;
  }
  while (off < end) c = T[(c ^ buf[off++]!) & 0xff]! ^ (c >>> 8);
  return ~c;
}

/** Slicing-by-8 CRC-32 over buf[off, end), chained like zlib.crc32(data, crc). */
export function crc32Js(crc: number, buf: Uint8Array, off: number, end: number): number {
  return crc32S(crc, buf, off, end) >>> 0;
}

type ZlibCrc = (data: Uint8Array, value?: number) => number;
const zcrc: ZlibCrc | undefined = (zlib as unknown as { crc32?: ZlibCrc }).crc32;

/**
 * Runs at or above this many bytes go to zlib's native CRC (about 3x faster
 * than the JS tables on 4 KiB, bench/wire.bench), at the price of one
 * subarray object; shorter runs stay in JS, allocation-free.
 */
let ZLIB_MIN = 256;
export function setZlibThreshold(n: number): void {
  ZLIB_MIN = n;
}
export const hasNativeCrc = zcrc !== undefined;

/** CRC-32 over buf[off, end), chained: crc32(b, crc32(a)) === crc32(a ‖ b). */
export function crc32(crc: number, buf: Uint8Array, off: number, end: number): number {
  if (zcrc !== undefined && end - off >= ZLIB_MIN) return zcrc(buf.subarray(off, end), crc);
  return crc32Js(crc, buf, off, end);
}

// ------------------------------------------------------------------ ICRC ---

/** CRC state after the 8 masked LRH bytes (rxe seeds crc32_le with 0xDEBB20E3, the same thing). */
export const ICRC_SEED = crc32Js(0, new Uint8Array(8).fill(0xff), 0, 8);

const BTH_LEN = 12;
/** Masked IPv4(20) + UDP(8) + BTH(12). */
const scratch4 = new Uint8Array(40);
/** Masked IPv6(40) + UDP(8) + BTH(12). */
const scratch6 = new Uint8Array(60);
/** Masked GRH(40) + BTH(12). */
const scratch1 = new Uint8Array(52);

function copyMaskedBth(dst: Uint8Array, at: number, buf: Uint8Array, bthOff: number): void {
  for (let i = 0; i < BTH_LEN; i++) dst[at + i] = buf[bthOff + i]!;
  dst[at + 4] = 0xff;
}

/** The ICRC, signed (see crc32S), from the masked pseudo-header in `scr` and the packet after its BTH. */
function finish(scr: Uint8Array, buf: Uint8Array, bthOff: number, icrcOff: number): number {
  const c = crc32S(ICRC_SEED, scr, 0, scr.length);
  const off = bthOff + BTH_LEN;
  if (zcrc !== undefined && icrcOff - off >= ZLIB_MIN) return zcrc(buf.subarray(off, icrcOff), c >>> 0) | 0;
  return crc32S(c, buf, off, icrcOff);
}

/**
 * RoCEv2 over IPv4, from a frame that holds the IPv4 header (20 bytes, no
 * options) at ipOff, the UDP header right after it, and the BTH at bthOff.
 * `icrcOff` is where the ICRC sits (end of the IB packet − 4).
 */
export function icrcV2Ipv4(buf: Uint8Array, ipOff: number, bthOff: number, icrcOff: number): number {
  const s = scratch4;
  for (let i = 0; i < 28; i++) s[i] = buf[ipOff + i]!;
  s[1] = 0xff; // TOS
  s[8] = 0xff; // TTL
  s[10] = 0xff;
  s[11] = 0xff; // header checksum
  s[26] = 0xff;
  s[27] = 0xff; // UDP checksum
  copyMaskedBth(s, 28, buf, bthOff);
  return finish(s, buf, bthOff, icrcOff) >>> 0;
}

/** RoCEv2 over IPv6: the IPv6 header at ipOff, UDP after it, BTH at bthOff. */
export function icrcV2Ipv6(buf: Uint8Array, ipOff: number, bthOff: number, icrcOff: number): number {
  const s = scratch6;
  for (let i = 0; i < 48; i++) s[i] = buf[ipOff + i]!;
  s[0] = 0x6f;
  s[1] = 0xff;
  s[2] = 0xff;
  s[3] = 0xff; // version kept, TClass + Flow Label masked
  s[7] = 0xff; // hop limit
  s[46] = 0xff;
  s[47] = 0xff; // UDP checksum
  copyMaskedBth(s, 48, buf, bthOff);
  return finish(s, buf, bthOff, icrcOff) >>> 0;
}

/** RoCEv1: the GRH at grhOff, the BTH right after it. Masking as for IPv6 (IBA 7.8.1). */
export function icrcV1(buf: Uint8Array, grhOff: number, icrcOff: number): number {
  const s = scratch1;
  for (let i = 0; i < 40; i++) s[i] = buf[grhOff + i]!;
  s[0] = s[0]! | 0x0f;
  s[1] = 0xff;
  s[2] = 0xff;
  s[3] = 0xff; // IPVer kept, TClass + Flow Label masked
  s[7] = 0xff; // HopLmt
  copyMaskedBth(s, 40, buf, grhOff + 40);
  return finish(s, buf, grhOff + 40, icrcOff) >>> 0;
}

function putU16(s: Uint8Array, o: number, v: number): void {
  s[o] = (v >>> 8) & 0xff;
  s[o + 1] = v & 0xff;
}

/**
 * RoCEv2/IPv4 ICRC for an IB packet held alone (BTH at bthOff … ICRC at
 * icrcOff), with the IP and UDP headers described by parameters: what a UDP
 * socket sender computes before the kernel adds the headers, and what a UDP
 * socket receiver can rebuild. `id` and `flagsFrag` are the 16-bit IPv4 words
 * (DF alone = 0x4000). Signed (crc32S): the send path writes it with writeIcrc, which takes either
 * form; icrcV2Ipv4Parts gives it unsigned.
 */
export function icrcV2Ipv4PartsS(
  srcIp: number,
  dstIp: number,
  id: number,
  flagsFrag: number,
  srcPort: number,
  dstPort: number,
  buf: Uint8Array,
  bthOff: number,
  icrcOff: number,
): number {
  const s = scratch4;
  const ibLen = icrcOff + 4 - bthOff;
  s[0] = 0x45;
  s[1] = 0xff;
  putU16(s, 2, 28 + ibLen);
  putU16(s, 4, id);
  putU16(s, 6, flagsFrag);
  s[8] = 0xff;
  s[9] = 17;
  s[10] = 0xff;
  s[11] = 0xff;
  putU32(s, 12, srcIp);
  putU32(s, 16, dstIp);
  putU16(s, 20, srcPort);
  putU16(s, 22, dstPort);
  putU16(s, 24, 8 + ibLen);
  s[26] = 0xff;
  s[27] = 0xff;
  copyMaskedBth(s, 28, buf, bthOff);
  return finish(s, buf, bthOff, icrcOff);
}

/** RoCEv2/IPv6 ICRC from parts (16-byte addresses), signed. IPv6 has no ID: fully checkable from a socket. */
export function icrcV2Ipv6PartsS(src: Uint8Array, dst: Uint8Array, srcPort: number, dstPort: number, buf: Uint8Array, bthOff: number, icrcOff: number): number {
  const s = scratch6;
  const ibLen = icrcOff + 4 - bthOff;
  s[0] = 0x6f;
  s[1] = 0xff;
  s[2] = 0xff;
  s[3] = 0xff;
  putU16(s, 4, 8 + ibLen);
  s[6] = 17;
  s[7] = 0xff;
  for (let i = 0; i < 16; i++) {
    s[8 + i] = src[i]!;
    s[24 + i] = dst[i]!;
  }
  putU16(s, 40, srcPort);
  putU16(s, 42, dstPort);
  putU16(s, 44, 8 + ibLen);
  s[46] = 0xff;
  s[47] = 0xff;
  copyMaskedBth(s, 48, buf, bthOff);
  return finish(s, buf, bthOff, icrcOff);
}

/** icrcV2Ipv4PartsS as an unsigned 32-bit value (the ICRC as readIcrc reads it). */
export function icrcV2Ipv4Parts(
  srcIp: number,
  dstIp: number,
  id: number,
  flagsFrag: number,
  srcPort: number,
  dstPort: number,
  buf: Uint8Array,
  bthOff: number,
  icrcOff: number,
): number {
  return icrcV2Ipv4PartsS(srcIp, dstIp, id, flagsFrag, srcPort, dstPort, buf, bthOff, icrcOff) >>> 0;
}

/** icrcV2Ipv6PartsS as an unsigned 32-bit value. */
export function icrcV2Ipv6Parts(src: Uint8Array, dst: Uint8Array, srcPort: number, dstPort: number, buf: Uint8Array, bthOff: number, icrcOff: number): number {
  return icrcV2Ipv6PartsS(src, dst, srcPort, dstPort, buf, bthOff, icrcOff) >>> 0;
}

/** The ICRC as stored in the packet (little-endian on the wire). */
export function readIcrc(buf: Uint8Array, icrcOff: number): number {
  return readIcrcS(buf, icrcOff) >>> 0;
}
/** readIcrc, signed: to compare with the ...S functions' results without a heap number (see crc32S). */
export function readIcrcS(buf: Uint8Array, icrcOff: number): number {
  return buf[icrcOff]! | (buf[icrcOff + 1]! << 8) | (buf[icrcOff + 2]! << 16) | (buf[icrcOff + 3]! << 24);
}
export function writeIcrc(buf: Uint8Array, icrcOff: number, crc: number): void {
  buf[icrcOff] = crc & 0xff;
  buf[icrcOff + 1] = (crc >>> 8) & 0xff;
  buf[icrcOff + 2] = (crc >>> 16) & 0xff;
  buf[icrcOff + 3] = (crc >>> 24) & 0xff;
}

// ------------------------------------------- IPv4 ID recovery from a CRC ---

/**
 * For a CRC input of a given length, the effect of each unknown bit (16 ID
 * bits, then DF) on the final CRC, reduced to an XOR basis (Gaussian
 * elimination over GF(2)). Entry layout: [count, vec0, comb0, vec1, comb1, …]
 * where comb is the set of unknown bits that vector stands for.
 * The CRC is affine, so for two inputs of equal length
 * crc(a) ^ crc(b) = L(a ^ b): only the bit position relative to the end matters.
 */
const basisCache = new Map<number, Int32Array>();
const BASIS_CACHE_MAX = 8192;
let zeros = new Uint8Array(0);

function idBasis(tail: number): Int32Array {
  let b = basisCache.get(tail);
  if (b !== undefined) return b;
  if (zeros.length < tail) zeros = new Uint8Array(tail + 1024);
  const base = crc32(0, zeros, 0, tail);
  b = new Int32Array(1 + 17 * 2);
  let n = 0;
  for (let j = 0; j < 17; j++) {
    // ID is big-endian in bytes 0-1 of the tail; DF is bit 6 of byte 2.
    const byte = j < 8 ? 1 : j < 16 ? 0 : 2;
    const bit = j < 16 ? 1 << (j & 7) : 0x40;
    zeros[byte] = bit;
    let v = crc32(0, zeros, 0, tail) ^ base;
    zeros[byte] = 0;
    let comb = 1 << j;
    for (let k = 0; k < n; k++) {
      const bv = b[1 + 2 * k]!;
      const pivot = bv & -bv; // lowest set bit as the pivot
      if (v & pivot) {
        v ^= bv;
        comb ^= b[2 + 2 * k]!;
      }
    }
    if (v !== 0) {
      b[1 + 2 * n] = v;
      b[2 + 2 * n] = comb;
      n++;
    }
  }
  b[0] = n;
  if (basisCache.size >= BASIS_CACHE_MAX) basisCache.clear();
  basisCache.set(tail, b);
  return b;
}

/** Per CRC tail length, the raw effect of each of the 16 IPv4 ID bits on the ICRC. */
const idVecCache = new Map<number, Int32Array>();

/**
 * What changing a RoCEv2/IPv4 packet's IPv4 ID from 0 to `id` does to its
 * ICRC: XOR this into the ICRC computed for ID 0. `tail` is the length of
 * the CRC input from the ID field on: the rest of the IPv4 header (16), UDP
 * (8) and the IB packet without its ICRC, so a datagram of n bytes (BTH ..
 * ICRC) has tail n + 20 (as in inferIpv4Id). Used for UDP GSO, whose
 * segments the kernel numbers 0, 1, 2, ...
 */
export function icrcIdDelta(tail: number, id: number): number {
  let v = idVecCache.get(tail);
  if (v === undefined) {
    if (zeros.length < tail) zeros = new Uint8Array(tail + 1024);
    const base = crc32(0, zeros, 0, tail);
    v = new Int32Array(16);
    for (let j = 0; j < 16; j++) {
      const byte = j < 8 ? 1 : 0;
      zeros[byte] = 1 << (j & 7);
      v[j] = crc32(0, zeros, 0, tail) ^ base;
      zeros[byte] = 0;
    }
    if (idVecCache.size >= BASIS_CACHE_MAX) idVecCache.clear();
    idVecCache.set(tail, v);
  }
  let d = 0;
  for (let j = 0; id !== 0; j++, id >>>= 1) if (id & 1) d ^= v[j]!;
  return d >>> 0;
}

/**
 * For a RoCEv2/IPv4 packet received on a UDP socket (no IP header at hand):
 * finds the IPv4 ID and DF bit under which the received ICRC is correct.
 * Returns `id | df << 16`, or -1 if no ID explains the ICRC (the packet is bad).
 */
export function inferIpv4Id(srcIp: number, dstIp: number, srcPort: number, dstPort: number, buf: Uint8Array, bthOff: number, icrcOff: number): number {
  const received = readIcrcS(buf, icrcOff);
  const c0 = icrcV2Ipv4PartsS(srcIp, dstIp, 0, 0x4000, srcPort, dstPort, buf, bthOff, icrcOff);
  let d = c0 ^ received;
  if (d === 0) return 0x10000;
  // CRC input from the ID field to the end: 16 more IPv4 bytes, UDP, the IB packet.
  const tail = 16 + 8 + (icrcOff - bthOff);
  const b = idBasis(tail);
  let comb = 0;
  for (let k = 0, n = b[0]!; k < n; k++) {
    const bv = b[1 + 2 * k]!;
    if (d & (bv & -bv)) {
      d ^= bv;
      comb ^= b[2 + 2 * k]!;
    }
  }
  if (d !== 0) return -1;
  const id = comb & 0xffff;
  const df = ((comb >>> 16) & 1) ^ 1;
  return id | (df << 16);
}

// ------------------------------------------------ the receive-side check ---

/**
 * Like inferIpv4Id with DF fixed to 1: the ID in 0..0xffff under which the
 * received ICRC is correct for a DF datagram, or -1. Every RoCEv2/IPv4 sender
 * sets DF (rxe prepare_ipv4_hdr; Linux UDP with IP_PMTUDISC_DO or _WANT), and
 * fixing it matters: the 16 ID-bit syndromes alone contain no single-bit
 * error syndrome of any IB packet up to 4200 bytes, while with DF as a 17th
 * unknown, a flip of byte 173 bit 3 or byte 1834 bit 6 is absorbed
 * (test/roce/icrc-corruption.test.ts checks both facts exhaustively).
 */
export function inferIpv4IdDf(srcIp: number, dstIp: number, srcPort: number, dstPort: number, buf: Uint8Array, bthOff: number, icrcOff: number): number {
  const received = readIcrcS(buf, icrcOff);
  let d = icrcV2Ipv4PartsS(srcIp, dstIp, 0, 0x4000, srcPort, dstPort, buf, bthOff, icrcOff) ^ received;
  if (d === 0) return 0;
  const b = idBasis16(16 + 8 + (icrcOff - bthOff));
  let comb = 0;
  for (let k = 0, n = b[0]!; k < n; k++) {
    const bv = b[1 + 2 * k]!;
    if (d & (bv & -bv)) {
      d ^= bv;
      comb ^= b[2 + 2 * k]!;
    }
  }
  return d === 0 ? comb & 0xffff : -1;
}

/** As idBasis, for the 16 ID bits only (DF known). The 16 vectors are always independent (x is invertible mod G). */
const basis16Cache = new Map<number, Int32Array>();
function idBasis16(tail: number): Int32Array {
  let b = basis16Cache.get(tail);
  if (b !== undefined) return b;
  b = new Int32Array(1 + 16 * 2);
  let n = 0;
  for (let j = 0; j < 16; j++) {
    let v = icrcIdDelta(tail, 1 << j) | 0;
    let comb = 1 << j;
    for (let k = 0; k < n; k++) {
      const bv = b[1 + 2 * k]!;
      if (v & (bv & -bv)) {
        v ^= bv;
        comb ^= b[2 + 2 * k]!;
      }
    }
    if (v !== 0) {
      b[1 + 2 * n] = v;
      b[2 + 2 * n] = comb;
      n++;
    }
  }
  b[0] = n;
  if (basis16Cache.size >= BASIS_CACHE_MAX) basis16Cache.clear();
  basis16Cache.set(tail, b);
  return b;
}

/**
 * Which inferred IPv4 IDs a receiver accepts from each source address when it
 * cannot see the IP header.
 *
 * Why a window: an unknown 16-bit ID turns 16 of the 32 ICRC bits into a
 * guess. For any ID delta d that the receiver would accept, there is exactly
 * one error pattern of at most 32 bits at each position whose CRC syndrome
 * equals d's (x is invertible mod the CRC polynomial), so each accepted ID
 * beyond the true one lets one burst per position through. Accepting only the
 * IDs the sender can have produced keeps that to a few hundred of the 2^32
 * patterns instead of 65535.
 *
 * What senders produce: rxe (prepare_ipv4_hdr → __ip_select_ident) and Linux
 * UDP sockets without IP_PMTUDISC_DO take the ID from the kernel's hashed
 * per-destination counter (ip_idents_reserve): +1 per datagram, plus, when
 * the counter was idle, a random jump below the number of jiffies elapsed
 * (HZ ≤ 1000, so below the idle time in ms). softroce with the addon sends
 * ID 0, and 0..63 for the segments of a UDP GSO send. So a packet from a known
 * source is accepted if its DF=1 ID is:
 *   - in 0..63 (ID-0 senders); or
 *   - within [-BACK, FWD + elapsed ms] of the last ID accepted from that
 *     address (reordering behind, lost packets and idle jumps ahead); or
 *   - within (0, FWD + elapsed ms] of the ID of the last packet rejected from
 *     it (a resync: two packets in counter order after a jump we could not
 *     bound, e.g. other traffic sharing the counter bucket; the first of them
 *     was dropped, which costs RC a retry, not data).
 * The first packet from an address has no reference: it is accepted with any
 * DF=1 ID (16 bits of check: still every single-bit error, see
 * inferIpv4IdDf). Dropping it instead would lose a UD peer's first datagram
 * (ud_pingpong never resends) and delay every rdma_cm connect by a MAD retry.
 */
export class Ipv4IdWindow {
  static readonly BACK = 32;
  static readonly FWD = 64;
  /** Out-of-window packets dropped (also counted as rcvd_icrc_err by the device). */
  outOfWindow = 0;
  /**
   * Milliseconds, monotonic; replaceable for replaying captures. Whole milliseconds (the state keeps
   * them as int32): an integer return is a small integer, not a boxed double allocated on every
   * packet, which the closure call (never inlined) would return (issue 15: the 60 s heap check).
   */
  clock: () => number = () => monoMs() | 0;
  private readonly peers = new Map<number, Int32Array>();
  private static readonly MAX_PEERS = 4096;

  private state(src: number): Int32Array {
    let s = this.peers.get(src);
    if (s === undefined) {
      if (this.peers.size >= Ipv4IdWindow.MAX_PEERS) this.peers.clear();
      // [last accepted ID or -1, its time, last rejected ID or -1, its time] (times in ms, truncated)
      s = new Int32Array([-1, 0, -1, 0]);
      this.peers.set(src, s);
    }
    return s;
  }

  /** Whether `id` (DF=1) from `src` is accepted at time `now`; updates the per-source state. */
  accept(src: number, id: number, now: number = this.clock()): boolean {
    const s = this.state(src);
    const t = now | 0;
    const last = s[0]!;
    if (last < 0) {
      s[0] = id;
      s[1] = t;
      return true;
    }
    const ahead = (id - last) & 0xffff; // 0..65535: how far the counter moved forward
    const fwd = Ipv4IdWindow.FWD + Math.max(0, t - s[1]!);
    if (ahead <= fwd) {
      s[0] = id;
      s[1] = t;
      return true;
    }
    if (ahead >= 0x10000 - Ipv4IdWindow.BACK) {
      s[1] = t;
      return true;
    } // reordered: behind the last
    if (id < 64) return true; // an ID-0 sender (softroce with the addon) at the same address
    const cand = s[2]!;
    if (cand >= 0) {
      const fromCand = (id - cand) & 0xffff;
      if (fromCand !== 0 && fromCand <= Ipv4IdWindow.FWD + Math.max(0, t - s[3]!)) {
        s[0] = id;
        s[1] = t;
        s[2] = -1;
        return true;
      }
    }
    s[2] = id;
    s[3] = t;
    this.outOfWindow++;
    return false;
  }

  /** The real ID of a packet from `src` is known (raw socket): the reference for later unknown ones. */
  known(src: number, id: number, now: number = this.clock()): void {
    const s = this.state(src);
    s[0] = id;
    s[1] = now | 0;
    s[2] = -1;
  }

  /** Forgets every source (tests). */
  reset(): void {
    this.peers.clear();
    this.outOfWindow = 0;
  }
}

/**
 * The RoCEv2/IPv4 ICRC check of a received IB packet (BTH at bthOff, ICRC at
 * icrcOff), as the device runs it. `knownId` is `id | df << 16` when the IP
 * header was read (then it is the full CRC-32 check, whatever the mode), or
 * -1 when only the UDP socket's view is at hand; then `mode` says which IDs
 * are accepted: 'infer-id' the window above, 'id-zero' ID 0 (or a GSO
 * segment's 1..63), both with DF. Returns the ID as `id | df << 16`, or -1
 * if the packet is bad.
 */
export function checkIcrcV4(
  mode: 'infer-id' | 'id-zero',
  win: Ipv4IdWindow | null,
  knownId: number,
  srcIp: number,
  dstIp: number,
  srcPort: number,
  dstPort: number,
  buf: Uint8Array,
  bthOff: number,
  icrcOff: number,
): number {
  if (knownId >= 0) {
    const c = icrcV2Ipv4PartsS(srcIp, dstIp, knownId & 0xffff, (knownId >>> 16) & 1 ? 0x4000 : 0, srcPort, dstPort, buf, bthOff, icrcOff);
    if (c !== readIcrcS(buf, icrcOff)) return -1;
    win?.known(srcIp, knownId & 0xffff);
    return knownId & 0x1ffff;
  }
  const id = inferIpv4IdDf(srcIp, dstIp, srcPort, dstPort, buf, bthOff, icrcOff);
  if (id < 0) return -1;
  if (mode === 'id-zero') return id < 64 ? id | 0x10000 : -1;
  if (win !== null && !win.accept(srcIp, id)) return -1;
  return id | 0x10000;
}
