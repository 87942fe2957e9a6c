/**
 * The receive path (IBA 9.6 packet header validation; rxe_recv.c): parse,
 * check the ICRC, the P_Key and the destination QP, then hand requests to the
 * responder and responses to the completer. Every drop is counted by reason;
 * nothing here throws, so one bad packet never disturbs another QP.
 */
import { PktInfo, parseIb } from '../packet.js';
import { Ipv4IdWindow, checkIcrcV4, icrcV2Ipv6PartsS, readIcrcS } from '../icrc.js';
import { Op } from '../opcode.js';
import { OPCODE_TRANSPORT } from '../opcode.js';
import { qpTransportPrefix } from './build.js';
import { BthView } from '../wire/bth.js';
import { Ctr } from '../counters.js';
import { gidFromString, parseIpv4 } from '../gid.js';
import { onRequest } from './responder.js';
import { IPID_ROCEV1, setRxDestination } from './responder-answers.js';
import { onResponse } from './completer.js';
import type { TransportDevice as Device, PortLike as Port, TransportQp as Qp } from './types.js';
import { PLACE_READ_MIDDLE, PLACE_SEND_MIDDLE, RX_ICRC_OK, RX_ICRC_VERIFIED, RX_ID_INFERRED } from '../link/link.js';
import { applyPlaced, applyPlacedRead, applyPlacedSend, armAfterRequest, armAfterResponse } from './place.js';

const info = new PktInfo();
/** The BTH of the datagram being received (bound once per packet; the roles bind their own). */
const rxBth = new BthView();
const v4bytes = new Uint8Array(4);

const v6cache = new Map<string, Uint8Array>();
function v6(s: string): Uint8Array {
  let b = v6cache.get(s);
  if (!b) {
    b = gidFromString(s.split('%')[0]!);
    if (v6cache.size > 4096) v6cache.clear();
    v6cache.set(s, b);
  }
  return b;
}

/** A multicast group as the link names it (RxHandler's `group`): its IPv4 number and its address bytes (4 or 16). */
interface GroupAddr {
  readonly num: number;
  readonly bytes: Uint8Array;
}
const groupCache = new Map<string, GroupAddr>();
function groupAddr(g: string): GroupAddr {
  let a = groupCache.get(g);
  if (a === undefined) {
    if (g.includes(':')) a = { num: 0, bytes: v6(g) };
    else {
      const n = parseIpv4(g);
      a = { num: n, bytes: Uint8Array.of(n >>> 24, (n >>> 16) & 0xff, (n >>> 8) & 0xff, n & 0xff) };
    }
    if (groupCache.size > 4096) groupCache.clear();
    groupCache.set(g, a);
  }
  return a;
}

/** The multicast QPN (IBA 9.2.3.1 / rxe IB_MULTICAST_QPN): a packet to it goes to the QPs attached to its destination group. */
export const MULTICAST_QPN = 0xffffff;

/** QP type ↔ opcode transport (the opcode table's transport of the opcode: RC, UC, UD; never RD or CNP). */
function transportOk(type: string, opcode: number): boolean {
  return OPCODE_TRANSPORT[opcode] === qpTransportPrefix(type);
}

let lastSrcIp = '',
  lastSrc = -1;

/** Per port: which inferred IPv4 IDs each peer address may send (icrc.ts Ipv4IdWindow). */
const windows = new WeakMap<object, Ipv4IdWindow>();
let lastWinPort: object | null = null,
  lastWin: Ipv4IdWindow | undefined;

/** The port's IPv4 ID window (one per port; the last one looked up is kept for the next packet). */
function idWindow(port: Port): Ipv4IdWindow {
  let win = port === lastWinPort ? lastWin : windows.get(port);
  if (win === undefined) {
    win = new Ipv4IdWindow();
    windows.set(port, win);
  }
  lastWinPort = port;
  lastWin = win;
  return win;
}

/**
 * ipIdDf: the datagram's IPv4 `id | df << 16` when the link saw its IP header, else -1. group: the
 * multicast group it was sent to (a group the link joined), absent for the port's own address: the
 * ICRC covers the destination address, and a packet to QPN 0xFFFFFF is delivered by it.
 */
