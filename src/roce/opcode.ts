/**
 * The IB opcode table (IBA 9.2.1 table 38; rxe_opcode.c). One list of rows says,
 * for every opcode of RC, UC, RD, UD and the RoCEv2 CNP, which extended headers
 * follow the BTH (in wire order), what the packet means (request or response,
 * first/middle/last/only, send/write/read/atomic) and what payload it may carry.
 * Everything else (header offsets, lengths, the hot-path lookup arrays) is
 * derived from those rows at module load.
 */

/** Header kinds, in the order they appear after the BTH (IBA 9.2). */
export const Hdr = {
  BTH: 0,
  RDETH: 1,
  DETH: 2,
  FETH: 3,
  RETH: 4,
  AETH: 5,
  ATMETH: 6,
  ATMACK: 7,
  IMMDT: 8,
  IETH: 9,
  PAYLOAD: 10,
} as const;
export type HdrKind = (typeof Hdr)[keyof typeof Hdr];
export const NUM_HDR = 11;
export const HDR_NAME = ['BTH', 'RDETH', 'DETH', 'FETH', 'RETH', 'AETH', 'AtomicETH', 'AtomicAckETH', 'ImmDt', 'IETH', 'payload'] as const;
/** Byte length of each header kind (PAYLOAD: 0, it is variable). */
export const HDR_LEN: readonly number[] = [12, 4, 8, 4, 16, 4, 28, 8, 4, 4, 0];

/**
 * Semantic bits of an opcode. Bits 0..10 are the header bits (1 << Hdr.X), so
 * `mask & HdrBit(Hdr.RETH)` says "carries a RETH"; the semantic bits start
 * above them so the two sets cannot overlap (rxe_hdr_type / rxe_hdr_mask).
 */
export const Op = {
  REQ: 1 << 12, // a request (requester → responder)
  RESP: 1 << 13, // a response (READ response, ACK, atomic ACK)
  ACK: 1 << 14, // ACKNOWLEDGE or ATOMIC_ACKNOWLEDGE
  START: 1 << 15, // first packet of a message (FIRST or ONLY)
  MIDDLE: 1 << 16,
  END: 1 << 17, // last packet of a message (LAST or ONLY)
  SEND: 1 << 18,
  WRITE: 1 << 19,
  READ: 1 << 20,
  ATOMIC: 1 << 21,
  IMM: 1 << 22, // carries ImmDt
  INV: 1 << 23, // carries IETH
  RWR: 1 << 24, // consumes a receive WQE (IBA 9.7.5.1.x: SEND first/only, WRITE with imm)
  COMP: 1 << 25, // completes a receive WQE
  FLUSH: 1 << 26,
  ATOMIC_WRITE: 1 << 27,
  CNP: 1 << 28,
  RESYNC: 1 << 29,
} as const;

export const hdrBit = (h: HdrKind): number => 1 << h;

/** What payload an opcode may carry (IBA 9.7.4.1: FIRST/MIDDLE carry exactly one PMTU). */
export const Payload = {
  NONE: 0,
  /** exactly the path MTU: FIRST and MIDDLE packets */
  MTU: 1,
  /** 1..PMTU: LAST packets */
  LAST: 2,
  /** 0..PMTU: ONLY packets */
  ONLY: 3,
  /** exactly 8 bytes (ATOMIC_WRITE) */
  FIXED8: 4,
  /** the 16 reserved bytes of a RoCEv2 CNP (Annex A17.9.3) */
  CNP16: 5,
} as const;
export type PayloadKind = (typeof Payload)[keyof typeof Payload];

export type Transport = 'RC' | 'UC' | 'RD' | 'UD' | 'CNP';
export const TRANSPORT_PREFIX: Readonly<Record<Transport, number>> = { RC: 0x00, UC: 0x20, RD: 0x40, UD: 0x60, CNP: 0x80 };

export interface OpcodeInfo {
  readonly opcode: number;
  /** e.g. `RC_SEND_FIRST`, `UD_SEND_ONLY_WITH_IMMEDIATE`, `CNP` */
  readonly name: string;
  readonly transport: Transport;
  /** header bits | Op bits */
  readonly mask: number;
  /** BTH + all extended headers, in bytes: where the payload starts */
  readonly length: number;
  /** offset of each header kind from the start of the BTH, -1 when absent */
  readonly offset: Int8Array;
  readonly payload: PayloadKind;
  /** header kinds in wire order */
  readonly headers: readonly HdrKind[];
}

