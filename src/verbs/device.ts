/**
 * A softroce device: one RoCE port per network address, as `rdma link add
 * rxe0 type rxe netdev eth0` makes one. It binds UDP 4791 on the address,
 * holds the GID table (from the interface's MAC and addresses), the object
 * tables the receive path looks things up in (QPN → QP, R_Key → MR), the
 * per-port counters, and the async event stream (ibv_get_async_event).
 *
 * Devices have an array of ports so a bonded device (LAG) can have two.
 */
import { EventEmitter } from 'node:events';
import { Ctr } from '../roce/counters.js';
import { VerbsError } from './errors.js';
import { emitGuarded } from './emit.js';
import { Cq } from './cq.js';
import { Pd, Srq } from './objects.js';
import * as V from './validate.js';
import { Qp, type CreateQpOptions } from './qp.js';
import { checkCreateQp, checkOpenGsi, type GsiOptions } from './qp-create.js';
import type { Mr } from './mr.js';
import type { Scheduler } from '../roce/sched.js';
import type { FaultInjector } from '../roce/link/fault-link.js';
import type { PcapRecorder } from '../roce/link/pcap-recorder.js';
import type { Link } from '../roce/link/link.js';
import { deviceRx, deviceRxPlaced } from '../roce/transport/recv.js';
import { Engine } from '../roce/transport/engine.js';
import { resendOnNewPath } from '../roce/transport/retry.js';
import type { PortLike, QpEvent, TransportDevice, TransportQp } from '../roce/transport/types.js';
import { ATTR, guidFromMac, type DeviceAttr, type PortAttr } from './device-attr.js';
import { activeMtuFor, netdevMtu, portGids, type GidEntry } from './discovery.js';
import { DEFAULT_GID_TBL_LEN, GidTable, type GidSyncResult } from './gid-table.js';
import { hostAddressSource, wantedGids, type AddressSource } from './addr-watch.js';
import type { QpState } from './qp-state.js';
import { defaultSgid, Port, portAttr, wireLink } from './port.js';
import { openDeviceWith, releaseLinks, releaseObjects, type OpenDeviceOptions } from './open.js';
import { McastTable } from './mcast.js';
import { busyPollFallback, MAX_BUSY_POLL_US } from './busy-poll.js';

export type AsyncEventType =
  | 'COMM_EST'
  | 'QP_FATAL'
  | 'QP_REQ_ERR'
  | 'QP_ACCESS_ERR'
  | 'SQ_DRAINED'
  | 'LAST_WQE_REACHED'
  | 'SRQ_LIMIT_REACHED'
  | 'PORT_ACTIVE'
  | 'PORT_ERR'
  | 'CQ_ERR'
  | 'GID_CHANGE'
  /** the device is going away with its resources (IBV_EVENT_DEVICE_FATAL; a LAG device re-registered: src/lag) */
  | 'DEVICE_FATAL';
export interface AsyncEvent {
  type: AsyncEventType;
  qp?: Qp;
  cq?: Cq;
  srq?: Srq;
  port?: number;
}

let nextPdHandle = 1;