export function deviceRx(dev: Device, port: Port, buf: Buffer, len: number, srcIp: string, srcPort: number, ipIdDf = -1, group?: string): void {
  const counts = port.counters.counts;
  counts[Ctr.rcvd_pkts]!++;
  if (dev.closed) return;
  if (parseIb(info, buf, 0, len) !== 0) {
    counts[Ctr.rcvd_malformed]!++;
    return;
  }
  let ipId = 0,
    df = 1;
  let srcBytes: Uint8Array;
  /** the IPv4 source as a number (-1: not IPv4): RX direct placement arms for packets from it */
  let srcNum = -1;
  const dst = group === undefined ? null : groupAddr(group);
  if (ipIdDf === RX_ICRC_VERIFIED) {
    // RoCEv1 (link/rocev1-link.ts): the link checked the ICRC over the GRH, which has no IPv4 ID or
    // UDP port; srcIp is the source GID as an address (IPv4 when IPv4-mapped).
    if (srcIp.includes(':')) srcBytes = v6(srcIp);
    else {
      const src = parseIpv4(srcIp);
      v4bytes[0] = src >>> 24;
      v4bytes[1] = (src >>> 16) & 0xff;
      v4bytes[2] = (src >>> 8) & 0xff;
      v4bytes[3] = src & 0xff;
      srcBytes = v4bytes;
    }
  } else if (port.link.family === 4) {
    // dgram hands us a new string per datagram; most come from the same peer.
    let src: number;
    if (srcIp === lastSrcIp) src = lastSrc;
    else {
      src = parseIpv4(srcIp);
      lastSrcIp = srcIp;
      lastSrc = src;
    }
    if (src < 0) {
      counts[Ctr.rcvd_bad_addr]!++;
      return;
    }
    // The real IPv4 ID when the link read the IP header (full CRC-32), else a bounded inference (icrc.ts).
    const win = idWindow(port);
    let r: number;
    if (ipIdDf >= 0 && ipIdDf & RX_ICRC_OK && dst === null) {
      // The link checked this ICRC already (the addon's RX fast path, native/fast-rx.cc), to the port's
      // own address and under an ID checkIcrcV4 would have found and accepted too: only its ID
      // bookkeeping is left, so the window ends as the JS check would leave it.
      r = ipIdDf & 0x1ffff;
      if ((ipIdDf & RX_ID_INFERRED) === 0) win.known(src, r & 0xffff);
      else if (dev.icrcIpv4 === 'infer-id') win.accept(src, r & 0xffff);
    } else {
      // (A verdict for another destination than ours would not be this check's: checked again.)
      const known = ipIdDf >= 0 && ipIdDf & RX_ICRC_OK ? (ipIdDf & RX_ID_INFERRED ? -1 : ipIdDf & 0x1ffff) : ipIdDf;
      r = checkIcrcV4(dev.icrcIpv4, win, known, src, dst !== null ? dst.num : port.ipNum, srcPort, port.link.localPort, buf, 0, info.icrcOff);
    }
    if (r < 0) {
      counts[Ctr.rcvd_icrc_err]!++;
      return;
    }
    ipId = r & 0xffff;
    df = r >>> 16;
    srcNum = src;
    v4bytes[0] = src >>> 24;
    v4bytes[1] = (src >>> 16) & 0xff;
    v4bytes[2] = (src >>> 8) & 0xff;
    v4bytes[3] = src & 0xff;
    srcBytes = v4bytes;
  } else {
    srcBytes = v6(srcIp);
    const c = icrcV2Ipv6PartsS(srcBytes, dst !== null ? dst.bytes : port.addrBytes, srcPort, port.link.localPort, buf, 0, info.icrcOff);
    if (c !== readIcrcS(buf, info.icrcOff)) {
      counts[Ctr.rcvd_icrc_err]!++;
      return;
    }
  }
  port.link.rxAccepted?.(buf, len, srcIp, srcPort, ipId | (df << 16), group);
  // P_Key: our table has the default partition only; the membership bit is not compared (rxe check_keys).
  const bth = rxBth.bind(buf, info.bthOff);
  if ((bth.pkey & 0x7fff) !== 0x7fff) {
    counts[Ctr.rcvd_bad_pkey]!++;
    return;
  }
  const qpn = bth.destQp;
  if (qpn === MULTICAST_QPN) {
    mcastRx(dev, port, group, dst, srcIp, srcPort, ipIdDf === RX_ICRC_VERIFIED ? IPID_ROCEV1 : ipId, srcBytes);
    return;
  }
  // QP1 (GSI) is per port: a MAD goes to the QP1 of the port it arrived on (IBA 13.4.6.1), so the
  // lookup takes the port; no other QP gets a QPN below 0x11 (device.createQpFor). QP0 (SMI) does not exist on RoCE.
  const qp = qpn === 1 ? dev.gsiOn(port.num) : qpn === 0 ? null : dev.qps.get(qpn);
  if (!qp || qp.closed) {
    counts[Ctr.rcvd_unknown_qp]!++;
    return;
  }
  if (!transportOk(qp.type, info.opcode)) {
    counts[Ctr.rcvd_bad_opcode]!++;
    return;
  }
  if (qp.port !== port.num) {
    counts[Ctr.rcvd_bad_state]!++;
    return;
  }
  // rxe check_addr: a connected QP takes packets (requests and responses alike) only from the
  // address in its AV. Compared as bytes: an address string has many spellings ("::1" and
  // "0:0:0:0:0:0:0:1"), a GID has one. A QP without an AV (RESET, INIT) is refused by state below.
  if ((qp.type === 'RC' || qp.type === 'UC') && qp.av !== null && !fromPeer(qp.dest.bytes, srcBytes)) {
    counts[Ctr.rcvd_bad_addr]!++;
    return;
  }
  // Last line of defence: a bug in a role must not take the process (or another QP) down. The
  // QP whose packet broke it goes to ERR, as a local QP error would (IBA 10.3.1: QP_FATAL).
  try {
    const req = (info.mask & Op.REQ) !== 0;
    if (req) onRequest(qp, info, srcIp, srcPort, ipIdDf === RX_ICRC_VERIFIED ? IPID_ROCEV1 : ipId, srcBytes);
    else onResponse(qp, info);
    // RX direct placement: a WRITE still in progress after this packet (its FIRST, a MIDDLE, or
    // anything that made the link disarm the QP) has its next MIDDLEs placed by the link; so do
    // the responses of a READ still coming in after a READ response.
    if (port.link.armPlacement !== undefined && srcNum >= 0 && qp.type === 'RC' && dst === null) {
      if (req) armAfterRequest(qp, port.link, srcNum, srcPort);
      else if (info.mask & Op.READ) armAfterResponse(qp, port.link, srcNum, srcPort);
    }
  } catch {
    counts[Ctr.rcvd_internal_err]!++;
    qpFatal(qp);
  }
}

