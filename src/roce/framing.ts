/**
 * RoCE framing: how an IB packet travels on Ethernet.
 *   RoCEv2 (Annex A17): [Eth] · IPv4 or IPv6 · UDP (dst 4791) · IB packet
 *   RoCEv1 (Annex A16): Eth (Ethertype 0x8915) · GRH (NxtHdr 0x1B) · IB packet
 *
 * `decodeFrame` classifies a captured frame (Ethernet, Linux cooked v1/v2,
 * raw IP or BSD loopback link types), parses it into a `FrameRepr`, and checks
 * its ICRC. `emitFrame` is its exact inverse (the ICRC recomputed by default,
 * so a round trip also proves the ICRC generator). `buildRoceV2` /
 * `buildRoceV1` make new, consistent frames (lengths, checksums, pad).
 * Nothing here throws on bad input: malformed frames come back classified.
 */
import { copyBytes, readRepr, writeRepr, type Repr } from './wire/field.js';
import { BTH_LEN } from './wire/bth.js';
import { GRH_LEN, GRH_NXTHDR_BTH, GRH_SPEC, type GrhRepr } from './wire/grh.js';
import {
  ETHERTYPE_IPV4,
  ETHERTYPE_IPV6,
  ETHERTYPE_QINQ,
  ETHERTYPE_ROCEV1,
  ETHERTYPE_VLAN,
  ETH_LEN,
  ETH_SPEC,
  IPPROTO_UDP,
  IPV4_LEN,
  IPV4_SPEC,
  IPV6_LEN,
  IPV6_SPEC,
  ROCEV2_UDP_PORT,
  UDP_LEN,
  UDP_SPEC,
  ipv4HeaderChecksum,
  udpChecksum,
  type EthRepr,
  type Ipv4Repr,
  type Ipv6Repr,
  type UdpRepr,
} from './wire/net.js';
import { ICRC_LEN, Malformed, PktInfo, ibReprLength, parseIb, readIbRepr, writeIbRepr, type IbRepr, type MalformedReason } from './packet.js';
import { icrcV1, icrcV2Ipv4, icrcV2Ipv6, readIcrc, writeIcrc } from './icrc.js';
import { OPCODES, Payload } from './opcode.js';
import { padFor } from './psn.js';

/** pcap LINKTYPE_* values understood by the decoder. */
export const LinkType = {
  NULL: 0,
  ETHERNET: 1,
  RAW: 101,
  LINUX_SLL: 113,
  IPV4: 228,
  IPV6: 229,
  LINUX_SLL2: 276,
} as const;

export type Encap = 'rocev2-ipv4' | 'rocev2-ipv6' | 'rocev1';

/**
 * ICRC outcomes. 'ok' and 'bad' are definite. 'unverifiable' means the bytes
 * the ICRC covers are not all at hand (an IPv4 header with options, or a
 * packet seen without its network header and without ID recovery); see the
 * README, "ICRC outcomes".
 */
export type IcrcStatus = 'ok' | 'bad' | 'unverifiable';

export interface FrameRepr {
  linkType: number;
  /** Ethernet header when the link type is Ethernet */
  eth?: EthRepr;
  /** the raw link header of other link types (Linux cooked, BSD loopback), kept for a byte-exact re-emit */
  linkHeader?: Uint8Array;
  encap: Encap;
  ipv4?: Ipv4Repr;
  ipv6?: Ipv6Repr;
  udp?: UdpRepr;
  grh?: GrhRepr;
  ib: IbRepr;
  /** bytes after the IB packet (Ethernet minimum-size padding, trailers) */
  trailer: Uint8Array;
}

export interface DecodedFrame {
  /** UDP destination port 4791 or Ethertype 0x8915: a RoCE packet, well-formed or not */
  roce: boolean;
  malformed: MalformedReason;
  encap?: Encap;
  icrc?: IcrcStatus;
  /** the ICRC this side computes (when verifiable) */
  icrcComputed?: number;
  frame?: FrameRepr;
}

