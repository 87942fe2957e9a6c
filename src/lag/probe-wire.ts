/**
 * The frames teamd's arp_ping and nsna_ping link watches send and the replies they look at, as
 * Ethernet frames for an AF_PACKET socket (probe-io.ts). Pure: build into a caller's buffer, parse
 * into plain objects the watches (link-watch-psr.ts) judge, so tests can fake either side.
 *
 * - ARP (RFC 826; teamd_lw_arp_ping.c lw_ap_send): a broadcast REQUEST from the port's MAC, sender
 *   IP source_host (0.0.0.0 by default: an RFC 5227 probe, which Linux answers too: arp_process's
 *   `sip == 0` case), target MAC all-ones as teamd writes it, target IP target_host; 802.1Q-tagged
 *   when the watch has a vlanid.
 * - NS (RFC 4861 4.3; teamd_lw_nsna_ping.c lw_nsnap_send): to the target's solicited-node multicast
 *   group (ff02::1:ffXX:XXXX, RFC 4291 2.7.1; Ethernet 33:33:ff:XX:XX:XX, RFC 2464 7), hop limit
 *   255, a source link-layer address option with the port's MAC. teamd sends it from an ICMPv6 raw
 *   socket (the kernel fills the IPv6 header, source = the port's link-local address, and the
 *   checksum); here the whole frame is built, the checksum over RFC 8200 8.1's pseudo-header.
 *   Solicited by multicast, the kernel's NA carries the target link-layer address option
 *   (ndisc_recv_ns: inc_opt), which teamd's receive check requires.
 */
import { gidFromString } from '../roce/gid.js';

export const ETHERTYPE_ARP = 0x0806;
export const ETHERTYPE_IPV6 = 0x86dd;
const ETHERTYPE_8021Q = 0x8100;
const ARPHRD_ETHER = 1;
const ETH_P_IP = 0x0800;
export const ARPOP_REQUEST = 1;
export const ARPOP_REPLY = 2;
const IPPROTO_ICMPV6 = 58;
export const ND_NEIGHBOR_SOLICIT = 135;
export const ND_NEIGHBOR_ADVERT = 136;
const ND_OPT_SOURCE_LINKADDR = 1;
export const ND_OPT_TARGET_LINKADDR = 2;

/** Longest frame built here: Ethernet + 802.1Q + ARP (46) or Ethernet + IPv6 + NS with option (86). */
export const PROBE_FRAME_MAX = 128;

/** An ARP packet as teamd's receive sees it (struct arp_packet), addresses as dotted quads. */
export interface ArpPacket {
  readonly kind: 'arp';
  readonly hrd: number;
  readonly pro: number;
  readonly hln: number;
  readonly pln: number;
  readonly op: number;
  readonly senderIp: string;
  readonly targetIp: string;
}

/** A Neighbour Advertisement as teamd's receive sees it (struct na_packet). */
export interface NaPacket {
  readonly kind: 'na';
  /** the IPv6 header's version, payload length, next header and hop limit */
  readonly version: number;
  readonly payloadLen: number;
  readonly nextHeader: number;
  readonly hopLimit: number;
  readonly type: number;
  /** the target address, 16 bytes as 32 hex digits */
  readonly target: string;
  readonly optType: number;
  readonly optLen: number;
}

export type ProbeReply = ArpPacket | NaPacket;

function ipv4Bytes(ip: string): number[] {
  const p = ip.split('.').map(Number);
  if (p.length !== 4 || p.some((x) => !Number.isInteger(x) || x < 0 || x > 255)) throw new RangeError(`not an IPv4 address: ${ip}`);
  return p;
}

/** The ARP request teamd sends; returns the frame's length. */
export function buildArpRequest(out: Buffer, mac: Uint8Array, sourceIp: string, targetIp: string, vlanId?: number): number {
  out.fill(0xff, 0, 6);
  out.set(mac.subarray(0, 6), 6);
  let o = 12;
  if (vlanId !== undefined) {
    // teamd puts the VLAN id alone in the TCI (priority 0, DEI 0)
    out.writeUInt16BE(ETHERTYPE_8021Q, o);
    out.writeUInt16BE(vlanId & 0xfff, o + 2);
    o += 4;
  }
  out.writeUInt16BE(ETHERTYPE_ARP, o);
  o += 2;
  out.writeUInt16BE(ARPHRD_ETHER, o);
  out.writeUInt16BE(ETH_P_IP, o + 2);
  out[o + 4] = 6;
  out[o + 5] = 4;
  out.writeUInt16BE(ARPOP_REQUEST, o + 6);
  out.set(mac.subarray(0, 6), o + 8);
  out.set(ipv4Bytes(sourceIp), o + 14);
  out.fill(0xff, o + 18, o + 24);
  out.set(ipv4Bytes(targetIp), o + 24);
  return o + 28;
}

/** An ARP frame's packet (untagged; a tagged one when `vlanId` is given and matches), else null. */
export function parseArpFrame(f: Uint8Array, len: number, vlanId?: number): ArpPacket | null {
  if (len < 14) return null;
  const b = Buffer.from(f.buffer, f.byteOffset, len);
  let o = 12;
  let type = b.readUInt16BE(o);
  if (type === ETHERTYPE_8021Q) {
    if (len < 18 || vlanId === undefined || (b.readUInt16BE(14) & 0xfff) !== vlanId) return null;
    o += 4;
    type = b.readUInt16BE(o);
  } else if (vlanId !== undefined) return null;
  if (type !== ETHERTYPE_ARP) return null;
  o += 2;
  if (len < o + 28) return null;
  const ip = (at: number): string => `${b[at]}.${b[at + 1]}.${b[at + 2]}.${b[at + 3]}`;
  return {
    kind: 'arp',
    hrd: b.readUInt16BE(o),
    pro: b.readUInt16BE(o + 2),
    hln: b[o + 4]!,
    pln: b[o + 5]!,
    op: b.readUInt16BE(o + 6),
    senderIp: ip(o + 14),
    targetIp: ip(o + 24),
  };
}

