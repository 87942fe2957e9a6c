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
import { VerbsError, type ErrnoCode } from './errors.js';
import { emitGuarded } from './emit.js';
import { Cq } from './cq.js';
import { Pd, Srq, type Ah } from './objects.js';
import * as V from './validate.js';
import { isIP } from 'node:net';
import { Qp, type CreateQpOptions } from './qp.js';
import { checkCreateQp, checkOpenGsi, type GsiOptions } from './qp-create.js';
import type { Mr } from './mr.js';
import { Counters, C } from '../roce/counters.js';
import { RealScheduler, type Scheduler } from '../roce/sched.js';
import { UdpLink } from '../roce/link/udp-link.js';
import type { Link, RxHandler } from '../roce/link/link.js';
import { FaultInjector, type FaultOptions } from '../roce/link/fault-link.js';
import { PcapRecorder } from '../roce/link/pcap-recorder.js';
import { deviceRx } from '../roce/transport/recv.js';
import { Engine } from '../roce/transport/engine.js';
import type { PortLike, QpEvent, TransportDevice, TransportQp } from '../roce/transport/types.js';
import { gidFromString, ipv4ToGid, ipv4ToNumber } from '../roce/gid.js';
import type { Mtu } from '../roce/opcode.js';
import { ATTR, type DeviceAttr, type PortAttr } from './device-attr.js';
import { activeMtuFor, buildGidTable, getDeviceList, netdevMtu, sysNetdevFor, type DeviceDescriptor, type GidEntry } from './discovery.js';
import type { QpState } from './qp-state.js';

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
  | 'GID_CHANGE';
export interface AsyncEvent {
  type: AsyncEventType;
  qp?: Qp;
  cq?: Cq;
  srq?: Srq;
  port?: number;
}

export class Port implements PortLike {
  readonly num: number;
  readonly link: Link;
  readonly netdev: string;
  readonly address: string;
  readonly ipNum: number;
  readonly addrBytes: Uint8Array;
  readonly gids: GidEntry[];
  readonly counters = new Counters();
  readonly activeMtu: Mtu;
  readonly mac: Uint8Array;
  constructor(num: number, link: Link, netdev: string, mac: Uint8Array, gids: GidEntry[], activeMtu: Mtu) {
    this.num = num;
    this.link = link;
    this.netdev = netdev;
    this.address = link.localIp;
    this.ipNum = link.family === 4 ? ipv4ToNumber(link.localIp) : 0;
    this.addrBytes = link.family === 4 ? ipv4ToGid(link.localIp).subarray(12) : gidFromString(link.localIp);
    this.gids = gids;
    this.activeMtu = activeMtu;
    this.mac = mac;
  }
}

export interface OpenDeviceOptions {
  name?: string;
  netdev?: string;
  address?: string;
  udpPort?: number;
  native?: 'auto' | 'on' | 'off';
  /** for tests: a fake clock, an in-memory link, injected faults, a capture */
  scheduler?: Scheduler;
  link?: Link;
  faults?: FaultOptions;
  pcap?: string;
  icrcIpv4?: 'infer-id' | 'id-zero';
}

let nextPdHandle = 1;

export class Device extends EventEmitter implements TransportDevice {
  readonly name: string;
  readonly sched: Scheduler;
  readonly ports: Port[] = [];
  readonly attr: DeviceAttr;
  readonly qps = new Map<number, Qp>();
  readonly mrByLkey = new Map<number, Mr>();
  readonly mrByRkey = new Map<number, Mr>();
  readonly pds = new Set<Pd>();
  readonly cqs = new Set<Cq>();
  #gsi: Qp | null = null;
  #icrcIpv4: 'infer-id' | 'id-zero' = 'infer-id';
  #faults: FaultInjector | null = null;
  #recorder: PcapRecorder | null = null;
  #closed = false;
  /** QP1 while open (openGsi) */
  get gsi(): Qp | null {
    return this.#gsi;
  }
  private set gsi(v: Qp | null) {
    this.#gsi = v;
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
    const guid =
      (BigInt(mac[0]! ^ 2) << 56n) |
      (BigInt(mac[1]!) << 48n) |
      (BigInt(mac[2]!) << 40n) |
      (0xfffen << 24n) |
      (BigInt(mac[3]!) << 16n) |
      (BigInt(mac[4]!) << 8n) |
      BigInt(mac[5]!);
    this.attr = { ...ATTR, nodeGuid: guid, sysImageGuid: guid };
  }

