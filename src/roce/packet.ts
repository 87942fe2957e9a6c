/**
 * An IB transport packet: BTH, extended headers, payload, pad, ICRC (IBA 9.2).
 *
 * Two levels, as in smoltcp:
 *  - `parseIb(info, buf, off, len)` checks a received packet's structure and
 *    fills a reused `PktInfo` with offsets (no allocation, never throws).
 *  - `IbRepr` is a plain object with every field of every header present, for
 *    the control path, the dump tool and tests; `readIbRepr` / `writeIbRepr`
 *    are exact inverses.
 */
import { copyBytes, readRepr, writeRepr, type HeaderSpec, type Repr } from './wire/field.js';
import { BTH_LEN, BTH_SPEC, type BthRepr } from './wire/bth.js';
import {
  AETH_SPEC,
  ATMACK_SPEC,
  ATMETH_SPEC,
  DETH_SPEC,
  FETH_SPEC,
  IETH_SPEC,
  IMMDT_SPEC,
  RDETH_SPEC,
  RETH_SPEC,
  type AethRepr,
  type AtomicAckRepr,
  type AtomicEthRepr,
  type DethRepr,
  type FethRepr,
  type IethRepr,
  type ImmDtRepr,
  type RdethRepr,
  type RethRepr,
} from './wire/exth.js';
import { readIcrc, writeIcrc } from './icrc.js';
import { Hdr, OPCODES, OPCODE_LEN, OPCODE_MASK, OPCODE_PAYLOAD, Payload, isMtu, type HdrKind } from './opcode.js';

export const ICRC_LEN = 4;
/** The largest IB payload a RoCE packet can carry: the largest path MTU. */
export const MAX_PAYLOAD = 4096;

/** Why a packet was judged malformed. Values index MALFORMED_NAME. */
export const Malformed = {
  NONE: 0,
  TRUNCATED: 1,
  BAD_OPCODE: 2,
  BAD_TVER: 3,
  BAD_PAD: 4,
  BAD_LENGTH: 5,
  NOT_IP: 6,
  BAD_IP: 7,
  BAD_UDP: 8,
  BAD_GRH: 9,
} as const;
export type MalformedReason = (typeof Malformed)[keyof typeof Malformed];
export const MALFORMED_NAME = [
  'none',
  'truncated',
  'undefined opcode',
  'bad transport version',
  'bad pad count',
  'payload length not allowed for opcode',
  'not IP',
  'bad IP header',
  'bad UDP header',
  'bad GRH',
] as const;

/** Offsets of one parsed packet. One instance per rx slot, rebound per packet. */
export class PktInfo {
  buf: Buffer = Buffer.alloc(0);
  /** start of the BTH */
  bthOff = 0;
  /** total IB length: BTH … ICRC */
  len = 0;
  opcode = 0;
  mask = 0;
  /** where the payload starts */
  payloadOff = 0;
  payloadLen = 0;
  padCnt = 0;
  icrcOff = 0;
  malformed: MalformedReason = 0;
}

/**
 * Structural checks of IBA 9.6.1 (packet header validation) that need no QP
 * state: known opcode, TVer 0, headers and pad fit, payload length allowed for
 * the opcode. Returns Malformed.NONE (0) or the reason; fills `info`.
 */
export function parseIb(info: PktInfo, buf: Buffer, off: number, len: number): MalformedReason {
  info.buf = buf;
  info.bthOff = off;
  info.len = len;
  info.malformed = Malformed.NONE;
  if (len < BTH_LEN + ICRC_LEN) return (info.malformed = Malformed.TRUNCATED);
  const op = buf[off]!;
  const mask = OPCODE_MASK[op]!;
  info.opcode = op;
  info.mask = mask;
  if (mask === 0) return (info.malformed = Malformed.BAD_OPCODE);
  // C9-?? (IBA 9.6.1.1): TVer must be 0; rxe drops other versions.
  if ((buf[off + 1]! & 0x0f) !== 0) return (info.malformed = Malformed.BAD_TVER);
  const hdrLen = OPCODE_LEN[op]!;
  if (len < hdrLen + ICRC_LEN) return (info.malformed = Malformed.TRUNCATED);
  const padCnt = (buf[off + 1]! >> 4) & 3;
  const total = len - hdrLen - ICRC_LEN;
  if (padCnt > total) return (info.malformed = Malformed.BAD_PAD);
  const pl = total - padCnt;
  info.payloadOff = off + hdrLen;
  info.payloadLen = pl;
  info.padCnt = padCnt;
  info.icrcOff = off + len - ICRC_LEN;
  // The pad makes the payload a multiple of 4 (IBA 9.2 PadCnt).
  if ((total & 3) !== 0) return (info.malformed = Malformed.BAD_PAD);
  switch (OPCODE_PAYLOAD[op]) {
    case Payload.NONE:
      if (total !== 0) return (info.malformed = Malformed.BAD_LENGTH);
      break;
    case Payload.MTU:
      if (padCnt !== 0 || !isMtu(pl)) return (info.malformed = Malformed.BAD_LENGTH);
      break;
    case Payload.LAST:
      if (pl < 1 || pl > MAX_PAYLOAD) return (info.malformed = Malformed.BAD_LENGTH);
      break;
    case Payload.ONLY:
      if (pl > MAX_PAYLOAD) return (info.malformed = Malformed.BAD_LENGTH);
      break;
    case Payload.FIXED8:
      if (pl !== 8) return (info.malformed = Malformed.BAD_LENGTH);
      break;
    case Payload.CNP16:
      if (pl !== 16) return (info.malformed = Malformed.BAD_LENGTH);
      break;
  }
  return Malformed.NONE;
}