/**
 * RX direct placement (Link.armPlacement, PlacedHandler): `count` RC WRITE MIDDLEs (or READ
 * RESPONSE MIDDLEs: `opcode`) of QP `qpn` that the link verified and placed, from srcIp:srcPort, the first with ipIdDf firstIpIdDf (RX_ICRC_OK;
 * packet j's ID is the first's + j). Counted and remembered here as deviceRx would each of them
 * (rcvd_pkts, the IPv4 ID window); the responder applies the rest (place.ts applyPlaced), or for READ
 * responses the completer (applyPlacedRead).
 */
export function deviceRxPlaced(
  dev: Device,
  port: Port,
  qpn: number,
  firstPsn: number,
  count: number,
  pmtu: number,
  ackReq: boolean,
  srcIp: string,
  firstIpIdDf: number,
  opcode: number,
): void {
  const counts = port.counters.counts;
  counts[Ctr.rcvd_pkts]! += count;
  let src: number;
  if (srcIp === lastSrcIp) src = lastSrc;
  else {
    src = parseIpv4(srcIp);
    lastSrcIp = srcIp;
    lastSrc = src;
  }
  const win = idWindow(port);
  const known = (firstIpIdDf & RX_ID_INFERRED) === 0;
  // One clock read per run, not per packet. A known ID only sets the window's reference, so the
  // run's last ID is all it needs; inferred ones are each checked against the window.
  if (known) win.known(src, (firstIpIdDf + count - 1) & 0xffff, win.clock());
  else if (dev.icrcIpv4 === 'infer-id') {
    const now = win.clock();
    for (let j = 0; j < count; j++) win.accept(src, (firstIpIdDf + j) & 0xffff, now);
  }
  const qp = dev.qps.get(qpn);
  if (!qp || qp.closed) {
    // (Cannot happen: destroying a QP disarms it first.)
    counts[Ctr.rcvd_unknown_qp]! += count;
    return;
  }
  try {
    if (opcode === PLACE_READ_MIDDLE) applyPlacedRead(qp, firstPsn, count, pmtu);
    else if (opcode === PLACE_SEND_MIDDLE) applyPlacedSend(qp, firstPsn, count, pmtu, ackReq);
    else applyPlaced(qp, firstPsn, count, pmtu, ackReq);
  } catch {
    counts[Ctr.rcvd_internal_err]!++;
    qpFatal(qp);
  }
}

