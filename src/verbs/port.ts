/**
 * A port of a device: one link (a UDP socket on one address, or an in-memory one), the GID table
 * (the default GID from the interface's MAC, then the addresses of the netdevs tied to it, kept
 * live: gid-table.ts, addr-watch.ts), the port's counters, and what ibv_query_port reports about
 * it. The transport sees it as a PortLike (src/roce/transport/types.ts).
 */
import { Ctr, Counters } from '../roce/counters.js';
import { VerbsError, type ErrnoCode } from './errors.js';
import type { Link, PlacedHandler, RxHandler } from '../roce/link/link.js';
import type { RoceV1Link } from '../roce/link/rocev1-link.js';
import type { PortLike } from '../roce/transport/types.js';
import { gidFromString, ipv4ToGid, ipv4ToNumber } from '../roce/gid.js';
import type { Mtu } from '../roce/opcode.js';
import type { PortAttr } from './device-attr.js';
import type { GidTable, WantedGid } from './gid-table.js';

export class Port implements PortLike {
  readonly num: number;
  readonly link: Link;
  readonly netdev: string;
  readonly address: string;
  readonly ipNum: number;
  readonly addrBytes: Uint8Array;
  readonly gids: GidTable;
  /** per GID index, the generation of the entry there (0: empty): the transport's check before a send */
  readonly gidGen: Uint32Array;
  /** the bound address when the netdev does not list it: kept in the table for the port's life (discovery.ts portGids) */
  pinnedGid: WantedGid | null = null;
  readonly counters = new Counters();
  readonly activeMtu: Mtu;
  readonly mac: Uint8Array;
  /** the RoCEv1 path under the port's link (rocev1-link.ts), when the port has one (a UDP link with the addon) */
  v1: RoceV1Link | null = null;
  constructor(num: number, link: Link, netdev: string, mac: Uint8Array, gids: GidTable, activeMtu: Mtu) {
    this.num = num;
    this.link = link;
    this.netdev = netdev;
    this.address = link.localIp;
    this.ipNum = link.family === 4 ? ipv4ToNumber(link.localIp) : 0;
    this.addrBytes = link.family === 4 ? ipv4ToGid(link.localIp).subarray(12) : gidFromString(link.localIp);
    this.gids = gids;
    this.gidGen = gids.gen;
    this.activeMtu = activeMtu;
    this.mac = mac;
  }
}

/** ibv_query_port of `p` (rxe's values: one Ethernet port, RoCE, 4096-byte maximum MTU). */
export function portAttr(p: Port, maxMsgSz: number): PortAttr {
  return {
    state: p.link.up ? 'ACTIVE' : 'DOWN',
    maxMtu: 4096,
    activeMtu: p.activeMtu,
    gidTblLen: p.gids.len,
    portCapFlags: 0x00010000 | 0x04000000,
    maxMsgSz,
    pkeyTblLen: 1,
    lid: 0,
    smLid: 0,
    lmc: 0,
    linkLayer: 'Ethernet',
    activeWidth: '1X',
    activeSpeed: '2.5 Gbps',
    physState: p.link.up ? 'LINK_UP' : 'DISABLED',
    netdev: p.netdev,
    address: p.address,
    backend: p.link.caps.backend,
  };
}

/** The RoCE v2 GID of the port's bound address: what QPs use unless told otherwise (its index; 0 if absent). */
export function defaultSgid(p: Port): number {
  const want = p.link.family === 4 ? ipv4ToGid(p.address) : gidFromString(p.address);
  const i = p.gids.indexOf(want, 'RoCE v2');
  return i >= 0 ? i : 0;
}

/**
 * An AV whose source GID is a RoCE v1 entry needs the port's packet socket (rocev1-link.ts): it is
 * opened here, before anything changes, so a modify_qp or create_ah that cannot have it fails whole: EPERM without
 * CAP_NET_RAW, EOPNOTSUPP without the addon or on a port that is not a UDP link (in-memory tests).
 */
export function openRoceV1(op: string, arg: string, sgidIndex: number, port: Port): void {
  const e = port.gids.get(sgidIndex);
  if (e?.type !== 'RoCE v1') return;
  const r = port.v1 ? port.v1.enable(e.netdev) : -95;
  if (r === 0) return;
  const why =
    r === -1
      ? 'needs CAP_NET_RAW (an AF_PACKET socket sends and receives its Ethernet frames)'
      : r === -95
        ? port.v1
          ? 'needs the native addon (AF_PACKET sockets); the pure JS backend has only RoCE v2'
          : "is not available on this port (its link is not the host's network)"
        : r === -18
          ? `is already on ${port.v1?.netdev ?? '?'} on this port, not ${e.netdev} (one netdev per port)`
          : `could not open an AF_PACKET socket on ${e.netdev} (errno ${-r})`;
  const code: ErrnoCode = r === -1 ? 'EPERM' : r === -95 ? 'EOPNOTSUPP' : r === -19 ? 'ENODEV' : 'EINVAL';
  throw new VerbsError(code, op, `sgidIndex ${sgidIndex} is a RoCE v1 GID: RoCE v1 ${why}`, arg);
}

/** What a device does with the events of its port's link (device.addPort). */
export interface PortHandlers {
  rx: RxHandler;
  /** runs of packets the link placed itself (RX direct placement, links that have it) */
  placed?: PlacedHandler;
  drain(): void;
  late(heldMs: number): void;
  link(up: boolean): void;
}

/** Wires the port's link to `h`; returns what undoes it (device teardown). */
export function wireLink(p: Port, h: PortHandlers): () => void {
  const link = p.link;
  link.setReceiver(h.rx);
  link.setPlacedReceiver?.(h.placed ?? null);
  const onDrain = (): void => h.drain();
  const onLate = (heldMs: unknown): void => h.late(heldMs as number);
  const onLink = (up: unknown): void => h.link(up as boolean);
  // A socket error (an ICMP error reported on a later send, say) is the datagram's loss, which
  // the transport recovers from: counted, never thrown (an 'error' event nobody hears would
  // take the process down).
  const onError = (): void => {
    p.counters.counts[Ctr.send_err]!++;
  };
  link.on('drain', onDrain);
  link.on('late', onLate);
  link.on('link', onLink);
  link.on('error', onError);
  // A link outlives the device when the caller passed it in (or something holds it): it must not hold the device.
  return () => {
    link.off('drain', onDrain);
    link.off('late', onLate);
    link.off('link', onLink);
    link.off('error', onError);
    link.setReceiver(dropRx);
    link.setPlacedReceiver?.(null); // every QP disarmed: nothing lands for a closed device
  };
}

/** A closed device's links drop what still arrives. */
const dropRx: RxHandler = () => {
  /* device closed */
};
