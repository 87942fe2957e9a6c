/**
 * Protection domain (IBA 10.2.3), shared receive queue (IBA 10.2.9) and
 * address handle (IBA 10.2.2). Ownership as in verbs: children keep their
 * parent; a parent with live children cannot be closed (EBUSY).
 */
import { VerbsError } from './errors.js';
import { Mr, checkMrAccess, newKey } from './mr.js';
import { ACCESS, accessBits, type Access, type RecvWr, type Sge } from './types.js';
import * as V from './validate.js';
import { gidFromString, gidToIpv4Number, isIpv4Mapped, type Gid } from '../roce/gid.js';
import type { Device } from './device.js';
import type { Qp, CreateQpOptions } from './qp.js';
import type { Dest } from '../roce/transport/types.js';
import { RecvWqe } from '../roce/transport/wqe.js';
import type { AddressHandle } from '../roce/transport/types.js';
import { checkSgidIndex } from './gid-table.js';
import { openRoceV1 } from './port.js';
import { ROCEV1_PORT } from '../roce/link/link.js';

/** Checks a scatter/gather list's shape (types, counts); returns its total length. */
export function checkSgl(sg: readonly Sge[], max: number, op: string): number {
  V.list(op, 'sg', sg);
  if (sg.length > max) throw new VerbsError('EINVAL', op, `${sg.length} SGEs > max ${max}`, 'sg');
  let len = 0;
  for (const s of sg) {
    V.obj(op, 'sg', s);
    if (!(s.mr instanceof Mr)) throw new VerbsError('EINVAL', op, 'SGE without a registered MR', 'sg');
    if (!Number.isInteger(s.offset) || !Number.isInteger(s.length) || s.offset < 0 || s.length < 0) {
      throw new VerbsError('EINVAL', op, 'SGE offset/length must be non-negative integers', 'sg');
    }
    len += s.length;
  }
  return len;
}

/**
 * A receive WR, checked completely at post (all WRs of a list before any is queued): its SGEs must
 * be in live MRs of the QP's (SRQ's) PD with LOCAL_WRITE, since the responder writes them
 * (IBA 10.6.3.4, C10-16; rxe checks the lkey when a message lands, softroce also refuses it up front).
 */
/**
 * A receive WR into its queue slot: the SGE list is copied (the caller may reuse its array), into
 * the slot's own array when it has the length, and summed without a closure: a post in a ping-pong
 * allocates nothing (issue 15).
 */
export function fillRecvWqe(e: RecvWqe, w: RecvWr): void {
  e.wrId = w.wrId;
  const src = w.sg;
  const a = e.sg.length === src.length ? (e.sg as Sge[]) : new Array<Sge>(src.length);
  let len = 0;
  for (let i = 0; i < src.length; i++) {
    a[i] = src[i]!;
    len += src[i]!.length;
  }
  e.sg = a;
  e.length = len;
}

export function checkRecvWr(w: RecvWr, pd: Pd, maxSge: number, op: string): void {
  V.obj(op, 'wr', w);
  V.wrId(op, 'wrId', w.wrId);
  checkSgl(w.sg, maxSge, op);
  for (const s of w.sg) {
    if (s.mr.closed || s.mr.pd !== pd) throw new VerbsError('EINVAL', op, 'SGE in a closed MR or an MR of another PD', 'sg');
    if (!(s.mr.access & ACCESS.LOCAL_WRITE)) throw new VerbsError('EINVAL', op, 'receive SGE in an MR without LOCAL_WRITE', 'sg');
    if (s.offset + s.length > s.mr.length) throw new VerbsError('EINVAL', op, `SGE [${s.offset}, +${s.length}) outside the MR (${s.mr.length} bytes)`, 'sg');
  }
}

