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
import { networkInterfaces } from 'node:os';
import { readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { VerbsError, type ErrnoCode } from './errors.js';
import { emitGuarded } from './emit.js';
import { Cq } from './cq.js';
import { Pd, Srq, type Ah } from './objects.js';
import * as V from './validate.js';
import { isIP } from 'node:net';
import { Qp, type CreateQpOptions, type QpCap } from './qp.js';
import type { Mr } from './mr.js';
import { Counters, C } from '../roce/counters.js';
import { RealScheduler, type Scheduler, type TimerHandle } from '../roce/transport/sched.js';
import { UdpLink } from '../roce/link/udp-link.js';
import type { Link, RxHandler } from '../roce/link/link.js';
import { FaultInjector, type FaultOptions } from '../roce/link/fault-link.js';
import { PcapRecorder } from '../roce/link/pcap-recorder.js';
import { deviceRx } from '../roce/transport/recv.js';
import { runRequester } from '../roce/transport/requester.js';
import { ackTimeoutMs, armRetransmit } from '../roce/transport/completer.js';
import { psnDiff } from '../roce/psn.js';
import { runReads } from '../roce/transport/responder.js';
import { gidFromString, ipv4ToGid, macToDefaultGid, ipv4ToNumber, type Gid } from '../roce/gid.js';
import { MTU_VALUES, type Mtu } from '../roce/opcode.js';
import type { QpState } from './qp-state.js';

export type GidType = 'RoCE v1' | 'RoCE v2';
export interface GidEntry { index: number; gid: Gid; type: GidType; netdev: string }

export interface DeviceAttr {
  fwVer: string;
  nodeGuid: bigint;
  sysImageGuid: bigint;
  maxMrSize: number;
  pageSizeCap: number;
  vendorId: number;
  vendorPartId: number;
  hwVer: number;
  maxQp: number;
  maxQpWr: number;
  maxSge: number;
  maxSgeRd: number;
  maxCq: number;
  maxCqe: number;
  maxMr: number;
  maxPd: number;
  maxQpRdAtom: number;
  maxQpInitRdAtom: number;
  maxResRdAtom: number;
  atomicCap: 'NONE' | 'HCA' | 'GLOB';
  maxSrq: number;
  maxSrqWr: number;
  maxSrqSge: number;
  maxInline: number;
  maxPkeys: number;
  localCaAckDelay: number;
  physPortCnt: number;
  maxMsgSize: number;
}

export interface PortAttr {
  state: 'ACTIVE' | 'DOWN';
  maxMtu: Mtu;
  activeMtu: Mtu;
  gidTblLen: number;
  portCapFlags: number;
  maxMsgSz: number;
  pkeyTblLen: number;
  lid: number;
  smLid: number;
  lmc: number;
  linkLayer: 'Ethernet';
  activeWidth: string;
  activeSpeed: string;
  physState: 'LINK_UP' | 'DISABLED';
  netdev: string;
  address: string;
  backend: string;
}

export type AsyncEventType = 'COMM_EST' | 'QP_FATAL' | 'QP_REQ_ERR' | 'QP_ACCESS_ERR' | 'SQ_DRAINED' | 'LAST_WQE_REACHED'
  | 'SRQ_LIMIT_REACHED' | 'PORT_ACTIVE' | 'PORT_ERR' | 'CQ_ERR' | 'GID_CHANGE';
export interface AsyncEvent { type: AsyncEventType; qp?: Qp; cq?: Cq; srq?: Srq; port?: number }

/** rxe's limits (rxe_param.h), which is what ibv_devinfo -v shows for rxe0. */
const ATTR: Omit<DeviceAttr, 'nodeGuid' | 'sysImageGuid'> = {
  fwVer: '0.0.0', maxMrSize: 2 ** 32, pageSizeCap: 0xfffff000, vendorId: 0xffffff, vendorPartId: 0, hwVer: 0,
  maxQp: 0x10000, maxQpWr: 0x4000, maxSge: 32, maxSgeRd: 32, maxCq: 0x4000, maxCqe: 0x7fff, maxMr: 0x40000, maxPd: 0x7ffc,
  maxQpRdAtom: 128, maxQpInitRdAtom: 128, maxResRdAtom: 258048, atomicCap: 'HCA', maxSrq: 0x3ff0, maxSrqWr: 0x4000,
  maxSrqSge: 27, maxInline: 400, maxPkeys: 64, localCaAckDelay: 15, physPortCnt: 1, maxMsgSize: 0x80000000,
};

export class Port {
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
  /** @internal QPs whose requester found the link's tx pool empty, in the order they found it: served first-come on 'drain' */
  readonly txWait: Qp[] = [];
  /** @internal ... and those that did send in that run before the pool ran dry: served after the others */
  readonly txWaitBack: Qp[] = [];
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

export interface DeviceDescriptor { name: string; netdev: string; address: string; udpPort?: number }

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

function sysNetdevFor(address: string): { netdev: string; mac: Uint8Array } {
  const ifs = networkInterfaces();
  for (const [name, addrs] of Object.entries(ifs)) {
    for (const a of addrs ?? []) {
      if (a.address === address) return { netdev: name, mac: new Uint8Array(Buffer.from(a.mac.replace(/:/g, ''), 'hex')) };
    }
  }
  // 127.0.0.0/8 is all loopback on Linux, though `lo` lists only 127.0.0.1.
  if (address.startsWith('127.') || address === '::1') return { netdev: 'lo', mac: new Uint8Array(6) };
  return { netdev: '', mac: new Uint8Array(6) };
}

function netdevMtu(netdev: string): number {
  try {
    return Number(readFileSync(`/sys/class/net/${netdev}/mtu`, 'utf8').trim()) || 1500;
  } catch {
    return netdev === 'lo' ? 65536 : 1500;
  }
}

/** rxe: the largest IB MTU that fits the netdev MTU less RoCE headers (rxe_param.h). */
export function activeMtuFor(netdevMtu: number): Mtu {
  let m: Mtu = 256;
  for (const v of MTU_VALUES) if (v <= netdevMtu - 80) m = v;
  return m;
}

/**
 * The GID table as roce_gid_mgmt builds it for a port that supports both RoCE
 * versions: the default GID (fe80::/64 + EUI-64 of the MAC) first, then every
 * address of the interface, each once per RoCE type (v1, then v2).
 */
export function buildGidTable(netdev: string, mac: Uint8Array, boundAddress: string): GidEntry[] {
  const out: GidEntry[] = [];
  const add = (gid: Gid): void => {
    if (out.some((e) => Buffer.from(e.gid).equals(Buffer.from(gid)))) return;
    for (const type of ['RoCE v1', 'RoCE v2'] as const) out.push({ index: out.length, gid, type, netdev });
  };
  add(macToDefaultGid(mac));
  const addrs = networkInterfaces()[netdev] ?? [];
  for (const a of addrs) if (a.family === 'IPv4') add(ipv4ToGid(a.address));
  for (const a of addrs) if (a.family === 'IPv6') add(gidFromString(a.address.split('%')[0]!));
  add(boundAddress.includes(':') ? gidFromString(boundAddress) : ipv4ToGid(boundAddress));
  return out;
}

/**
 * The device list (ibv_get_device_list): SOFTROCE_DEVICES="name=netdev:address,..."
 * or the JSON file SOFTROCE_CONFIG (default ~/.config/softroce/devices.json,
 * `{ "devices": [{ "name", "netdev", "address" }] }`); without either, two
 * loopback devices that need no configuration: softroce0 on 127.0.0.1 and
 * softroce1 on 127.0.0.2.
 */
export function getDeviceList(env: NodeJS.ProcessEnv = process.env): DeviceDescriptor[] {
  const spec = env['SOFTROCE_DEVICES'];
  if (spec) {
    return spec.split(',').filter(Boolean).map((s) => {
      const m = /^([^=]+)=([^:]*):(.+)$/.exec(s.trim());
      if (!m) throw new VerbsError('EINVAL', 'ibv_get_device_list', `bad SOFTROCE_DEVICES entry "${s}" (want name=netdev:address)`, 'SOFTROCE_DEVICES');
      return { name: m[1]!, netdev: m[2]!, address: m[3]! };
    });
  }
  const file = env['SOFTROCE_CONFIG'] ?? join(homedir(), '.config', 'softroce', 'devices.json');
  try {
    const j = JSON.parse(readFileSync(file, 'utf8')) as { devices?: DeviceDescriptor[] };
    if (Array.isArray(j.devices) && j.devices.length) return j.devices;
  } catch {
    /* no file: defaults */
  }
  return [
    { name: 'softroce0', netdev: 'lo', address: '127.0.0.1' },
    { name: 'softroce1', netdev: 'lo', address: '127.0.0.2' },
  ];
}

let nextPdHandle = 1;

export class Device extends EventEmitter {
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
  get gsi(): Qp | null { return this.#gsi; }
  private set gsi(v: Qp | null) { this.#gsi = v; }
  /**
   * How an incoming RoCEv2/IPv4 ICRC is checked when the link cannot show the real IPv4 ID (with
   * the addon and CAP_NET_RAW it can: then the full CRC-32; README, "ICRC outcomes"): 'infer-id'
   * recovers the sender's ID from the ICRC, DF fixed, within what Linux's ID counter can have sent
   * (any peer, rxe included); 'id-zero' requires ID 0 + DF for when every peer is softroce with the
   * native addon (or a UDP GSO segment's index, 1..63, with DF: what such a peer's batched sends carry).
   * Set with openDevice({ icrcIpv4 }).
   */
  get icrcIpv4(): 'infer-id' | 'id-zero' { return this.#icrcIpv4; }
  /** @internal openDevice */
  set icrcIpv4(v: 'infer-id' | 'id-zero') { this.#icrcIpv4 = v; }
  /** the fault injector of openDevice({ faults }) (its `stats` count what it did) */
  get faults(): FaultInjector | null { return this.#faults; }
  /** @internal openDevice */
  set faults(v: FaultInjector | null) { this.#faults = v; }
  /** the capture of openDevice({ pcap }) */
  get recorder(): PcapRecorder | null { return this.#recorder; }
  /** @internal openDevice */
  set recorder(v: PcapRecorder | null) { this.#recorder = v; }
  get closed(): boolean { return this.#closed; }
  private set closed(v: boolean) { this.#closed = v; }
  private nextQpn = 0x11;
  /** undoes addPort's wiring of each link (listeners that reach this device) */
  private readonly unwire: Array<() => void> = [];
  private closing: Promise<void> | null = null;

  constructor(name: string, sched: Scheduler, mac: Uint8Array) {
    super();
    this.name = name;
    this.sched = sched;
    const guid = (BigInt(mac[0]! ^ 2) << 56n) | (BigInt(mac[1]!) << 48n) | (BigInt(mac[2]!) << 40n) | (0xfffen << 24n) |
      (BigInt(mac[3]!) << 16n) | (BigInt(mac[4]!) << 8n) | BigInt(mac[5]!);
    this.attr = { ...ATTR, nodeGuid: guid, sysImageGuid: guid };
  }

  /** @internal adds a port over a link */
  addPort(link: Link, netdev: string, mac: Uint8Array): Port {
    const p = new Port(this.ports.length + 1, link, netdev, mac, buildGidTable(netdev, mac, link.localIp), activeMtuFor(netdevMtu(netdev)));
    this.ports.push(p);
    link.setReceiver((buf, len, srcIp, srcPort, ipIdDf) => {
      deviceRx(this, p, buf, len, srcIp, srcPort, ipIdDf);
      const w = this.rxWaiter;
      if (w !== null) { this.rxWaiter = null; w(); }
    });
    const onDrain = (): void => {
      // Requesters: the ones that waited, in the order they found the pool empty, to the back of
      // the run queue (kick), not every QP in creation order: with thousands of QPs the early ones
      // took every freed buffer and the fan-out was O(QPs) per drain.
      // A QP that got buffers last time goes after those that got none (txWaitBack): the first
      // in line would otherwise also be the first to find the pool empty again, and first again.
      for (const w of [p.txWait, p.txWaitBack]) {
        for (let i = 0; i < w.length; i++) {
          const qp = w[i]!;
          if (qp.req.waitingDrain) { qp.req.waitingDrain = false; this.kick(qp); }
        }
        w.length = 0;
      }
      for (const qp of this.qps.values()) {
        if (qp.resp.waitingDrain) { qp.resp.waitingDrain = false; runReads(qp); }
      }
    };
    // The link holds packets (its socket was full) or sent them only now: an ACK timer armed when
    // a QP handed its last packet over since the wait began measures from now instead, and its
    // tail-loss probe is off for them (issue 10 item 3: no timeout for a packet still in our
    // own queues). The link says so every millisecond while it holds them, and once when done.
    const onLate = (heldMs: unknown): void => {
      const held = heldMs as number;
      const now = this.sched.now();
      for (const qp of this.outBy.keys()) {
        const c = qp.comp;
        if (qp.port !== p.num || c.deadline === Infinity) continue;
        const rto = ackTimeoutMs(qp.timeout);
        if (c.deadline - rto < now - held) continue; // its last packet was out before the wait began
        c.deadline = now + rto;
        c.probeAt = Infinity; // no probe for packets that just left (the ACK timer still guards them)
      }
    };
    const onLink = (up: unknown): void => this.asyncEvent({ type: up ? 'PORT_ACTIVE' : 'PORT_ERR', port: p.num });
    // A socket error (an ICMP error reported on a later send, say) is the datagram's loss, which
    // the transport recovers from: counted, never thrown (an 'error' event nobody hears would
    // take the process down).
    const onError = (): void => { p.counters.v[C.send_err]!++; };
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
      state: p.link.up ? 'ACTIVE' : 'DOWN', maxMtu: 4096, activeMtu: p.activeMtu, gidTblLen: 1024, portCapFlags: 0x00010000 | 0x04000000,
      maxMsgSz: this.attr.maxMsgSize, pkeyTblLen: 1, lid: 0, smLid: 0, lmc: 0, linkLayer: 'Ethernet', activeWidth: '1X',
      activeSpeed: '2.5 Gbps', physState: p.link.up ? 'LINK_UP' : 'DISABLED', netdev: p.netdev, address: p.address, backend: p.link.caps.backend,
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

  /** @internal pd.createQp (the checks of ibv_create_qp, all before anything is allocated) */
  createQpFor(pd: Pd, o: CreateQpOptions): Qp {
    const op = 'ibv_create_qp';
    const a = this.attr;
    if (!o || (o.type !== 'RC' && o.type !== 'UC' && o.type !== 'UD')) throw new VerbsError('EINVAL', op, `type must be RC, UC or UD`, 'type');
    if (!(o.sendCq instanceof Cq) || o.sendCq.closed || o.sendCq.device !== this) throw new VerbsError('EINVAL', op, 'sendCq must be an open CQ of this device', 'sendCq');
    if (!(o.recvCq instanceof Cq) || o.recvCq.closed || o.recvCq.device !== this) throw new VerbsError('EINVAL', op, 'recvCq must be an open CQ of this device', 'recvCq');
    if (o.srq !== undefined && (!(o.srq instanceof Srq) || o.srq.closed || o.srq.pd.device !== this)) throw new VerbsError('EINVAL', op, 'srq must be an open SRQ of this device', 'srq');
    if (o.srq !== undefined && o.srq.pd !== pd) throw new VerbsError('EINVAL', op, 'srq must be of the same PD', 'srq');
    V.optBool(op, 'sigAll', o.sigAll);
    V.obj(op, 'cap', o.cap);
    const c = o.cap;
    const cap: Required<QpCap> = {
      maxSendWr: c.maxSendWr, maxRecvWr: o.srq ? 0 : c.maxRecvWr, maxSendSge: c.maxSendSge ?? 1, maxRecvSge: c.maxRecvSge ?? 1, maxInline: c.maxInline ?? 0,
    };
    const chk = (v: number, lo: number, hi: number, name: string): void => {
      if (!Number.isInteger(v) || v < lo || v > hi) throw new VerbsError('EINVAL', op, `cap.${name} = ${v} not in ${lo}..${hi}`, `cap.${name}`);
    };
    chk(cap.maxSendWr, 1, a.maxQpWr, 'maxSendWr');
    if (!o.srq) chk(cap.maxRecvWr, 1, a.maxQpWr, 'maxRecvWr');
    chk(cap.maxSendSge, 1, a.maxSge, 'maxSendSge');
    chk(cap.maxRecvSge, 1, a.maxSge, 'maxRecvSge');
    chk(cap.maxInline, 0, a.maxInline, 'maxInline');
    if (this.qps.size >= a.maxQp) throw new VerbsError('ENOMEM', op, 'too many QPs', 'qp');
    while (this.qps.has(this.nextQpn) || this.nextQpn < 0x11) this.nextQpn = this.nextQpn >= 0xfffffe ? 0x11 : this.nextQpn + 1;
    const qp = new Qp(this, pd, this.nextQpn++, o.type, o, cap, o.sendCq, o.recvCq);
    this.register(qp, pd);
    return qp;
  }

  /** QP1, the GSI QP (a special UD QP with Q_Key 0x80010000) that carries CM MADs. */
  openGsi(pd: Pd, o: { sendCq: Cq; recvCq: Cq; cap?: Partial<QpCap> }): Qp {
    this.live('ibv_create_qp');
    const op = 'ibv_create_qp';
    if (!(pd instanceof Pd) || pd.closed || pd.device !== this) V.fail(op, 'pd', 'must be an open PD of this device');
    V.obj(op, 'options', o);
    if (!(o.sendCq instanceof Cq) || o.sendCq.closed || o.sendCq.device !== this) V.fail(op, 'sendCq', 'must be an open CQ of this device');
    if (!(o.recvCq instanceof Cq) || o.recvCq.closed || o.recvCq.device !== this) V.fail(op, 'recvCq', 'must be an open CQ of this device');
    if (o.cap !== undefined) {
      V.obj(op, 'cap', o.cap);
      V.optInt(op, 'cap.maxSendWr', o.cap.maxSendWr, 1, this.attr.maxQpWr);
      V.optInt(op, 'cap.maxRecvWr', o.cap.maxRecvWr, 1, this.attr.maxQpWr);
    }
    if (this.gsi) throw new VerbsError('EBUSY', 'ibv_create_qp', 'QP1 is already open', 'qp');
    const cap: Required<QpCap> = { maxSendWr: o.cap?.maxSendWr ?? 256, maxRecvWr: o.cap?.maxRecvWr ?? 256, maxSendSge: 1, maxRecvSge: 1, maxInline: 0 };
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
      this.rxWaiter = prev === null ? resolve : (): void => { prev(); resolve(); };
    });
  }

  /**
   * @internal schedule the requester of a QP (rxe_sched_task): on a later turn of the event loop
   * (the transport's own re-runs: bounded work per turn), or, for a post from the application
   * (`soon`), as soon as the caller's stack unwinds: the packets leave in the same turn, without
   * waiting for the loop's check phase (a SEND answering a receive goes out at once).
   */
  kick(qp: Qp, soon = false): void {
    if (this.closed) return;
    this.park(qp);
    if (qp.req.scheduled) return;
    qp.req.scheduled = true;
    this.runq.push(qp);
    if (soon && this.turnLeft > 0) {
      if (!this.pumpSoonPending) { this.pumpSoonPending = true; this.sched.soon(this.pumpSoonFn); }
    } else if (!this.pumpPending) { this.pumpPending = true; this.sched.defer(this.pumpFn); }
  }

  /** @internal the requester of `qp` found the tx pool of `port` empty: it runs again on 'drain', in its turn */
  waitTx(qp: Qp, port: Port, sentSome: boolean): void {
    this.park(qp);
    if (qp.req.waitingDrain) return;
    qp.req.waitingDrain = true;
    (sentSome ? port.txWaitBack : port.txWait).push(qp);
  }

  /**
   * Unacknowledged RC packets over all QPs of the device, as last seen when each QP ran (an ACK
   * kicks its QP, so the count catches up on its next run; until then it errs high). When it
   * reaches the device's share (`cap`), no QP starts a new message (one under way finishes: its last
   * packet asks for the ACK that frees the share) until ACKs bring it down; the QPs held wait
   * in FIFO order. Why: each QP's window (128 PSNs) bounds that QP, not the sum: 4,000 QPs may
   * have 500,000 packets out at once, far beyond the peer's socket buffer (4 MB, ~1,000 packets
   * of MTU 4096), and the datagrams it drops come back as go-back-N resends (issue 10: 40-97%
   * duplicates). Like TCP's cwnd shared by an aggregate, without touching any packet.
   */
  private inflight = 0;
  /**
   * The share itself, AIMD as TCP's window for the whole device: halved (down to INFLIGHT_MIN)
   * when a QP retried (an ACK timeout or a NAK: the peer or the path could not keep up), grown by
   * 8 packets per clean 2 ms up to INFLIGHT_MAX. A fixed 512 overran a 4.2 ms timeout (timeout
   * 10) on a loaded host; a fixed 128 cost a third of the throughput at timeout 14.
   */
  private cap = INFLIGHT_MAX;
  private capAt = 0;
  private capRetries = 0;
  private adjustCap(): void {
    const now = this.sched.now();
    if (now - this.capAt < 2) return;
    this.capAt = now;
    let r = 0;
    for (const p of this.ports) r += p.counters.v[C.completer_retry_err]!;
    if (r !== this.capRetries) this.cap = Math.max(INFLIGHT_MIN, this.cap >> 1);
    else if (this.cap < INFLIGHT_MAX) this.cap += 8;
    this.capRetries = r;
  }
  private readonly outBy = new Map<Qp, number>();
  private readonly capWait: Qp[] = [];
  private readonly capWaitSet = new Set<Qp>();
  private recountAt = -Infinity;
  /** @internal the requester asks before a new message of an RC QP: true = wait (the QP is queued) */
  holdNew(qp: Qp): boolean {
    // This QP's own count as it is now (it is running: what it sent in this run counts).
    const mine = Math.max(0, psnDiff(qp.req.psn, qp.comp.psn));
    if (this.inflight - (this.outBy.get(qp) ?? 0) + mine < this.cap) return false;
    // Counts go stale when a QP leaves without a last run (close, error): recount now and then.
    const now = this.sched.now();
    if (now - this.recountAt > 5) { this.recountAt = now; this.recount(); if (this.inflight - (this.outBy.get(qp) ?? 0) + mine < this.cap) return false; }
    if (!this.capWaitSet.has(qp)) { this.capWaitSet.add(qp); this.capWait.push(qp); }
    return true;
  }
  private account(qp: Qp): void {
    const cur = qp.type === 'RC' && !qp.closed && (qp.state === 'RTS' || qp.state === 'SQD') ? Math.max(0, psnDiff(qp.req.psn, qp.comp.psn)) : 0;
    const old = this.outBy.get(qp) ?? 0;
    if (cur === old) return;
    this.inflight += cur - old;
    if (cur > 0) this.outBy.set(qp, cur);
    else this.outBy.delete(qp);
  }
  private recount(): void {
    for (const qp of [...this.outBy.keys()]) this.account(qp);
  }
  private capTimer: TimerHandle | null = null;
  /** ACKs freed part of the device's share: the QPs held get their turn, first come first. */
  private releaseHeld(): void {
    if (this.capWait.length === 0 || this.inflight >= this.cap) return;
    const w = this.capWait.splice(0);
    this.capWaitSet.clear();
    for (const qp of w) if (!qp.closed) this.kick(qp);
  }

  /**
   * QPs whose ACK timer (and tail-loss probe) is held while they wait in our own queues with
   * packets still to send (issue 10 item 3). A timeout then would be for nothing: the packets
   * that left asked for no ACK yet (AckReq comes with the last packet of a message or every
   * 32 packets), the ones that will ask are still here, and any loss among those that left shows
   * as a sequence NAK once the next one arrives. With thousands of QPs one round over all of them
   * takes longer than the timeout (4 ms at timeout 10), so the timer fired for whole flights
   * that were fine, resent them (duplicates) and spent retry_cnt (RETRY_EXC_ERR). The requester
   * re-arms both per packet it sends (rxe's rule); a run that sends nothing re-arms here.
   */
  private readonly parked = new Set<Qp>();
  private park(qp: Qp): void {
    const c = qp.comp;
    if (c.deadline === Infinity && c.probeAt === Infinity) return;
    if (qp.req.idx >= qp.sqTail || psnDiff(qp.req.psn, c.psn) >= qp.req.window || c.rnrTimer) return; // nothing it could send now
    c.deadline = Infinity;
    c.probeAt = Infinity;
    this.parked.add(qp);
  }
  private unpark(qp: Qp, wasParked: boolean, sent: number): void {
    // Parked again during the run (more to send, or no tx buffer): nothing to do.
    if (!wasParked || sent > 0 || this.parked.has(qp)) return;
    const c = qp.comp;
    if (c.deadline !== Infinity || qp.closed || (qp.state !== 'RTS' && qp.state !== 'SQD') || psnDiff(qp.req.psn, c.psn) <= 0) return;
    // It could not send after all (fence, max_rd_atomic): the ACK timer runs again from now. Not
    // a round-trip sample: no packet left now.
    const sp = c.sampleP, st = c.sampleT;
    armRetransmit(qp);
    c.sampleP = sp;
    c.sampleT = st;
  }

  /**
   * The requesters' run queue (rxe runs one tasklet per QP; here every QP shares one event loop):
   * kicked QPs wait in FIFO order and each run sends at most a bounded number of packets, then a
   * QP with more to send goes to the back (requester.ts). The packets sent per turn of the event
   * loop are bounded across all QPs (TURN_PACKETS): the loop gets back to its timers and to the
   * socket, so ACKs are read and completions reported between bursts. Without the bound, one
   * post of 4 WRs on each of 4,000 QPs ran 4,000 x 64 packets in one turn (a loop delay of
   * seconds), and ACK timers fired in the next timers phase, before the ACKs already waiting in
   * the socket were read (issue 10: 97% duplicates).
   */
  private readonly runq: Qp[] = [];
  private runqHead = 0;
  private pumpPending = false;
  private pumpSoonPending = false;
  private refillPending = false;
  /** packets the requesters may still send in this turn of the event loop */
  private turnLeft = TURN_PACKETS;
  private readonly pumpFn = (): void => {
    this.pumpPending = false;
    this.turnLeft = TURN_PACKETS;
    this.pump();
  };
  private readonly pumpSoonFn = (): void => {
    this.pumpSoonPending = false;
    this.pump();
  };
  private readonly refillFn = (): void => {
    this.refillPending = false;
    this.turnLeft = TURN_PACKETS;
  };

  private pump(): void {
    this.adjustCap();
    const q = this.runq;
    const start = this.turnLeft;
    while (this.runqHead < q.length && this.turnLeft > 0) {
      const qp = q[this.runqHead]!;
      q[this.runqHead++] = undefined as unknown as Qp;
      qp.req.scheduled = false;
      if (qp.closed) { this.parked.delete(qp); this.account(qp); continue; }
      this.account(qp);
      // A smaller share per run while many QPs wait, so one round over all of them stays short.
      const waiting = q.length - this.runqHead;
      const budget = waiting >= 64 ? RUN_PACKETS_CONTENDED : RUN_PACKETS;
      const wasParked = this.parked.delete(qp);
      const sent = runRequester(qp, budget);
      this.unpark(qp, wasParked, sent);
      this.account(qp);
      // Every run costs at least one token: runs that find nothing to send are bounded too.
      this.turnLeft -= Math.max(1, sent);
    }
    if (this.runqHead === q.length) { q.length = 0; this.runqHead = 0; }
    else if (this.runqHead >= 1024 && this.runqHead * 2 >= q.length) { q.splice(0, this.runqHead); this.runqHead = 0; }
    if (this.closed) {
      q.length = 0; this.runqHead = 0; this.parked.clear(); this.capWait.length = 0; this.capWaitSet.clear(); this.outBy.clear();
      this.sched.clearTimer(this.capTimer);
      this.capTimer = null;
      return;
    }
    this.releaseHeld();
    // A count gone stale (a QP that went to ERR without a last run) must not hold the others
    // forever when no ACK is left to come and run the pump: look again in 5 ms.
    if (this.capWait.length > 0 && this.capTimer === null) {
      this.capTimer = this.sched.setTimer(5, () => {
        this.capTimer = null;
        if (this.closed) return;
        this.recount();
        this.pump();
      });
    }
    if (q.length > 0) {
      if (!this.pumpPending) { this.pumpPending = true; this.sched.defer(this.pumpFn); }
    } else if (this.turnLeft < start && !this.refillPending && !this.pumpPending) {
      // Tokens taken outside a deferred pump (an application's post) come back on the next turn.
      this.refillPending = true;
      this.sched.defer(this.refillFn);
    }
  }

  /**
   * @internal raise an async event (state already changed). A listener that throws does not
   * unwind into the transport or out of a close() (emit.ts): its error comes back on the next
   * tick, as this device's 'error' event when it has a listener, else as an uncaught exception.
   */
  asyncEvent(e: AsyncEvent): void {
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
      this.closing = new Promise<void>((r) => { adopt = r; });
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
    this.sched.clearTimer(this.capTimer); // the run queue's only timer (pump)
    this.capTimer = null;
    const failures: unknown[] = [];
    const step = (f: () => void): void => {
      try { f(); } catch (e) { failures.push(e); }
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
    try { await this.recorder?.detach(); } catch (e) { failures.push(e); }
    if (closeLinks) {
      for (const p of this.ports) {
        try { await p.link.close(); } catch (e) { failures.push(e); }
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
  const base: Link = o.link ?? await UdpLink.open({ address, port: o.udpPort ?? desc?.udpPort ?? 4791, native: o.native ?? 'auto' });
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
      link = dev.recorder = await PcapRecorder.open(o.pcap, link).catch((e: unknown) => { throw fsError(e, 'ibv_open_device', `pcap file ${o.pcap}`, 'pcap'); });
    }
    dev.addPort(link, netdev || 'lo', found.mac);
    if (o.icrcIpv4) dev.icrcIpv4 = o.icrcIpv4;
    return dev;
  } catch (e) {
    if (dev) await dev.abortOpen(o.link === undefined).catch(() => { /* the open's own error is the one to report */ });
    // Not yet a port's link (the recorder's file failed), so the teardown did not close it.
    if (o.link === undefined && (dev === null || dev.ports.length === 0)) await base.close().catch(() => { /* as above */ });
    throw e;
  }
}

/**
 * Requester packets per turn of the event loop, over all QPs of a device (4 MiB at MTU 4096: a
 * few ms of work, a quarter of the 1,024-buffer tx pool per turn).
 */
const TURN_PACKETS = 256;
/** Packets per requester run: a QP alone (or with few others) and when many QPs wait behind it. */
const RUN_PACKETS = 64;
const RUN_PACKETS_CONTENDED = 16;
/** Unacknowledged RC packets over a device before new messages wait (2 MiB .. 256 KiB at MTU 4096): see Device.holdNew. */
const INFLIGHT_MAX = 512;
const INFLIGHT_MIN = 64;

/** A closed device's links drop what still arrives. */
const dropRx: RxHandler = () => { /* device closed */ };

const FS_ERRNO: ReadonlySet<string> = new Set<ErrnoCode>(['ENOENT', 'EACCES', 'EPERM', 'EEXIST', 'ENOSPC', 'EINVAL', 'EBUSY']);

/** A Node fs error as the VerbsError a C caller would see: its errno when we model it, else EINVAL (e.g. EISDIR). */
function fsError(e: unknown, op: string, what: string, argument: string): VerbsError {
  const code = (e as NodeJS.ErrnoException | null)?.code ?? '';
  const msg = e instanceof Error ? e.message : String(e);
  return new VerbsError(FS_ERRNO.has(code) ? code as ErrnoCode : 'EINVAL', op, `cannot open ${what}: ${msg}`, argument);
}

export type { QpState };