const { REQ, RESP, ACK, START, MIDDLE, END, SEND, WRITE, READ, ATOMIC, IMM, INV, RWR, COMP } = Op;
const H = Hdr;

type Row = readonly [low: number, name: string, hdrs: readonly HdrKind[], flags: number, payload: PayloadKind];
/** The operations, by the low 5 bits of the opcode; transport prefixes are applied below. */
const OPS: readonly Row[] = [
  [0x00, 'SEND_FIRST', [], REQ | START | SEND | RWR, Payload.MTU],
  [0x01, 'SEND_MIDDLE', [], REQ | MIDDLE | SEND, Payload.MTU],
  [0x02, 'SEND_LAST', [], REQ | END | SEND | COMP, Payload.LAST],
  [0x03, 'SEND_LAST_WITH_IMMEDIATE', [H.IMMDT], REQ | END | SEND | IMM | COMP, Payload.LAST],
  [0x04, 'SEND_ONLY', [], REQ | START | END | SEND | RWR | COMP, Payload.ONLY],
  [0x05, 'SEND_ONLY_WITH_IMMEDIATE', [H.IMMDT], REQ | START | END | SEND | IMM | RWR | COMP, Payload.ONLY],
  [0x06, 'RDMA_WRITE_FIRST', [H.RETH], REQ | START | WRITE, Payload.MTU],
  [0x07, 'RDMA_WRITE_MIDDLE', [], REQ | MIDDLE | WRITE, Payload.MTU],
  [0x08, 'RDMA_WRITE_LAST', [], REQ | END | WRITE, Payload.LAST],
  [0x09, 'RDMA_WRITE_LAST_WITH_IMMEDIATE', [H.IMMDT], REQ | END | WRITE | IMM | RWR | COMP, Payload.LAST],
  [0x0a, 'RDMA_WRITE_ONLY', [H.RETH], REQ | START | END | WRITE, Payload.ONLY],
  [0x0b, 'RDMA_WRITE_ONLY_WITH_IMMEDIATE', [H.RETH, H.IMMDT], REQ | START | END | WRITE | IMM | RWR | COMP, Payload.ONLY],
  [0x0c, 'RDMA_READ_REQUEST', [H.RETH], REQ | START | END | READ, Payload.NONE],
  [0x0d, 'RDMA_READ_RESPONSE_FIRST', [H.AETH], RESP | START | READ, Payload.MTU],
  [0x0e, 'RDMA_READ_RESPONSE_MIDDLE', [], RESP | MIDDLE | READ, Payload.MTU],
  [0x0f, 'RDMA_READ_RESPONSE_LAST', [H.AETH], RESP | END | READ, Payload.LAST],
  [0x10, 'RDMA_READ_RESPONSE_ONLY', [H.AETH], RESP | START | END | READ, Payload.ONLY],
  [0x11, 'ACKNOWLEDGE', [H.AETH], RESP | ACK | START | END, Payload.NONE],
  [0x12, 'ATOMIC_ACKNOWLEDGE', [H.AETH, H.ATMACK], RESP | ACK | ATOMIC | START | END, Payload.NONE],
  [0x13, 'COMPARE_SWAP', [H.ATMETH], REQ | ATOMIC | START | END, Payload.NONE],
  [0x14, 'FETCH_ADD', [H.ATMETH], REQ | ATOMIC | START | END, Payload.NONE],
  [0x15, 'RESYNC', [], REQ | START | END | Op.RESYNC, Payload.NONE],
  [0x16, 'SEND_LAST_WITH_INVALIDATE', [H.IETH], REQ | END | SEND | INV | COMP, Payload.LAST],
  [0x17, 'SEND_ONLY_WITH_INVALIDATE', [H.IETH], REQ | START | END | SEND | INV | RWR | COMP, Payload.ONLY],
  [0x1c, 'FLUSH', [H.FETH, H.RETH], REQ | START | END | Op.FLUSH, Payload.NONE],
  [0x1d, 'ATOMIC_WRITE', [H.RETH], REQ | START | END | Op.ATOMIC_WRITE, Payload.FIXED8],
];