const NOT_ROCE: DecodedFrame = Object.freeze({ roce: false, malformed: Malformed.NONE });

function u16(b: Uint8Array, o: number): number {
  return (b[o]! << 8) | b[o + 1]!;
}

const info = new PktInfo();

/** Classifies and parses one captured frame. Never throws. */
export function decodeFrame(data: Uint8Array, linkType: number): DecodedFrame {
  const buf = Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  let off = 0;
  let ethertype: number;
  let eth: EthRepr | undefined;
  let linkHeader: Uint8Array | undefined;
  const len = buf.length;
  switch (linkType) {
    case LinkType.ETHERNET: {
      if (len < ETH_LEN) return NOT_ROCE;
      const e = readRepr<Repr>(ETH_SPEC, buf, 0);
      off = 12;
      ethertype = u16(buf, off);
      const vlans: Array<[number, number]> = [];
      while ((ethertype === ETHERTYPE_VLAN || ethertype === ETHERTYPE_QINQ) && off + 6 <= len) {
        vlans.push([ethertype, u16(buf, off + 2)]);
        off += 4;
        ethertype = u16(buf, off);
      }
      if (ethertype === ETHERTYPE_VLAN || ethertype === ETHERTYPE_QINQ) return NOT_ROCE;
      off += 2;
      eth = { dst: e['dst'] as Uint8Array, src: e['src'] as Uint8Array, vlans, ethertype };
      break;
    }
    case LinkType.LINUX_SLL:
      if (len < 16) return NOT_ROCE;
      ethertype = u16(buf, 14);
      off = 16;
      linkHeader = buf.subarray(0, 16);
      break;
    case LinkType.LINUX_SLL2:
      if (len < 20) return NOT_ROCE;
      ethertype = u16(buf, 0);
      off = 20;
      linkHeader = buf.subarray(0, 20);
      break;
    case LinkType.NULL: {
      if (len < 4) return NOT_ROCE;
      // BSD loopback: address family in the capturing host's byte order.
      const fam = buf[0]! === 0 ? buf.readUInt32BE(0) : buf.readUInt32LE(0);
      ethertype = fam === 2 ? ETHERTYPE_IPV4 : fam === 24 || fam === 28 || fam === 30 ? ETHERTYPE_IPV6 : -1;
      off = 4;
      linkHeader = buf.subarray(0, 4);
      break;
    }
    case LinkType.RAW:
    case 12:
    case 14:
    case LinkType.IPV4:
    case LinkType.IPV6:
      if (len < 1) return NOT_ROCE;
      ethertype = buf[0]! >> 4 === 4 ? ETHERTYPE_IPV4 : buf[0]! >> 4 === 6 ? ETHERTYPE_IPV6 : -1;
      break;
    default:
      return NOT_ROCE;
  }
  const base = { linkType, trailer: new Uint8Array(0) } as FrameRepr;
  if (eth) base.eth = eth;
  if (linkHeader) base.linkHeader = copyBytes(linkHeader);

  if (ethertype === ETHERTYPE_IPV4) return decodeIpv4(buf, off, base);
  if (ethertype === ETHERTYPE_IPV6) return decodeIpv6(buf, off, base);
  if (ethertype === ETHERTYPE_ROCEV1) return decodeV1(buf, off, base);
  return NOT_ROCE;
}

function malformed(encap: Encap, reason: MalformedReason): DecodedFrame {
  return { roce: true, malformed: reason, encap };
}