export class Pd {
  readonly device: Device;
  readonly handle: number;
  readonly mrs = new Set<Mr>();
  readonly qps = new Set<Qp>();
  readonly srqs = new Set<Srq>();
  readonly ahs = new Set<Ah>();
  #closed = false;
  constructor(device: Device, handle: number) {
    this.device = device;
    this.handle = handle;
  }
  get closed(): boolean {
    return this.#closed;
  }
  private live(op: string): void {
    if (this.closed) throw new VerbsError('EBADF', op, 'PD is closed', 'pd');
  }
  /**
   * ibv_reg_mr over caller-owned memory. `opts.invalidatable`: a SEND_WITH_INV may invalidate this
   * region's R_Key (in rxe only fast-registration MRs can be; a plain region cannot).
   */
  regMr(mem: Uint8Array, access: readonly Access[] = ['LOCAL_WRITE'], opts: { invalidatable?: boolean } = {}): Mr {
    this.live('ibv_reg_mr');
    if (!(mem instanceof Uint8Array)) throw new VerbsError('EINVAL', 'ibv_reg_mr', 'memory must be a Buffer or Uint8Array', 'mem');
    V.list('ibv_reg_mr', 'access', access);
    V.obj('ibv_reg_mr', 'opts', opts);
    V.optBool('ibv_reg_mr', 'opts.invalidatable', opts.invalidatable);
    const bits = accessBits(access, 'access', 'ibv_reg_mr', (c, o, m, a) => new VerbsError(c, o, m, a));
    checkMrAccess(bits);
    if (mem.byteLength > this.device.attr.maxMrSize) throw new VerbsError('EINVAL', 'ibv_reg_mr', 'region larger than max_mr_size', 'mem');
    const d = this.device;
    const lkey = newKey((k) => d.mrByLkey.has(k));
    const rkey = newKey((k) => d.mrByRkey.has(k));
    const mr = new Mr(this, mem, bits, lkey, rkey, opts.invalidatable ?? false);
    d.mrByLkey.set(lkey, mr);
    d.mrByRkey.set(rkey, mr);
    this.mrs.add(mr);
    return mr;
  }
  createQp(o: CreateQpOptions): Qp {
    this.live('ibv_create_qp');
    V.obj('ibv_create_qp', 'options', o);
    return this.device.createQpFor(this, o);
  }
  createSrq(o: { maxWr: number; maxSge?: number; limit?: number }): Srq {
    this.live('ibv_create_srq');
    const a = this.device.attr;
    const op = 'ibv_create_srq';
    V.obj(op, 'options', o);
    V.int(op, 'maxWr', o.maxWr, 1, a.maxSrqWr);
    const maxSge = o.maxSge ?? 1;
    V.int(op, 'maxSge', maxSge, 1, a.maxSrqSge);
    V.optInt(op, 'limit', o.limit, 0, o.maxWr);
    const s = new Srq(this, o.maxWr, maxSge, o.limit ?? 0);
    this.srqs.add(s);
    return s;
  }
  /** ibv_create_ah: where UD sends go. `gid` is a GID or an IP address string. */
  createAh(o: {
    gid: Gid | string;
    port?: number;
    sgidIndex?: number;
    hopLimit?: number;
    trafficClass?: number;
    flowLabel?: number;
    sl?: number;
    udpPort?: number;
  }): Ah {
    this.live('ibv_create_ah');
    const op = 'ibv_create_ah';
    V.obj(op, 'options', o);
    V.gid(op, 'gid', o.gid);
    // ibv_ah_attr.port_num: the port whose GID table sgidIndex indexes (a UD QP sends through AHs of its own port).
    V.optInt(op, 'port', o.port, 1, this.device.ports.length);
    checkSgidIndex(op, 'sgidIndex', o.sgidIndex, this.device.ports[(o.port ?? 1) - 1]!.gids);
    V.optInt(op, 'hopLimit', o.hopLimit, 0, 255);
    V.optInt(op, 'trafficClass', o.trafficClass, 0, 255);
    V.optInt(op, 'flowLabel', o.flowLabel, 0, 0xfffff);
    V.optInt(op, 'sl', o.sl, 0, 15);
    V.optInt(op, 'udpPort', o.udpPort, 1, 65535);
    const portNum = o.port ?? 1;
    openRoceV1(op, 'sgidIndex', o.sgidIndex ?? this.device.defaultSgidIndex(portNum), this.device.ports[portNum - 1]!);
    const ah = new Ah(this, o);
    this.ahs.add(ah);
    return ah;
  }
  close(): void {
    if (this.closed) return;
    const n = this.mrs.size + this.qps.size + this.srqs.size + this.ahs.size;
    if (n > 0)
      throw new VerbsError(
        'EBUSY',
        'ibv_dealloc_pd',
        `${n} object(s) still use this PD (MR ${this.mrs.size}, QP ${this.qps.size}, SRQ ${this.srqs.size}, AH ${this.ahs.size})`,
        'pd',
      );
    this.#closed = true;
    this.device.forget(this);
  }
  [Symbol.dispose](): void {
    this.close();
  }
}

