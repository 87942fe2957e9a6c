/**
 * IB CM MADs (IBA vol1 ch.12 "Communication Management", 13.4 "MAD formats"): the 24-byte
 * MAD common header and the CM message layouts, as the Linux kernel's CM (drivers/infiniband/core/cm.c,
 * include/rdma/ibta_vol1_c12.h) puts them on QP1. A MAD is always 256 bytes: header + 232 bytes of CM data.
 *
 * This is the pure codec: tables, views, parse and emit. It lives in the wire layer (not under src/cm) so
 * that `softroce dump` (src/roce/dump.ts, wire layer) can decode CM MADs without importing upwards; src/cm
 * re-exports it (src/cm/mad.ts).
 *
 * Each message is one table of `[name, byteOffset, bitShift, bitWidth]` rows (field.ts's FieldSpec; offsets
 * relative to the CM data, i.e. MAD byte − 24; the shift counts from the least significant bit of the
 * big-endian word that ends at the field's last byte). Table numbers are IBTA vol1 release 1.4's, as the
 * kernel's ibta_vol1_c12.h quotes them; the field positions match that file. Every bit of the 232 bytes,
 * reserved bits included, belongs to exactly one row (a test checks it), so parse → emit gives back the same
 * 256 bytes. The message types (CmReq, CmRep, ...) are derived from the tables, so a field cannot be in one
 * and not the other.
 */
import type { FieldSpec } from './field.js';
import { readField, writeField } from './field.js';

export const MAD_SIZE = 256;
export const MAD_HDR_LEN = 24;
export const CM_DATA_LEN = MAD_SIZE - MAD_HDR_LEN;

/** MAD header constants for CM (IBA 13.4.2, 12.11; roce-wire.md g.2). */
export const MAD_BASE_VERSION = 1;
export const MGMT_CLASS_CM = 0x07;
export const CM_CLASS_VERSION = 2;
/** Methods (IBA 13.4.5). Every CM message is a Send; ClassPortInfo uses Get / GetResp. */
export const MadMethod = { GET: 0x01, SET: 0x02, SEND: 0x03, GET_RESP: 0x81 } as const;

/** CM attribute IDs (IBA 12.11 table 104; kernel ib_cm.h CM_*_ATTR_ID). */
export const CmAttr = {
  CLASS_PORT_INFO: 0x0001,
  REQ: 0x0010,
  MRA: 0x0011,
  REJ: 0x0012,
  REP: 0x0013,
  RTU: 0x0014,
  DREQ: 0x0015,
  DREP: 0x0016,
  SIDR_REQ: 0x0017,
  SIDR_REP: 0x0018,
  LAP: 0x0019,
  APR: 0x001a,
} as const;

/** The MAD common header (IBA 13.4.2 figure 150, kernel struct ib_mad_hdr). */
export const MAD_HDR_FIELDS = [
  ['baseVersion', 0, 0, 8],
  ['mgmtClass', 1, 0, 8],
  ['classVersion', 2, 0, 8],
  ['method', 3, 0, 8],
  ['status', 4, 0, 16],
  ['classSpecific', 6, 0, 16],
  ['transactionId', 8, 0, 64],
  ['attributeId', 16, 0, 16],
  ['resv', 18, 0, 16],
  ['attributeModifier', 20, 0, 32],
] as const satisfies readonly FieldSpec[];

// ---- type derivation: a table of rows → an object type with one property per row ----

type FieldValue<F> = F extends readonly [string, number, 'bytes', number] ? Uint8Array : F extends readonly [string, number, 0, 64] ? bigint : number;
/** The object type a field table describes: `number` up to 32 bits, `bigint` for 64, `Uint8Array` for byte strings. */
export type FieldsOf<T extends readonly FieldSpec[]> = { -readonly [F in T[number] as F[0]]: FieldValue<F> };

export type MadHeader = FieldsOf<typeof MAD_HDR_FIELDS>;

// ---- message layouts (offsets relative to the CM data) ----