export class Device extends EventEmitter implements TransportDevice {
  readonly name: string;
  readonly sched: Scheduler;
  readonly ports: Port[] = [];
  /** @internal the multicast groups and their QPs (mcast.ts; qp.attachMcast) */
  readonly mcast = new McastTable(this.ports);
  readonly attr: DeviceAttr;
  readonly qps = new Map<number, Qp>();
  readonly mrByLkey = new Map<number, Mr>();
  readonly mrByRkey = new Map<number, Mr>();
  readonly pds = new Set<Pd>();
  readonly cqs = new Set<Cq>();
  /** QP1 of each port (index: port - 1), null when not open */
  readonly #gsis: Array<Qp | null> = [];
  #icrcIpv4: 'infer-id' | 'id-zero' = 'infer-id';
  #faults: FaultInjector | null = null;
  #recorder: PcapRecorder | null = null;
  #closed = false;
  /** QP1 of port 1 while open (openGsi) */
  get gsi(): Qp | null {
    return this.gsiOn(1);
  }
  /** QP1 of port `port` while open (openGsi({ port })), else null */
  gsiOn(port: number): Qp | null {
    return this.#gsis[port - 1] ?? null;
  }
  /** @internal the QPs attached to a multicast group (the receive path's TransportDevice.mcastQps) */
  mcastQps(group: string): readonly Qp[] | undefined {
    return this.mcast.qps(group);
  }
  /** every open QP1, one per port at most (teardown) */
  get gsis(): Qp[] {
    return this.#gsis.filter((q): q is Qp => q !== null);
  }
  /**
   * How an incoming RoCEv2/IPv4 ICRC is checked when the link cannot show the real IPv4 ID (with
   * the addon and CAP_NET_RAW it can: then the full CRC-32; README, "ICRC outcomes"): 'infer-id'
   * recovers the sender's ID from the ICRC, DF fixed, within what Linux's ID counter can have sent
   * (any peer, rxe included); 'id-zero' requires ID 0 + DF for when every peer is softroce with the
   * native addon (or a UDP GSO segment's index, 1..63, with DF: what such a peer's batched sends carry).
   * Set with openDevice({ icrcIpv4 }).
   */
  get icrcIpv4(): 'infer-id' | 'id-zero' {
    return this.#icrcIpv4;
  }
  /** @internal openDevice */
  set icrcIpv4(v: 'infer-id' | 'id-zero') {
    this.#icrcIpv4 = v;
  }
  /** the fault injector of openDevice({ faults }) (its `stats` count what it did) */
  get faults(): FaultInjector | null {
    return this.#faults;
  }
  /** @internal openDevice */
  set faults(v: FaultInjector | null) {
    this.#faults = v;
  }
  /** the capture of openDevice({ pcap }) */
  get recorder(): PcapRecorder | null {
    return this.#recorder;
  }
  /** @internal openDevice */
  set recorder(v: PcapRecorder | null) {
    this.#recorder = v;
  }
  get closed(): boolean {
    return this.#closed;
  }
  private set closed(v: boolean) {
    this.#closed = v;
  }
  private nextQpn = 0x11;
  /** undoes addPort's wiring of each link (listeners that reach this device) */
  private readonly unwire: Array<() => void> = [];
  private closing: Promise<void> | null = null;

  constructor(name: string, sched: Scheduler, mac: Uint8Array) {
    super();
    this.name = name;
    this.sched = sched;
    const guid = guidFromMac(mac);
    this.attr = { ...ATTR, nodeGuid: guid, sysImageGuid: guid };
  }

  /**
   * @internal adds a port over a link. Its GID table starts with the addresses `addresses` lists
   * now and follows them while the device is open (gid-table.ts, addr-watch.ts).
   */
  addPort(link: Link, netdev: string, mac: Uint8Array, o: { gidTblLen?: number; addresses?: AddressSource } = {}): Port {
    const gids = new GidTable(o.gidTblLen ?? DEFAULT_GID_TBL_LEN, netdev, mac);
    const p = new Port(this.ports.length + 1, link, netdev, mac, gids, activeMtuFor(netdevMtu(netdev)));
    const src = o.addresses ?? hostAddressSource;
    const first = portGids(netdev, link.localIp, src);
    p.pinnedGid = first.pinned;
    this.applyGids(p, gids.sync(first.want), false);
    this.ports.push(p);
    this.unwire.push(
      src.watch(() => {
        try {
          this.refreshGids(p, src);
        } catch {
          // The address list could not be read (getifaddrs failed): the table stays as it is
          // and the next event or poll reads it again. Nothing to throw into the event loop.
        }
      }),
    );
    this.unwire.push(
      wireLink(p, {
        rx: (buf, len, srcIp, srcPort, ipIdDf, group) => {
          deviceRx(this, p, buf, len, srcIp, srcPort, ipIdDf, group);
          const w = this.rxWaiter;
          if (w !== null) {
            this.rxWaiter = null;
            w();
          }
        },
        placed: (qpn, firstPsn, count, pmtu, ackReq, srcIp, _srcPort, firstIpIdDf, opcode) => {
          deviceRxPlaced(this, p, qpn, firstPsn, count, pmtu, ackReq, srcIp, firstIpIdDf, opcode);
          const w = this.rxWaiter;
          if (w !== null) {
            this.rxWaiter = null;
            w();
          }
        },
        // The link's tx pool drained, or its socket held packets late: the transport's scheduling reacts (engine.ts).
        drain: () => this.engine.drained(p),
        late: (heldMs) => this.engine.late(p, heldMs),
        link: (up) => this.asyncEvent({ type: up ? 'PORT_ACTIVE' : 'PORT_ERR', port: p.num }),
      }),
    );
    return p;
  }