function decodeIpv4(buf: Buffer, off: number, base: FrameRepr): DecodedFrame {
  const len = buf.length;
  if (len < off + IPV4_LEN) return NOT_ROCE;
  const ihl = (buf[off]! & 0x0f) * 4;
  if (buf[off]! >> 4 !== 4 || buf[off + 9] !== IPPROTO_UDP) return NOT_ROCE;
  const udpOff = off + ihl;
  if (ihl < IPV4_LEN || len < udpOff + 4) return NOT_ROCE;
  if (u16(buf, udpOff + 2) !== ROCEV2_UDP_PORT) return NOT_ROCE;
  // From here on it is addressed to RoCEv2: any defect is "malformed", not "not RoCE".
  const frag = u16(buf, off + 6);
  if ((frag & 0x3fff) !== 0) return malformed('rocev2-ipv4', Malformed.BAD_IP); // a fragment: cannot be checked
  const totalLen = u16(buf, off + 2);
  if (len < udpOff + UDP_LEN) return malformed('rocev2-ipv4', Malformed.TRUNCATED);
  const udpLen = u16(buf, udpOff + 4);
  if (totalLen !== ihl + udpLen || udpLen < UDP_LEN) return malformed('rocev2-ipv4', Malformed.BAD_UDP);
  if (off + totalLen > len) return malformed('rocev2-ipv4', Malformed.TRUNCATED);
  const bthOff = udpOff + UDP_LEN;
  const ibLen = udpLen - UDP_LEN;
  const r = parseIb(info, buf, bthOff, ibLen);
  if (r !== Malformed.NONE) return malformed('rocev2-ipv4', r);
  const ipv4 = readRepr<Ipv4Repr & Repr>(IPV4_SPEC, buf, off);
  if (ihl > IPV4_LEN) ipv4.options = copyBytes(buf, off + IPV4_LEN, udpOff);
  const frame: FrameRepr = {
    ...base,
    encap: 'rocev2-ipv4',
    ipv4,
    udp: readRepr<UdpRepr & Repr>(UDP_SPEC, buf, udpOff),
    ib: readIbRepr(info),
    trailer: copyBytes(buf, bthOff + ibLen),
  };
  if (ihl !== IPV4_LEN) return { roce: true, malformed: 0, encap: 'rocev2-ipv4', icrc: 'unverifiable', frame };
  const c = icrcV2Ipv4(buf, off, bthOff, info.icrcOff);
  return { roce: true, malformed: 0, encap: 'rocev2-ipv4', icrc: c === readIcrc(buf, info.icrcOff) ? 'ok' : 'bad', icrcComputed: c, frame };
}

function decodeIpv6(buf: Buffer, off: number, base: FrameRepr): DecodedFrame {
  const len = buf.length;
  if (len < off + IPV6_LEN + 4) return NOT_ROCE;
  if (buf[off]! >> 4 !== 6 || buf[off + 6] !== IPPROTO_UDP) return NOT_ROCE;
  const udpOff = off + IPV6_LEN;
  if (u16(buf, udpOff + 2) !== ROCEV2_UDP_PORT) return NOT_ROCE;
  if (len < udpOff + UDP_LEN) return malformed('rocev2-ipv6', Malformed.TRUNCATED);
  const payloadLen = u16(buf, off + 4);
  const udpLen = u16(buf, udpOff + 4);
  if (payloadLen !== udpLen || udpLen < UDP_LEN) return malformed('rocev2-ipv6', Malformed.BAD_UDP);
  if (udpOff + udpLen > len) return malformed('rocev2-ipv6', Malformed.TRUNCATED);
  const bthOff = udpOff + UDP_LEN;
  const ibLen = udpLen - UDP_LEN;
  const r = parseIb(info, buf, bthOff, ibLen);
  if (r !== Malformed.NONE) return malformed('rocev2-ipv6', r);
  const frame: FrameRepr = {
    ...base,
    encap: 'rocev2-ipv6',
    ipv6: readRepr<Ipv6Repr & Repr>(IPV6_SPEC, buf, off),
    udp: readRepr<UdpRepr & Repr>(UDP_SPEC, buf, udpOff),
    ib: readIbRepr(info),
    trailer: copyBytes(buf, bthOff + ibLen),
  };
  const c = icrcV2Ipv6(buf, off, bthOff, info.icrcOff);
  return { roce: true, malformed: 0, encap: 'rocev2-ipv6', icrc: c === readIcrc(buf, info.icrcOff) ? 'ok' : 'bad', icrcComputed: c, frame };
}

