/**
 * The links under a bonded device's one port (mlx5's LAG: one IB port, two physical ports).
 *
 * `BondLink` is the port's Link as the device and the receive path see it: the bond's one address
 * (every member carries it, as a bond's slaves carry the bond's MAC and its IP), the members'
 * datagrams all handed to the device's receiver, multicast joined on every member, and a send path
 * of its own for whatever has no TX port (the fallback member: the active port, else the first live
 * one). `MemberPort` is one member as the transport sends on it (a PortLike: the bond port's
 * address and GID generations, the member's link and its own counters, so the per-port TX figures
 * show which physical port carried what); a QP's `txPort` is one of them (transport/types.ts).
 */
import { EventEmitter } from 'node:events';
import { Counters } from '../roce/counters.js';
import { LINK_EINVAL, type BatchStats, type Link, type LinkCaps, type RxHandler } from '../roce/link/link.js';
import type { PortLike } from '../roce/transport/types.js';

type LinkEvent = 'drain' | 'link' | 'error' | 'late';
type Listener = (...a: unknown[]) => void;

export class BondLink extends EventEmitter implements Link {
  readonly members: readonly Link[];
  readonly localIp: string;
  readonly family: 4 | 6;
  readonly localPort: number;
  readonly caps: LinkCaps;
  readonly batchStats: BatchStats | undefined = undefined;
  #tx: Link;
  #up: boolean;

  constructor(members: readonly Link[]) {
    super();
    const first = members[0];
    if (first === undefined) throw new RangeError('BondLink: no member links');
    for (const m of members) {
      // One address for the bond: the ICRC covers it and the peer's QPs check it (recv.ts).
      if (m.localIp !== first.localIp || m.localPort !== first.localPort)
        throw new RangeError(`BondLink: member ${m.localIp}:${m.localPort} is not at the bond's address ${first.localIp}:${first.localPort}`);
    }
    this.members = members;
    this.localIp = first.localIp;
    this.family = first.family;
    this.localPort = first.localPort;
    this.caps = first.caps;
    this.#tx = first;
    this.#up = members.some((m) => m.up);
    this.#rx = new Float64Array(2 * members.length);
  }

  /** The bond port's state: up while a member's link watch says its port is up (set by the bond). */
  get up(): boolean {
    return this.#up;
  }
  /** @internal the bond: the port came up or went down ('link', as a port's link reports it: PORT_ACTIVE / PORT_ERR) */
  setUp(up: boolean): void {
    if (up === this.#up) return;
    this.#up = up;
    this.emit('link', up);
  }
  /** @internal the bond: the member that traffic without a TX port of its own leaves by (changed only between event-loop turns) */
  setFallback(member: Link): void {
    this.#tx = member;
  }
  get fallback(): Link {
    return this.#tx;
  }

  // The fallback path: a buffer goes back to the member it came from. allocTx and send happen in one
  // synchronous step of the transport, and the fallback changes only in link-watch callbacks.
  allocTx(): Buffer | null {
    return this.#tx.allocTx();
  }
  freeTx(buf: Buffer): void {
    this.#tx.freeTx(buf);
  }
  send(buf: Buffer, len: number, dstIp: string, dstPort: number, tos?: number, srcPort?: number): void {
    this.#tx.send(buf, len, dstIp, dstPort, tos, srcPort);
  }
  sourcePort(want: number): number {
    const l = this.#tx;
    return l.sourcePort !== undefined ? l.sourcePort(want) : l.localPort;
  }

  /** per member: datagrams and bytes received (index: port - 1) */
  readonly #rx: Float64Array;
  rxDatagrams(i: number): number {
    return this.#rx[2 * i] ?? 0;
  }
  rxBytes(i: number): number {
    return this.#rx[2 * i + 1] ?? 0;
  }
  /** Every member's datagrams go to `h`, counted per member on the way (one closure per member, made here). */
  setReceiver(h: RxHandler): void {
    const rx = this.#rx;
    this.members.forEach((m, i) => {
      if (this.#released.has(i)) return;
      m.setReceiver((buf, len, srcIp, srcPort, ipIdDf, group) => {
        rx[2 * i]!++;
        rx[2 * i + 1]! += len;
        h(buf, len, srcIp, srcPort, ipIdDf, group);
      });
    });
  }

  joinGroup(groupIp: string): number {
    const done: Link[] = [];
    for (const m of this.members) {
      const r = m.joinGroup !== undefined ? m.joinGroup(groupIp) : -LINK_EINVAL;
      if (r !== 0) {
        for (const d of done) d.leaveGroup?.(groupIp);
        return r;
      }
      done.push(m);
    }
    return 0;
  }
  leaveGroup(groupIp: string): number {
    let r = 0;
    for (const m of this.members) {
      const x = m.leaveGroup !== undefined ? m.leaveGroup(groupIp) : -LINK_EINVAL;
      if (r === 0) r = x;
    }
    return r;
  }
  async groupJoined(groupIp: string): Promise<number> {
    const rs = await Promise.all(this.members.map((m) => (m.groupJoined !== undefined ? m.groupJoined(groupIp) : Promise.resolve(-LINK_EINVAL))));
    return rs.find((r) => r !== 0) ?? 0;
  }

  // 'link' is the bond port's own (setUp); the others are every member's.
  override on(ev: LinkEvent, fn: Listener): this {
    if (ev === 'link') return super.on(ev, fn);
    for (const m of this.members) m.on(ev, fn);
    return this;
  }
  override off(ev: LinkEvent, fn: Listener): this {
    if (ev === 'link') return super.off(ev, fn);
    for (const m of this.members) m.off(ev, fn);
    return this;
  }

  /** members handed to other devices (the bond left LAG): no longer this link's to receive on or close */
  readonly #released = new Set<number>();
  /** @internal the bond left LAG: member `i` (port - 1) now belongs to an ordinary device */
  release(i: number): void {
    this.#released.add(i);
  }

  /** Closes every member (but those released to other devices). */
  async close(): Promise<void> {
    const errs: unknown[] = [];
    for (const [i, m] of this.members.entries()) if (!this.#released.has(i)) await m.close().catch((e: unknown) => errs.push(e));
    if (errs.length > 0) throw errs[0];
  }
}

/**
 * One member of the bond as the transport sends on it: the bond port's number, address and GID
 * generations (the packets are the bond port's), the member's link, and counters of its own.
 */
export class MemberPort implements PortLike {
  /** the physical port: 1 or 2 (mlx5dv's lag port numbers) */
  readonly lagPort: number;
  /** the member's interface name (the config's ports key) */
  readonly netdev: string;
  readonly link: Link;
  readonly counters = new Counters();
  readonly #port: PortLike;
  constructor(port: PortLike, lagPort: number, netdev: string, link: Link) {
    this.#port = port;
    this.lagPort = lagPort;
    this.netdev = netdev;
    this.link = link;
  }
  /** the bond port's number: the engine's tx waits and 'late' are per device port */
  get num(): number {
    return this.#port.num;
  }
  get address(): string {
    return this.#port.address;
  }
  get ipNum(): number {
    return this.#port.ipNum;
  }
  get addrBytes(): Uint8Array {
    return this.#port.addrBytes;
  }
  get gidGen(): Uint32Array {
    return this.#port.gidGen;
  }
}