/** A path inside a REQ (IBA 12.6.5 table 99: bytes 52-95 primary, 96-139 alternate). */
function pathFields<P extends string>(p: P, o: number) {
  return [
    [`${p}LocalLid`, o, 0, 16],
    [`${p}RemoteLid`, o + 2, 0, 16],
    [`${p}LocalGid`, o + 4, 'bytes', 16],
    [`${p}RemoteGid`, o + 20, 'bytes', 16],
    // word o+36: flow label bits 31-12, reserved 11-6, packet rate 5-0
    [`${p}FlowLabel`, o + 36, 12, 20],
    [`${p}ResvRate`, o + 38, 6, 6],
    [`${p}PacketRate`, o + 39, 0, 6],
    [`${p}TrafficClass`, o + 40, 0, 8],
    [`${p}HopLimit`, o + 41, 0, 8],
    [`${p}Sl`, o + 42, 4, 4],
    [`${p}SubnetLocal`, o + 42, 3, 1],
    [`${p}ResvSl`, o + 42, 0, 3],
    [`${p}LocalAckTimeout`, o + 43, 3, 5],
  ] as const;
}

/** REQ, IBA 12.6.5 table 106 (ConnectRequest). */
export const CM_REQ_FIELDS = [
  ['localCommId', 0, 0, 32],
  ['resv4', 4, 0, 8],
  ['vendorId', 5, 0, 24],
  ['serviceId', 8, 0, 64],
  ['localCaGuid', 16, 0, 64],
  ['resv24', 24, 0, 32],
  ['localQkey', 28, 0, 32],
  ['localQpn', 32, 0, 24],
  ['responderResources', 35, 0, 8],
  ['localEecn', 36, 0, 24],
  ['initiatorDepth', 39, 0, 8],
  ['remoteEecn', 40, 0, 24],
  ['remoteCmResponseTimeout', 43, 3, 5],
  ['transportServiceType', 43, 1, 2],
  ['endToEndFlowControl', 43, 0, 1],
  ['startingPsn', 44, 0, 24],
  ['localCmResponseTimeout', 47, 3, 5],
  ['retryCount', 47, 0, 3],
  ['pkey', 48, 0, 16],
  ['pathMtu', 50, 4, 4],
  ['rdcExists', 50, 3, 1],
  ['rnrRetryCount', 50, 0, 3],
  ['maxCmRetries', 51, 4, 4],
  ['srq', 51, 3, 1],
  ['extendedTransportType', 51, 0, 3],
  ...pathFields('primary', 52),
  ['primaryResv95', 95, 0, 3],
  ...pathFields('alternate', 96),
  ['sapSupported', 139, 2, 1],
  ['alternateResv139', 139, 0, 2],
  ['privateData', 140, 'bytes', 92],
] as const satisfies readonly FieldSpec[];

/** MRA, IBA 12.6.6 table 107 (MessageReceiptAcknowledgement). */
export const CM_MRA_FIELDS = [
  ['localCommId', 0, 0, 32],
  ['remoteCommId', 4, 0, 32],
  ['messageMraed', 8, 6, 2],
  ['resv8', 8, 0, 6],
  ['serviceTimeout', 9, 3, 5],
  ['resv9', 9, 0, 3],
  ['privateData', 10, 'bytes', 222],
] as const satisfies readonly FieldSpec[];

/** REJ, IBA 12.6.7 table 108 (ConnectReject). */
export const CM_REJ_FIELDS = [
  ['localCommId', 0, 0, 32],
  ['remoteCommId', 4, 0, 32],
  ['messageRejected', 8, 6, 2],
  ['resv8', 8, 0, 6],
  ['rejectInfoLength', 9, 1, 7],
  ['resv9', 9, 0, 1],
  ['reason', 10, 0, 16],
  ['ari', 12, 'bytes', 72],
  ['privateData', 84, 'bytes', 148],
] as const satisfies readonly FieldSpec[];

