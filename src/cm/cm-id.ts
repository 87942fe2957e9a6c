/**
 * rdma_cm_id up to a resolved route (librdmacm's rdma_create_id, rdma_bind_addr, rdma_resolve_addr,
 * rdma_resolve_route, rdma_set_option, rdma_migrate_id, rdma_destroy_id over the kernel's cma.c).
 *
 * How results come back: a call that librdmacm would refuse at once (a bad argument, the wrong state,
 * a port taken) throws a VerbsError before anything changes, naming the call (`op`) and the argument.
 * What can only be known later comes twice: as the event on the id's channel (ADDR_RESOLVED,
 * ADDR_ERROR, ROUTE_RESOLVED, ...), exactly as librdmacm reports it, and as the promise the call
 * returns, resolved with that same event object, or rejected with a VerbsError carrying the error's
 * errno (the event's status is -errno). Use either: an event-loop program reads the channel and may
 * ignore the promises (they never cause an unhandled rejection); a sequential one awaits them.
 *
 * The id's state machine is cm-states.ts (the kernel's cma states); every call is checked there.
 */
import { VerbsError } from '../verbs/errors.js';
import type { Device } from '../verbs/device.js';
import type { GidType } from '../verbs/discovery.js';
import type { Qp } from '../verbs/qp.js';
import { gidToString } from '../roce/gid.js';
import { EventChannel, type CmEvent, type CmEventType } from './event-channel.js';
import { AFONLY_FROM, callAllowed, CALLS, EVENT_MOVES, reuseAddrAllowed, type CmaState, type CmCall } from './cm-states.js';
import { isAnyAddr, portTable, PORT_SPACES, type PortOwner, type PortSpace } from './port-space.js';
import { hasPortOn, ipToGid, isLocalAddress, parseCmAddr, portWithAddress, routeHopLimit, routeSource, type CmAddr, type CmAddrInput } from './addr.js';
import { buildPath, cmPathOf, gidTypeOf, roceMode, type PathRecord } from './route.js';
import { acquireCmSource, cmDevice, cmDevices, releaseCmDevice, retainCmDevice, unwatchDeviceRemoval, watchDeviceRemoval } from './devices.js';
import { randomInt } from 'node:crypto';
import { isIP } from 'node:net';
import type { Ah, Pd, Srq } from '../verbs/objects.js';
import type { Cq } from '../verbs/cq.js';
import type { QpCap } from '../verbs/qp-attrs.js';
import type { TimerHandle } from '../roce/sched.js';
import { getDeviceList, portsOf } from '../verbs/discovery.js';
import { CmAgent, CMA_CM_MRA_SERVICE_TIMEOUT, type IbCmEvent, type IbCmId } from './ib-cm.js';
import { CMA_HDR_LEN, CmaHdrError, RdmaPortSpace, decodeCmaHdr, encodeCmaHdr, serviceId, type CmaHdr } from './cma-hdr.js';
import { CmRejReason, SidrStatus, cmAckTimeout } from './cm-defs.js';
import {
  connValues,
  leaveListen,
  mtuBytes,
  PRIVATE_DATA_MAX,
  RDMA_UDP_QKEY,
  rtrAttrs,
  rtsAttrs,
  sharedListen,
  type ConnInfo,
  type ConnParam,
  type Handshake,
  type SharedListen,
} from './conn.js';
import { addrKey, familyOf } from './port-space.js';
import type { CmEventParam } from './event-channel.js';

export interface CreateIdOptions {
  /** the port space (RDMA_PS_TCP: RC, RDMA_PS_UDP: UD, RDMA_PS_IB: either); default 'TCP' */
  ps?: PortSpace;
  /** the QP type, for the IB port space (rdma_create_id2); TCP is RC and UDP is UD */
  qpType?: 'RC' | 'UD';
  /** the user's context (cm_id->context), carried as is */
  context?: unknown;
  /** a device the application opened: the id uses its ports only, and never closes it (default: the CM opens its own, devices.ts) */
  device?: Device;
}

/** rdma_set_option's options (RDMA_OPTION_ID_TOS, _REUSEADDR, _AFONLY, _ACK_TIMEOUT). */
export interface CmIdOptions {
  /** IP TOS / traffic class of the paths resolved from now on (0..255) */
  tos?: number;
  /** share the bound port with other REUSEADDR ids */
  reuseAddr?: boolean;
  /** an IPv6 bind does not also take the port for IPv4 (IPv4 binds always are AF-only) */
  afOnly?: boolean;
  /** the QP's local ACK timeout exponent (0..31); the path's packet life time becomes it − 1 (RC ids only) */
  ackTimeout?: number;
}

export interface ResolveAddrOptions {
  /** the source address (and port): the id is bound to it first when it is not bound yet */
  src?: CmAddrInput;
  /** the destination: an address, or { address, port } (the port is the service the connect will ask for) */
  dst: CmAddrInput;
  /** give up after this many ms (ADDR_ERROR with status -ETIMEDOUT) */
  timeoutMs: number;
}

/** An id's route (struct rdma_route): its addresses, the source GID, and the path once resolveRoute ran. */
export interface CmRoute {
  readonly addr: { readonly src: CmAddr | null; readonly dst: CmAddr | null };
  /** the source GID: its index in the port's table, its text, its RoCE type (after resolveAddr) */
  readonly sgidIndex: number | null;
  readonly sgid: string | null;
  readonly dgid: string | null;
  readonly gidType: GidType | null;
  readonly path: PathRecord | null;
  readonly numPaths: number;
}

/** rdma_create_qp's options (struct ibv_qp_init_attr): what is not given is made for the id. */
export interface IdQpOptions {
  sendCq?: Cq;
  recvCq?: Cq;
  /** default { maxSendWr: 16, maxRecvWr: 16 } */
  cap?: QpCap;
  sigAll?: boolean;
  srq?: Srq;
  /** the id's QP type (RC for TCP, UD for UDP): anything else is EINVAL */
  type?: 'RC' | 'UD';
}

/** How long a promise helper (connect, accept, disconnect) waits, and what aborts it. */
export interface WaitOptions {
  timeoutMs?: number;
  signal?: AbortSignal;
}

interface Waiter {
  events: readonly CmEventType[];
  settle(ev: CmEvent | null, err: Error | null): void;
}

/** The errno a failure event rejects a waiting promise with. */
const FAILURES: Partial<Record<CmEventType, (ev: CmEvent) => VerbsError>> = {
  REJECTED: (ev) => new VerbsError('ECONNREFUSED', 'rdma_cm', `rejected by the peer (reason ${ev.status})`, 'id'),
  UNREACHABLE: (ev) =>
    ev.status === -ETIMEDOUT
      ? new VerbsError('ETIMEDOUT', 'rdma_cm', 'the peer did not answer (retries spent)', 'id')
      : new VerbsError('EHOSTUNREACH', 'rdma_cm', `unreachable (status ${ev.status})`, 'id'),
  CONNECT_ERROR: (ev) => new VerbsError('ECONNRESET', 'rdma_cm', `the connection could not be completed (status ${ev.status})`, 'id'),
  DISCONNECTED: () => new VerbsError('ECONNRESET', 'rdma_cm', 'the connection went down', 'id'),
  DEVICE_REMOVAL: () => new VerbsError('ENODEV', 'rdma_cm', 'the device was removed', 'device'),
};

const ETIMEDOUT = 110;
/** How often the passive side looks for its QP's first receive while it waits for the RTU. */
const FIRST_RECEIVE_POLL_MS = 50;
/** How long a closed id's CM agent and device stay, so the DREQ / REJ its close sent leaves QP1 first. */
const CLOSE_LINGER_MS = 50;

const MAX_TIMEOUT_MS = 0x7fffffff;

/** A call's own work in flight (an address resolution): what close or a device removal cancels. */
interface Pending {
  call: 'resolveAddr' | 'resolveRoute' | 'bind';
  cancel(e: VerbsError): void;
}

export class CmId implements PortOwner {
  readonly ps: PortSpace;
  readonly qpType: 'RC' | 'UD';
  /** the user's context, as given at createId */
  context: unknown;
  /** the QP the CM drives for this id (rdma_create_qp): null until then (connection work) */
  qp: Qp | null = null;

  #channel: EventChannel;
  #state: CmaState = 'IDLE';
  /** the device of createId({ device }): a constraint, not yet the id's */
  readonly #given: Device | null;
  #device: Device | null = null;
  /** the id holds a reference on a CM-opened device (devices.ts) */
  #cmRef = false;
  #portNum = 0;
  #sgidIndex: number | null = null;
  #gidType: GidType | null = null;
  #hopLimit = 64;
  #src: CmAddr | null = null;
  #dst: CmAddr | null = null;
  #path: PathRecord | null = null;
  /** the port taken in the port space (0: none) */
  #boundPort = 0;
  #tos: number | null = null;
  #ackTimeout: number | null = null;
  #reuseAddr = false;
  /** AFONLY as set by setOption, or null (then: IPv4 ids are AF-only, IPv6 ones follow net.ipv6.bindv6only, 0) */
  #afOnlySet: boolean | null = null;
  #pending: Pending | null = null;
  readonly #onDeviceClose = (): void => this.#deviceRemoved();
  /** the IB CM id of the connection (connect, or the request this id was made for) */
  #ib: IbCmId | null = null;
  /** the CM agent of the id's port, held while the id connects or is connected */
  #agent: CmAgent | null = null;
  /** where a listening id listens, and the CM devices it opened for a wildcard listen */
  #listens: Array<{ agent: CmAgent; sid: bigint }> = [];
  #listenDevs: Device[] = [];
  #ownPd: Pd | null = null;
  #ownCqs: Cq[] = [];
  #ahs: Ah[] = [];
  #hs: Handshake | null = null;
  #isPassive = false;
  #waiters: Waiter[] = [];
  #watch: TimerHandle | null = null;
  #disconnected: CmEvent | null = null;
  /** the multicast groups joined (rdma_join_multicast), by group address */
  readonly #mcast = new Map<string, { mgid: string; attached: boolean }>();