/** Which operations each transport has (IBA 9.2.1 table 38, rxe_opcode.c). */
const TRANSPORT_OPS: Readonly<Record<Exclude<Transport, 'CNP'>, readonly number[]>> = {
  RC: [0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f, 0x10, 0x11, 0x12, 0x13, 0x14, 0x16, 0x17, 0x1c, 0x1d],
  UC: [0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b],
  RD: [0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f, 0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x1c, 0x1d],
  UD: [0x04, 0x05],
};

function makeEntry(opcode: number, name: string, transport: Transport, hdrs: readonly HdrKind[], flags: number, payload: PayloadKind): OpcodeInfo {
  const headers: HdrKind[] = [H.BTH, ...hdrs];
  const offset = new Int8Array(NUM_HDR).fill(-1);
  let len = 0;
  let mask = flags;
  for (const h of headers) {
    offset[h] = len;
    len += HDR_LEN[h]!;
    mask |= hdrBit(h);
  }
  offset[H.PAYLOAD] = len;
  if (payload !== Payload.NONE) mask |= hdrBit(H.PAYLOAD);
  return Object.freeze({ opcode, name, transport, mask, length: len, offset, payload, headers: Object.freeze(headers) });
}

function build(): (OpcodeInfo | undefined)[] {
  const t: (OpcodeInfo | undefined)[] = new Array<OpcodeInfo | undefined>(256).fill(undefined);
  const byLow = new Map(OPS.map((r) => [r[0], r]));
  for (const tr of ['RC', 'UC', 'RD', 'UD'] as const) {
    for (const low of TRANSPORT_OPS[tr]) {
      const row = byLow.get(low)!;
      let hdrs = row[2];
      if (tr === 'UD') hdrs = [H.DETH, ...hdrs];
      // RD requests carry RDETH + DETH; RD responses carry RDETH only (IBA 9.2).
      if (tr === 'RD') hdrs = row[3] & REQ ? [H.RDETH, H.DETH, ...hdrs] : [H.RDETH, ...hdrs];
      const opcode = TRANSPORT_PREFIX[tr] | low;
      t[opcode] = makeEntry(opcode, `${tr}_${row[1]}`, tr, hdrs, row[3], row[4]);
    }
  }
  // RoCEv2 Congestion Notification Packet (Annex A17.9.3): BTH + 16 reserved bytes.
  t[0x81] = makeEntry(0x81, 'CNP', 'CNP', [], Op.CNP, Payload.CNP16);
  return t;
}

/** `OPCODES[op]` is the row for a defined opcode, `undefined` otherwise. */
export const OPCODES: readonly (OpcodeInfo | undefined)[] = Object.freeze(build());

/** Hot-path lookups indexed by the raw opcode byte: mask 0 means "undefined opcode". */
export const OPCODE_MASK = new Uint32Array(256);
export const OPCODE_LEN = new Uint8Array(256);
export const OPCODE_PAYLOAD = new Uint8Array(256);
for (let i = 0; i < 256; i++) {
  const e = OPCODES[i];
  if (!e) continue;
  OPCODE_MASK[i] = e.mask >>> 0;
  OPCODE_LEN[i] = e.length;
  OPCODE_PAYLOAD[i] = e.payload;
}

/** Never throws: an undefined opcode prints as `UNKNOWN(0xNN)`. */
export function opcodeName(op: number): string {
  const e = OPCODES[op & 0xff];
  return e ? e.name : `UNKNOWN(0x${(op & 0xff).toString(16).padStart(2, '0')})`;
}

export function opcodeByName(name: string): number | undefined {
  const e = OPCODES.find((o) => o?.name === name);
  return e?.opcode;
}