/** REP, IBA 12.6.8 table 110 (ConnectReply). Vendor ID (ECE) is split over bytes 15, 19 and 23. */
export const CM_REP_FIELDS = [
  ['localCommId', 0, 0, 32],
  ['remoteCommId', 4, 0, 32],
  ['localQkey', 8, 0, 32],
  ['localQpn', 12, 0, 24],
  ['vendorIdHigh', 15, 0, 8],
  ['localEecn', 16, 0, 24],
  ['vendorIdMid', 19, 0, 8],
  ['startingPsn', 20, 0, 24],
  ['vendorIdLow', 23, 0, 8],
  ['responderResources', 24, 0, 8],
  ['initiatorDepth', 25, 0, 8],
  ['targetAckDelay', 26, 3, 5],
  ['failoverAccepted', 26, 1, 2],
  ['endToEndFlowControl', 26, 0, 1],
  ['rnrRetryCount', 27, 5, 3],
  ['srq', 27, 4, 1],
  ['resv27', 27, 0, 4],
  ['localCaGuid', 28, 0, 64],
  ['privateData', 36, 'bytes', 196],
] as const satisfies readonly FieldSpec[];

/** RTU, IBA 12.6.9 table 111 (ReadyToUse). */
export const CM_RTU_FIELDS = [
  ['localCommId', 0, 0, 32],
  ['remoteCommId', 4, 0, 32],
  ['privateData', 8, 'bytes', 224],
] as const satisfies readonly FieldSpec[];

/** DREQ, IBA 12.6.10 table 112 (DisconnectRequest). */
export const CM_DREQ_FIELDS = [
  ['localCommId', 0, 0, 32],
  ['remoteCommId', 4, 0, 32],
  ['remoteQpn', 8, 0, 24],
  ['resv11', 11, 0, 8],
  ['privateData', 12, 'bytes', 220],
] as const satisfies readonly FieldSpec[];

/** DREP, IBA 12.6.11 table 113 (DisconnectReply). */
export const CM_DREP_FIELDS = [
  ['localCommId', 0, 0, 32],
  ['remoteCommId', 4, 0, 32],
  ['privateData', 8, 'bytes', 224],
] as const satisfies readonly FieldSpec[];

/** LAP, IBA 12.8.1 table 115 (LoadAlternatePath). */
export const CM_LAP_FIELDS = [
  ['localCommId', 0, 0, 32],
  ['remoteCommId', 4, 0, 32],
  ['resv8', 8, 0, 32],
  ['remoteQpn', 12, 0, 24],
  ['remoteCmResponseTimeout', 15, 3, 5],
  ['resv15', 15, 0, 3],
  ['resv16', 16, 0, 32],
  // The alternate path, packed tighter than REQ's (ibta_vol1_c12.h CM_LAP_*): the traffic class follows the
  // flow label at byte 59, and the packet rate moves after the hop limit.
  ['alternateLocalLid', 20, 0, 16],
  ['alternateRemoteLid', 22, 0, 16],
  ['alternateLocalGid', 24, 'bytes', 16],
  ['alternateRemoteGid', 40, 'bytes', 16],
  ['alternateFlowLabel', 56, 4, 20],
  ['alternateResv58', 58, 0, 4],
  ['alternateTrafficClass', 59, 0, 8],
  ['alternateHopLimit', 60, 0, 8],
  ['alternateResv61', 61, 6, 2],
  ['alternatePacketRate', 61, 0, 6],
  ['alternateSl', 62, 4, 4],
  ['alternateSubnetLocal', 62, 3, 1],
  ['alternateResv62', 62, 0, 3],
  ['alternateLocalAckTimeout', 63, 3, 5],
  ['alternateResv63', 63, 0, 3],
  ['privateData', 64, 'bytes', 168],
] as const satisfies readonly FieldSpec[];

/** APR, IBA 12.8.2 table 116 (AlternatePathResponse). */
export const CM_APR_FIELDS = [
  ['localCommId', 0, 0, 32],
  ['remoteCommId', 4, 0, 32],
  ['additionalInfoLength', 8, 0, 8],
  ['apStatus', 9, 0, 8],
  ['resv10', 10, 0, 16],
  ['additionalInfo', 12, 'bytes', 72],
  ['privateData', 84, 'bytes', 148],
] as const satisfies readonly FieldSpec[];

/** SIDR_REQ, IBA 12.11.1 table 119 (ServiceIDResolutionRequest). */
export const CM_SIDR_REQ_FIELDS = [
  ['requestId', 0, 0, 32],
  ['pkey', 4, 0, 16],
  ['resv6', 6, 0, 16],
  ['serviceId', 8, 0, 64],
  ['privateData', 16, 'bytes', 216],
] as const satisfies readonly FieldSpec[];

