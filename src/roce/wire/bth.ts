/**
 * Base Transport Header (IBA 9.2, 12 bytes). Present in every IB packet.
 *
 *  byte 0     OpCode
 *  byte 1     SE(7) M(6) PadCnt(5-4) TVer(3-0)
 *  bytes 2-3  P_Key
 *  byte 4     FECN(7) BECN(6) resv6a(5-0)   (masked to 0xFF in the ICRC)
 *  bytes 5-7  DestQP
 *  byte 8     AckReq(7) resv7(6-0)
 *  bytes 9-11 PSN
 */
import type { HeaderSpec } from './field.js';

export const BTH_LEN = 12;

export const BTH_SPEC: HeaderSpec = {
  name: 'BTH',
  length: BTH_LEN,
  fields: [
    ['opcode', 0, 0, 8],
    ['se', 1, 7, 1],
    ['migReq', 1, 6, 1],
    ['padCnt', 1, 4, 2],
    ['tver', 1, 0, 4],
    ['pkey', 2, 0, 16],
    ['fecn', 4, 7, 1],
    ['becn', 4, 6, 1],
    ['resv6a', 4, 0, 6],
    ['destQp', 5, 0, 24],
    ['ackReq', 8, 7, 1],
    ['resv7', 8, 0, 7],
    ['psn', 9, 0, 24],
  ],
};

export interface BthRepr {
  opcode: number;
  se: number;
  migReq: number;
  padCnt: number;
  tver: number;
  pkey: number;
  fecn: number;
  becn: number;
  resv6a: number;
  destQp: number;
  ackReq: number;
  resv7: number;
  psn: number;
}

/** In-place accessor over a (reused) buffer. Setters keep the other bits of a shared byte. */
export class BthView {
  buf: Buffer;
  off: number;
  constructor(buf: Buffer = Buffer.alloc(BTH_LEN), off = 0) {
    this.buf = buf;
    this.off = off;
  }
  bind(buf: Buffer, off: number): this {
    this.buf = buf;
    this.off = off;
    return this;
  }
  get opcode(): number {
    return this.buf[this.off]!;
  }
  set opcode(v: number) {
    this.buf[this.off] = v;
  }
  get se(): boolean {
    return (this.buf[this.off + 1]! & 0x80) !== 0;
  }
  set se(v: boolean) {
    this.setBits(1, 0x80, v ? 0x80 : 0);
  }
  get migReq(): boolean {
    return (this.buf[this.off + 1]! & 0x40) !== 0;
  }
  set migReq(v: boolean) {
    this.setBits(1, 0x40, v ? 0x40 : 0);
  }
  get padCnt(): number {
    return (this.buf[this.off + 1]! >> 4) & 3;
  }
  set padCnt(v: number) {
    this.setBits(1, 0x30, (v & 3) << 4);
  }
  get tver(): number {
    return this.buf[this.off + 1]! & 0x0f;
  }
  set tver(v: number) {
    this.setBits(1, 0x0f, v & 0x0f);
  }
  get pkey(): number {
    return this.buf.readUInt16BE(this.off + 2);
  }
  set pkey(v: number) {
    this.buf.writeUInt16BE(v & 0xffff, this.off + 2);
  }
  get fecn(): boolean {
    return (this.buf[this.off + 4]! & 0x80) !== 0;
  }
  set fecn(v: boolean) {
    this.setBits(4, 0x80, v ? 0x80 : 0);
  }
  get becn(): boolean {
    return (this.buf[this.off + 4]! & 0x40) !== 0;
  }
  set becn(v: boolean) {
    this.setBits(4, 0x40, v ? 0x40 : 0);
  }
  get destQp(): number {
    const b = this.buf,
      o = this.off;
    return (b[o + 5]! << 16) | (b[o + 6]! << 8) | b[o + 7]!;
  }
  set destQp(v: number) {
    const b = this.buf,
      o = this.off;
    b[o + 5] = (v >>> 16) & 0xff;
    b[o + 6] = (v >>> 8) & 0xff;
    b[o + 7] = v & 0xff;
  }
  get ackReq(): boolean {
    return (this.buf[this.off + 8]! & 0x80) !== 0;
  }
  set ackReq(v: boolean) {
    this.setBits(8, 0x80, v ? 0x80 : 0);
  }
  get psn(): number {
    const b = this.buf,
      o = this.off;
    return (b[o + 9]! << 16) | (b[o + 10]! << 8) | b[o + 11]!;
  }
  set psn(v: number) {
    const b = this.buf,
      o = this.off;
    b[o + 9] = (v >>> 16) & 0xff;
    b[o + 10] = (v >>> 8) & 0xff;
    b[o + 11] = v & 0xff;
  }
  private setBits(i: number, mask: number, v: number): void {
    const o = this.off + i;
    this.buf[o] = (this.buf[o]! & ~mask) | v;
  }
}