export class Srq {
  readonly pd: Pd;
  readonly maxWr: number;
  readonly maxSge: number;
  private readonly ring: RecvWqe[];
  private head = 0;
  #limit: number;
  #count = 0;
  #users = 0;
  #closed = false;
  constructor(pd: Pd, maxWr: number, maxSge: number, limit: number) {
    this.pd = pd;
    this.maxWr = maxWr;
    this.maxSge = maxSge;
    this.#limit = limit;
    this.ring = Array.from({ length: maxWr }, () => new RecvWqe());
  }
  /** the armed limit (0: not armed; modify({ limit }) arms it) */
  get limit(): number {
    return this.#limit;
  }
  /** receive WQEs posted and not yet taken */
  get count(): number {
    return this.#count;
  }
  /** QPs attached to this SRQ (close() is EBUSY while any) */
  get users(): number {
    return this.#users;
  }
  get closed(): boolean {
    return this.#closed;
  }
  /** @internal device.ts: a QP attached (+1) or detached (-1) */
  addUser(d: 1 | -1): void {
    this.#users += d;
  }
  /** ibv_post_srq_recv. A list is all-or-nothing, checked as Qp.postRecv checks. */
  postRecv(wr: RecvWr | readonly RecvWr[]): void {
    const op = 'ibv_post_srq_recv';
    if (this.#closed) throw new VerbsError('EBADF', op, 'SRQ is closed', 'srq');
    if (!Array.isArray(wr)) {
      // One WR (the common post) is not wrapped in an array.
      if (this.#count + 1 > this.maxWr) throw new VerbsError('ENOMEM', op, 'SRQ is full', 'wr');
      checkRecvWr(wr as RecvWr, this.pd, this.maxSge, op);
      fillRecvWqe(this.ring[(this.head + this.#count) % this.maxWr]!, wr as RecvWr);
      this.#count++;
      return;
    }
    const list = wr as readonly RecvWr[];
    if (this.#count + list.length > this.maxWr) throw new VerbsError('ENOMEM', op, 'SRQ is full', 'wr');
    for (const w of list) checkRecvWr(w, this.pd, this.maxSge, op);
    for (const w of list) {
      fillRecvWqe(this.ring[(this.head + this.#count) % this.maxWr]!, w);
      this.#count++;
    }
  }
  /** Transport: put back the WQE take() just returned (its message was refused before any byte landed). */
  /** @internal */
  giveBack(e: RecvWqe): void {
    this.head = (this.head - 1 + this.maxWr) % this.maxWr;
    this.ring[this.head] = e;
    this.#count++;
  }
  /** ibv_modify_srq: arm the limit event (IBA 10.2.9.3: fires once when fewer than `limit` WQEs remain). */
  modify(o: { limit?: number; maxWr?: number }): void {
    if (this.#closed) throw new VerbsError('EBADF', 'ibv_modify_srq', 'SRQ is closed', 'srq');
    V.obj('ibv_modify_srq', 'attrs', o);
    if (o.maxWr !== undefined) throw new VerbsError('EOPNOTSUPP', 'ibv_modify_srq', 'resizing an SRQ is not supported', 'maxWr');
    if (o.limit !== undefined) {
      V.int('ibv_modify_srq', 'limit', o.limit, 0, this.maxWr);
      this.#limit = o.limit;
    }
  }
  /** Transport: take the next receive WQE (and raise SRQ_LIMIT_REACHED once the count falls below the limit). */
  take(): RecvWqe | null {
    if (this.#count === 0) return null;
    const e = this.ring[this.head]!;
    this.head = (this.head + 1) % this.maxWr;
    this.#count--;
    if (this.#limit > 0 && this.#count < this.#limit) {
      this.#limit = 0; // one shot: the consumer re-arms with modify({ limit })
      this.pd.device.asyncEvent({ type: 'SRQ_LIMIT_REACHED', srq: this });
    }
    return e;
  }
  close(): void {
    if (this.#closed) return;
    if (this.#users > 0) throw new VerbsError('EBUSY', 'ibv_destroy_srq', `${this.#users} QP(s) still use this SRQ`, 'srq');
    this.#closed = true;
    this.pd.srqs.delete(this);
  }
  [Symbol.dispose](): void {
    this.close();
  }
}

export class Ah implements AddressHandle {
  readonly pd: Pd;
  readonly gid: Gid;
  readonly ip: string;
  readonly family: 4 | 6;
  readonly ipNum: number;
  readonly hopLimit: number;
  readonly trafficClass: number;
  readonly flowLabel: number;
  readonly sgidIndex: number;
  readonly udpPort: number;
  /** the port (1-based) whose GID table sgidIndex indexes */
  readonly port: number;
  /** where UD sends through this AH go (the requester's view of it) */
  readonly dest: Dest;
  #closed = false;
  constructor(
    pd: Pd,
    o: { gid: Gid | string; port?: number; sgidIndex?: number; hopLimit?: number; trafficClass?: number; flowLabel?: number; udpPort?: number },
  ) {
    this.pd = pd;
    this.port = o.port ?? 1;
    let g: Gid;
    try {
      g = typeof o.gid === 'string' ? gidFromString(o.gid) : o.gid;
    } catch {
      throw new VerbsError('EINVAL', 'ibv_create_ah', `bad GID ${String(o.gid)}`, 'gid');
    }
    if (!(g instanceof Uint8Array) || g.length !== 16) throw new VerbsError('EINVAL', 'ibv_create_ah', 'GID must be 16 bytes', 'gid');
    this.gid = g;
    const addr = gidToAddress(g);
    this.ip = addr.ip;
    this.family = addr.family;
    this.ipNum = addr.family === 4 ? gidToIpv4Number(g) : 0;
    this.hopLimit = o.hopLimit ?? 64;
    this.trafficClass = o.trafficClass ?? 0;
    this.flowLabel = o.flowLabel ?? 0;
    // Without one: the port's RoCE v2 GID of its address, as an RC QP's toRtr (index 0 is the default GID as RoCE v1).
    this.sgidIndex = o.sgidIndex ?? pd.device.defaultSgidIndex(this.port);
    this.udpPort = o.udpPort ?? 4791;
    // The source GID's generation now: a UD send through this AH after its entry went is dropped (build.ts).
    const port = pd.device.ports[this.port - 1];
    const sgidGen = port?.gidGen[this.sgidIndex] ?? 0;
    // A RoCE v1 source GID: the port's RoCEv1 link sends to ROCEV1_PORT as Ethernet + GRH (rocev1-link.ts).
    const v1 = port?.gids.get(this.sgidIndex)?.type === 'RoCE v1';
    if (v1) port?.v1?.prime(this.ip);
    this.dest = {
      ip: this.ip,
      ipNum: this.ipNum,
      family: this.family,
      port: v1 ? ROCEV1_PORT : this.udpPort,
      bytes: g,
      tos: this.trafficClass & 0xff,
      sgidIndex: this.sgidIndex,
      sgidGen,
    };
  }
  get closed(): boolean {
    return this.#closed;
  }
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.pd.ahs.delete(this);
  }
  [Symbol.dispose](): void {
    this.close();
  }
}

/** The IP a RoCEv2 GID stands for. */
export function gidToAddress(g: Gid): { ip: string; family: 4 | 6 } {
  if (isIpv4Mapped(g)) return { ip: `${g[12]}.${g[13]}.${g[14]}.${g[15]}`, family: 4 };
  const w: string[] = [];
  for (let i = 0; i < 16; i += 2) w.push(((g[i]! << 8) | g[i + 1]!).toString(16));
  return { ip: w.join(':'), family: 6 };
}