/** SIDR_REP, IBA 12.11.2 table 120 (ServiceIDResolutionResponse). */
export const CM_SIDR_REP_FIELDS = [
  ['requestId', 0, 0, 32],
  ['status', 4, 0, 8],
  ['additionalInfoLength', 5, 0, 8],
  ['vendorIdHigh', 6, 0, 16],
  ['qpn', 8, 0, 24],
  ['vendorIdLow', 11, 0, 8],
  ['serviceId', 12, 0, 64],
  ['qkey', 20, 0, 32],
  ['classPortInfo', 24, 'bytes', 72],
  ['privateData', 96, 'bytes', 136],
] as const satisfies readonly FieldSpec[];

/** Every CM message this codec knows: name → attribute ID and layout. */
export const CM_LAYOUTS = {
  REQ: { attr: CmAttr.REQ, fields: CM_REQ_FIELDS },
  MRA: { attr: CmAttr.MRA, fields: CM_MRA_FIELDS },
  REJ: { attr: CmAttr.REJ, fields: CM_REJ_FIELDS },
  REP: { attr: CmAttr.REP, fields: CM_REP_FIELDS },
  RTU: { attr: CmAttr.RTU, fields: CM_RTU_FIELDS },
  DREQ: { attr: CmAttr.DREQ, fields: CM_DREQ_FIELDS },
  DREP: { attr: CmAttr.DREP, fields: CM_DREP_FIELDS },
  SIDR_REQ: { attr: CmAttr.SIDR_REQ, fields: CM_SIDR_REQ_FIELDS },
  SIDR_REP: { attr: CmAttr.SIDR_REP, fields: CM_SIDR_REP_FIELDS },
  LAP: { attr: CmAttr.LAP, fields: CM_LAP_FIELDS },
  APR: { attr: CmAttr.APR, fields: CM_APR_FIELDS },
} as const;

export type CmMsgType = keyof typeof CM_LAYOUTS;
export const CM_MSG_TYPES = Object.keys(CM_LAYOUTS) as CmMsgType[];

/** Private-data maxima (IBA 12.6.x; kernel ib_cm.h enum ib_cm_data_size); ARI / additional info 72. */
export const CM_PRIVATE_DATA_SIZE: Readonly<Record<CmMsgType, number>> = {
  REQ: 92,
  MRA: 222,
  REJ: 148,
  REP: 196,
  RTU: 224,
  DREQ: 220,
  DREP: 224,
  SIDR_REQ: 216,
  SIDR_REP: 136,
  LAP: 168,
  APR: 148,
};
export const CM_ARI_SIZE = 72;

/** A parsed message: its type, the MAD header, and one property per table row. Byte fields (GIDs, ARI,
 *  private data) are subarrays of the parsed buffer, not copies: copy what you keep past the buffer's reuse. */
export type CmMsgOf<K extends CmMsgType> = { type: K; hdr: MadHeader } & FieldsOf<(typeof CM_LAYOUTS)[K]['fields']>;
export type CmReq = CmMsgOf<'REQ'>;
export type CmMra = CmMsgOf<'MRA'>;
export type CmRej = CmMsgOf<'REJ'>;
export type CmRep = CmMsgOf<'REP'>;
export type CmRtu = CmMsgOf<'RTU'>;
export type CmDreq = CmMsgOf<'DREQ'>;
export type CmDrep = CmMsgOf<'DREP'>;
export type CmSidrReq = CmMsgOf<'SIDR_REQ'>;
export type CmSidrRep = CmMsgOf<'SIDR_REP'>;
export type CmLap = CmMsgOf<'LAP'>;
export type CmApr = CmMsgOf<'APR'>;
export type CmMsg = CmReq | CmMra | CmRej | CmRep | CmRtu | CmDreq | CmDrep | CmSidrReq | CmSidrRep | CmLap | CmApr;

// ---- errors ----

export type CmMadErrorReason =
  | 'short-buffer'
  | 'base-version'
  | 'mgmt-class'
  | 'class-version'
  | 'unknown-attribute'
  | 'attribute-mismatch'
  | 'field-range'
  | 'private-data-too-long'
  | 'output-too-small';