  /** @internal createId */
  constructor(channel: EventChannel, ps: PortSpace, qpType: 'RC' | 'UD', context: unknown, device: Device | null) {
    this.#channel = channel;
    this.ps = ps;
    this.qpType = qpType;
    this.context = context;
    this.#given = device;
    channel.attach(this);
  }

  /** the cma state (cm-states.ts) */
  get state(): CmaState {
    return this.#state;
  }
  get channel(): EventChannel {
    return this.#channel;
  }
  /** the device the id is on (cm_id->verbs): null until bound to an address or resolved */
  get verbs(): Device | null {
    return this.#device;
  }
  /** the port of `verbs` (cm_id->port_num): 0 until bound to an address or resolved */
  get portNum(): number {
    return this.#portNum;
  }
  get route(): CmRoute {
    const src = this.#src,
      dst = this.#dst;
    const resolved = this.#sgidIndex !== null && src !== null;
    return {
      addr: { src, dst },
      sgidIndex: this.#sgidIndex,
      sgid: resolved ? gidToString(ipToGid(src.address)) : null,
      dgid: resolved && dst !== null ? gidToString(ipToGid(dst.address)) : null,
      gidType: this.#gidType,
      path: this.#path,
      numPaths: this.#path === null ? 0 : 1,
    };
  }
  /** rdma_get_src_port: the id's rdma_cm port (0 when not bound) */
  getSrcPort(): number {
    return this.#src?.port ?? 0;
  }
  /** rdma_get_dst_port: the destination's port (0 before resolveAddr) */
  getDstPort(): number {
    return this.#dst?.port ?? 0;
  }
  /** PortOwner: the bound address ('' when not bound) */
  get srcAddress(): string {
    return this.#src?.address ?? '';
  }
  get reuseAddr(): boolean {
    return this.#reuseAddr;
  }
  /** whether the port is taken for this family only (cma's afonly) */
  get afOnly(): boolean {
    if (this.#afOnlySet !== null) return this.#afOnlySet;
    // rdma_bind_addr: an IPv4 id is always AF-only; an IPv6 one follows net.ipv6.bindv6only (0 by default).
    return this.#src === null || this.#src.family === 4;
  }
  get tos(): number | null {
    return this.#tos;
  }
  get ackTimeout(): number | null {
    return this.#ackTimeout;
  }

  /** EINVAL naming the call when the state does not allow it (cma_comp_exch failing), or when the id's bind is still in progress. */
  #check(call: CmCall): void {
    const op = CALLS[call].op;
    if (!callAllowed(call, this.#state)) throw new VerbsError('EINVAL', op, `not allowed in state ${this.#state}`, 'id');
    if (this.#pending?.call === 'bind' && call !== 'setOption' && call !== 'migrate')
      throw new VerbsError('EINVAL', op, 'the id is still binding (await bind() first)', 'id');
  }

  /** An event to the channel, once its state move applies (a late one for an id that moved on is dropped). */
  #emit(event: CmEventType, status: number, param?: CmEventParam, listenId?: CmId): CmEvent {
    const ev: CmEvent = { event, id: this, status, ...(param !== undefined ? { param } : {}), ...(listenId !== undefined ? { listenId } : {}) };
    this.#channel.deliver(ev);
    for (const w of [...this.#waiters]) {
      if (w.events.includes(event)) w.settle(ev, null);
      else {
        const f = FAILURES[event];
        if (f !== undefined) w.settle(null, Object.assign(f(ev), { event: ev }));
      }
    }
    return ev;
  }

  #failWaiters(e: Error): void {
    for (const w of [...this.#waiters]) w.settle(null, e);
  }

  /**
   * rdma_bind_addr: takes `addr`'s port (0: an ephemeral one) in the id's port space and, for a specific
   * address, the device and port that have it (the CM's own device for the address, or a port of the
   * createId device). Throws EINVAL (state, argument), EADDRINUSE / EADDRNOTAVAIL (the port, or an
   * address this host does not have), EACCES (a port below 1024 without CAP_NET_BIND_SERVICE), ENODEV
   * (the createId device has no port with the address). The promise resolves once the device is the
   * id's (at once for the wildcard), or rejects when it cannot be opened (the port is then free again
   * and the id IDLE). Until it settles, other calls on the id are refused (EINVAL): await it first.
   */
  bind(addr: CmAddrInput): Promise<void> {
    this.#check('bind');
    const a = parseCmAddr('rdma_bind_addr', 'addr', addr);
    const wild = isAnyAddr(a.address);
    let port: { port: number; gidIndex: number } | null = null;
    if (!wild) port = this.#checkLocal('rdma_bind_addr', 'addr', a.address);
    this.#takePort('rdma_bind_addr', 'addr', a);
    if (wild || this.#given !== null) {
      if (port !== null) this.#attach(this.#given!, port.port, false);
      return Promise.resolve();
    }
    // The CM's own device for the address: opened (or shared) now.
    let cancelled: VerbsError | null = null;
    this.#pending = { call: 'bind', cancel: (e) => (cancelled = e) };
    const p = acquireCmSource(a.address, false).then(
      ({ device }) => {
        this.#pending = null;
        if (cancelled !== null) {
          releaseCmDevice(device);
          throw cancelled;
        }
        const found = portWithAddress(device, a.address, cmGidType(device));
        if (found === null) {
          releaseCmDevice(device);
          this.#unbind();
          throw new VerbsError('ENODEV', 'rdma_bind_addr', `device ${device.name} has no ${cmGidType(device)(1)} GID for ${a.address}`, 'addr');
        }
        this.#attach(device, found.port, true);
      },
      (e: unknown) => {
        this.#pending = null;
        if (cancelled === null) this.#unbind();
        throw e;
      },
    );
    p.catch(() => {
      /* the caller has the promise; an event-driven caller may drop it */
    });
    return p;
  }

  /**
   * A specific source address must be this host's (EADDRNOTAVAIL otherwise, rdma_translate_ip); with a
   * createId device, one of its ports must have it (ENODEV when only the host does). Returns that port.
   */
  #checkLocal(op: string, arg: string, address: string): { port: number; gidIndex: number } | null {
    const dev = this.#given;
    if (dev !== null) {
      if (dev.closed) throw new VerbsError('ENODEV', op, `device ${dev.name} is closed`, 'device');
      const found = portWithAddress(dev, address, cmGidType(dev));
      if (found !== null) return found;
      if (hasPortOn(dev, address)) throw new VerbsError('ENODEV', op, `device ${dev.name} has no ${gidTypeOf(roceMode(dev, 1))} GID for ${address}`, arg);
      if (isLocalAddress(address)) throw new VerbsError('ENODEV', op, `device ${dev.name} has no port with ${address}`, arg);
      throw new VerbsError('EADDRNOTAVAIL', op, `${address} is not an address of this host or of device ${dev.name}`, arg);
    }
    if (!isLocalAddress(address)) throw new VerbsError('EADDRNOTAVAIL', op, `${address} is not an address of this host`, arg);
    return null;
  }

  /** Takes the port (the table throws, changing nothing) and moves the id to ADDR_BOUND. */
  #takePort(op: string, arg: string, a: CmAddr): void {
    const prev = this.#src;
    this.#src = a; // the table reads the owner's address and afOnly from the id
    try {
      this.#boundPort = portTable.take(this.ps, a.port, this, op, arg);
    } catch (e) {
      this.#src = prev;
      throw e;
    }
    this.#src = { ...a, port: this.#boundPort };
    this.#state = 'ADDR_BOUND';
  }

  /** Back to IDLE after a bind that could not get its device. */
  #unbind(): void {
    if (this.#boundPort !== 0) portTable.release(this.ps, this.#boundPort, this);
    this.#boundPort = 0;
    this.#src = null;
    if (this.#state === 'ADDR_BOUND') this.#state = 'IDLE';
  }

  /** The device and port become the id's; it hears when the device closes (DEVICE_REMOVAL). */
  #attach(dev: Device, port: number, cmRef: boolean): void {
    if (this.#device !== dev) {
      this.#detachDevice();
      this.#device = dev;
      this.#cmRef = cmRef;
      watchDeviceRemoval(dev, this.#onDeviceClose);
    } else if (cmRef) releaseCmDevice(dev); // already held: one reference per id
    this.#portNum = port;
  }

  #detachDevice(): void {
    const dev = this.#device;
    if (dev === null) return;
    unwatchDeviceRemoval(dev, this.#onDeviceClose);
    if (this.#cmRef) releaseCmDevice(dev);
    this.#device = null;
    this.#cmRef = false;
  }

  /**
   * rdma_resolve_addr: the source address (bound, or the routing table's choice for `dst`), the device,
   * port and source GID for it (addr.ts), then ADDR_RESOLVED; or ADDR_ERROR with -errno (ENETUNREACH,
   * EHOSTUNREACH, EINVAL: no route; ENODEV: no device port has the source; EADDRINUSE: UDP 4791 on the
   * source is another process's; ETIMEDOUT after `timeoutMs`), and the id is ADDR_BOUND again. An IDLE id
   * is bound first (to `src`, else to the wildcard of the destination's family, ephemeral port), as the
   * kernel's cma_bind_addr does. A destination of 0.0.0.0 / :: means this host (cma_resolve_loopback).
   * On loopback, when UDP 4791 of the routed source (127.0.0.1 or 127.0.0.2) is taken by another process,
   * the other one is used (devices.ts), and `route.addr.src` says which.
   */
  resolveAddr(o: ResolveAddrOptions): Promise<CmEvent> {
    const op = CALLS.resolveAddr.op;
    this.#check('resolveAddr');
    if (typeof o !== 'object' || o === null) throw new VerbsError('EINVAL', op, 'options must be an object', 'options');
    const dst = parseCmAddr(op, 'dst', o.dst);
    const src = o.src === undefined ? null : parseCmAddr(op, 'src', o.src);
    checkTimeout(op, o.timeoutMs);
    if (src !== null && src.family !== dst.family) throw new VerbsError('EINVAL', op, 'src and dst are of different address families', 'src');
    if (this.#state === 'IDLE') {
      const s = src ?? { address: dst.family === 4 ? '0.0.0.0' : '::', port: 0, family: dst.family };
      if (!isAnyAddr(s.address)) this.#checkLocal(op, 'src', s.address);
      this.#takePort(op, 'src', s);
    } else if (this.#src !== null && this.#src.family !== dst.family) {
      throw new VerbsError('EINVAL', op, `the id is bound to an IPv${this.#src.family} address`, 'dst');
    }
    this.#state = 'ADDR_QUERY';
    this.#dst = dst;
    this.#path = null;
    const bound = this.#src!;
    return this.#run('resolveAddr', o.timeoutMs, () => this.#resolveAddr(bound, dst));
  }

  /** The asynchronous part of resolveAddr: returns what to apply when it is still wanted. */
  async #resolveAddr(bound: CmAddr, dstIn: CmAddr): Promise<() => void> {
    const boundSpecific = !isAnyAddr(bound.address);
    // cma_resolve_loopback: a wildcard destination is this host (the bound address, else loopback).
    const dst = isAnyAddr(dstIn.address) ? { ...dstIn, address: boundSpecific ? bound.address : dstIn.family === 4 ? '127.0.0.1' : '::1' } : dstIn;
    const given = this.#given ?? (boundSpecific ? this.#device : null);
    const onMemory = given !== null && given.ports.every((p) => p.link.caps.backend === 'memory');
    // A device on an in-memory network is not on the host's: its bound address (or its port 1's) is the source.
    const srcAddr = onMemory ? (boundSpecific ? bound.address : given.ports[0]!.address) : await routeSource(dst.address, boundSpecific ? bound.address : null);
    let dev: Device;
    let cmRef = false;
    let source = srcAddr;
    if (given !== null) {
      if (given.closed) throw new VerbsError('ENODEV', 'rdma_resolve_addr', `device ${given.name} is closed`, 'device');
      dev = given;
      cmRef = given === this.#device && this.#cmRef;
    } else {
      const got = await acquireCmSource(srcAddr, !boundSpecific);
      dev = got.device;
      source = got.address;
      cmRef = true;
    }
    const release = (): void => {
      if (cmRef && dev !== this.#device) releaseCmDevice(dev);
    };
    const found = portWithAddress(dev, source, cmGidType(dev));
    if (found === null) {
      release();
      throw new VerbsError('ENODEV', 'rdma_resolve_addr', `no port of ${dev.name} has a ${gidTypeOf(roceMode(dev, 1))} GID for ${source}`, 'src');
    }
    const port = found;
    const netdev = dev.ports[port.port - 1]!.netdev;
    return Object.assign(
      () => {
        this.#attach(dev, port.port, cmRef && dev !== this.#device);
        this.#src = { address: source, port: bound.port, family: bound.family };
        this.#dst = dst;
        this.#sgidIndex = port.gidIndex;
        this.#gidType = gidTypeOf(roceMode(dev, port.port));
        this.#hopLimit = routeHopLimit(dst.family, netdev);
      },
      { release },
    );
  }

  /**
   * Runs a call's asynchronous work under its timeout: the event (ok or error) and the state move at
   * the end, unless the id was closed or its device removed meanwhile (then the promise rejects and no
   * event comes, as the kernel cancels the work of an id it destroys).
   */
  #run(call: 'resolveAddr' | 'resolveRoute', timeoutMs: number, work: () => Promise<(() => void) & { release?: () => void }>): Promise<CmEvent> {
    const op = CALLS[call].op;
    const [okEvent, errEvent] = call === 'resolveAddr' ? (['ADDR_RESOLVED', 'ADDR_ERROR'] as const) : (['ROUTE_RESOLVED', 'ROUTE_ERROR'] as const);
    const p = new Promise<CmEvent>((resolve, reject) => {
      let done = false;
      const settle = (e: VerbsError | null): void => {
        if (done) return;
        done = true;
        stopTimer();
        if (this.#pending === pending) this.#pending = null;
        const move = EVENT_MOVES[e === null ? okEvent : errEvent];
        if (this.#state !== move.from) {
          reject(e ?? new VerbsError('EBADF', op, 'the id was closed', 'id'));
          return;
        }
        this.#state = move.to;
        if (e === null) resolve(this.#emit(okEvent, 0));
        else {
          this.#emit(errEvent, -e.errno);
          reject(e);
        }
      };
      const pending: Pending = {
        call,
        cancel: (e) => {
          if (done) return;
          done = true;
          stopTimer();
          reject(e);
        },
      };
      this.#pending = pending;
      const stopTimer = this.#channel.timers.set(timeoutMs, () => settle(new VerbsError('ETIMEDOUT', op, `not resolved within ${timeoutMs} ms`, 'timeoutMs')));
      work().then(
        (apply) => {
          if (done || this.#state !== EVENT_MOVES[okEvent].from) {
            apply.release?.();
            if (!done) settle(null);
            return;
          }
          apply();
          settle(null);
        },
        (e: unknown) => settle(e instanceof VerbsError ? e : new VerbsError('EINVAL', op, String(e), 'id')),
      );
    });
    p.catch(() => {
      /* the event says it too; a caller that reads the channel may drop the promise */
    });
    return p;
  }

  /**
   * rdma_resolve_route: on RoCE the path is built here from the resolved addresses and the id's options
   * (route.ts: GIDs, hop limit, TOS, SL, flow label from the two rdma_cm ports, MTU from the netdev,
   * packet life time), then ROUTE_RESOLVED. `timeoutMs` is checked and kept for the API's sake: nothing is
   * asked of the network. EINVAL when the id's address is not resolved (the state table).
   */
  resolveRoute(o: { timeoutMs: number }): Promise<CmEvent> {
    const op = CALLS.resolveRoute.op;
    this.#check('resolveRoute');
    if (typeof o !== 'object' || o === null) throw new VerbsError('EINVAL', op, 'options must be an object', 'options');
    checkTimeout(op, o.timeoutMs);
    const dev = this.#device!;
    const path = buildPath({
      src: this.#src!,
      dst: this.#dst!,
      sgidIndex: this.#sgidIndex!,
      gidType: this.#gidType!,
      netdev: dev.ports[this.#portNum - 1]!.netdev,
      hopLimit: this.#hopLimit,
      tos: this.#tos ?? 0,
      ackTimeout: this.#ackTimeout,
    });
    this.#state = 'ROUTE_QUERY';
    // The kernel queues the event (cma_work_handler) even though nothing is asked: it comes after the call returns.
    return this.#run('resolveRoute', o.timeoutMs, () =>
      Promise.resolve(() => {
        this.#path = path;
      }),
    );
  }

  /**
   * rdma_set_option: every option given is checked first (EINVAL naming it), then all are set.
   * TOS applies to paths resolved afterwards (the kernel's tos_set); REUSEADDR may be turned on in any
   * state but LISTEN and off only in IDLE; AFONLY before the id is past ADDR_BOUND; ACK_TIMEOUT only on
   * an RC id (0..31; non-zero makes the path's packet life time ackTimeout − 1).
   */
  setOption(o: CmIdOptions): void {
    const op = CALLS.setOption.op;
    this.#check('setOption');
    if (typeof o !== 'object' || o === null) throw new VerbsError('EINVAL', op, 'options must be an object', 'options');
    const { tos, reuseAddr, afOnly, ackTimeout } = o;
    for (const k of Object.keys(o)) if (!['tos', 'reuseAddr', 'afOnly', 'ackTimeout'].includes(k)) throw new VerbsError('EINVAL', op, `unknown option ${k}`, k);
    if (tos !== undefined && (typeof tos !== 'number' || !Number.isInteger(tos) || tos < 0 || tos > 255))
      throw new VerbsError('EINVAL', op, `tos must be an integer in 0..255, got ${String(tos)}`, 'tos');
    if (reuseAddr !== undefined) {
      if (typeof reuseAddr !== 'boolean') throw new VerbsError('EINVAL', op, 'reuseAddr must be a boolean', 'reuseAddr');
      if (!reuseAddrAllowed(this.#state, reuseAddr))
        throw new VerbsError('EINVAL', op, `reuseAddr ${String(reuseAddr)} is not allowed in state ${this.#state}`, 'reuseAddr');
    }
    if (afOnly !== undefined) {
      if (typeof afOnly !== 'boolean') throw new VerbsError('EINVAL', op, 'afOnly must be a boolean', 'afOnly');
      if (!AFONLY_FROM.includes(this.#state)) throw new VerbsError('EINVAL', op, `afOnly is not allowed in state ${this.#state}`, 'afOnly');
    }
    if (ackTimeout !== undefined) {
      if (typeof ackTimeout !== 'number' || !Number.isInteger(ackTimeout) || ackTimeout < 0 || ackTimeout > 31)
        throw new VerbsError('EINVAL', op, `ackTimeout must be an integer in 0..31, got ${String(ackTimeout)}`, 'ackTimeout');
      if (this.qpType !== 'RC') throw new VerbsError('EINVAL', op, `ackTimeout applies to RC ids, not ${this.qpType}`, 'ackTimeout');
    }
    if (tos !== undefined) this.#tos = tos;
    if (reuseAddr !== undefined) this.#reuseAddr = reuseAddr;
    if (afOnly !== undefined) this.#afOnlySet = afOnly;
    if (ackTimeout !== undefined) this.#ackTimeout = ackTimeout;
  }

  /** rdma_migrate_id: the id, and its events not read yet, move to `channel` (in their order, behind what is there). */
  migrate(channel: EventChannel): void {
    this.#check('migrate');
    if (!(channel instanceof EventChannel)) throw new VerbsError('EINVAL', CALLS.migrate.op, 'channel must be an EventChannel', 'channel');
    if (channel.closed) throw new VerbsError('EBADF', CALLS.migrate.op, 'the channel is closed', 'channel');
    if (channel === this.#channel) return;
    const events = this.#channel.detach(this, this);
    channel.attach(this);
    this.#channel = channel;
    channel.adopt(events);
  }

  // ---- connections (issue 13 items 1-2): createQp, connect, listen, accept, reject, disconnect ----

  /**
   * rdma_create_qp: a QP on the id's device and port (`pd`, else one made for the id; send and receive
   * CQs made for it unless given; the PD and CQs the id made are freed with it). An RC QP is moved to
   * INIT at once (librdmacm's ucma_init_conn_qp); the CM takes it to RTR and RTS during the handshake.
   * A UD QP goes to RTS at once with Q_Key 0x01234567 (ucma_init_ud_qp). EINVAL before the id has a
   * device (bind or resolveAddr first), or when it has a QP already.
   */
  createQp(pd?: Pd | null, o: IdQpOptions = {}): Qp {
    const op = CALLS.createQp.op;
    this.#check('createQp');
    const dev = this.#device;
    if (dev === null) throw new VerbsError('EINVAL', op, 'the id has no device yet (bind it to an address or resolveAddr first)', 'id');
    if (this.qp !== null) throw new VerbsError('EINVAL', op, 'the id has a QP already', 'id');
    if (typeof o !== 'object' || o === null) throw new VerbsError('EINVAL', op, 'options must be an object', 'options');
    const type = o.type ?? this.qpType;
    if (type !== this.qpType) throw new VerbsError('EINVAL', op, `a ${this.ps} id takes a ${this.qpType} QP, not ${String(type)}`, 'type');
    if (pd != null && (pd.device !== dev || pd.closed)) throw new VerbsError('EINVAL', op, `pd must be an open PD of ${dev.name}`, 'pd');
    const cap = o.cap ?? { maxSendWr: 16, maxRecvWr: 16 };
    const made: Cq[] = [];
    let made0: Qp | null = null;
    try {
      const thePd = pd ?? dev.allocPd();
      if (pd == null) this.#ownPd = thePd;
      const sendCq = o.sendCq ?? dev.createCq({ depth: Math.max(1, cap.maxSendWr) });
      if (o.sendCq === undefined) made.push(sendCq);
      const recvCq = o.recvCq ?? dev.createCq({ depth: Math.max(1, cap.maxRecvWr || 1) });
      if (o.recvCq === undefined) made.push(recvCq);
      const qp = thePd.createQp({ type, sendCq, recvCq, cap, ...(o.sigAll !== undefined ? { sigAll: o.sigAll } : {}), ...(o.srq ? { srq: o.srq } : {}) });
      made0 = qp;
      if (type === 'UD') {
        qp.modify({ state: 'INIT', port: this.#portNum, pkeyIndex: 0, qkey: RDMA_UDP_QKEY });
        qp.modify({ state: 'RTR' });
        qp.modify({ state: 'RTS', sqPsn: 0 });
      } else {
        // cma_ib_init_qp_attr: no remote access at INIT; the CM grants it at RTR (conn.ts rtrAttrs).
        qp.modify({ state: 'INIT', port: this.#portNum, pkeyIndex: 0, accessFlags: ['LOCAL_WRITE'] });
      }
      this.qp = qp;
      this.#ownCqs = made;
      return qp;
    } catch (e) {
      made0?.close();
      for (const m of made) m.close();
      this.#ownCqs = [];
      this.#freeOwnPd();
      throw e;
    }
  }

  /** rdma_destroy_qp: the id's QP, and the CQs (and PD) the id made for it. */
  destroyQp(): void {
    const qp = this.qp;
    this.qp = null;
    for (const [addr, e] of this.#mcast) {
      if (e.attached && qp !== null && !qp.closed) qp.detachMcast(e.mgid);
      this.#mcast.delete(addr);
    }
    if (qp !== null && !qp.closed) qp.close();
    for (const c of this.#ownCqs) if (!c.closed) c.close();
    this.#ownCqs = [];
    for (const ah of this.#ahs) ah.close();
    this.#ahs = [];
    this.#freeOwnPd();
  }

  #freeOwnPd(): void {
    const pd = this.#ownPd;
    this.#ownPd = null;
    if (pd === null || pd.closed) return;
    try {
      pd.close();
    } catch {
      /* the application's MRs or AHs are still on it: it goes with the device */
    }
  }

  /** The PD of the id's QP (or the id's own), for the AH a UD connection comes with. */
  #pdForAh(): Pd | null {
    if (this.qp !== null) return this.qp.pd;
    if (this.#ownPd === null && this.#device !== null) this.#ownPd = this.#device.allocPd();
    return this.#ownPd;
  }

  #acquireAgent(): CmAgent {
    if (this.#agent === null) this.#agent = CmAgent.acquire(this.#device!, this.#portNum);
    return this.#agent;
  }

  /**
   * rdma_connect: an RC id sends a REQ (the cma_hdr, then `param.privateData`, at most 56 bytes), a UD id a
   * SIDR_REQ (at most 180). The id's QP (or `param.qpNum`) is the one connected; the CM moves it to RTR and
   * RTS when the REP comes, sends the RTU and reports ESTABLISHED (an id without a QP gets CONNECT_RESPONSE
   * and calls establish() once its QP is ready). Failures come as REJECTED (status: the REJ reason, 8 when
   * nothing listens, 28 when the peer rejected), UNREACHABLE (status -ETIMEDOUT when the REQ's retries ran
   * out; a UD id: the SIDR_REP status), CONNECT_ERROR (our QP could not be moved). The promise resolves with
   * ESTABLISHED or CONNECT_RESPONSE and rejects with a VerbsError (ECONNREFUSED with the reason in
   * `status`, ETIMEDOUT, ...); `timeoutMs` / `signal` abandon the attempt (as rdma_destroy_id would: a REJ
   * "timeout" goes to the peer), the former with an UNREACHABLE event.
   */
  connect(param?: ConnParam, o: WaitOptions = {}): Promise<CmEvent> {
    const op = CALLS.connect.op;
    this.#check('connect');
    checkWait(op, o);
    const dev = this.#device!;
    const ud = this.qpType === 'UD';
    const v = connValues(op, param, dev, ud ? PRIVATE_DATA_MAX.connectUd : PRIVATE_DATA_MAX.connectRc, {
      responderResources: dev.attr.maxQpRdAtom,
      initiatorDepth: dev.attr.maxQpInitRdAtom,
    });
    const qpn = this.qp?.qpn ?? v.qpNum;
    if (!ud && qpn === undefined) throw new VerbsError('EINVAL', op, 'the id has no QP: createQp first, or give param.qpNum', 'qpNum');
    const src = this.#src!,
      dst = this.#dst!;
    const pd = new Uint8Array(CMA_HDR_LEN + v.privateData.length);
    encodeCmaHdr({ ipVersion: src.family, port: src.port, src: src.address, dst: dst.address }, pd, 0);
    pd.set(v.privateData, CMA_HDR_LEN);
    const path = cmPathOf(this.#path!, this.#portNum);
    const agent = this.#acquireAgent();
    const ib = agent.createId((ev) => this.#onIb(ev));
    const sid = serviceId(RdmaPortSpace[this.ps], dst.port);
    const psn = this.qp?.sqPsn ?? randomInt(0, 0x1000000);
    try {
      if (ud) ib.sendSidrReq({ serviceId: sid, path, privateData: pd });
      else
        ib.sendReq({
          serviceId: sid,
          path,
          qpn: qpn!,
          qpType: 'RC',
          startingPsn: psn,
          responderResources: v.responderResources,
          initiatorDepth: v.initiatorDepth,
          retryCount: v.retryCount,
          rnrRetryCount: v.rnrRetryCount,
          srq: this.qp?.srq != null || v.srq,
          privateData: pd,
        });
    } catch (e) {
      ib.destroy();
      throw e;
    }
    this.#ib = ib;
    this.#hs = {
      path,
      remoteQpn: 0,
      remotePsn: 0,
      localPsn: psn,
      responderResources: v.responderResources,
      initiatorDepth: v.initiatorDepth,
      retryCount: v.retryCount,
      rnrRetryCount: v.rnrRetryCount,
      ackTimeout: 0,
    };
    this.#state = 'CONNECT';
    return this.#wait(op, ['ESTABLISHED', 'CONNECT_RESPONSE'], o, () => {
      // rdma_destroy_id while connecting: cm_destroy_id sends REJ "timeout" with our GUID.
      this.#dropIb();
      this.qp?.modify({ state: 'ERR' });
    });
  }

  /**
   * rdma_listen: REQs (SIDR_REQs for a UD id) for the id's port come to it as CONNECT_REQUEST events, each
   * with a new id on this id's channel. An IDLE id is bound to 0.0.0.0 first (port 0: an ephemeral one).
   * Bound to a specific address: on that address's device; to the wildcard: on every port of the
   * createId device, else of every device the CM has open and of the host's device list whose UDP port is
   * free (one that another process holds is skipped). `backlog` is accepted for the API's sake (the kernel
   * does not enforce it for RoCE either). The promise resolves once it listens everywhere it can.
   */
  listen(backlog = 0): Promise<void> {
    const op = CALLS.listen.op;
    this.#check('listen');
    if (typeof backlog !== 'number' || !Number.isInteger(backlog) || backlog < 0)
      throw new VerbsError('EINVAL', op, 'backlog must be an integer >= 0', 'backlog');
    if (this.#state === 'IDLE') this.#takePort(op, 'id', { address: '0.0.0.0', port: 0, family: 4 });
    this.#state = 'LISTEN';
    const sid = serviceId(RdmaPortSpace[this.ps], this.#src!.port);
    const on = (dev: Device, ports: readonly number[]): void => {
      for (const port of ports) {
        if (this.#state !== 'LISTEN') return;
        const agent = CmAgent.acquire(dev, port);
        const l = sharedListen(agent, sid, dispatchListen);
        l.ids.add(this.#listener);
        this.#listens.push({ agent, sid });
      }
    };
    const allPorts = (dev: Device): number[] => dev.ports.map((_, i) => i + 1);
    if (this.#device !== null) {
      on(this.#device, [this.#portNum]);
      return Promise.resolve();
    }
    if (this.#given !== null) {
      on(this.#given, allPorts(this.#given));
      return Promise.resolve();
    }
    // The wildcard without a device: every device the CM has or can open.
    const addrs = new Set<string>();
    for (const d of getDeviceList()) for (const p of portsOf(d)) if (familyOf(p.address) === this.#src!.family) addrs.add(p.address);
    for (const { device } of cmDevices()) for (const p of device.ports) if (familyOf(p.address) === this.#src!.family) addrs.add(p.address);
    const p = (async () => {
      const seen = new Set<Device>();
      for (const a of addrs) {
        let dev: Device;
        try {
          dev = await cmDevice(a);
        } catch {
          continue; // another process's UDP port, or no such device: listen where we can
        }
        if (seen.has(dev) || this.#state !== 'LISTEN') {
          releaseCmDevice(dev);
          continue;
        }
        seen.add(dev);
        this.#listenDevs.push(dev);
        on(dev, allPorts(dev));
      }
      if (this.#listens.length === 0 && this.#state === 'LISTEN') throw new VerbsError('ENODEV', op, 'no device could be opened to listen on', 'id');
    })();
    p.catch(() => {
      /* the caller has the promise */
    });
    return p;
  }

  /** What the agents' shared listener sees of this id (conn.ts). */
  readonly #listener = {
    incoming: (ev: Extract<IbCmEvent, { type: 'REQ_RECEIVED' | 'SIDR_REQ_RECEIVED' }>, address: string): boolean => this.#incoming(ev, address),
    address: (): CmAddr | null => this.#src,
  };

  /** A request for this listener: a new id for it on this channel, and CONNECT_REQUEST (cma_ib_req_handler / cma_ib_new_conn_id). */
  #incoming(ev: Extract<IbCmEvent, { type: 'REQ_RECEIVED' | 'SIDR_REQ_RECEIVED' }>, hdrDst: string): boolean {
    if (this.#state !== 'LISTEN') return false;
    const hdr = decodeCmaHdr(ev.privateData) as CmaHdr;
    const child = new CmId(this.#channel, this.ps, this.qpType, this.context, this.#given);
    child.#passive(this, ev, hdr, hdrDst);
    return true;
  }

  #passive(listener: CmId, ev: Extract<IbCmEvent, { type: 'REQ_RECEIVED' | 'SIDR_REQ_RECEIVED' }>, hdr: CmaHdr, dstAddr: string): void {
    const ib = ev.id;
    const agent = ib.agent;
    const dev = agent.device;
    this.#device = dev;
    this.#cmRef = retainCmDevice(dev);
    watchDeviceRemoval(dev, this.#onDeviceClose);
    this.#portNum = agent.port;
    this.#agent = CmAgent.acquire(dev, agent.port);
    const fam = hdr.ipVersion;
    this.#src = { address: dstAddr, port: listener.#src!.port, family: fam };
    this.#dst = { address: hdr.src, port: hdr.port, family: fam };
    this.#sgidIndex = ev.path.sgidIndex;
    this.#gidType = gidTypeOf(roceMode(dev, agent.port));
    this.#hopLimit = ev.path.hopLimit;
    this.#tos = listener.#tos;
    this.#path = {
      sgid: gidToString(ev.path.sgid),
      dgid: gidToString(ev.path.dgid),
      sgidIndex: ev.path.sgidIndex,
      gidType: this.#gidType,
      flowLabel: ev.path.flowLabel,
      hopLimit: ev.path.hopLimit,
      trafficClass: ev.path.trafficClass,
      sl: ev.path.sl,
      pkey: ev.path.pkey,
      mtu: mtuBytes(ev.path.mtu),
      packetLifeTime: ev.path.packetLifeTime,
      reversible: true,
      numbPath: 1,
    };
    this.#ib = ib;
    this.#isPassive = true;
    this.#state = 'CONNECT';
    ib.setHandler((e) => this.#onIb(e));
    const userPd = ev.privateData.subarray(CMA_HDR_LEN);
    if (ev.type === 'REQ_RECEIVED') {
      const p = ev.param;
      // ucma_process_conn_req: the request's values, no more than this device does.
      this.#hs = {
        path: ev.path,
        remoteQpn: p.remoteQpn,
        remotePsn: p.startingPsn,
        localPsn: randomInt(0, 0x1000000),
        responderResources: Math.min(p.responderResources, dev.attr.maxQpRdAtom),
        initiatorDepth: Math.min(p.initiatorDepth, dev.attr.maxQpInitRdAtom),
        retryCount: p.retryCount,
        rnrRetryCount: p.rnrRetryCount,
        ackTimeout: ev.req.primaryLocalAckTimeout,
      };
      // rdma_cm answers every REQ with a delayed MRA (sent only if the REQ comes again before our REP).
      ib.sendMra(CMA_CM_MRA_SERVICE_TIMEOUT, { delay: true });
      const conn: ConnInfo = {
        responderResources: p.responderResources,
        initiatorDepth: p.initiatorDepth,
        retryCount: p.retryCount,
        rnrRetryCount: p.rnrRetryCount,
        srq: p.srq,
        qpNum: p.remoteQpn,
      };
      this.#emit('CONNECT_REQUEST', 0, { ...pdParam(userPd), conn }, listener);
    } else {
      this.#emit('CONNECT_REQUEST', 0, pdParam(userPd), listener);
    }
  }

  /**
   * rdma_accept on a connection request's id: an RC QP goes to RTR and RTS first (librdmacm's
   * ucma_modify_qp_rtr / _rts), then the REP goes out with `param` (at most 196 bytes of private data;
   * responder resources and initiator depth default to the request's, clamped to the device), and
   * ESTABLISHED follows the RTU (or the QP's first receive when the RTU is lost). A UD id answers with a
   * SIDR_REP carrying its QP and Q_Key (no event follows; the promise resolves with null).
   */
  accept(param?: ConnParam, o: WaitOptions = {}): Promise<CmEvent | null> {
    const op = CALLS.accept.op;
    this.#check('accept');
    checkWait(op, o);
    const ib = this.#ib;
    if (!this.#isPassive || ib === null) throw new VerbsError('EINVAL', op, 'not a connection request (the active side calls establish())', 'id');
    const dev = this.#device!;
    if (this.qpType === 'UD') {
      const v = connValues(op, param, dev, PRIVATE_DATA_MAX.acceptUd, { responderResources: 0, initiatorDepth: 0 });
      const qpn = this.qp?.qpn ?? v.qpNum;
      if (qpn === undefined) throw new VerbsError('EINVAL', op, 'the id has no QP: createQp first, or give param.qpNum', 'qpNum');
      ib.sendSidrRep({ status: SidrStatus.SUCCESS, qpn, qkey: RDMA_UDP_QKEY, privateData: v.privateData });
      return Promise.resolve(null);
    }
    const hs = this.#hs!;
    const v = connValues(op, param, dev, PRIVATE_DATA_MAX.acceptRc, { responderResources: hs.responderResources, initiatorDepth: hs.initiatorDepth });
    const qpn = this.qp?.qpn ?? v.qpNum;
    if (qpn === undefined) throw new VerbsError('EINVAL', op, 'the id has no QP: createQp first, or give param.qpNum', 'qpNum');
    hs.responderResources = v.responderResources;
    hs.initiatorDepth = v.initiatorDepth;
    if (this.qp !== null) {
      hs.localPsn = this.qp.sqPsn;
      this.#modifyQp(hs);
    }
    ib.sendRep({
      qpn,
      startingPsn: hs.localPsn,
      responderResources: v.responderResources,
      initiatorDepth: v.initiatorDepth,
      rnrRetryCount: v.rnrRetryCount,
      srq: this.qp?.srq != null || v.srq,
      privateData: v.privateData,
    });
    this.#watchFirstReceive();
    return this.#wait(op, ['ESTABLISHED'], o, () => {
      this.#dropIb();
      this.qp?.modify({ state: 'ERR' });
    });
  }

  /** RTR then RTS from the handshake (an error leaves the QP where it failed; the caller reports it). */
  #modifyQp(hs: Handshake): void {
    const qp = this.qp!;
    const dev = this.#device!;
    qp.modify(rtrAttrs(hs, dev.queryPort(this.#portNum).activeMtu, dev));
    qp.modify(rtsAttrs(hs, dev));
  }

  /**
   * rdma_reject: a REJ with reason 28 (consumer defined) and `privateData` (at most 148 bytes); a UD id
   * answers with a SIDR_REP "rejected". The peer gets REJECTED (UNREACHABLE for UD).
   */
  reject(privateData?: Uint8Array): void {
    const op = CALLS.reject.op;
    this.#check('reject');
    const ib = this.#ib;
    if (!this.#isPassive || ib === null) throw new VerbsError('EINVAL', op, 'not a connection request', 'id');
    const pd = privateData ?? new Uint8Array(0);
    if (!(pd instanceof Uint8Array)) throw new VerbsError('EINVAL', op, 'privateData must be a Uint8Array', 'privateData');
    if (this.qpType === 'UD') {
      if (pd.length > PRIVATE_DATA_MAX.acceptUd) throw new VerbsError('EINVAL', op, `privateData is over ${PRIVATE_DATA_MAX.acceptUd} bytes`, 'privateData');
      ib.sendSidrRep({ status: SidrStatus.REJECT, qpn: 0, qkey: 0, privateData: pd });
    } else {
      if (pd.length > PRIVATE_DATA_MAX.reject) throw new VerbsError('EINVAL', op, `privateData is over ${PRIVATE_DATA_MAX.reject} bytes`, 'privateData');
      ib.sendRej(CmRejReason.CONSUMER_DEFINED, { privateData: pd });
    }
    this.#stopWatch();
  }

  /**
   * rdma_establish: the active side of an id without a QP of its own, after CONNECT_RESPONSE and once the
   * application moved its QP to RTS: sends the RTU (the connection is then ESTABLISHED, no event). On the
   * passive side it is ib_cm_notify(COMM_EST): the connection is established before its RTU came.
   */
  establish(): void {
    const op = CALLS.establish.op;
    this.#check('establish');
    const ib = this.#ib;
    if (ib === null) throw new VerbsError('EINVAL', op, 'the id is not connecting', 'id');
    if (this.#isPassive) {
      ib.establish();
      return;
    }
    if (ib.state !== 'REP_RCVD' && ib.state !== 'MRA_REP_SENT') throw new VerbsError('EINVAL', op, 'no CONNECT_RESPONSE to complete', 'id');
    ib.sendRtu();
    this.#state = 'ESTABLISHED';
  }

  /**
   * rdma_disconnect: the QP goes to ERR (its work requests flush) and a DREQ goes out; DISCONNECTED comes
   * when the DREP does (or the DREQ's retries run out). After DISCONNECTED from the peer's DREQ, this
   * sends the DREP. The promise resolves with this id's DISCONNECTED event.
   */
  disconnect(o: WaitOptions = {}): Promise<CmEvent> {
    const op = CALLS.disconnect.op;
    this.#check('disconnect');
    checkWait(op, o);
    const ib = this.#ib;
    if (ib === null) throw new VerbsError('EINVAL', op, 'the id is not connected', 'id');
    this.#stopWatch();
    this.#qpToErr();
    if (ib.state === 'ESTABLISHED') ib.sendDreq();
    else if (ib.state === 'DREQ_RCVD') ib.sendDrep();
    else if (ib.state !== 'DREQ_SENT' && ib.state !== 'TIMEWAIT' && ib.state !== 'IDLE')
      throw new VerbsError('EINVAL', op, `the connection is not up (${ib.state})`, 'id');
    if (this.#state !== 'DISCONNECT') this.#state = 'DISCONNECT';
    if (this.#disconnected !== null) return Promise.resolve(this.#disconnected);
    return this.#wait(op, ['DISCONNECTED'], o, null);
  }

  #qpToErr(): void {
    const qp = this.qp;
    if (qp === null || qp.closed || qp.state === 'RESET' || qp.state === 'ERR') return;
    // The move to ERR sends the ACK the responder is still coalescing first (Qp.apply, as rxe ACKs as it
    // receives), so the peer's last sends are acknowledged before our DREQ tells it the connection is over.
    qp.modify({ state: 'ERR' });
  }

  /** The IB CM's events for this id's connection (cma_ib_handler / cma_sidr_rep_handler). */
  #onIb(ev: IbCmEvent): void {
    if (this.#state === 'DESTROYING') return;
    switch (ev.type) {
      case 'REP_RECEIVED': {
        const hs = this.#hs!;
        hs.remoteQpn = ev.param.remoteQpn;
        hs.remotePsn = ev.param.startingPsn;
        // cm_rep_handler: our reads are bounded by what the peer grants, and the other way round.
        hs.initiatorDepth = Math.min(hs.initiatorDepth, ev.param.initiatorDepth);
        hs.responderResources = Math.min(hs.responderResources, ev.param.responderResources);
        hs.rnrRetryCount = ev.param.rnrRetryCount;
        hs.ackTimeout = cmAckTimeout(ev.rep.targetAckDelay, hs.path.packetLifeTime);
        const conn: ConnInfo = { ...connInfoOf(ev.param), retryCount: hs.retryCount };
        const privateData = pdParam(ev.privateData);
        if (this.qp === null) {
          this.#emit('CONNECT_RESPONSE', 0, { ...privateData, conn });
          return;
        }
        try {
          this.#modifyQp(hs);
        } catch (e) {
          // ucma_process_conn_resp failing: REJ 28, CONNECT_ERROR with the errno.
          this.#ib?.sendRej(CmRejReason.CONSUMER_DEFINED);
          this.#emit('CONNECT_ERROR', e instanceof VerbsError ? -e.errno : -22, privateData);
          return;
        }
        this.#ib!.sendRtu();
        this.#established({ ...privateData, conn });
        return;
      }
      case 'RTU_RECEIVED':
      case 'USER_ESTABLISHED':
        this.#stopWatch();
        this.#established(pdParam(ev.type === 'RTU_RECEIVED' ? ev.privateData : new Uint8Array(0)));
        return;
      case 'REJ_RECEIVED':
        this.#stopWatch();
        this.#qpToErr();
        this.#emit('REJECTED', ev.reason, pdParam(ev.privateData));
        return;
      case 'REQ_ERROR':
      case 'REP_ERROR':
      case 'SIDR_REQ_ERROR':
        this.#stopWatch();
        this.#qpToErr();
        this.#emit('UNREACHABLE', ev.status);
        return;
      case 'DREQ_RECEIVED': {
        this.#stopWatch();
        const param = pdParam(ev.privateData);
        // One turn later: the packets that came before the DREQ (the ACK of our last SEND, say) are
        // processed by the transport before the QP goes to ERR and flushes what is still outstanding.
        this.#device!.sched.defer(() => {
          if (this.#state === 'DESTROYING') return;
          this.#qpToErr();
          // Both sides disconnecting at once: answer now (the DREP the peer's DREQ waits for).
          if (this.#state === 'DISCONNECT' && this.#ib?.state === 'DREQ_RCVD') this.#ib.sendDrep();
          this.#state = 'DISCONNECT';
          this.#disconnectedEvent(param);
        });
        return;
      }
      case 'DREP_RECEIVED':
      case 'DREQ_ERROR':
        this.#disconnectedEvent(pdParam(ev.type === 'DREP_RECEIVED' ? ev.privateData : new Uint8Array(0)));
        return;
      case 'TIMEWAIT_EXIT':
        this.#emit('TIMEWAIT_EXIT', 0);
        return;
      case 'SIDR_REP_RECEIVED': {
        if (ev.status !== SidrStatus.SUCCESS) {
          // cma_sidr_rep_handler: the SIDR_REP status as the event's.
          this.#emit('UNREACHABLE', ev.status, pdParam(ev.privateData));
          return;
        }
        const path = this.#path!;
        const ahAttr = {
          dgid: path.dgid,
          sgidIndex: path.sgidIndex,
          hopLimit: path.hopLimit,
          trafficClass: path.trafficClass,
          flowLabel: path.flowLabel,
          port: this.#portNum,
        };
        let ah: Ah | null = null;
        try {
          ah =
            this.#pdForAh()?.createAh({
              gid: path.dgid,
              port: this.#portNum,
              sgidIndex: path.sgidIndex,
              hopLimit: path.hopLimit,
              trafficClass: path.trafficClass,
              flowLabel: path.flowLabel,
            }) ?? null;
          if (ah !== null) this.#ahs.push(ah);
        } catch {
          /* no AH (the PD or GID is gone): the attributes are there to make one */
        }
        this.#established({ ...pdParam(ev.privateData), ud: { qpNum: ev.qpn, qkey: ev.qkey, ahAttr, ah } });
        return;
      }
      default:
        return;
    }
  }

  #established(param: CmEventParam): void {
    if (this.#state !== EVENT_MOVES.ESTABLISHED.from) return;
    this.#state = 'ESTABLISHED';
    this.#emit('ESTABLISHED', 0, param);
  }

  #disconnectedEvent(param: CmEventParam): void {
    if (this.#disconnected !== null) return;
    this.#disconnected = this.#emit('DISCONNECTED', 0, param);
  }

  /**
   * The passive side, REP sent: the QP's first receive stands in for a lost RTU (cm_establish via COMM_EST).
   * The QP is in RTS already (librdmacm moves it there before the REP), where the transport raises no
   * COMM_EST, so the receive PSN is watched instead, on the device's clock, until the RTU or a failure.
   */
  #watchFirstReceive(): void {
    const qp = this.qp;
    if (qp === null) return;
    const dev = this.#device!;
    const start = qp.rqPsn;
    const tick = (): void => {
      this.#watch = null;
      const ib = this.#ib;
      if (ib === null || this.#state !== 'CONNECT' || qp.closed) return;
      if (qp.resp.psn !== start || qp.commEst) {
        if (ib.state === 'REP_SENT' || ib.state === 'MRA_REP_RCVD') ib.establish();
        return;
      }
      if (ib.state === 'REP_SENT' || ib.state === 'MRA_REP_RCVD') this.#watch = dev.sched.setTimer(FIRST_RECEIVE_POLL_MS, tick);
    };
    this.#watch = dev.sched.setTimer(FIRST_RECEIVE_POLL_MS, tick);
  }

  #stopWatch(): void {
    if (this.#watch !== null) this.#device?.sched.clearTimer(this.#watch);
    this.#watch = null;
  }

  /** The IB CM id goes (cm_destroy_id sends what its state calls for: DREQ, DREP, REJ). */
  #dropIb(): void {
    this.#stopWatch();
    const ib = this.#ib;
    this.#ib = null;
    if (ib !== null) {
      try {
        ib.destroy();
      } catch {
        /* nothing to send in its state */
      }
    }
  }

  /**
   * A promise for one of `events` on this id (the first to come), rejected by the failure events with the
   * errno they mean, by `timeoutMs` (ETIMEDOUT; `abandon` runs and UNREACHABLE is reported) or `signal`.
   */
  #wait(op: string, events: readonly CmEventType[], o: WaitOptions, abandon: (() => void) | null): Promise<CmEvent> {
    const p = new Promise<CmEvent>((resolve, reject) => {
      let stopTimer: (() => void) | null = null;
      const w: Waiter = {
        events,
        settle: (ev, err) => {
          const i = this.#waiters.indexOf(w);
          if (i >= 0) this.#waiters.splice(i, 1);
          stopTimer?.();
          o.signal?.removeEventListener('abort', onAbort);
          if (err !== null) reject(err);
          else resolve(ev!);
        },
      };
      const onAbort = (): void => {
        w.settle(null, abortError(op, o.signal!));
        abandon?.();
      };
      if (o.signal?.aborted) {
        onAbort();
        return;
      }
      this.#waiters.push(w);
      o.signal?.addEventListener('abort', onAbort, { once: true });
      if (o.timeoutMs !== undefined)
        stopTimer = this.#channel.timers.set(o.timeoutMs, () => {
          w.settle(null, new VerbsError('ETIMEDOUT', op, `no answer within ${o.timeoutMs} ms`, 'timeoutMs'));
          abandon?.();
          if (abandon !== null) this.#emit('UNREACHABLE', -ETIMEDOUT);
        });
    });
    p.catch(() => {
      /* the event says it too */
    });
    return p;
  }

  /**
   * rdma_join_multicast on RoCE (cma_iboe_join_multicast): a UD id (UDP port space) bound or resolved
   * joins the IP multicast group `address` (IPv4 224.0.0.0/4): the MGID is ::ffff:<group>, the id's QP
   * (when it has one) is attached to it (ibv_attach_mcast: the port's link joins the IP group, the kernel
   * sends the IGMP report), and MULTICAST_JOIN follows once the membership is in place, its `param.ud`
   * carrying QPN 0xFFFFFF, Q_Key 0x01234567, the AH attributes and an AH to send to the group with, and
   * `param.context` the `context` given here. A failure is MULTICAST_ERROR with -errno. EINVAL for a TCP
   * id, an address that is not a multicast group, or a group joined already; EADDRNOTAVAIL for an IPv6 group
   * (the UDP links join IPv4 groups only).
   */
  joinMulticast(address: string, o: { context?: unknown } = {}): Promise<CmEvent> {
    const op = CALLS.joinMulticast.op;
    this.#check('joinMulticast');
    if (this.qpType !== 'UD') throw new VerbsError('EINVAL', op, `multicast is for UD ids (ps 'UDP'), not ${this.ps}`, 'id');
    if (typeof address !== 'string' || isIP(address) === 0) throw new VerbsError('EINVAL', op, 'address must be an IP address', 'address');
    if (isIP(address) === 6) throw new VerbsError('EADDRNOTAVAIL', op, 'IPv6 multicast groups are not supported on RoCE links here', 'address');
    if (Number(address.split('.')[0]) >>> 4 !== 0xe) throw new VerbsError('EINVAL', op, `${address} is not a multicast group (224.0.0.0/4)`, 'address');
    if (this.#mcast.has(address)) throw new VerbsError('EADDRINUSE', op, `${address} is joined already`, 'address');
    const dev = this.#device;
    if (dev === null) throw new VerbsError('EINVAL', op, 'the id has no device yet', 'id');
    const mgid = gidToString(ipToGid(address));
    const qp = this.qp;
    const entry = { mgid, attached: false };
    this.#mcast.set(address, entry);
    const fail = (e: unknown): VerbsError => {
      this.#mcast.delete(address);
      const err = e instanceof VerbsError ? e : new VerbsError('EINVAL', op, String(e), 'address');
      this.#emit('MULTICAST_ERROR', -err.errno, { context: o.context });
      return err;
    };
    const p = (async (): Promise<CmEvent> => {
      try {
        if (qp !== null) {
          qp.attachMcast(mgid);
          entry.attached = true;
          await qp.mcastJoined(mgid);
        }
      } catch (e) {
        if (entry.attached && qp !== null && !qp.closed) qp.detachMcast(mgid);
        throw fail(e);
      }
      if (this.#mcast.get(address) !== entry || this.#state === 'DESTROYING') throw new VerbsError('EBADF', op, 'left or closed meanwhile', 'id');
      const sgidIndex = this.#sgidIndex ?? dev.defaultSgidIndex(this.#portNum);
      // cma_iboe_join_multicast: the route's hop limit (64 on RoCE v2), traffic class = the id's TOS.
      const ahAttr = { dgid: mgid, sgidIndex, hopLimit: 64, trafficClass: this.#tos ?? 0, flowLabel: 0, port: this.#portNum };
      let ah: Ah | null = null;
      try {
        ah = this.#pdForAh()?.createAh({ gid: mgid, port: this.#portNum, sgidIndex, hopLimit: 64, trafficClass: ahAttr.trafficClass }) ?? null;
        if (ah !== null) this.#ahs.push(ah);
      } catch {
        /* no AH (the PD or GID is gone): the attributes are there to make one */
      }
      return this.#emit('MULTICAST_JOIN', 0, { ud: { qpNum: 0xffffff, qkey: RDMA_UDP_QKEY, ahAttr, ah }, context: o.context });
    })();
    p.catch(() => {
      /* the event says it too */
    });
    return p;
  }

  /** rdma_leave_multicast: the QP is detached (the link leaves the IP group with its last QP); EINVAL when not joined. */
  leaveMulticast(address: string): void {
    const op = CALLS.leaveMulticast.op;
    this.#check('leaveMulticast');
    const e = this.#mcast.get(address);
    if (e === undefined) throw new VerbsError('EINVAL', op, `${String(address)} is not joined`, 'address');
    this.#mcast.delete(address);
    const qp = this.qp;
    if (e.attached && qp !== null && !qp.closed) qp.detachMcast(e.mgid);
  }

  /** The device closed under the id (rdma_cm's cma_process_remove): work in flight is cancelled, DEVICE_REMOVAL comes. */
  #deviceRemoved(): void {
    if (this.#state === 'DESTROYING' || this.#state === 'DEVICE_REMOVAL') return;
    this.#pending?.cancel(new VerbsError('ENODEV', 'rdma_cm', `device ${this.#device?.name ?? '?'} was removed`, 'device'));
    this.#pending = null;
    // The connection and listens go with the device (nothing can be sent any more).
    this.#stopWatch();
    this.#ib?.teardown();
    this.#ib = null;
    this.#unlisten();
    this.#agent?.release();
    this.#agent = null;
    const dev = this.#device;
    if (dev !== null) {
      unwatchDeviceRemoval(dev, this.#onDeviceClose);
      // The registry forgot the device when it closed; the reference goes with it.
      if (this.#cmRef) releaseCmDevice(dev);
      this.#cmRef = false;
    }
    this.#state = 'DEVICE_REMOVAL';
    this.#emit('DEVICE_REMOVAL', 0);
  }

  /**
   * rdma_destroy_id: releases the port and the device reference (the CM's device closes with its last
   * id), cancels work in flight (its promise rejects EBADF, no event), and drops the id's events not
   * read yet. Never blocks and never waits for events to be acknowledged; idempotent.
   */
  close(): void {
    if (this.#state === 'DESTROYING') return;
    this.#state = 'DESTROYING';
    const p = this.#pending;
    this.#pending = null;
    p?.cancel(new VerbsError('EBADF', 'rdma_destroy_id', 'the id was closed', 'id'));
    this.#failWaiters(new VerbsError('EBADF', 'rdma_destroy_id', 'the id was closed', 'id'));
    // cm_destroy_id: a DREQ for a live connection, a DREP for one the peer is closing, a REJ for a request.
    const hadConn = this.#ib !== null;
    this.#qpToErr();
    this.#dropIb();
    this.#unlisten();
    this.destroyQp();
    if (this.#boundPort !== 0) portTable.release(this.ps, this.#boundPort, this);
    this.#boundPort = 0;
    const agent = this.#agent;
    this.#agent = null;
    const dev = this.#device;
    if (hadConn && dev !== null && !dev.closed) {
      // QP1 and the device close with their last user: not before the MAD just sent has gone out.
      const cmRef = this.#cmRef;
      unwatchDeviceRemoval(dev, this.#onDeviceClose);
      this.#device = null;
      this.#cmRef = false;
      dev.sched.setTimer(CLOSE_LINGER_MS, () => {
        agent?.release();
        if (cmRef) releaseCmDevice(dev);
      });
    } else {
      agent?.release();
      this.#detachDevice();
    }
    this.#channel.detach(this, this);
  }

  #unlisten(): void {
    for (const { agent, sid } of this.#listens) {
      leaveListen(agent, sid, this.#listener);
      agent.release();
    }
    this.#listens = [];
    for (const d of this.#listenDevs) releaseCmDevice(d);
    this.#listenDevs = [];
  }
  [Symbol.dispose](): void {
    this.close();
  }
}

/** The GID type the CM uses on each port of `dev` (route.ts roceMode). */
function cmGidType(dev: Device): (port: number) => GidType {
  return (port) => gidTypeOf(roceMode(dev, port));
}

function checkTimeout(op: string, t: unknown): void {
  if (typeof t !== 'number' || !Number.isInteger(t) || t < 0 || t > MAX_TIMEOUT_MS)
    throw new VerbsError('EINVAL', op, `timeoutMs must be an integer number of ms in 0..${MAX_TIMEOUT_MS}, got ${String(t)}`, 'timeoutMs');
}

/**
 * rdma_create_id: a new id on `channel`, in port space `ps` (TCP → RC, UDP → UD, IB → `qpType`, RC by
 * default). EINVAL for a closed channel or a bad option.
 */
export function createId(channel: EventChannel, o: CreateIdOptions = {}): CmId {
  const op = 'rdma_create_id';
  if (!(channel instanceof EventChannel)) throw new VerbsError('EINVAL', op, 'channel must be an EventChannel (createEventChannel())', 'channel');
  if (channel.closed) throw new VerbsError('EBADF', op, 'the channel is closed', 'channel');
  if (typeof o !== 'object' || o === null) throw new VerbsError('EINVAL', op, 'options must be an object', 'options');
  const ps = o.ps ?? 'TCP';
  if (!PORT_SPACES.includes(ps)) throw new VerbsError('EINVAL', op, `ps must be one of ${PORT_SPACES.join(', ')}, got ${String(ps)}`, 'ps');
  const natural = ps === 'TCP' ? 'RC' : ps === 'UDP' ? 'UD' : null;
  if (o.qpType !== undefined && o.qpType !== 'RC' && o.qpType !== 'UD') throw new VerbsError('EINVAL', op, `qpType must be 'RC' or 'UD'`, 'qpType');
  if (natural !== null && o.qpType !== undefined && o.qpType !== natural)
    throw new VerbsError('EINVAL', op, `the ${ps} port space is ${natural} only`, 'qpType');
  const dev = o.device ?? null;
  if (dev !== null) {
    if (typeof dev !== 'object' || !Array.isArray((dev as { ports?: unknown }).ports)) throw new VerbsError('EINVAL', op, 'device must be a Device', 'device');
    if (dev.closed) throw new VerbsError('ENODEV', op, `device ${dev.name} is closed`, 'device');
  }
  return new CmId(channel, ps, o.qpType ?? natural ?? 'RC', o.context, dev);
}

function checkWait(op: string, o: WaitOptions): void {
  if (typeof o !== 'object' || o === null) throw new VerbsError('EINVAL', op, 'options must be an object', 'options');
  if (o.timeoutMs !== undefined) checkTimeout(op, o.timeoutMs);
  if (o.signal !== undefined && !(o.signal instanceof AbortSignal)) throw new VerbsError('EINVAL', op, 'signal must be an AbortSignal', 'signal');
}

function abortError(op: string, signal: AbortSignal): Error {
  const e = new Error(`${op}: aborted`, { cause: signal.reason as unknown });
  e.name = 'AbortError';
  (e as Error & { code: string }).code = 'ABORT_ERR';
  return e;
}

/** An event's private data: up to the last non-zero byte, and the whole field (event-channel.ts CmEventParam). */
function pdParam(field: Uint8Array): { privateData: Buffer; rawPrivateData: Buffer } {
  let end = field.length;
  while (end > 0 && field[end - 1] === 0) end--;
  return { privateData: Buffer.from(field.subarray(0, end)), rawPrivateData: Buffer.from(field) };
}

function connInfoOf(p: {
  remoteQpn: number;
  responderResources: number;
  initiatorDepth: number;
  retryCount: number;
  rnrRetryCount: number;
  srq: boolean;
}): ConnInfo {
  return {
    responderResources: p.responderResources,
    initiatorDepth: p.initiatorDepth,
    retryCount: p.retryCount,
    rnrRetryCount: p.rnrRetryCount,
    srq: p.srq,
    qpNum: p.remoteQpn,
  };
}

/**
 * A REQ or SIDR_REQ for a port some ids listen on (cma_ib_req_handler): a malformed cma_hdr is rejected
 * (REJ 28, or SIDR_REP "rejected"); the id bound to the header's destination address takes it, else one
 * bound to the wildcard of that family; none: rejected the same way (cma_ib_id_from_event failing).
 */
function dispatchListen(l: SharedListen, ev: IbCmEvent): void {
  if (ev.type !== 'REQ_RECEIVED' && ev.type !== 'SIDR_REQ_RECEIVED') return;
  const refuse = (): void => {
    try {
      if (ev.type === 'REQ_RECEIVED') ev.id.sendRej(CmRejReason.CONSUMER_DEFINED);
      else ev.id.sendSidrRep({ status: SidrStatus.REJECT, qpn: 0, qkey: 0 });
    } finally {
      ev.id.destroy();
    }
  };
  const hdr = decodeCmaHdr(ev.privateData);
  if (hdr instanceof CmaHdrError) return refuse();
  const ids = [...l.ids];
  const bound = (want: (a: CmAddr) => boolean) =>
    ids.find((i) => {
      const a = i.address();
      return a !== null && want(a);
    });
  const target =
    bound((a) => !isAnyAddr(a.address) && familyOf(a.address) === hdr.ipVersion && addrKey(a.address) === addrKey(hdr.dst)) ??
    bound((a) => isAnyAddr(a.address) && a.family === hdr.ipVersion);
  if (target === undefined || !target.incoming(ev, hdr.dst)) refuse();
}