function decodeV1(buf: Buffer, off: number, base: FrameRepr): DecodedFrame {
  const len = buf.length;
  if (len < off + GRH_LEN) return malformed('rocev1', Malformed.TRUNCATED);
  if (buf[off]! >> 4 !== 6 || buf[off + 6] !== GRH_NXTHDR_BTH) return malformed('rocev1', Malformed.BAD_GRH);
  const bthOff = off + GRH_LEN;
  const ibLen = u16(buf, off + 4);
  if (bthOff + ibLen > len) return malformed('rocev1', Malformed.TRUNCATED);
  const r = parseIb(info, buf, bthOff, ibLen);
  if (r !== Malformed.NONE) return malformed('rocev1', r);
  const frame: FrameRepr = {
    ...base,
    encap: 'rocev1',
    grh: readRepr<GrhRepr & Repr>(GRH_SPEC, buf, off),
    ib: readIbRepr(info),
    trailer: copyBytes(buf, bthOff + ibLen),
  };
  const c = icrcV1(buf, off, info.icrcOff);
  return { roce: true, malformed: 0, encap: 'rocev1', icrc: c === readIcrc(buf, info.icrcOff) ? 'ok' : 'bad', icrcComputed: c, frame };
}

// ------------------------------------------------------------------ emit ---

function linkLength(f: FrameRepr): number {
  if (f.eth) return ETH_LEN + 4 * f.eth.vlans.length;
  return f.linkHeader ? f.linkHeader.length : 0;
}

function netLength(f: FrameRepr): number {
  if (f.ipv4) return IPV4_LEN + (f.ipv4.options?.length ?? 0) + UDP_LEN;
  if (f.ipv6) return IPV6_LEN + UDP_LEN;
  return GRH_LEN;
}

export function frameLength(f: FrameRepr): number {
  return linkLength(f) + netLength(f) + ibReprLength(f.ib) + f.trailer.length;
}

/**
 * Writes the frame. `icrc: 'recompute'` (the default) computes the ICRC over
 * the emitted headers; 'keep' writes `f.ib.icrc` as is (to emit a corrupt
 * packet on purpose).
 */
export function emitFrame(f: FrameRepr, o: { icrc?: 'recompute' | 'keep' } = {}): Buffer {
  const out = Buffer.alloc(frameLength(f));
  let p = 0;
  if (f.eth) {
    out.set(f.eth.dst, 0);
    out.set(f.eth.src, 6);
    p = 12;
    for (const [tpid, tci] of f.eth.vlans) {
      out.writeUInt16BE(tpid, p);
      out.writeUInt16BE(tci, p + 2);
      p += 4;
    }
    out.writeUInt16BE(f.eth.ethertype, p);
    p += 2;
  } else if (f.linkHeader) {
    out.set(f.linkHeader, 0);
    p = f.linkHeader.length;
  }
  const netOff = p;
  let bthOff: number;
  if (f.ipv4) {
    writeRepr(IPV4_SPEC, f.ipv4 as unknown as Repr, out, p);
    p += IPV4_LEN;
    if (f.ipv4.options) {
      out.set(f.ipv4.options, p);
      p += f.ipv4.options.length;
    }
    writeRepr(UDP_SPEC, f.udp as unknown as Repr, out, p);
    bthOff = p + UDP_LEN;
  } else if (f.ipv6) {
    writeRepr(IPV6_SPEC, f.ipv6 as unknown as Repr, out, p);
    writeRepr(UDP_SPEC, f.udp as unknown as Repr, out, p + IPV6_LEN);
    bthOff = p + IPV6_LEN + UDP_LEN;
  } else {
    writeRepr(GRH_SPEC, f.grh as unknown as Repr, out, p);
    bthOff = p + GRH_LEN;
  }
  const icrcOff = writeIbRepr(f.ib, out, bthOff);
  out.set(f.trailer, icrcOff + ICRC_LEN);
  if ((o.icrc ?? 'recompute') === 'recompute') {
    const c = f.ipv4
      ? f.ipv4.options
        ? f.ib.icrc
        : icrcV2Ipv4(out, netOff, bthOff, icrcOff)
      : f.ipv6
        ? icrcV2Ipv6(out, netOff, bthOff, icrcOff)
        : icrcV1(out, netOff, icrcOff);
    writeIcrc(out, icrcOff, c);
  }
  return out;
}

