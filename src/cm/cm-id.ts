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
import { buildPath, gidTypeOf, roceMode, type PathRecord } from './route.js';
import { acquireCmSource, releaseCmDevice } from './devices.js';

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
  #emit(event: CmEventType, status: number): CmEvent {
    const ev: CmEvent = { event, id: this, status };
    this.#channel.deliver(ev);
    return ev;
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
      dev.on('close', this.#onDeviceClose);
    } else if (cmRef) releaseCmDevice(dev); // already held: one reference per id
    this.#portNum = port;
  }

  #detachDevice(): void {
    const dev = this.#device;
    if (dev === null) return;
    dev.off('close', this.#onDeviceClose);
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

  /** The device closed under the id (rdma_cm's cma_process_remove): work in flight is cancelled, DEVICE_REMOVAL comes. */
  #deviceRemoved(): void {
    if (this.#state === 'DESTROYING' || this.#state === 'DEVICE_REMOVAL') return;
    this.#pending?.cancel(new VerbsError('ENODEV', 'rdma_cm', `device ${this.#device?.name ?? '?'} was removed`, 'device'));
    this.#pending = null;
    const dev = this.#device;
    if (dev !== null) {
      dev.off('close', this.#onDeviceClose);
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
    if (this.#boundPort !== 0) portTable.release(this.ps, this.#boundPort, this);
    this.#boundPort = 0;
    this.#detachDevice();
    this.#channel.detach(this, this);
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