/**
 * A packet to the multicast QPN (rxe_rcv_mcast_pkt): the group is the datagram's destination (for
 * RoCEv2 over IPv4 the MGID is ::ffff:<group>); every QP attached to it on this port gets the packet,
 * each checked on its own (type, state, then the Q_Key in the responder's GET_REQ) and a failure of one
 * does not stop the others. A QP attached on the sending device gets its copy too (rxe skips no QP: the
 * sender's own copy comes back through the IP stack's multicast loopback). A datagram that was not sent
 * to a joined group (a unicast one to QPN 0xFFFFFF, a RoCEv1 one) or whose group has no QP on this port
 * is dropped: rcvd_mcast_no_qp (rxe drops it uncounted).
 */
function mcastRx(
  dev: Device,
  port: Port,
  group: string | undefined,
  dst: GroupAddr | null,
  srcIp: string,
  srcPort: number,
  ipId: number,
  srcBytes: Uint8Array,
): void {
  const counts = port.counters.counts;
  // The device replaces the array on attach and detach: a completion handler that detaches a QP
  // during this loop does not disturb it.
  const qps = group === undefined ? undefined : dev.mcastQps(group);
  let delivered = 0;
  if (qps !== undefined && dst !== null) {
    setRxDestination(dst.bytes);
    try {
      for (const qp of qps) {
        if (qp.closed || qp.port !== port.num) continue;
        delivered++;
        if (!transportOk(qp.type, info.opcode) || (info.mask & Op.REQ) === 0) {
          counts[Ctr.rcvd_bad_opcode]!++;
          continue;
        }
        try {
          onRequest(qp, info, srcIp, srcPort, ipId, srcBytes);
        } catch {
          counts[Ctr.rcvd_internal_err]!++;
          qpFatal(qp);
        }
      }
    } finally {
      setRxDestination(null);
    }
  }
  if (delivered === 0) counts[Ctr.rcvd_mcast_no_qp]!++;
}

/** Whether a source address (4 bytes IPv4, 16 bytes IPv6) is the RoCEv2 GID `gid` stands for. */
export function fromPeer(gid: Uint8Array, src: Uint8Array): boolean {
  if (src.length === 4) {
    // IPv4-mapped GID ::ffff:a.b.c.d (IBA A17.4.5.1)
    for (let i = 0; i < 10; i++) if (gid[i] !== 0) return false;
    return gid[10] === 0xff && gid[11] === 0xff && gid[12] === src[0] && gid[13] === src[1] && gid[14] === src[2] && gid[15] === src[3];
  }
  for (let i = 0; i < 16; i++) if (gid[i] !== src[i]) return false;
  return true;
}

/** A QP whose state can no longer be trusted: to ERR with QP_FATAL (flushes its WRs). */
export function qpFatal(qp: Qp): void {
  try {
    if (qp.state !== 'ERR' && qp.state !== 'RESET' && !qp.closed) {
      qp.setState('ERR');
      qp.device.asyncEvent({ type: 'QP_FATAL', qp });
    }
  } catch {
    /* a user's event handler threw: the QP state change above still stands */
  }
}