/**
 * teamd's validation of an ARP packet (lw_ap_receive, when the port's validate_active /
 * validate_inactive applies): an Ethernet/IPv4 REPLY between source_host and target_host, either
 * way round.
 */
export function arpReplyValid(p: ArpPacket, sourceIp: string, targetIp: string): boolean {
  if (p.hrd !== ARPHRD_ETHER || p.pro !== ETH_P_IP || p.hln !== 6 || p.pln !== 4 || p.op !== ARPOP_REPLY) return false;
  return (p.targetIp === sourceIp && p.senderIp === targetIp) || (p.targetIp === targetIp && p.senderIp === sourceIp);
}

/** The solicited-node multicast address of `target` (RFC 4291 2.7.1: ff02::1:ff + its low 24 bits). */
export function solicitedNode(target: Uint8Array): Uint8Array {
  const g = new Uint8Array(16);
  g[0] = 0xff;
  g[1] = 0x02;
  g[11] = 0x01;
  g[12] = 0xff;
  g[13] = target[13]!;
  g[14] = target[14]!;
  g[15] = target[15]!;
  return g;
}

/** The ICMPv6 checksum of `msg` (RFC 4443 2.3) over the pseudo-header of RFC 8200 8.1. */
export function icmpv6Checksum(src: Uint8Array, dst: Uint8Array, msg: Uint8Array): number {
  let sum = 0;
  const add16 = (hi: number, lo: number): void => {
    sum += (hi << 8) | lo;
  };
  for (let i = 0; i < 16; i += 2) add16(src[i]!, src[i + 1]!);
  for (let i = 0; i < 16; i += 2) add16(dst[i]!, dst[i + 1]!);
  sum += msg.length >>> 16;
  sum += msg.length & 0xffff;
  sum += IPPROTO_ICMPV6;
  for (let i = 0; i < msg.length; i += 2) add16(msg[i]!, msg[i + 1] ?? 0);
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return ~sum & 0xffff;
}

/** The Neighbour Solicitation teamd sends for `target` (an IPv6 address); returns the frame's length. */
export function buildNs(out: Buffer, mac: Uint8Array, source: Uint8Array, target: Uint8Array): number {
  const dst = solicitedNode(target);
  // Ethernet: 33:33 + the group's low 32 bits (RFC 2464 7)
  out[0] = 0x33;
  out[1] = 0x33;
  out.set(dst.subarray(12, 16), 2);
  out.set(mac.subarray(0, 6), 6);
  out.writeUInt16BE(ETHERTYPE_IPV6, 12);
  const ip = 14;
  out.writeUInt32BE(0x60000000, ip);
  out.writeUInt16BE(32, ip + 4); // NS (24) + source link-layer address option (8)
  out[ip + 6] = IPPROTO_ICMPV6;
  out[ip + 7] = 255; // RFC 4861 7.1.1: a receiver drops an NS whose hop limit is not 255
  out.set(source, ip + 8);
  out.set(dst, ip + 24);
  const m = ip + 40;
  out.fill(0, m, m + 32);
  out[m] = ND_NEIGHBOR_SOLICIT;
  out.set(target, m + 8);
  out[m + 24] = ND_OPT_SOURCE_LINKADDR;
  out[m + 25] = 1; // in units of 8 bytes
  out.set(mac.subarray(0, 6), m + 26);
  out.writeUInt16BE(icmpv6Checksum(source, dst, out.subarray(m, m + 32)), m + 2);
  return m + 32;
}

/** A frame's Neighbour Advertisement (IPv6, next header ICMPv6, type 136: teamd's socket filter), else null. */
export function parseNaFrame(f: Uint8Array, len: number): NaPacket | null {
  if (len < 14 + 40 + 24) return null;
  const b = Buffer.from(f.buffer, f.byteOffset, len);
  if (b.readUInt16BE(12) !== ETHERTYPE_IPV6) return null;
  const ip = 14;
  const m = ip + 40;
  if (b[ip + 6] !== IPPROTO_ICMPV6 || b[m] !== ND_NEIGHBOR_ADVERT) return null;
  const hasOpt = len >= m + 26;
  return {
    kind: 'na',
    version: b[ip]! >> 4,
    payloadLen: b.readUInt16BE(ip + 4),
    nextHeader: b[ip + 6]!,
    hopLimit: b[ip + 7]!,
    type: ND_NEIGHBOR_ADVERT,
    target: b.subarray(m + 8, m + 24).toString('hex'),
    optType: hasOpt ? b[m + 24]! : 0,
    optLen: hasOpt ? b[m + 25]! : 0,
  };
}

/** teamd's check of an NA (lw_nsnap_receive): an unrouted NA of exactly NA + one option, for our target, with its MAC. */
export function naValid(p: NaPacket, targetHex: string): boolean {
  return (
    p.version === 6 &&
    p.payloadLen === 32 &&
    p.nextHeader === IPPROTO_ICMPV6 &&
    p.hopLimit === 255 &&
    p.type === ND_NEIGHBOR_ADVERT &&
    p.target === targetHex &&
    p.optType === ND_OPT_TARGET_LINKADDR &&
    p.optLen === 1
  );
}

/** An IPv6 address as the 32 hex digits NaPacket.target uses. */
export function ipv6Hex(ip: string): string {
  return Buffer.from(gidFromString(ip)).toString('hex');
}