/** Path MTUs (IBA 7.7.8: 256 … 4096) and their ibv_mtu enum codes 1..5. */
export const MTU_VALUES = [256, 512, 1024, 2048, 4096] as const;
export type Mtu = (typeof MTU_VALUES)[number];
export const mtuToEnum = (mtu: number): number => MTU_VALUES.indexOf(mtu as Mtu) + 1;
export const mtuFromEnum = (code: number): Mtu | undefined => MTU_VALUES[code - 1];
export const isMtu = (n: number): n is Mtu => n === 256 || n === 512 || n === 1024 || n === 2048 || n === 4096;

/**
 * Opcodes the transport builds or tests for by value, named from the table above (so a raw 0x11
 * or 0x13 in a role reads as what it is). RC only: READ, ATOMIC and ACK exist on RC alone here.
 */
function rc(name: string): number {
  const op = opcodeByName(`RC_${name}`);
  if (op === undefined) throw new Error(`opcode table has no RC_${name}`);
  return op;
}
export const OPC = {
  RC_RDMA_READ_REQUEST: rc('RDMA_READ_REQUEST'),
  RC_RDMA_READ_RESPONSE_FIRST: rc('RDMA_READ_RESPONSE_FIRST'),
  RC_RDMA_READ_RESPONSE_MIDDLE: rc('RDMA_READ_RESPONSE_MIDDLE'),
  RC_RDMA_READ_RESPONSE_LAST: rc('RDMA_READ_RESPONSE_LAST'),
  RC_RDMA_READ_RESPONSE_ONLY: rc('RDMA_READ_RESPONSE_ONLY'),
  RC_ACKNOWLEDGE: rc('ACKNOWLEDGE'),
  RC_ATOMIC_ACKNOWLEDGE: rc('ATOMIC_ACKNOWLEDGE'),
  RC_COMPARE_SWAP: rc('COMPARE_SWAP'),
  RC_FETCH_ADD: rc('FETCH_ADD'),
} as const;

/** The READ response opcode for a packet that is (not) the first and (not) the last of its READ: index first * 2 + last. */
export const READ_RESPONSE_OPCODE: readonly number[] = [
  OPC.RC_RDMA_READ_RESPONSE_MIDDLE,
  OPC.RC_RDMA_READ_RESPONSE_LAST,
  OPC.RC_RDMA_READ_RESPONSE_FIRST,
  OPC.RC_RDMA_READ_RESPONSE_ONLY,
];

/** A message's opcodes (low 5 bits, add TRANSPORT_PREFIX): FIRST, MIDDLE, LAST, ONLY (IBA 9.2.1 table 38). */
export type MessageOpcodes = readonly [first: number, middle: number, last: number, only: number];
function seq(first: string, middle: string, last: string, only: string): MessageOpcodes {
  return [rc(first), rc(middle), rc(last), rc(only)];
}
/** The opcode sequence of each kind of SEND and WRITE message. */
export const MESSAGE_OPCODES = {
  SEND: seq('SEND_FIRST', 'SEND_MIDDLE', 'SEND_LAST', 'SEND_ONLY'),
  SEND_WITH_IMM: seq('SEND_FIRST', 'SEND_MIDDLE', 'SEND_LAST_WITH_IMMEDIATE', 'SEND_ONLY_WITH_IMMEDIATE'),
  SEND_WITH_INV: seq('SEND_FIRST', 'SEND_MIDDLE', 'SEND_LAST_WITH_INVALIDATE', 'SEND_ONLY_WITH_INVALIDATE'),
  RDMA_WRITE: seq('RDMA_WRITE_FIRST', 'RDMA_WRITE_MIDDLE', 'RDMA_WRITE_LAST', 'RDMA_WRITE_ONLY'),
  RDMA_WRITE_WITH_IMM: seq('RDMA_WRITE_FIRST', 'RDMA_WRITE_MIDDLE', 'RDMA_WRITE_LAST_WITH_IMMEDIATE', 'RDMA_WRITE_ONLY_WITH_IMMEDIATE'),
} as const;

/** The transport an opcode belongs to, as its prefix (the top 3 bits), by raw opcode; 0xff: undefined opcode. */
export const OPCODE_TRANSPORT = new Uint8Array(256).fill(0xff);
for (let i = 0; i < 256; i++) {
  const e = OPCODES[i];
  if (e) OPCODE_TRANSPORT[i] = TRANSPORT_PREFIX[e.transport];
}