/** A MAD that cannot be parsed or a message that cannot be emitted. `parseCmMad` returns it; `emitCmMad`
 *  throws it (a bad message to emit is the caller's bug, a bad MAD received is the peer's). */
export class CmMadError extends Error {
  readonly reason: CmMadErrorReason;
  /** the header or message field at fault, when there is one */
  readonly field: string | undefined;
  constructor(reason: CmMadErrorReason, message: string, field?: string) {
    super(`CM MAD: ${message}`);
    this.name = 'CmMadError';
    this.reason = reason;
    this.field = field;
  }
}

// ---- in-place views ----

/** In-place accessor for the MAD common header (like BthView): read and write single fields of a MAD
 *  in a (reused) buffer without building an object. */
export class MadHeaderView {
  buf: Buffer;
  off: number;
  constructor(buf: Buffer = Buffer.alloc(MAD_SIZE), off = 0) {
    this.buf = buf;
    this.off = off;
  }
  bind(buf: Buffer, off = 0): this {
    this.buf = buf;
    this.off = off;
    return this;
  }
  get baseVersion(): number {
    return this.buf[this.off]!;
  }
  set baseVersion(v: number) {
    this.buf[this.off] = v;
  }
  get mgmtClass(): number {
    return this.buf[this.off + 1]!;
  }
  set mgmtClass(v: number) {
    this.buf[this.off + 1] = v;
  }
  get classVersion(): number {
    return this.buf[this.off + 2]!;
  }
  set classVersion(v: number) {
    this.buf[this.off + 2] = v;
  }
  get method(): number {
    return this.buf[this.off + 3]!;
  }
  set method(v: number) {
    this.buf[this.off + 3] = v;
  }
  get status(): number {
    return this.buf.readUInt16BE(this.off + 4);
  }
  set status(v: number) {
    this.buf.writeUInt16BE(v, this.off + 4);
  }
  get classSpecific(): number {
    return this.buf.readUInt16BE(this.off + 6);
  }
  set classSpecific(v: number) {
    this.buf.writeUInt16BE(v, this.off + 6);
  }
  get transactionId(): bigint {
    return this.buf.readBigUInt64BE(this.off + 8);
  }
  set transactionId(v: bigint) {
    this.buf.writeBigUInt64BE(BigInt.asUintN(64, v), this.off + 8);
  }
  get attributeId(): number {
    return this.buf.readUInt16BE(this.off + 16);
  }
  set attributeId(v: number) {
    this.buf.writeUInt16BE(v, this.off + 16);
  }
  get attributeModifier(): number {
    return this.buf.readUInt32BE(this.off + 20);
  }
  set attributeModifier(v: number) {
    this.buf.writeUInt32BE(v >>> 0, this.off + 20);
  }
}

type FieldName<K extends CmMsgType> = (typeof CM_LAYOUTS)[K]['fields'][number][0];

/** In-place accessor for one CM message's fields, by name, through its table (bound at the MAD start). */
export class CmMsgView<K extends CmMsgType> {
  buf: Buffer;
  off: number;
  readonly type: K;
  readonly #index: ReadonlyMap<string, FieldSpec>;
  constructor(type: K, buf: Buffer = Buffer.alloc(MAD_SIZE), off = 0) {
    this.type = type;
    this.buf = buf;
    this.off = off;
    this.#index = FIELD_INDEX[type];
  }
  bind(buf: Buffer, off = 0): this {
    this.buf = buf;
    this.off = off;
    return this;
  }
  get<N extends FieldName<K>>(name: N): CmMsgOf<K>[N & keyof CmMsgOf<K>] {
    const f = this.#index.get(name)!;
    const o = this.off + MAD_HDR_LEN;
    if (f[2] === 'bytes') return this.buf.subarray(o + f[1], o + f[1] + f[3]) as never;
    return readField(f, this.buf, o) as never;
  }
  set<N extends FieldName<K>>(name: N, v: CmMsgOf<K>[N & keyof CmMsgOf<K>]): void {
    const f = this.#index.get(name)!;
    checkValue(this.type, f, v);
    writeField(f, this.buf, this.off + MAD_HDR_LEN, v as never);
  }
}