  /**
   * @internal the addresses may have changed: the port's table follows them. A GID_CHANGE async
   * event when an entry came or went (the kernel dispatches IB_EVENT_GID_CHANGE per port).
   */
  refreshGids(p: Port, src: AddressSource): void {
    if (this.closed) return;
    // The bound address is pinned only if it was not listed at open (portGids); one that was
    // listed comes and goes with the interface like any other.
    const want = wantedGids(p.netdev, src);
    const pin = p.pinnedGid;
    if (pin !== null && !want.some((w) => Buffer.from(w.gid).equals(Buffer.from(pin.gid)))) want.push(pin);
    this.applyGids(p, p.gids.sync(want), true);
  }

  /**
   * What a sync did, reported: each address a full table refused counts once in the port's
   * `gid_table_full` and comes as a VerbsError (ENOSPC) on the device's 'gidTableFull' event;
   * a change raises GID_CHANGE (not for the table a port starts with).
   */
  private applyGids(p: Port, r: GidSyncResult, notify: boolean): void {
    for (const e of r.refused) {
      p.counters.counts[Ctr.gid_table_full]!++;
      emitGuarded(this, 'gidTableFull', e);
    }
    if (r.changed && notify) this.asyncEvent({ type: 'GID_CHANGE', port: p.num });
  }

  private live(op: string): void {
    if (this.closed) throw new VerbsError('EBADF', op, `device ${this.name} is closed`, 'device');
  }

  query(): DeviceAttr {
    this.live('ibv_query_device');
    return { ...this.attr, physPortCnt: this.ports.length };
  }

  queryPort(port = 1): PortAttr {
    this.live('ibv_query_port');
    V.int('ibv_query_port', 'port', port, 1, this.ports.length);
    return portAttr(this.ports[port - 1]!, this.attr.maxMsgSize);
  }

  /** The port's valid GID entries in index order, as they are now (a snapshot: the table is live). */
  gidTable(port = 1): readonly GidEntry[] {
    V.int('ibv_query_gid', 'port', port, 1, this.ports.length);
    return this.ports[port - 1]!.gids.entries();
  }

  /** ibv_query_gid: the entry at `index`, or null for an empty slot (where ibv_query_gid gives the zero GID). */
  queryGid(index: number, port = 1): GidEntry | null {
    V.int('ibv_query_gid', 'port', port, 1, this.ports.length);
    const t = this.ports[port - 1]!.gids;
    V.int('ibv_query_gid', 'index', index, 0, t.len - 1);
    return t.get(index);
  }

  /** The RoCE v2 GID of the bound address: what QPs use unless told otherwise. */
  defaultSgidIndex(port = 1): number {
    V.int('ibv_query_gid', 'port', port, 1, this.ports.length);
    return defaultSgid(this.ports[port - 1]!);
  }

  allocPd(): Pd {
    this.live('ibv_alloc_pd');
    const pd = new Pd(this, nextPdHandle++);
    this.pds.add(pd);
    return pd;
  }

