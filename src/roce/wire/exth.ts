/**
 * The IBA extended transport headers (IBA 9.3 and 9.4) that follow the BTH.
 * Order after the BTH: RDETH, DETH, then RETH / AtomicETH / AETH, then
 * AtomicAckETH, then ImmDt / IETH, then payload (IBA 9.2 figure, rxe_hdr.h).
 *
 * Each header: a spec for the table-driven Repr codec and a small in-place view
 * for the transport hot path.
 */
import type { HeaderSpec } from './field.js';
import { putU32 } from './bytes.js';

function u24(b: Buffer, o: number): number {
  return (b[o]! << 16) | (b[o + 1]! << 8) | b[o + 2]!;
}
function setU24(b: Buffer, o: number, v: number): void {
  b[o] = (v >>> 16) & 0xff;
  b[o + 1] = (v >>> 8) & 0xff;
  b[o + 2] = v & 0xff;
}

abstract class View {
  buf: Buffer = Buffer.alloc(0);
  off = 0;
  bind(buf: Buffer, off: number): this {
    this.buf = buf;
    this.off = off;
    return this;
  }
}

/** RDETH (4 B): reserved byte + EE-Context. Reliable Datagram only; parsed, never sent. */
export const RDETH_SPEC: HeaderSpec = {
  name: 'RDETH',
  length: 4,
  fields: [
    ['resv', 0, 0, 8],
    ['een', 1, 0, 24],
  ],
};

/** DETH (8 B, UD/RD): Q_Key, reserved byte, source QP. */
export const DETH_SPEC: HeaderSpec = {
  name: 'DETH',
  length: 8,
  fields: [
    ['qkey', 0, 0, 32],
    ['resv', 4, 0, 8],
    ['srcQp', 5, 0, 24],
  ],
};
export class DethView extends View {
  get qkey(): number {
    return this.buf.readUInt32BE(this.off);
  }
  set qkey(v: number) {
    this.buf.writeUInt32BE(v >>> 0, this.off);
  }
  get srcQp(): number {
    return u24(this.buf, this.off + 5);
  }
  set srcQp(v: number) {
    this.buf[this.off + 4] = 0;
    setU24(this.buf, this.off + 5, v);
  }
}

/** RETH (16 B): virtual address, R_Key, DMA length. WRITE FIRST/ONLY, READ REQUEST. */
export const RETH_SPEC: HeaderSpec = {
  name: 'RETH',
  length: 16,
  fields: [
    ['va', 0, 0, 64],
    ['rkey', 8, 0, 32],
    ['dmaLen', 12, 0, 32],
  ],
};
export class RethView extends View {
  /** VA as two 32-bit halves: the hot path never builds a bigint per packet. */
  get vaHi(): number {
    return this.buf.readUInt32BE(this.off);
  }
  get vaLo(): number {
    return this.buf.readUInt32BE(this.off + 4);
  }
  get va(): bigint {
    return this.buf.readBigUInt64BE(this.off);
  }
  set va(v: bigint) {
    this.buf.writeBigUInt64BE(BigInt.asUintN(64, v), this.off);
  }
  /** The halves as uint32 or as int32 (`| 0`, which never makes a heap number when passed on). */
  setVa(hi: number, lo: number): void {
    putU32(this.buf, this.off, hi);
    putU32(this.buf, this.off + 4, lo);
  }
  get rkey(): number {
    return this.buf.readUInt32BE(this.off + 8);
  }
  set rkey(v: number) {
    putU32(this.buf, this.off + 8, v);
  }
  get dmaLen(): number {
    return this.buf.readUInt32BE(this.off + 12);
  }
  set dmaLen(v: number) {
    putU32(this.buf, this.off + 12, v);
  }
}

/** AETH (4 B): syndrome (ACK / RNR NAK / NAK, see aeth.ts) and MSN. */
export const AETH_SPEC: HeaderSpec = {
  name: 'AETH',
  length: 4,
  fields: [
    ['syndrome', 0, 0, 8],
    ['msn', 1, 0, 24],
  ],
};
export class AethView extends View {
  get syndrome(): number {
    return this.buf[this.off]!;
  }
  set syndrome(v: number) {
    this.buf[this.off] = v;
  }
  get msn(): number {
    return u24(this.buf, this.off + 1);
  }
  set msn(v: number) {
    setU24(this.buf, this.off + 1, v);
  }
}

/** AtomicETH (28 B): VA, R_Key, swap (or add) data, compare data. */
export const ATMETH_SPEC: HeaderSpec = {
  name: 'AtomicETH',
  length: 28,
  fields: [
    ['va', 0, 0, 64],
    ['rkey', 8, 0, 32],
    ['swapAdd', 12, 0, 64],
    ['compare', 20, 0, 64],
  ],
};
export class AtomicEthView extends View {
  get va(): bigint {
    return this.buf.readBigUInt64BE(this.off);
  }
  set va(v: bigint) {
    this.buf.writeBigUInt64BE(BigInt.asUintN(64, v), this.off);
  }
  get rkey(): number {
    return this.buf.readUInt32BE(this.off + 8);
  }
  set rkey(v: number) {
    this.buf.writeUInt32BE(v >>> 0, this.off + 8);
  }
  get swapAdd(): bigint {
    return this.buf.readBigUInt64BE(this.off + 12);
  }
  set swapAdd(v: bigint) {
    this.buf.writeBigUInt64BE(BigInt.asUintN(64, v), this.off + 12);
  }
  get compare(): bigint {
    return this.buf.readBigUInt64BE(this.off + 20);
  }
  set compare(v: bigint) {
    this.buf.writeBigUInt64BE(BigInt.asUintN(64, v), this.off + 20);
  }
}

/** AtomicAckETH (8 B): the original remote data. */
export const ATMACK_SPEC: HeaderSpec = {
  name: 'AtomicAckETH',
  length: 8,
  fields: [['origData', 0, 0, 64]],
};
export class AtomicAckView extends View {
  get origData(): bigint {
    return this.buf.readBigUInt64BE(this.off);
  }
  set origData(v: bigint) {
    this.buf.writeBigUInt64BE(BigInt.asUintN(64, v), this.off);
  }
}

/** ImmDt (4 B): opaque immediate data, handed to the WC as is. */
export const IMMDT_SPEC: HeaderSpec = { name: 'ImmDt', length: 4, fields: [['imm', 0, 0, 32]] };
/** IETH (4 B): the R_Key to invalidate (SEND_WITH_INVALIDATE). */
export const IETH_SPEC: HeaderSpec = { name: 'IETH', length: 4, fields: [['rkey', 0, 0, 32]] };
/** FETH (4 B, FLUSH): selectivity level bits 5-4, placement type bits 3-0. */
export const FETH_SPEC: HeaderSpec = {
  name: 'FETH',
  length: 4,
  fields: [
    ['resv', 0, 6, 26],
    ['selectivity', 3, 4, 2],
    ['placement', 3, 0, 4],
  ],
};

export interface RdethRepr {
  resv: number;
  een: number;
}
export interface DethRepr {
  qkey: number;
  resv: number;
  srcQp: number;
}
export interface RethRepr {
  va: bigint;
  rkey: number;
  dmaLen: number;
}
export interface AethRepr {
  syndrome: number;
  msn: number;
}
export interface AtomicEthRepr {
  va: bigint;
  rkey: number;
  swapAdd: bigint;
  compare: bigint;
}
export interface AtomicAckRepr {
  origData: bigint;
}
export interface ImmDtRepr {
  imm: number;
}
export interface IethRepr {
  rkey: number;
}
export interface FethRepr {
  resv: number;
  selectivity: number;
  placement: number;
}