// --------------------------------------------------------------- builders ---

/** Fields of an IB packet to build; everything not given defaults as rxe sends it. */
export interface IbInit {
  opcode: number;
  destQp: number;
  psn: number;
  pkey?: number;
  se?: boolean;
  ackReq?: boolean;
  migReq?: boolean;
  becn?: boolean;
  fecn?: boolean;
  deth?: { qkey: number; srcQp: number };
  reth?: { va: bigint; rkey: number; dmaLen: number };
  aeth?: { syndrome: number; msn: number };
  atomicEth?: { va: bigint; rkey: number; swapAdd: bigint; compare: bigint };
  atomicAck?: { origData: bigint };
  immDt?: number;
  ieth?: number;
  feth?: { selectivity: number; placement: number };
  rdeth?: number;
  payload?: Uint8Array;
}

/** Makes a well-formed IbRepr: pad computed, absent headers zero. */
export function makeIb(i: IbInit): IbRepr {
  const payload = i.payload ?? new Uint8Array(OPCODES[i.opcode]?.payload === Payload.CNP16 ? 16 : 0);
  const pad = padFor(payload.length);
  const r: IbRepr = {
    bth: {
      opcode: i.opcode,
      se: i.se ? 1 : 0,
      migReq: i.migReq ? 1 : 0,
      padCnt: pad,
      tver: 0,
      pkey: i.pkey ?? 0xffff,
      fecn: i.fecn ? 1 : 0,
      becn: i.becn ? 1 : 0,
      resv6a: 0,
      destQp: i.destQp,
      ackReq: i.ackReq ? 1 : 0,
      resv7: 0,
      psn: i.psn,
    },
    payload,
    pad: new Uint8Array(pad),
    icrc: 0,
  };
  if (i.deth) r.deth = { qkey: i.deth.qkey >>> 0, resv: 0, srcQp: i.deth.srcQp };
  if (i.reth) r.reth = { ...i.reth };
  if (i.aeth) r.aeth = { ...i.aeth };
  if (i.atomicEth) r.atomicEth = { ...i.atomicEth };
  if (i.atomicAck) r.atomicAck = { ...i.atomicAck };
  if (i.immDt !== undefined) r.immDt = { imm: i.immDt >>> 0 };
  if (i.ieth !== undefined) r.ieth = { rkey: i.ieth >>> 0 };
  if (i.feth) r.feth = { resv: 0, ...i.feth };
  if (i.rdeth !== undefined) r.rdeth = { resv: 0, een: i.rdeth };
  return r;
}

export interface V2Init {
  src: Uint8Array; // 4 bytes (IPv4) or 16 (IPv6)
  dst: Uint8Array;
  srcPort: number;
  /** IPv4 TOS / IPv6 traffic class */
  tclass?: number;
  /** IPv4 TTL / IPv6 hop limit */
  hopLimit?: number;
  flowLabel?: number;
  /** IPv4 ID: 0, what a socket with IP_PMTUDISC_DO gets */
  ipId?: number;
  /** rxe sends a zero UDP checksum; 'compute' fills a real one */
  udpChecksum?: 'zero' | 'compute';
  eth?: { src: Uint8Array; dst: Uint8Array; vlan?: number };
}