  /**
   * ibv_create_cq. `busyPollUs` (opt-in, 0..MAX_BUSY_POLL_US): poll() on the empty CQ spins up to
   * that long on the device's receive sockets (busyPoll) before it returns 0. On a device that
   * cannot busy-poll (canBusyPoll false) the CQ is created without it (busyPollUs 0), reported
   * once per process as a warning (SOFTROCE_BUSY_POLL).
   */
  createCq(o: { depth: number; busyPollUs?: number }): Cq {
    this.live('ibv_create_cq');
    V.obj('ibv_create_cq', 'options', o);
    V.int('ibv_create_cq', 'depth', o.depth, 1, this.attr.maxCqe);
    V.optInt('ibv_create_cq', 'busyPollUs', o.busyPollUs, 0, MAX_BUSY_POLL_US);
    let spin = o.busyPollUs ?? 0;
    if (spin > 0 && !this.canBusyPoll) {
      busyPollFallback(this.name, this.backendName);
      spin = 0;
    }
    const cq = new Cq(this, o.depth, spin);
    this.cqs.add(cq);
    return cq;
  }

  /** @internal pd.createQp (the checks of ibv_create_qp come first, all before anything is allocated: qp-create.ts) */
  createQpFor(pd: Pd, o: CreateQpOptions): Qp {
    const cap = checkCreateQp(this, pd, o);
    while (this.qps.has(this.nextQpn) || this.nextQpn < 0x11 || this.nextQpn > 0xfffffe) this.nextQpn = this.nextQpn >= 0xfffffe ? 0x11 : this.nextQpn + 1;
    const qp = new Qp(this, pd, this.nextQpn++, o.type, o, cap, o.sendCq, o.recvCq);
    this.register(qp, pd);
    return qp;
  }

  /**
   * QP1, the GSI QP (a special UD QP with Q_Key 0x80010000) that carries CM MADs, of port `o.port`
   * (default 1). Each port has its own, bound to it from creation (a GSI QP has no port attribute to
   * modify); a MAD is delivered to the QP1 of the port it arrived on. Not in `qps`: QPN 1 is per port.
   */
  openGsi(pd: Pd, o: GsiOptions): Qp {
    this.live('ibv_create_qp');
    const cap = checkOpenGsi(this, pd, o);
    const qp = new Qp(this, pd, 1, 'GSI', null, cap, o.sendCq, o.recvCq);
    const port = o.port ?? 1;
    qp.bindGsiPort(port);
    this.#gsis[port - 1] = qp;
    this.register(qp, pd);
    return qp;
  }

  private register(qp: Qp, pd: Pd): void {
    if (qp.type !== 'GSI') this.qps.set(qp.qpn, qp);
    pd.qps.add(qp);
    qp.sendCq.addUser(1);
    qp.recvCq.addUser(1);
    if (qp.srq) qp.srq.addUser(1);
  }

  /**
   * @internal a QP moved RESET -> INIT (its attributes applied). Nothing here; a bonded device
   * (src/lag/bond.ts) overrides it to give the QP its LAG port (Qp.txPort), as mlx5 sets a QP's TX
   * affinity at that transition. Must not throw: the modify has happened.
   */
  qpInit(_qp: Qp): void {
    /* an ordinary device: the QP sends on its port */
  }