const FIELD_INDEX = Object.fromEntries(
  CM_MSG_TYPES.map((k) => [k, new Map<string, FieldSpec>(CM_LAYOUTS[k].fields.map((f: FieldSpec) => [f[0], f]))]),
) as unknown as Record<CmMsgType, ReadonlyMap<string, FieldSpec>>;

const TYPE_BY_ATTR = new Map<number, CmMsgType>(CM_MSG_TYPES.map((k) => [CM_LAYOUTS[k].attr, k]));

/** The message name for a CM attribute ID ('ClassPortInfo' included), or undefined. */
export function cmAttrName(attr: number): string | undefined {
  return attr === CmAttr.CLASS_PORT_INFO ? 'ClassPortInfo' : TYPE_BY_ATTR.get(attr);
}

// ---- parse / emit ----

function readFields(fields: readonly FieldSpec[], buf: Uint8Array, base: number, into: Record<string, unknown>): void {
  for (const f of fields) into[f[0]] = f[2] === 'bytes' ? buf.subarray(base + f[1], base + f[1] + f[3]) : readField(f, buf, base);
}

/**
 * Parses a 256-byte CM MAD. Returns the typed message, or a CmMadError for a short buffer, a MAD that is not
 * CM class version 2 (BaseVersion 1, MgmtClass 0x07), or an attribute this codec does not know (ClassPortInfo
 * included). Never throws. Bytes past 256 are ignored (a UD payload can carry padding). Takes any
 * Uint8Array (a Buffer or a packet payload view).
 */
export function parseCmMad(buf: Uint8Array): CmMsg | CmMadError {
  if (buf.length < MAD_SIZE) return new CmMadError('short-buffer', `${buf.length} bytes, a MAD is ${MAD_SIZE}`);
  if (buf[0] !== MAD_BASE_VERSION) return new CmMadError('base-version', `BaseVersion ${buf[0]}, expected ${MAD_BASE_VERSION}`, 'baseVersion');
  if (buf[1] !== MGMT_CLASS_CM) return new CmMadError('mgmt-class', `MgmtClass 0x${buf[1]!.toString(16)}, expected 0x07 (CM)`, 'mgmtClass');
  if (buf[2] !== CM_CLASS_VERSION) return new CmMadError('class-version', `ClassVersion ${buf[2]}, expected ${CM_CLASS_VERSION}`, 'classVersion');
  const attr = (buf[16]! << 8) | buf[17]!;
  const type = TYPE_BY_ATTR.get(attr);
  if (type === undefined) return new CmMadError('unknown-attribute', `AttributeID 0x${attr.toString(16).padStart(4, '0')} is not a CM message`, 'attributeId');
  const hdr: Record<string, unknown> = {};
  readFields(MAD_HDR_FIELDS, buf, 0, hdr);
  const msg: Record<string, unknown> = { type, hdr };
  readFields(CM_LAYOUTS[type].fields, buf, MAD_HDR_LEN, msg);
  return msg as CmMsg;
}

function checkValue(type: string, f: FieldSpec, v: unknown): void {
  const name = f[0];
  if (f[2] === 'bytes') {
    if (!(v instanceof Uint8Array)) throw new CmMadError('field-range', `${type}.${name} must be bytes`, name);
    if (v.length > f[3]) {
      const reason = name === 'privateData' ? 'private-data-too-long' : 'field-range';
      throw new CmMadError(reason, `${type}.${name} is ${v.length} bytes, at most ${f[3]}`, name);
    }
    return;
  }
  if (f[3] === 64) {
    if (typeof v !== 'bigint' || v < 0n || v >= 1n << 64n) throw new CmMadError('field-range', `${type}.${name} must be a 64-bit unsigned bigint`, name);
    return;
  }
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v >= 2 ** f[3])
    throw new CmMadError('field-range', `${type}.${name} = ${String(v)} does not fit ${f[3]} bits`, name);
}