  /** @internal adds a port over a link */
  addPort(link: Link, netdev: string, mac: Uint8Array): Port {
    const p = new Port(this.ports.length + 1, link, netdev, mac, buildGidTable(netdev, mac, link.localIp), activeMtuFor(netdevMtu(netdev)));
    this.ports.push(p);
    link.setReceiver((buf, len, srcIp, srcPort, ipIdDf) => {
      deviceRx(this, p, buf, len, srcIp, srcPort, ipIdDf);
      const w = this.rxWaiter;
      if (w !== null) {
        this.rxWaiter = null;
        w();
      }
    });
    // The link's tx pool drained, or its socket held packets late: the transport's scheduling reacts (engine.ts).
    const onDrain = (): void => this.engine.drained(p);
    const onLate = (heldMs: unknown): void => this.engine.late(p, heldMs as number);
    const onLink = (up: unknown): void => this.asyncEvent({ type: up ? 'PORT_ACTIVE' : 'PORT_ERR', port: p.num });
    // A socket error (an ICMP error reported on a later send, say) is the datagram's loss, which
    // the transport recovers from: counted, never thrown (an 'error' event nobody hears would
    // take the process down).
    const onError = (): void => {
      p.counters.v[C.send_err]!++;
    };
    link.on('drain', onDrain);
    link.on('late', onLate);
    link.on('link', onLink);
    link.on('error', onError);
    // A link outlives the device when the caller passed it in (or something holds it): it must not hold the device.
    this.unwire.push(() => {
      link.off('drain', onDrain);
      link.off('late', onLate);
      link.off('link', onLink);
      link.off('error', onError);
      link.setReceiver(dropRx);
    });
    return p;
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
    const p = this.ports[port - 1]!;
    return {
      state: p.link.up ? 'ACTIVE' : 'DOWN',
      maxMtu: 4096,
      activeMtu: p.activeMtu,
      gidTblLen: 1024,
      portCapFlags: 0x00010000 | 0x04000000,
      maxMsgSz: this.attr.maxMsgSize,
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

  gidTable(port = 1): readonly GidEntry[] {
    V.int('ibv_query_gid', 'port', port, 1, this.ports.length);
    return this.ports[port - 1]?.gids ?? [];
  }

  /** The RoCE v2 GID of the bound address: what QPs use unless told otherwise. */
  defaultSgidIndex(port = 1): number {
    V.int('ibv_query_gid', 'port', port, 1, this.ports.length);
    const p = this.ports[port - 1]!;
    const want = p.link.family === 4 ? ipv4ToGid(p.address) : gidFromString(p.address);
    const e = p.gids.find((g) => g.type === 'RoCE v2' && Buffer.from(g.gid).equals(Buffer.from(want)));
    return e ? e.index : 0;
  }

  allocPd(): Pd {
    this.live('ibv_alloc_pd');
    const pd = new Pd(this, nextPdHandle++);
    this.pds.add(pd);
    return pd;
  }

  createCq(o: { depth: number }): Cq {
    this.live('ibv_create_cq');
    V.obj('ibv_create_cq', 'options', o);
    V.int('ibv_create_cq', 'depth', o.depth, 1, this.attr.maxCqe);
    const cq = new Cq(this, o.depth);
    this.cqs.add(cq);
    return cq;
  }

  /** @internal pd.createQp (the checks of ibv_create_qp come first, all before anything is allocated: qp-create.ts) */
  createQpFor(pd: Pd, o: CreateQpOptions): Qp {
    const cap = checkCreateQp(this, pd, o);
    while (this.qps.has(this.nextQpn) || this.nextQpn < 0x11) this.nextQpn = this.nextQpn >= 0xfffffe ? 0x11 : this.nextQpn + 1;
    const qp = new Qp(this, pd, this.nextQpn++, o.type, o, cap, o.sendCq, o.recvCq);
    this.register(qp, pd);
    return qp;
  }

  /** QP1, the GSI QP (a special UD QP with Q_Key 0x80010000) that carries CM MADs. */
  openGsi(pd: Pd, o: GsiOptions): Qp {
    this.live('ibv_create_qp');
    const cap = checkOpenGsi(this, pd, o);
    const qp = new Qp(this, pd, 1, 'GSI', null, cap, o.sendCq, o.recvCq);
    this.gsi = qp;
    this.register(qp, pd);
    return qp;
  }

  private register(qp: Qp, pd: Pd): void {
    this.qps.set(qp.qpn, qp);
    pd.qps.add(qp);
    qp.sendCq.addUser(1);
    qp.recvCq.addUser(1);
    if (qp.srq) qp.srq.addUser(1);
  }

  /** @internal qp.close */
  destroyQp(qp: Qp): void {
    this.qps.delete(qp.qpn);
    if (this.gsi === qp) this.gsi = null;
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
   * Cascading teardown, in pyverbs' order: QPs, AHs, MRs, SRQs, PDs, CQs, then the fault
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
    const failures: unknown[] = [];
    const step = (f: () => void): void => {
      try {
        f();
      } catch (e) {
        failures.push(e);
      }
    };
    for (const qp of [...this.qps.values()]) step(() => qp.close());
    for (const pd of [...this.pds]) {
      for (const ah of [...pd.ahs] as Ah[]) step(() => ah.close());
      for (const mr of [...pd.mrs]) step(() => mr.close());
      for (const s of [...pd.srqs]) step(() => s.close());
    }
    for (const pd of [...this.pds]) step(() => pd.close());
    for (const cq of [...this.cqs]) step(() => cq.close());
    this.qps.clear();
    this.mrByLkey.clear();
    this.mrByRkey.clear();
    this.pds.clear();
    this.cqs.clear();
    this.gsi = null;
    // A nextRx() waiter would otherwise wait forever: it wakes to a closed device.
    const w = this.rxWaiter;
    this.rxWaiter = null;
    if (w !== null) step(w);
    // The wrappers stop (timers, the file) whether or not the links below them close.
    if (this.faults) step(() => void this.faults!.detach()); // synchronous: nothing arrives after it
    for (const u of this.unwire) step(u);
    this.unwire.length = 0;
    try {
      await this.recorder?.detach();
    } catch (e) {
      failures.push(e);
    }
    if (closeLinks) {
      for (const p of this.ports) {
        try {
          await p.link.close();
        } catch (e) {
          failures.push(e);
        }
      }
    }
    if (failures.length > 0) throw failures[0];
  }
  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

/** openDevice's argument checks: all before a socket is bound. */
function checkOpenDeviceOptions(o: OpenDeviceOptions): void {
  const op = 'ibv_open_device';
  V.obj(op, 'options', o);
  V.optStr(op, 'name', o.name);
  V.optStr(op, 'netdev', o.netdev);
  V.optStr(op, 'address', o.address);
  if (o.address !== undefined && isIP(o.address) === 0) V.fail(op, 'address', `must be an IPv4 or IPv6 address, got ${JSON.stringify(o.address)}`);
  V.optInt(op, 'udpPort', o.udpPort, 1, 65535);
  V.optOneOf(op, 'native', o.native, ['auto', 'on', 'off'] as const);
  V.optOneOf(op, 'icrcIpv4', o.icrcIpv4, ['infer-id', 'id-zero'] as const);
  V.optStr(op, 'pcap', o.pcap);
  if (o.pcap === '') V.fail(op, 'pcap', 'must be a file name');
  V.optObj(op, 'scheduler', o.scheduler);
  V.optObj(op, 'link', o.link);
  if (o.faults !== undefined) {
    const f = o.faults;
    V.obj(op, 'faults', f);
    V.int(op, 'faults.seed', f.seed, Number.MIN_SAFE_INTEGER, Number.MAX_SAFE_INTEGER);
    for (const k of ['dropPct', 'dupPct', 'reorderPct', 'corruptPct', 'delayPct'] as const) V.pct(op, `faults.${k}`, f[k]);
    if (f.delayMs !== undefined && (typeof f.delayMs !== 'number' || !Number.isFinite(f.delayMs) || f.delayMs < 0 || f.delayMs > 60_000)) {
      V.fail(op, 'faults.delayMs', `must be a number of ms in 0..60000, got ${String(f.delayMs)}`);
    }
  }
}

/** Opens a device: by name from the device list, or by address (binding UDP 4791 there). */
export async function openDevice(o: OpenDeviceOptions = {}): Promise<Device> {
  checkOpenDeviceOptions(o);
  let desc: DeviceDescriptor | undefined;
  if (o.name && !o.address) {
    desc = getDeviceList().find((d) => d.name === o.name);
    if (!desc) throw new VerbsError('ENODEV', 'ibv_open_device', `no device named ${o.name}`, 'name');
  }
  const address = o.address ?? desc?.address ?? '127.0.0.1';
  const sched = o.scheduler ?? new RealScheduler();
  const found = sysNetdevFor(address);
  const netdev = o.netdev ?? desc?.netdev ?? found.netdev;
  // UdpLink.open releases its socket itself when it fails.
  const base: Link = o.link ?? (await UdpLink.open({ address, port: o.udpPort ?? desc?.udpPort ?? 4791, native: o.native ?? 'auto' }));
  // From here on, whatever fails releases what was taken (the socket, the injector's timers, the
  // recorder's file): a failed open must not leave UDP 4791 bound. A link the caller passed in
  // stays theirs: it is detached from the device, not closed.
  let dev: Device | null = null;
  try {
    const name = o.name ?? desc?.name ?? `softroce_${address}`;
    dev = new Device(name, sched, found.mac);
    // The port's link is the backend wrapped: pcap(faults(base)), so the capture holds what the
    // device received after the faults and what it sent.
    let link = base;
    if (o.faults) link = dev.faults = new FaultInjector(link, o.faults, sched);
    if (o.pcap) {
      link = dev.recorder = await PcapRecorder.open(o.pcap, link).catch((e: unknown) => {
        throw fsError(e, 'ibv_open_device', `pcap file ${o.pcap}`, 'pcap');
      });
    }
    dev.addPort(link, netdev || 'lo', found.mac);
    if (o.icrcIpv4) dev.icrcIpv4 = o.icrcIpv4;
    return dev;
  } catch (e) {
    if (dev)
      await dev.abortOpen(o.link === undefined).catch(() => {
        /* the open's own error is the one to report */
      });
    // Not yet a port's link (the recorder's file failed), so the teardown did not close it.
    if (o.link === undefined && (dev === null || dev.ports.length === 0))
      await base.close().catch(() => {
        /* as above */
      });
    throw e;
  }
}

/** A closed device's links drop what still arrives. */
const dropRx: RxHandler = () => {
  /* device closed */
};

const FS_ERRNO: ReadonlySet<string> = new Set<ErrnoCode>(['ENOENT', 'EACCES', 'EPERM', 'EEXIST', 'ENOSPC', 'EINVAL', 'EBUSY']);

/** A Node fs error as the VerbsError a C caller would see: its errno when we model it, else EINVAL (e.g. EISDIR). */
function fsError(e: unknown, op: string, what: string, argument: string): VerbsError {
  const code = (e as NodeJS.ErrnoException | null)?.code ?? '';
  const msg = e instanceof Error ? e.message : String(e);
  return new VerbsError(FS_ERRNO.has(code) ? (code as ErrnoCode) : 'EINVAL', op, `cannot open ${what}: ${msg}`, argument);
}

export type { QpState };
// Discovery lives in discovery.ts; its public names stay importable from here.
export { getDeviceList, buildGidTable, activeMtuFor } from './discovery.js';
export type { GidType, GidEntry, DeviceDescriptor } from './discovery.js';
export type { DeviceAttr, PortAttr } from './device-attr.js';