  /** @internal qp.close */
  destroyQp(qp: Qp): void {
    this.mcast.detachAll(qp);
    if (qp.type === 'GSI') {
      if (this.#gsis[qp.port - 1] === qp) this.#gsis[qp.port - 1] = null;
    } else this.qps.delete(qp.qpn);
    qp.pd.qps.delete(qp);
    qp.sendCq.addUser(-1);
    qp.recvCq.addUser(-1);
    if (qp.srq) qp.srq.addUser(-1);
  }

  /** @internal mr.close */
  deregMr(mr: Mr): void {
    this.mrByLkey.delete(mr.lkey);
    this.mrByRkey.delete(mr.rkey);
    mr.pd.mrs.delete(mr);
  }

  /** @internal */
  forget(o: Pd | Cq): void {
    if (o instanceof Pd) this.pds.delete(o);
    else this.cqs.delete(o);
  }

  /**
   * Busy polling can run here: every port's link reads its socket on demand (Link.pollRx: the
   * native addon's socket, through any wrappers: RoCEv1, fault injector, pcap recorder; not Node's
   * dgram or the in-memory network). RoCEv1 frames (the packet socket) still come by events.
   */
  get canBusyPoll(): boolean {
    if (this.ports.length === 0 || this.closed) return false;
    for (const p of this.ports) if (p.link.pollRx === undefined || p.link.flush === undefined) return false;
    return true;
  }

  /**
   * Busy polling (opt-in; issue 15): spins for up to `us` µs on the receive sockets of every port,
   * handing what arrives to the transport at once (completions land in their CQs before this
   * returns), and returns as soon as something arrived: the datagrams read (GRO batches count as
   * one), 0 if none came in time, -1 when the device cannot (canBusyPoll false: sleep on events
   * instead, e.g. cq.notifications() or nextRx()). Before each read it sends what the transport
   * queued for the end of the turn (posted WRs, coalesced ACKs), as the turn's end would.
   *
   * It never returns to the event loop, so timers (ACK timeouts, retransmits, RNR waits) and work
   * deferred to a later turn do not run while it spins: a loop of busy polls must let the loop
   * run (await something) every few ms, as the perftest tools' --busy_poll does every millisecond.
   * Re-entered from inside a receive (a CQ event handler), it returns 0 at once.
   */
  busyPoll(us: number): number {
    V.int('softroce_busy_poll', 'us', us, 0, MAX_BUSY_POLL_US);
    return this.spin(us, null);
  }

  /** @internal the backend of port 1's link, for messages */
  get backendName(): string {
    return this.ports[0]?.link.caps.backend ?? 'none';
  }

  private spinning = false;
  /**
   * @internal Cq.poll with busyPollUs: spins until `cq` has an entry (null: until a datagram was
   * read) or `us` µs passed; returns the datagrams read, or -1 when the device cannot busy-poll.
   */
  spin(us: number, cq: Cq | null): number {
    if (!this.canBusyPoll) return -1;
    if (this.spinning) return 0;
    this.spinning = true;
    const end = performance.now() + us / 1000;
    let got = 0;
    try {
      for (;;) {
        this.busyTurn();
        if (cq !== null ? cq.length > 0 || cq.closed : got > 0) break;
        let n = 0,
          inside = false;
        for (const p of this.ports) {
          const k = p.link.pollRx!();
          if (k < 0) inside = true;
          else n += k;
        }
        got += n;
        // Called from inside a receive (a CQ event handler): nothing can arrive until it returns.
        if (inside || (n === 0 && (performance.now() >= end || this.closed))) break;
      }
    } finally {
      this.spinning = false;
    }
    return got;
  }

  /** One pass of busy polling is a turn: what waits for the end of the turn goes now (sched.flushSoon, engine.ts busyTurn, the links' send batches). */
  private busyTurn(): void {
    this.sched.flushSoon();
    this.engine.busyTurn();
    this.sched.flushSoon();
    for (const p of this.ports) p.link.flush!();
  }

  private rxWaiter: (() => void) | null = null;
  /**
   * Resolves once the next datagram this device receives has been processed.
   * For code that waits on memory an RDMA WRITE fills (a C program spins on
   * the buffer; here the transport runs on the caller's thread, so it sleeps
   * until a packet came in and looks again).
   */
  nextRx(): Promise<void> {
    return new Promise((resolve) => {
      const prev = this.rxWaiter;
      this.rxWaiter =
        prev === null
          ? resolve
          : (): void => {
              prev();
              resolve();
            };
    });
  }

  /** The requesters' scheduling over this device (src/roce/transport/engine.ts). */
  private readonly engine = new Engine(this);
  /** @internal schedule the requester of a QP (engine.ts) */
  kick(qp: TransportQp, soon = false): void {
    this.engine.kick(qp, soon);
  }
  /** @internal a LAG failover moved `qp` off a dead port: resend what it had in flight now (retry.ts); true if there was some */
  resendOnNewPath(qp: TransportQp): boolean {
    const resent = resendOnNewPath(qp);
    this.engine.kick(qp, false);
    return resent;
  }
  /** @internal the requester of `qp` found the tx pool of `port` empty: it runs again on 'drain', in its turn */
  waitTx(qp: TransportQp, port: PortLike, sentSome: boolean): void {
    this.engine.waitTx(qp, port, sentSome);
  }
  /** @internal the requester asks before a new message of an RC QP: true = wait (the QP is queued) */
  holdNew(qp: TransportQp): boolean {
    return this.engine.holdNew(qp);
  }

  /**
   * @internal raise an async event (state already changed). A listener that throws does not
   * unwind into the transport or out of a close() (emit.ts): its error comes back on the next
   * tick, as this device's 'error' event when it has a listener, else as an uncaught exception.
   * The transport reports QP events with its TransportQp view of the QP: every one is a Qp.
   */
  asyncEvent(e: AsyncEvent | QpEvent): void {
    emitGuarded(this, 'async', e);
  }

  counters(port = 1): Record<string, number> {
    V.int('counters', 'port', port, 1, this.ports.length);
    return this.ports[port - 1]!.counters.snapshot();
  }

  /**
   * Cascading teardown, in pyverbs' order (a 'close' event first, once, for whoever uses the device
   * without owning it: rdma_cm ids get DEVICE_REMOVAL from it): QPs, AHs, MRs, SRQs, PDs, CQs, then the fault
   * injector, the recorder (flushed and closed) and the links (the UDP port is free again when
   * the promise resolves). Idempotent; concurrent calls share one promise, so every caller
   * resumes only once everything is released.
   */
  close(): Promise<void> {
    return this.startTeardown(true);
  }

  /** @internal openDevice failed after this device took the link: release it all; close the link only if openDevice opened it. */
  abortOpen(closeLinks: boolean): Promise<void> {
    return this.startTeardown(closeLinks);
  }

  private startTeardown(closeLinks: boolean): Promise<void> {
    if (this.closing === null) {
      // The promise exists before the teardown starts: a handler that calls close() from inside
      // the teardown gets this same promise instead of starting a second one.
      let adopt!: (p: Promise<void>) => void;
      this.closing = new Promise<void>((r) => {
        adopt = r;
      });
      adopt(this.teardown(closeLinks));
    }
    return this.closing;
  }

  /**
   * Release first, then notify, and always to the end: the device is marked closed before
   * anything else, so a handler that runs during the teardown (flush completions, 'notify' of a
   * closing CQ, LAST_WQE_REACHED) cannot create objects or post work that would outlive it;
   * handlers' exceptions never reach here (emit.ts); a step that still throws (a bug) does not
   * stop the others: the tables are emptied and the ports released anyway, and the first such
   * error rejects the promise once all is done. A device whose close failed half-way cannot exist.
   */
  private async teardown(closeLinks: boolean): Promise<void> {
    this.closed = true;
    this.engine.stop();
    // Users of the device that did not open it (rdma_cm ids: DEVICE_REMOVAL) hear of it now, while
    // its objects still exist; the device is already closed to new work.
    emitGuarded(this, 'close');
    const failures: unknown[] = [];
    const step = (f: () => void): void => {
      try {
        f();
      } catch (e) {
        failures.push(e);
      }
    };
    releaseObjects(this, step);
    this.#gsis.length = 0;
    // A nextRx() waiter would otherwise wait forever: it wakes to a closed device.
    const w = this.rxWaiter;
    this.rxWaiter = null;
    if (w !== null) step(w);
    await releaseLinks(this, this.unwire, closeLinks, step, failures);
    if (failures.length > 0) throw failures[0];
  }
  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

/** Opens a device: by name from the device list, or by address (binding UDP 4791 there). The steps are in open.ts. */
export function openDevice(o: OpenDeviceOptions = {}): Promise<Device> {
  return openDeviceWith(o, (name, sched, mac) => new Device(name, sched, mac));
}

export type { QpState };
// The port and opening a device live in port.ts and open.ts; their public names stay importable from here.
export { Port } from './port.js';
export type { OpenDeviceOptions, OpenPortOptions } from './open.js';
// Discovery lives in discovery.ts; its public names stay importable from here.
export { getDeviceList, buildGidTable, activeMtuFor, portsOf, interfaceDevices } from './discovery.js';
export type { GidType, GidEntry, DeviceDescriptor, PortDescriptor } from './discovery.js';
export type { DeviceAttr, PortAttr } from './device-attr.js';
