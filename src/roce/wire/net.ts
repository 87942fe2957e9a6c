/**
 * The non-IB headers that carry RoCE: Ethernet (with 802.1Q/802.1ad tags),
 * IPv4, IPv6 and UDP. RoCEv2 = Eth · IP · UDP(dst 4791) · BTH…;
 * RoCEv1 = Eth(0x8915) · GRH · BTH… (IBA Annex A16 / A17).
 */
import type { HeaderSpec } from './field.js';

export const ETH_LEN = 14;
export const ETHERTYPE_IPV4 = 0x0800;
export const ETHERTYPE_IPV6 = 0x86dd;
export const ETHERTYPE_ROCEV1 = 0x8915;
export const ETHERTYPE_VLAN = 0x8100;
export const ETHERTYPE_QINQ = 0x88a8;
export const IPV4_LEN = 20;
export const IPV6_LEN = 40;
export const UDP_LEN = 8;
export const IPPROTO_UDP = 17;
/** IANA-assigned RoCEv2 destination port (IBA Annex A17.2.2). */
export const ROCEV2_UDP_PORT = 4791;

export const ETH_SPEC: HeaderSpec = {
  name: 'Ethernet',
  length: ETH_LEN,
  fields: [
    ['dst', 0, 'bytes', 6],
    ['src', 6, 'bytes', 6],
    ['ethertype', 12, 0, 16],
  ],
};
export interface EthRepr {
  dst: Uint8Array;
  src: Uint8Array;
  /** 802.1Q / 802.1ad tags in wire order, each as [TPID, TCI]. */
  vlans: Array<[number, number]>;
  ethertype: number;
}

export const IPV4_SPEC: HeaderSpec = {
  name: 'IPv4',
  length: IPV4_LEN,
  fields: [
    ['version', 0, 4, 4],
    ['ihl', 0, 0, 4],
    ['tos', 1, 0, 8],
    ['totalLen', 2, 0, 16],
    ['id', 4, 0, 16],
    ['flags', 6, 13, 3],
    ['fragOff', 6, 0, 13],
    ['ttl', 8, 0, 8],
    ['protocol', 9, 0, 8],
    ['checksum', 10, 0, 16],
    ['src', 12, 'bytes', 4],
    ['dst', 16, 'bytes', 4],
  ],
};
export interface Ipv4Repr {
  version: number;
  ihl: number;
  tos: number;
  totalLen: number;
  id: number;
  /** 3 bits: reserved, DF (2), MF (1). */
  flags: number;
  fragOff: number;
  ttl: number;
  protocol: number;
  checksum: number;
  src: Uint8Array;
  dst: Uint8Array;
  /** IPv4 options (IHL > 5), kept raw so a re-emit is byte exact. */
  options?: Uint8Array;
}
export const IPV4_FLAG_DF = 0x2;

export const IPV6_SPEC: HeaderSpec = {
  name: 'IPv6',
  length: IPV6_LEN,
  fields: [
    ['version', 0, 4, 4],
    ['tclass', 0, 4, 8],
    ['flowLabel', 1, 0, 20],
    ['payloadLen', 4, 0, 16],
    ['nextHeader', 6, 0, 8],
    ['hopLimit', 7, 0, 8],
    ['src', 8, 'bytes', 16],
    ['dst', 24, 'bytes', 16],
  ],
};
export interface Ipv6Repr {
  version: number;
  tclass: number;
  flowLabel: number;
  payloadLen: number;
  nextHeader: number;
  hopLimit: number;
  src: Uint8Array;
  dst: Uint8Array;
}

export const UDP_SPEC: HeaderSpec = {
  name: 'UDP',
  length: UDP_LEN,
  fields: [
    ['srcPort', 0, 0, 16],
    ['dstPort', 2, 0, 16],
    ['length', 4, 0, 16],
    ['checksum', 6, 0, 16],
  ],
};
export interface UdpRepr {
  srcPort: number;
  dstPort: number;
  length: number;
  checksum: number;
}

/** RFC 791 header checksum over `len` bytes at `off` (checksum field included as stored). */
export function ipv4HeaderChecksum(buf: Uint8Array, off: number, len = IPV4_LEN): number {
  let sum = 0;
  for (let i = 0; i < len; i += 2) {
    if (i === 10) continue;
    sum += (buf[off + i]! << 8) | buf[off + i + 1]!;
  }
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return ~sum & 0xffff;
}

/** RFC 768 checksum of a UDP datagram over IPv4 or IPv6 (pseudo-header included). */
export function udpChecksum(src: Uint8Array, dst: Uint8Array, buf: Uint8Array, off: number, len: number): number {
  let sum = 0;
  for (let i = 0; i < src.length; i += 2) sum += (src[i]! << 8) | src[i + 1]!;
  for (let i = 0; i < dst.length; i += 2) sum += (dst[i]! << 8) | dst[i + 1]!;
  sum += IPPROTO_UDP + (len >>> 16) + (len & 0xffff);
  for (let i = 0; i < len; i += 2) {
    if (i === 6) continue;
    const hi = buf[off + i]!;
    const lo = i + 1 < len ? buf[off + i + 1]! : 0;
    sum += (hi << 8) | lo;
  }
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  const c = ~sum & 0xffff;
  return c === 0 ? 0xffff : c;
}