export function buildRoceV2(n: V2Init, ib: IbRepr): FrameRepr {
  const ibLen = ibReprLength(ib);
  const udpLen = UDP_LEN + ibLen;
  const v6 = n.src.length === 16;
  const f: FrameRepr = {
    linkType: n.eth ? LinkType.ETHERNET : LinkType.RAW,
    encap: v6 ? 'rocev2-ipv6' : 'rocev2-ipv4',
    udp: { srcPort: n.srcPort, dstPort: ROCEV2_UDP_PORT, length: udpLen, checksum: 0 },
    ib,
    trailer: new Uint8Array(0),
  };
  if (n.eth) {
    f.eth = {
      dst: n.eth.dst,
      src: n.eth.src,
      vlans: n.eth.vlan !== undefined ? [[ETHERTYPE_VLAN, n.eth.vlan]] : [],
      ethertype: v6 ? ETHERTYPE_IPV6 : ETHERTYPE_IPV4,
    };
  }
  if (v6) {
    f.ipv6 = {
      version: 6,
      tclass: n.tclass ?? 0,
      flowLabel: n.flowLabel ?? 0,
      payloadLen: udpLen,
      nextHeader: IPPROTO_UDP,
      hopLimit: n.hopLimit ?? 64,
      src: n.src,
      dst: n.dst,
    };
  } else {
    f.ipv4 = {
      version: 4,
      ihl: 5,
      tos: n.tclass ?? 0,
      totalLen: IPV4_LEN + udpLen,
      id: n.ipId ?? 0,
      flags: 2,
      fragOff: 0,
      ttl: n.hopLimit ?? 64,
      protocol: IPPROTO_UDP,
      checksum: 0,
      src: n.src,
      dst: n.dst,
    };
  }
  // Fill the checksums from a first emit.
  const tmp = emitFrame(f);
  const netOff = linkLength(f);
  if (f.ipv4) f.ipv4.checksum = ipv4HeaderChecksum(tmp, netOff);
  if (n.udpChecksum === 'compute') {
    const udpOff = netOff + (v6 ? IPV6_LEN : IPV4_LEN);
    f.udp!.checksum = udpChecksum(n.src, n.dst, tmp, udpOff, udpLen);
  }
  f.ib.icrc = readIcrc(emitFrame(f), netOff + netLength(f) + ibReprLength(ib) - ICRC_LEN);
  return f;
}

export interface V1Init {
  sgid: Uint8Array;
  dgid: Uint8Array;
  tclass?: number;
  flowLabel?: number;
  hopLimit?: number;
  eth: { src: Uint8Array; dst: Uint8Array; vlan?: number };
}

export function buildRoceV1(n: V1Init, ib: IbRepr): FrameRepr {
  const f: FrameRepr = {
    linkType: LinkType.ETHERNET,
    eth: {
      dst: n.eth.dst,
      src: n.eth.src,
      vlans: n.eth.vlan !== undefined ? [[ETHERTYPE_VLAN, n.eth.vlan]] : [],
      ethertype: ETHERTYPE_ROCEV1,
    },
    encap: 'rocev1',
    grh: {
      ipVer: 6,
      tclass: n.tclass ?? 0,
      flowLabel: n.flowLabel ?? 0,
      payLen: ibReprLength(ib),
      nxtHdr: GRH_NXTHDR_BTH,
      hopLmt: n.hopLimit ?? 1,
      sgid: n.sgid,
      dgid: n.dgid,
    },
    ib,
    trailer: new Uint8Array(0),
  };
  const out = emitFrame(f);
  f.ib.icrc = readIcrc(out, out.length - ICRC_LEN);
  return f;
}

/** Where the IB packet starts in an emitted frame (tests, tracer). */
export function ibOffset(f: FrameRepr): number {
  return linkLength(f) + netLength(f);
}
export { BTH_LEN };