// ------------------------------------------------------------------ Repr ---

export interface IbRepr {
  bth: BthRepr;
  rdeth?: RdethRepr;
  deth?: DethRepr;
  feth?: FethRepr;
  reth?: RethRepr;
  aeth?: AethRepr;
  atomicEth?: AtomicEthRepr;
  atomicAck?: AtomicAckRepr;
  immDt?: ImmDtRepr;
  ieth?: IethRepr;
  payload: Uint8Array;
  /** pad bytes as sent (normally zeros; kept so a re-emit is exact) */
  pad: Uint8Array;
  /** the ICRC as stored in the packet (numeric value, little-endian on the wire) */
  icrc: number;
}

type ExtKey = 'rdeth' | 'deth' | 'feth' | 'reth' | 'aeth' | 'atomicEth' | 'atomicAck' | 'immDt' | 'ieth';
/** Which Repr key and spec each header kind uses. */
const EXT: Partial<Record<HdrKind, readonly [ExtKey, HeaderSpec]>> = {
  [Hdr.RDETH]: ['rdeth', RDETH_SPEC],
  [Hdr.DETH]: ['deth', DETH_SPEC],
  [Hdr.FETH]: ['feth', FETH_SPEC],
  [Hdr.RETH]: ['reth', RETH_SPEC],
  [Hdr.AETH]: ['aeth', AETH_SPEC],
  [Hdr.ATMETH]: ['atomicEth', ATMETH_SPEC],
  [Hdr.ATMACK]: ['atomicAck', ATMACK_SPEC],
  [Hdr.IMMDT]: ['immDt', IMMDT_SPEC],
  [Hdr.IETH]: ['ieth', IETH_SPEC],
};

/** Reads a packet that `parseIb` accepted. */
export function readIbRepr(info: PktInfo): IbRepr {
  const { buf, bthOff } = info;
  const e = OPCODES[info.opcode]!;
  const r: IbRepr = {
    bth: readRepr<BthRepr & Repr>(BTH_SPEC, buf, bthOff),
    payload: copyBytes(buf, info.payloadOff, info.payloadOff + info.payloadLen),
    pad: copyBytes(buf, info.payloadOff + info.payloadLen, info.icrcOff),
    icrc: readIcrc(buf, info.icrcOff),
  };
  for (const h of e.headers) {
    const x = EXT[h];
    if (x) (r as unknown as Record<string, Repr>)[x[0]] = readRepr(x[1], buf, bthOff + e.offset[h]!);
  }
  return r;
}

/** Bytes `writeIbRepr` writes (BTH … pad, ICRC included). */
export function ibReprLength(r: IbRepr): number {
  const e = OPCODES[r.bth.opcode];
  const hdr = e ? e.length : BTH_LEN;
  return hdr + r.payload.length + r.pad.length + ICRC_LEN;
}

/**
 * Writes BTH … pad at `off` and the stored `r.icrc`; returns the offset of the
 * ICRC. The framing layer recomputes the ICRC when it knows the network header.
 * Extended headers that the opcode does not carry are ignored; missing ones are zeros.
 */
export function writeIbRepr(r: IbRepr, buf: Uint8Array, off: number): number {
  const e = OPCODES[r.bth.opcode];
  writeRepr(BTH_SPEC, r.bth as unknown as Repr, buf, off);
  let p = off + BTH_LEN;
  if (e) {
    for (const h of e.headers) {
      const x = EXT[h];
      if (!x) continue;
      const v = (r as unknown as Record<string, Repr | undefined>)[x[0]];
      writeRepr(x[1], v ?? {}, buf, off + e.offset[h]!);
    }
    p = off + e.length;
  }
  buf.set(r.payload, p);
  p += r.payload.length;
  buf.set(r.pad, p);
  p += r.pad.length;
  writeIcrc(buf, p, r.icrc);
  return p;
}