/**
 * Writes `msg` as a 256-byte MAD into `out` (at `off`), or into a new Buffer. Byte fields shorter than their
 * slot are zero-padded (private data is given at its real length). Throws CmMadError for a value that does not
 * fit its field, private data over the message's maximum, or a header AttributeID that is not the type's.
 */
export function emitCmMad(msg: CmMsg, out?: Buffer, off = 0): Buffer {
  const layout = CM_LAYOUTS[msg.type];
  if (msg.hdr.attributeId !== layout.attr)
    throw new CmMadError(
      'attribute-mismatch',
      `hdr.attributeId 0x${msg.hdr.attributeId.toString(16)} is not ${msg.type}'s 0x${layout.attr.toString(16)}`,
      'attributeId',
    );
  const buf = out ?? Buffer.alloc(MAD_SIZE);
  if (buf.length - off < MAD_SIZE) throw new CmMadError('output-too-small', `${buf.length - off} bytes left in the output, a MAD is ${MAD_SIZE}`);
  const hdr = msg.hdr as unknown as Record<string, unknown>;
  const body = msg as unknown as Record<string, unknown>;
  // Check everything before writing anything: a refused message leaves `out` untouched.
  for (const f of MAD_HDR_FIELDS) checkValue('hdr', f, hdr[f[0]]);
  for (const f of layout.fields as readonly FieldSpec[]) checkValue(msg.type, f, body[f[0]]);
  buf.fill(0, off, off + MAD_SIZE);
  for (const f of MAD_HDR_FIELDS) writeField(f, buf, off, hdr[f[0]] as never);
  for (const f of layout.fields as readonly FieldSpec[]) writeField(f, buf, off + MAD_HDR_LEN, body[f[0]] as never);
  return buf;
}

/** A MAD header for a CM message: BaseVersion 1, class 0x07 version 2, method Send, status 0. */
export function cmMadHeader(type: CmMsgType, transactionId: bigint, attributeModifier = 0): MadHeader {
  return {
    baseVersion: MAD_BASE_VERSION,
    mgmtClass: MGMT_CLASS_CM,
    classVersion: CM_CLASS_VERSION,
    method: MadMethod.SEND,
    status: 0,
    classSpecific: 0,
    transactionId,
    attributeId: CM_LAYOUTS[type].attr,
    resv: 0,
    attributeModifier,
  };
}

/** A message of `type` with every field zero (byte fields empty) except those given: what the protocol
 *  fills in before emitCmMad. */
export function makeCmMsg<K extends CmMsgType>(type: K, fields: Partial<Omit<CmMsgOf<K>, 'type'>> = {}): CmMsgOf<K> {
  const m: Record<string, unknown> = { type, hdr: cmMadHeader(type, 0n) };
  for (const f of CM_LAYOUTS[type].fields as readonly FieldSpec[]) m[f[0]] = f[2] === 'bytes' ? new Uint8Array(0) : f[3] === 64 ? 0n : 0;
  Object.assign(m, fields);
  return m as CmMsgOf<K>;
}

/**
 * The TransactionID the Linux CM puts on the messages of a connection (cm.c cm_form_tid): the MAD agent's
 * hi_tid in the upper 32 bits, and the local comm ID in the lower 32 *as the CPU stores the __be32*: on the
 * little-endian hosts of the captures the low word is the comm ID byte-swapped (REQ with Local Comm ID
 * 0x3de89519 has TID 0x00000002_1995e83d).
 */
export function kernelCmTid(hiTid: number, localCommId: number, littleEndianHost = true): bigint {
  const low = littleEndianHost ? bswap32(localCommId) : localCommId >>> 0;
  return (BigInt(hiTid >>> 0) << 32n) | BigInt(low);
}

function bswap32(v: number): number {
  return (((v & 0xff) << 24) | ((v & 0xff00) << 8) | ((v >>> 8) & 0xff00) | ((v >>> 24) & 0xff)) >>> 0;
}

/** How many bytes of a private-data field are used, counting to its last non-zero byte. The MAD does not
 *  carry the length the sender meant (IBA 12.3: the field is always its full size); this is the best a
 *  reader of the wire can say. */
export function privateDataExtent(pd: Uint8Array): number {
  let n = pd.length;
  while (n > 0 && pd[n - 1] === 0) n--;
  return n;
}
