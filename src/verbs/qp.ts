/**
 * Queue pair (IBA 10.2.4, 11.2.5). The public face follows ibv_create_qp /
 * ibv_modify_qp / ibv_post_send / ibv_post_recv; the transport state each IBA
 * role keeps lives here too (requester `req`, completer `comp`, responder
 * `resp`), and src/roce/transport/* runs the three state machines over it.
 */
import { randomInt } from 'node:crypto';
import { VerbsError, InvalidQpAttrError } from './errors.js';
import { assertQpTransition, QP_STATES, type QpState, type QpType } from './qp-state.js';
import { ACCESS, WrOp, accessBits, type Access, type RecvWr, type SendWr, type Sge, type WcOpcode } from './types.js';
import { checkSgl, checkRecvWr, RecvWqe, Ah, type Pd, type Srq } from './objects.js';
import type { Cq } from './cq.js';
import type { Device } from './device.js';
import { Mr } from './mr.js';
import * as V from './validate.js';
import { gidFromString, gidToIpv4Number, gidToString, type Gid } from '../roce/gid.js';
import { gidToAddress } from './objects.js';
import type { Mtu } from '../roce/opcode.js';
import { PSN_MASK } from '../roce/psn.js';
import type { TimerHandle } from '../roce/transport/sched.js';
import type { Dest } from '../roce/transport/build.js';
import { flushQp, stopAckTimer } from '../roce/transport/completer.js';
import { flushAck } from '../roce/transport/responder.js';

export interface QpCap { maxSendWr: number; maxRecvWr: number; maxSendSge?: number; maxRecvSge?: number; maxInline?: number }
export interface CreateQpOptions {
  type: 'RC' | 'UC' | 'UD';
  sendCq: Cq;
  recvCq: Cq;
  srq?: Srq;
  /** every send WR generates a completion (sq_sig_all) */
  sigAll?: boolean;
  cap: QpCap;
}

/** The address vector of a connected QP (ibv_ah_attr with is_global). */
export interface Av {
  dgid: Gid | string;
  sgidIndex?: number;
  hopLimit?: number;
  trafficClass?: number;
  flowLabel?: number;
  sl?: number;
  /** destination UDP port (softroce extension; RoCEv2 is 4791) */
  udpPort?: number;
}

/** ibv_qp_attr: a key that is present is a bit in the attribute mask. */
export interface QpAttrs {
  state?: QpState;
  curState?: QpState;
  port?: number;
  pkeyIndex?: number;
  qkey?: number;
  accessFlags?: readonly Access[];
  av?: Av;
  pathMtu?: Mtu;
  destQpn?: number;
  rqPsn?: number;
  sqPsn?: number;
  maxDestRdAtomic?: number;
  minRnrTimer?: number;
  timeout?: number;
  retryCnt?: number;
  rnrRetry?: number;
  maxRdAtomic?: number;
  enSqdAsyncNotify?: boolean;
}

export const WqeState = { POSTED: 0, PROCESSING: 1, PENDING: 2, DONE: 3 } as const;

/** A send WQE: what the requester needs of a WR, copied at post time. */
export class SendWqe {
  wrId = 0;
  op = 0;
  sg: readonly Sge[] = [];
  length = 0;
  inline: Buffer | null = null;
  imm = 0;
  invRkey = 0;
  remoteAddr = 0n;
  rkey = 0;
  compareAdd = 0n;
  swap = 0n;
  signaled = false;
  solicited = false;
  fence = false;
  ah: Ah | null = null;
  remoteQpn = 0;
  remoteQkey = 0;
  state = 0;
  firstPsn = 0;
  lastPsn = 0;
  /** bytes sent so far (READ: bytes of response received) */
  sent = 0;
  /** firstPsn/lastPsn hold the PSNs this WQE was sent with (a go-back-N resend reuses them) */
  psnAssigned = false;
  /** counted in req.rdAtomic (READ/ATOMIC) */
  rdCounted = false;
  /** a local error found while processing (WC status index), 0 = none */
  localErr = 0;
  /**
   * READ: responses that arrived ahead of a missing one (a bit per response packet; allocated the
   * first time one does, kept for reuse), the highest response index seen, and the response index a
   * hole re-request was last sent for (completer.ts readResponse)
   */
  rdHave: Uint8Array | null = null;
  rdMaxSeen = -1;
  rdAsked = -1;
}

/** A saved responder resource for READ and ATOMIC (IBA 9.7.5.1.6: duplicates are answered from it). */
export class RdResource {
  psn = -1;
  lastPsn = -1;
  atomic = false;
  orig = 0n;
  msn = 0;
  /** READ: the request as first received; a duplicate must ask for the same R_Key and a part of this range */
  va = 0n;
  len = 0;
  rkey = 0;
}

/** The boolean flags of a send WR (checked per post: a module constant, no array per call). */
const SEND_FLAGS = ['signaled', 'solicited', 'fence', 'inline'] as const;

const isRdAtomic = (op: number): boolean => op === WrOp.RDMA_READ || op === WrOp.ATOMIC_CMP_AND_SWP || op === WrOp.ATOMIC_FETCH_AND_ADD;
export { isRdAtomic };

export class Qp {
  readonly device: Device;
  readonly pd: Pd;
  readonly qpn: number;
  readonly type: QpType;
  readonly sendCq: Cq;
  readonly recvCq: Cq;
  readonly srq: Srq | null;
  readonly sigAll: boolean;
  readonly cap: Required<QpCap>;
  // State and attributes are private: only modify() (checked, all-or-nothing) and the transport's
  // internal setState() change them. A caller writing `qp.state = 'RTS'` gets a compile error, and at
  // run time a TypeError (getter only, module code is strict).
  #state: QpState = 'RESET';
  #closed = false;
  #commEst = false;
  // attributes (ibv_qp_attr), with the values rxe starts from
  #port = 1;
  #pkeyIndex = 0;
  #qkey = 0;
  #accessFlags = 0;
  #pathMtu: Mtu = 1024;
  #destQpn = 0;
  #rqPsn = 0;
  /** the initial send PSN: random at creation (as rdma-core's tools pick it), what endpoint() hands the peer */
  #sqPsn = randomInt(0, PSN_MASK + 1);
  #maxDestRdAtomic = 0;
  #minRnrTimer = 0;
  #timeout = 0;
  #retryCnt = 0;
  #rnrRetry = 0;
  #maxRdAtomic = 0;
  #sqDrainNotify = false;
  #av: Required<Omit<Av, 'dgid'>> & { dgid: Gid } | null = null;
  /** where RC/UC packets go: derived from the AV once, at modify() */
  #dest: Dest = { ip: '', ipNum: 0, family: 4, port: 4791, bytes: new Uint8Array(16), tos: 0 };

  get state(): QpState { return this.#state; }
  get closed(): boolean { return this.#closed; }
  /** COMM_EST raised (first packet received in RTR) */
  get commEst(): boolean { return this.#commEst; }
  /** @internal the responder marks COMM_EST */
  set commEst(v: boolean) { this.#commEst = v; }
  get port(): number { return this.#port; }
  get pkeyIndex(): number { return this.#pkeyIndex; }
  get qkey(): number { return this.#qkey; }
  /** ACCESS bits */
  get accessFlags(): number { return this.#accessFlags; }
  get pathMtu(): Mtu { return this.#pathMtu; }
  get destQpn(): number { return this.#destQpn; }
  get rqPsn(): number { return this.#rqPsn; }
  /** the initial send PSN (random until toRts/modify sets one) */
  get sqPsn(): number { return this.#sqPsn; }
  get maxDestRdAtomic(): number { return this.#maxDestRdAtomic; }
  get minRnrTimer(): number { return this.#minRnrTimer; }
  get timeout(): number { return this.#timeout; }
  get retryCnt(): number { return this.#retryCnt; }
  get rnrRetry(): number { return this.#rnrRetry; }
  get maxRdAtomic(): number { return this.#maxRdAtomic; }
  get sqDrainNotify(): boolean { return this.#sqDrainNotify; }
  get av(): Readonly<Required<Omit<Av, 'dgid'>> & { dgid: Gid }> | null { return this.#av; }
  /** @internal where RC/UC packets go */
  get dest(): Dest { return this.#dest; }

  // send queue: absolute counters, index = n % cap
  readonly sq: SendWqe[];
  sqHead = 0; // oldest not yet completed
  sqTail = 0; // next free
  // receive queue
  readonly rq: RecvWqe[];
  rqHead = 0;
  rqCount = 0;

  /** requester (rxe req): next PSN, next WQE to send, READ/ATOMIC outstanding */
  readonly req = { psn: 0, /** the PSN after the highest ever sent: responses at or above it are forged */ maxPsn: 0, idx: 0, rdAtomic: 0, sinceAckReq: 0, scheduled: false, waitingDrain: false, window: 128, grow: 0, run: null as (() => void) | null };
  /** completer (rxe comp): oldest unacknowledged PSN, retry budget, timers */
  readonly comp = { psn: 0, retryCnt: 0, rnrRetry: 0, timer: null as TimerHandle | null, rnrTimer: null as TimerHandle | null, retriedAt: -1,
    /** when the ACK timer expires (Infinity: not armed); the timer itself is lazy (completer.ts) */
    deadline: Infinity, onTimer: null as (() => void) | null,
    /** round-trip estimate (ms, 0 = none yet) and the one packet being timed (PSN, send time) */
    srtt: 0, sampleP: -1, sampleT: 0,
    /** the tail-loss probe (completer.ts armProbe): when it fires, its lazy timer, probes since progress */
    probeAt: Infinity, probeTimer: null as TimerHandle | null, onProbe: null as (() => void) | null, probes: 0 };
  /** responder (rxe resp): expected PSN, MSN, message in progress, saved READ/ATOMIC resources */
  readonly resp = {
    psn: 0, msn: 0, lastOp: -1, wqe: null as RecvWqe | null, offset: 0, nakPsn: -1, oosMax: 0, oosCount: 0, dropMsg: false,
    mr: null as Mr | null, mrOff: 0, resid: 0, writeLen: 0,
    res: [] as RdResource[], resNext: 0,
    /** READ responses still to send: [psn, mr, off, len] per pending READ */
    reads: [] as Array<{ psn: number; mr: Mr | null; off: number; len: number; sentPsn: number }>,
    /** requests that arrived while READ responses were being sent (kept in order) */
    backlog: [] as Array<{ buf: Buffer; len: number; srcIp: string; srcPort: number; ipId: number; srcBytes: Uint8Array }>,
    /** RC requests that arrived ahead of a missing PSN, kept by PSN until it comes (responder.ts stashAhead) */
    stash: new Map<number, Buffer>(),
    /** the expected PSN the out-of-sequence count (oosCount) is for */
    gapPsn: -1,
    scheduled: false,
    waitingDrain: false,
    /** a coalesced ACK waits for the end of this event-loop turn (responder.ts queueAck) */
    ackPending: false, ackPsn: 0, ackMsn: 0,
    ackFlush: null as (() => void) | null,
  };

  constructor(device: Device, pd: Pd, qpn: number, type: QpType, o: CreateQpOptions | null, cap: Required<QpCap>, sendCq: Cq, recvCq: Cq) {
    this.device = device;
    this.pd = pd;
    this.qpn = qpn;
    this.type = type;
    this.sendCq = sendCq;
    this.recvCq = recvCq;
    this.srq = o?.srq ?? null;
    this.sigAll = o?.sigAll ?? false;
    this.cap = cap;
    this.sq = Array.from({ length: cap.maxSendWr }, () => new SendWqe());
    this.rq = Array.from({ length: this.srq ? 0 : cap.maxRecvWr }, () => new RecvWqe());
  }

  private live(op: string): void {
    if (this.closed) throw new VerbsError('EBADF', op, `QP ${this.qpn} is closed`, 'qp');
  }

  /** ibv_modify_qp. The keys present are the attribute mask; nothing changes unless all checks pass. */
  modify(attrs: QpAttrs): void {
    this.live('ibv_modify_qp');
    V.obj('ibv_modify_qp', 'attrs', attrs);
    V.optOneOf('ibv_modify_qp', 'state', attrs.state, QP_STATES);
    V.optOneOf('ibv_modify_qp', 'curState', attrs.curState, QP_STATES);
    const keys = Object.keys(attrs).filter((k) => (attrs as Record<string, unknown>)[k] !== undefined && k !== 'state');
    const from = attrs.curState ?? this.state;
    if (attrs.curState !== undefined && attrs.curState !== this.state) {
      throw new VerbsError('EINVAL', 'ibv_modify_qp', `curState ${attrs.curState} is not the QP's state ${this.state}`, 'curState');
    }
    const to = attrs.state ?? this.state;
    if (attrs.state === undefined && keys.length === 0) return;
    assertQpTransition(this.type, from, to, keys);
    this.checkValues(attrs);
    this.apply(attrs, to);
  }

  /** Value checks (rxe_qp_chk_attr, plus the types a JS caller can get wrong): all before any change. */
  private checkValues(a: QpAttrs): void {
    const op = 'ibv_modify_qp';
    const bad = (arg: string, msg: string): never => { throw new VerbsError('EINVAL', op, msg, arg); };
    const dev = this.device;
    V.optInt(op, 'port', a.port, 1, dev.ports.length);
    if (a.pkeyIndex !== undefined) V.int(op, 'pkeyIndex', a.pkeyIndex, 0, 0); // the P_Key table has one entry
    if (a.qkey !== undefined) V.u32(op, 'qkey', a.qkey);
    if (a.pathMtu !== undefined) {
      V.mtu(op, 'pathMtu', a.pathMtu);
      const active = dev.ports[(a.port ?? this.port) - 1]!.activeMtu;
      if (a.pathMtu > active) bad('pathMtu', `pathMtu ${a.pathMtu} > port active_mtu ${active}`);
    }
    if (a.rqPsn !== undefined) V.psn(op, 'rqPsn', a.rqPsn);
    if (a.sqPsn !== undefined) V.psn(op, 'sqPsn', a.sqPsn);
    V.optInt(op, 'destQpn', a.destQpn, 1, 0xfffffe);
    V.optInt(op, 'maxRdAtomic', a.maxRdAtomic, 0, dev.attr.maxQpInitRdAtom);
    V.optInt(op, 'maxDestRdAtomic', a.maxDestRdAtomic, 0, dev.attr.maxQpRdAtom);
    V.optInt(op, 'minRnrTimer', a.minRnrTimer, 0, 31); // a 5-bit code (IBA 9.7.5.2.8)
    V.optInt(op, 'timeout', a.timeout, 0, 31); // 4.096 us * 2^timeout, a 5-bit field
    V.optInt(op, 'retryCnt', a.retryCnt, 0, 7);
    V.optInt(op, 'rnrRetry', a.rnrRetry, 0, 7);
    V.optBool(op, 'enSqdAsyncNotify', a.enSqdAsyncNotify);
    if (a.accessFlags !== undefined) {
      V.list(op, 'accessFlags', a.accessFlags);
      accessBits(a.accessFlags, 'accessFlags', op, (c, o, m, arg) => new VerbsError(c, o, m, arg));
    }
    if (a.av !== undefined) checkAv(op, 'av', a.av, dev.ports[(a.port ?? this.port) - 1]!.gids.length);
  }

  private apply(a: QpAttrs, to: QpState): void {
    if (a.port !== undefined) this.#port = a.port;
    // UD and GSI messages are bounded by the port's MTU, not a path MTU (rxe's get_mtu()).
    if ((this.type === 'UD' || this.type === 'GSI') && to === 'INIT') this.#pathMtu = this.device.queryPort(this.#port).activeMtu;
    if (a.pkeyIndex !== undefined) this.#pkeyIndex = a.pkeyIndex;
    if (a.qkey !== undefined) this.#qkey = a.qkey >>> 0;
    if (a.accessFlags !== undefined) this.#accessFlags = accessBits(a.accessFlags, 'accessFlags', 'ibv_modify_qp', (c, o, m, arg) => new VerbsError(c, o, m, arg));
    if (a.pathMtu !== undefined) this.#pathMtu = a.pathMtu;
    if (a.destQpn !== undefined) this.#destQpn = a.destQpn;
    if (a.maxDestRdAtomic !== undefined) this.#maxDestRdAtomic = a.maxDestRdAtomic;
    if (a.minRnrTimer !== undefined) this.#minRnrTimer = a.minRnrTimer;
    if (a.timeout !== undefined) this.#timeout = a.timeout;
    if (a.retryCnt !== undefined) { this.#retryCnt = a.retryCnt; this.comp.retryCnt = a.retryCnt; }
    if (a.rnrRetry !== undefined) { this.#rnrRetry = a.rnrRetry; this.comp.rnrRetry = a.rnrRetry; }
    if (a.maxRdAtomic !== undefined) this.#maxRdAtomic = a.maxRdAtomic;
    if (a.enSqdAsyncNotify !== undefined) this.#sqDrainNotify = a.enSqdAsyncNotify;
    if (a.av !== undefined) {
      const g = typeof a.av.dgid === 'string' ? gidFromString(a.av.dgid) : a.av.dgid;
      this.#av = {
        dgid: g, sgidIndex: a.av.sgidIndex ?? 0, hopLimit: a.av.hopLimit ?? 64, trafficClass: a.av.trafficClass ?? 0,
        flowLabel: a.av.flowLabel ?? 0, sl: a.av.sl ?? 0, udpPort: a.av.udpPort ?? 4791,
      };
      const addr = gidToAddress(g);
      this.#dest = { ip: addr.ip, ipNum: addr.family === 4 ? gidToIpv4Number(g) : 0, family: addr.family, port: this.#av.udpPort, bytes: g, tos: this.#av.trafficClass & 0xff };
    }
    if (a.rqPsn !== undefined) { this.#rqPsn = a.rqPsn; this.resp.psn = a.rqPsn; }
    if (a.sqPsn !== undefined) { this.#sqPsn = a.sqPsn; this.req.psn = a.sqPsn; this.req.maxPsn = a.sqPsn; this.comp.psn = a.sqPsn; }
    if (a.state !== undefined) this.setState(to);
  }

  /** @internal State changes with their side effects (IBA 10.3.1); the transport moves QPs to ERR/SQD with it. */
  setState(to: QpState): void {
    const from = this.#state;
    this.#state = to;
    if (to === 'RESET') this.resetQueues();
    if (to === 'INIT' && from === 'RESET') {
      // MSN starts at 0 on RESET → INIT (IBA 9.7.5.1.2).
      this.resp.msn = 0;
      this.resp.ackPending = false;
      this.resp.res = Array.from({ length: Math.max(1, this.device.attr.maxQpRdAtom) }, () => new RdResource());
    }
    if (to === 'ERR' && from !== 'ERR') flushQp(this);
    if (to === 'RTS' || to === 'SQD') this.device.kick(this);
    if (to === 'SQD' && this.sqDrainNotify && this.sqHead === this.sqTail) this.device.asyncEvent({ type: 'SQ_DRAINED', qp: this });
  }

  private resetQueues(): void {
    stopAckTimer(this);
    this.device.sched.clearTimer(this.comp.rnrTimer);
    this.comp.rnrTimer = null;
    this.sqHead = this.sqTail = 0;
    this.rqHead = this.rqCount = 0;
    Object.assign(this.req, { psn: 0, maxPsn: 0, idx: 0, rdAtomic: 0, sinceAckReq: 0, window: 128, grow: 0 });
    Object.assign(this.comp, { psn: 0, retriedAt: -1, sampleP: -1, probes: 0 });
    Object.assign(this.resp, { psn: 0, msn: 0, lastOp: -1, wqe: null, offset: 0, nakPsn: -1, dropMsg: false, mr: null, mrOff: 0, resid: 0, reads: [], backlog: [], gapPsn: -1 });
    this.resp.stash.clear();
    this.#commEst = false;
  }

  toInit(o: { port?: number; pkeyIndex?: number; accessFlags?: readonly Access[]; qkey?: number } = {}): this {
    V.obj('ibv_modify_qp', 'options', o);
    const a: QpAttrs = { state: 'INIT', port: o.port ?? 1, pkeyIndex: o.pkeyIndex ?? 0 };
    if (this.type === 'UD' || this.type === 'GSI') a.qkey = o.qkey ?? 0;
    else a.accessFlags = o.accessFlags ?? [];
    if (this.type === 'GSI') delete a.port;
    this.modify(a);
    return this;
  }
  /**
   * RESET/INIT → RTR. For RC/UC `remote` is the peer's endpoint (`qp.endpoint()` on the other side, or
   * its JSON); the receive PSN is `rqPsn`, else `remote.psn`: there is no default, since a wrong
   * expected PSN silently drops the peer's first messages (and a fixed one can be guessed).
   */
  toRtr(o: { remote?: { qpn: number; psn?: number; gid: Gid | string; udpPort?: number }; pathMtu?: Mtu; rqPsn?: number; maxDestRdAtomic?: number; minRnrTimer?: number; sgidIndex?: number; hopLimit?: number; trafficClass?: number } = {}): this {
    const op = 'ibv_modify_qp';
    V.obj(op, 'options', o);
    if (this.type === 'UD' || this.type === 'GSI') { this.modify({ state: 'RTR' }); return this; }
    if (o.remote === undefined) throw new InvalidQpAttrError(this.state, 'RTR', ['av', 'destQpn'], []);
    checkRemoteEndpoint(op, 'remote', o.remote);
    V.optInt(op, 'sgidIndex', o.sgidIndex, 0, 0xffff);
    V.optInt(op, 'hopLimit', o.hopLimit, 0, 255);
    V.optInt(op, 'trafficClass', o.trafficClass, 0, 255);
    const rqPsn = o.rqPsn ?? o.remote.psn;
    if (rqPsn === undefined) V.fail(op, 'rqPsn', "the peer's initial PSN is required (rqPsn or remote.psn)");
    const av: Av = { dgid: o.remote.gid, sgidIndex: o.sgidIndex ?? this.device.defaultSgidIndex(), hopLimit: o.hopLimit ?? 64, trafficClass: o.trafficClass ?? 0 };
    if (o.remote.udpPort !== undefined) av.udpPort = o.remote.udpPort;
    const a: QpAttrs = { state: 'RTR', av, pathMtu: o.pathMtu ?? 1024, destQpn: o.remote.qpn, rqPsn };
    if (this.type === 'RC') { a.maxDestRdAtomic = o.maxDestRdAtomic ?? 1; a.minRnrTimer = o.minRnrTimer ?? 12; }
    this.modify(a);
    return this;
  }
  /** RTR → RTS. `sqPsn` defaults to this QP's random initial PSN, the one endpoint() gave the peer. */
  toRts(o: { sqPsn?: number; timeout?: number; retryCnt?: number; rnrRetry?: number; maxRdAtomic?: number } = {}): this {
    V.obj('ibv_modify_qp', 'options', o);
    const a: QpAttrs = { state: 'RTS', sqPsn: o.sqPsn ?? this.sqPsn };
    if (this.type === 'RC') { a.timeout = o.timeout ?? 14; a.retryCnt = o.retryCnt ?? 7; a.rnrRetry = o.rnrRetry ?? 7; a.maxRdAtomic = o.maxRdAtomic ?? 1; }
    this.modify(a);
    return this;
  }

  /**
   * What the peer needs for an out-of-band exchange (the pingpong LID:QPN:PSN:GID message), as a
   * JSON-serialisable object: the GID as text, and with `{ mr }` the region's address (a 0x-hex
   * string: `BigInt(ep.addr)`, or `remoteOf(ep)`) and R_Key, for RDMA to it. The PSN is the QP's
   * random initial send PSN; connectQp/toRts use it unless told otherwise.
   */
  endpoint(): QpEndpoint;
  endpoint(o: { mr: Mr; sgidIndex?: number }): QpEndpoint & MrEndpoint;
  endpoint(o: { mr?: Mr; sgidIndex?: number }): QpEndpoint & Partial<MrEndpoint>;
  endpoint(o: { mr?: Mr; sgidIndex?: number } = {}): QpEndpoint & Partial<MrEndpoint> {
    const op = 'endpoint';
    V.obj(op, 'options', o);
    const gids = this.device.ports[this.port - 1]!.gids;
    V.optInt(op, 'sgidIndex', o.sgidIndex, 0, gids.length - 1);
    const ep: QpEndpoint & Partial<MrEndpoint> = { qpn: this.qpn, psn: this.sqPsn, gid: gidToString(gids[o.sgidIndex ?? this.device.defaultSgidIndex(this.port)]!.gid) };
    if (o.mr !== undefined) {
      if (!(o.mr instanceof Mr) || o.mr.closed) V.fail(op, 'mr', 'must be a registered, open MR');
      ep.addr = '0x' + o.mr.addr.toString(16);
      ep.rkey = o.mr.rkey;
    }
    return ep;
  }

  query(): Readonly<Omit<QpAttrs, 'accessFlags' | 'av'> & { state: QpState; accessFlags: Access[]; av: Qp['av']; qpn: number; type: QpType; cap: Required<QpCap> }> {
    this.live('ibv_query_qp');
    const flags = (Object.keys(ACCESS) as Access[]).filter((k) => this.accessFlags & ACCESS[k]);
    return {
      state: this.state, qpn: this.qpn, type: this.type, cap: { ...this.cap }, port: this.port, pkeyIndex: this.pkeyIndex, qkey: this.qkey,
      accessFlags: flags, av: this.av, pathMtu: this.pathMtu, destQpn: this.destQpn, rqPsn: this.resp.psn, sqPsn: this.req.psn,
      maxDestRdAtomic: this.maxDestRdAtomic, minRnrTimer: this.minRnrTimer, timeout: this.timeout, retryCnt: this.retryCnt,
      rnrRetry: this.rnrRetry, maxRdAtomic: this.maxRdAtomic, enSqdAsyncNotify: this.sqDrainNotify,
    };
  }

  /**
   * ibv_post_send. Throws for what C returns at once (ENOMEM full, EINVAL bad WR); the rest completes.
   * A list is all-or-nothing: every WR is checked completely before any is queued.
   */
  postSend(wr: SendWr | readonly SendWr[]): void {
    this.live('ibv_post_send');
    const op = 'ibv_post_send';
    const list: readonly SendWr[] = Array.isArray(wr) ? wr : [wr as SendWr];
    if (this.state === 'RESET' || this.state === 'INIT' || this.state === 'RTR') {
      throw new VerbsError('EINVAL', op, `QP ${this.qpn} is in ${this.state}; sends need RTS`, 'qp');
    }
    if (this.sqTail - this.sqHead + list.length > this.cap.maxSendWr) throw new VerbsError('ENOMEM', op, 'send queue is full', 'wr');
    // Validate every WR before queueing any (a failed post queues nothing).
    for (const w of list) this.checkSendWr(w);
    for (const w of list) this.enqueue(w);
    if (this.state === 'ERR') flushQp(this);
    else this.device.kick(this, true);
  }

  private checkSendWr(w: SendWr): void {
    const op = 'ibv_post_send';
    V.obj(op, 'wr', w);
    V.wrId(op, 'wrId', w.wrId);
    const code = typeof w.opcode === 'string' && Object.hasOwn(WrOp, w.opcode) ? WrOp[w.opcode] : undefined;
    if (code === undefined) throw new VerbsError('EINVAL', op, `unknown opcode ${String(w.opcode)}`, 'opcode');
    const t = this.type;
    if ((t === 'UD' || t === 'GSI') && code !== WrOp.SEND && code !== WrOp.SEND_WITH_IMM) throw new VerbsError('EINVAL', op, `${w.opcode} is not allowed on a UD QP`, 'opcode');
    if (t === 'UC' && (code === WrOp.RDMA_READ || code >= WrOp.ATOMIC_CMP_AND_SWP || code === WrOp.SEND_WITH_INV)) throw new VerbsError('EINVAL', op, `${w.opcode} is not allowed on a UC QP`, 'opcode');
    for (const k of SEND_FLAGS) V.optBool(op, k, w[k]);
    const len = checkSgl(w.sg, this.cap.maxSendSge, op);
    if (w.inline && len > this.cap.maxInline) throw new VerbsError('EINVAL', op, `inline data ${len} > maxInline ${this.cap.maxInline}`, 'inline');
    if (w.inline && (code === WrOp.RDMA_READ || code >= WrOp.ATOMIC_CMP_AND_SWP)) throw new VerbsError('EINVAL', op, 'inline is for sends and writes', 'inline');
    if (len > this.device.attr.maxMsgSize) throw new VerbsError('EINVAL', op, `message of ${len} bytes > ${this.device.attr.maxMsgSize}`, 'sg');
    const x = w as unknown as Record<string, unknown>;
    if (code === WrOp.SEND_WITH_IMM || code === WrOp.RDMA_WRITE_WITH_IMM) V.u32(op, 'imm', x['imm']);
    if (code === WrOp.SEND_WITH_INV) V.u32(op, 'invalidateRkey', x['invalidateRkey']);
    if (code >= WrOp.RDMA_WRITE) {
      // Without this an RDMA op would go out with R_Key 0 and VA 0 (the peer NAKs it much later).
      V.obj(op, 'remote', x['remote']);
      const r = x['remote'] as Record<string, unknown>;
      V.u64(op, 'remote', r['addr']);
      V.u32(op, 'remote', r['rkey']);
      // rdma-core's rxe provider (post_one_send): an atomic's target must be 8-byte aligned.
      if (code >= WrOp.ATOMIC_CMP_AND_SWP && ((r['addr'] as bigint) & 7n) !== 0n) throw new VerbsError('EINVAL', op, 'an atomic needs an 8-byte aligned remote address', 'remote');
    }
    if (code >= WrOp.ATOMIC_CMP_AND_SWP) {
      V.operand(op, 'compareAdd', x['compareAdd']);
      if (code === WrOp.ATOMIC_CMP_AND_SWP) V.operand(op, 'swap', x['swap']);
      if (len !== 8) throw new VerbsError('EINVAL', op, 'an atomic needs one 8-byte local buffer', 'sg');
    }
    if (t === 'UD' || t === 'GSI') {
      if (w.ud === undefined) throw new VerbsError('EINVAL', op, 'a UD send needs ud: { ah, remoteQpn, remoteQkey }', 'ud');
      V.obj(op, 'ud', w.ud);
      if (!(w.ud.ah instanceof Ah) || w.ud.ah.closed || w.ud.ah.pd !== this.pd) throw new VerbsError('EINVAL', op, 'AH is closed or of another PD', 'ud');
      V.int(op, 'ud', w.ud.remoteQpn, 0, 0xffffff);
      V.u32(op, 'ud', w.ud.remoteQkey);
      if (len > this.pathMtu) throw new VerbsError('EINVAL', op, `UD message of ${len} bytes > path MTU ${this.pathMtu}`, 'sg');
    }
  }

  private enqueue(w: SendWr): void {
    const e = this.sq[this.sqTail % this.cap.maxSendWr]!;
    e.wrId = w.wrId;
    e.op = WrOp[w.opcode];
    e.sg = w.sg.slice();
    e.length = w.sg.reduce((a: number, s: Sge) => a + s.length, 0);
    e.signaled = this.sigAll || w.signaled === true;
    e.solicited = w.solicited === true;
    e.fence = w.fence === true;
    e.imm = 'imm' in w ? w.imm >>> 0 : 0;
    e.invRkey = 'invalidateRkey' in w ? w.invalidateRkey >>> 0 : 0;
    e.remoteAddr = 'remote' in w ? w.remote.addr : 0n;
    e.rkey = 'remote' in w ? w.remote.rkey >>> 0 : 0;
    e.compareAdd = 'compareAdd' in w ? BigInt.asUintN(64, w.compareAdd) : 0n;
    e.swap = 'swap' in w ? BigInt.asUintN(64, w.swap) : 0n;
    e.ah = w.ud?.ah ?? null;
    e.remoteQpn = w.ud?.remoteQpn ?? 0;
    e.remoteQkey = w.ud ? w.ud.remoteQkey >>> 0 : 0;
    e.state = WqeState.POSTED;
    e.sent = 0;
    e.firstPsn = e.lastPsn = 0;
    e.psnAssigned = false;
    e.rdCounted = false;
    e.localErr = 0;
    e.inline = null;
    e.rdMaxSeen = -1;
    e.rdAsked = -1;
    if (e.rdHave !== null) e.rdHave.fill(0);
    // Local protection (IBA 10.6.3.4): every SGE inside a live MR of this PD; READ/atomic targets need LOCAL_WRITE.
    const needWrite = e.op === WrOp.RDMA_READ || e.op >= WrOp.ATOMIC_CMP_AND_SWP;
    for (const s of e.sg) {
      if (s.mr.closed || s.mr.pd !== this.pd || s.offset + s.length > s.mr.length || (needWrite && !(s.mr.access & ACCESS.LOCAL_WRITE))) e.localErr = 4; // LOC_PROT_ERR
    }
    if (w.inline && !e.localErr) {
      const b = Buffer.allocUnsafe(e.length);
      let p = 0;
      for (const s of e.sg) { s.mr.buffer.copy(b, p, s.offset, s.offset + s.length); p += s.length; }
      e.inline = b;
    }
    this.sqTail++;
  }

  /** ibv_post_recv. A list is all-or-nothing; every SGE must be writable memory of this QP's PD. */
  postRecv(wr: RecvWr | readonly RecvWr[]): void {
    this.live('ibv_post_recv');
    const op = 'ibv_post_recv';
    if (this.srq) throw new VerbsError('EINVAL', op, 'this QP uses an SRQ: post to the SRQ', 'qp');
    if (this.state === 'RESET') throw new VerbsError('EINVAL', op, 'QP is in RESET', 'qp');
    const list: readonly RecvWr[] = Array.isArray(wr) ? wr : [wr as RecvWr];
    if (this.rqCount + list.length > this.cap.maxRecvWr) throw new VerbsError('ENOMEM', op, 'receive queue is full', 'wr');
    for (const w of list) checkRecvWr(w, this.pd, this.cap.maxRecvSge, op);
    for (const w of list) {
      const e = this.rq[(this.rqHead + this.rqCount) % this.cap.maxRecvWr]!;
      e.wrId = w.wrId;
      e.sg = w.sg.slice();
      e.length = w.sg.reduce((a: number, s: Sge) => a + s.length, 0);
      this.rqCount++;
    }
    if (this.state === 'ERR') flushQp(this);
  }

  /** Transport: the next receive WQE, from the SRQ or the RQ. */
  takeRecv(): RecvWqe | null {
    if (this.srq) return this.srq.take();
    if (this.rqCount === 0) return null;
    const e = this.rq[this.rqHead]!;
    this.rqHead = (this.rqHead + 1) % this.cap.maxRecvWr;
    this.rqCount--;
    return e;
  }

  /**
   * Transport: give back a receive WQE taken for a message that was then refused before any
   * byte landed (a WRITE_WITH_IMM whose last packet fails its checks): it stays at the head.
   */
  returnRecv(e: RecvWqe): void {
    if (this.srq) { this.srq.giveBack(e); return; }
    this.rqHead = (this.rqHead - 1 + this.cap.maxRecvWr) % this.cap.maxRecvWr;
    this.rqCount++;
    if (this.rq[this.rqHead] !== e) this.rq[this.rqHead] = e;
  }

  /** Send WQEs not completed yet. */
  get outstanding(): number {
    return this.sqTail - this.sqHead;
  }

  close(): void {
    if (this.closed) return;
    // The coalesced ACK for the last requests still goes out: a peer waits for it (an app that
    // closes right after its last receive completion would otherwise leave the peer retrying).
    if (this.resp.ackPending) flushAck(this);
    if (this.state !== 'RESET' && this.state !== 'ERR') this.setState('ERR');
    stopAckTimer(this);
    this.device.sched.clearTimer(this.comp.rnrTimer);
    this.#closed = true;
    this.device.destroyQp(this);
  }
  [Symbol.dispose](): void {
    this.close();
  }
}

export function wcOpcodeFor(op: number): WcOpcode {
  switch (op) {
    case WrOp.RDMA_WRITE: case WrOp.RDMA_WRITE_WITH_IMM: return 'RDMA_WRITE';
    case WrOp.RDMA_READ: return 'RDMA_READ';
    case WrOp.ATOMIC_CMP_AND_SWP: return 'COMP_SWAP';
    case WrOp.ATOMIC_FETCH_AND_ADD: return 'FETCH_ADD';
    default: return 'SEND';
  }
}

/** What `qp.endpoint()` returns: the JSON an application sends its peer (ibv_rc_pingpong's LID:QPN:PSN:GID). */
export interface QpEndpoint { qpn: number; psn: number; gid: string }
/** With `qp.endpoint({ mr })`: a region the peer may RDMA to; `addr` is the 64-bit VA as a 0x-hex string. */
export interface MrEndpoint { addr: string; rkey: number }

/**
 * The `remote` of an RDMA work request from a peer's endpoint JSON: `{ addr: BigInt(ep.addr) + offset,
 * rkey: ep.rkey }`, checked (EINVAL, argument 'remote').
 */
export function remoteOf(ep: { addr: string | bigint; rkey: number }, offset: number | bigint = 0): { addr: bigint; rkey: number } {
  const op = 'remoteOf';
  V.obj(op, 'remote', ep);
  let addr: bigint;
  try { addr = BigInt(ep.addr) + BigInt(offset); } catch { V.fail(op, 'remote', `addr must be a 64-bit address (bigint, decimal or 0x-hex string), got ${String(ep.addr)}`); }
  V.u64(op, 'remote', addr);
  V.u32(op, 'remote', ep.rkey);
  return { addr, rkey: ep.rkey };
}

function checkRemoteEndpoint(op: string, arg: string, x: unknown, needPsn = false): void {
  V.obj(op, arg, x);
  const r = x as Record<string, unknown>;
  V.int(op, arg, r['qpn'], 1, 0xfffffe);
  if (needPsn || r['psn'] !== undefined) V.psn(op, arg, r['psn']);
  V.gid(op, arg, r['gid']);
  V.optInt(op, arg, r['udpPort'], 1, 65535);
}

function checkAv(op: string, arg: string, x: unknown, gidCount: number): void {
  V.obj(op, arg, x);
  const av = x as Record<string, unknown>;
  V.gid(op, arg, av['dgid']);
  V.optInt(op, arg, av['sgidIndex'], 0, gidCount - 1);
  V.optInt(op, arg, av['hopLimit'], 0, 255);
  V.optInt(op, arg, av['trafficClass'], 0, 255);
  V.optInt(op, arg, av['flowLabel'], 0, 0xfffff);
  V.optInt(op, arg, av['sl'], 0, 15);
  V.optInt(op, arg, av['udpPort'], 1, 65535);
}

export interface ConnectLocal {
  /** initial send PSN; default: the QP's random one (qp.endpoint().psn) */
  psn?: number; accessFlags?: readonly Access[]; pathMtu?: Mtu; timeout?: number; retryCnt?: number; rnrRetry?: number;
  minRnrTimer?: number; maxRdAtomic?: number; maxDestRdAtomic?: number; sgidIndex?: number;
}

/**
 * One-call bring-up of an RC/UC QP from RESET to RTS against a peer's
 * endpoint (rust-ibverbs `handshake`, what rdma_cm does with the CM's data).
 * `remote` is the peer's `qp.endpoint()` (or its JSON). Every argument is
 * checked before the QP leaves RESET.
 */
export function connectQp(qp: Qp, local: ConnectLocal, remote: { qpn: number; psn: number; gid: Gid | string; udpPort?: number }): Qp {
  const op = 'connectQp';
  if (!(qp instanceof Qp)) V.fail(op, 'qp', 'must be a Qp');
  if (qp.type !== 'RC' && qp.type !== 'UC') V.fail(op, 'qp', `connectQp is for RC and UC QPs, not ${qp.type}`);
  V.obj(op, 'local', local);
  checkRemoteEndpoint(op, 'remote', remote, true);
  if (local.psn !== undefined) V.psn(op, 'psn', local.psn);
  if (local.accessFlags !== undefined) {
    V.list(op, 'accessFlags', local.accessFlags);
    accessBits(local.accessFlags, 'accessFlags', op, (c, o, m, arg) => new VerbsError(c, o, m, arg));
  }
  if (local.pathMtu !== undefined) V.mtu(op, 'pathMtu', local.pathMtu);
  V.optInt(op, 'timeout', local.timeout, 0, 31);
  V.optInt(op, 'retryCnt', local.retryCnt, 0, 7);
  V.optInt(op, 'rnrRetry', local.rnrRetry, 0, 7);
  V.optInt(op, 'minRnrTimer', local.minRnrTimer, 0, 31);
  V.optInt(op, 'maxRdAtomic', local.maxRdAtomic, 0, qp.device.attr.maxQpInitRdAtom);
  V.optInt(op, 'maxDestRdAtomic', local.maxDestRdAtomic, 0, qp.device.attr.maxQpRdAtom);
  V.optInt(op, 'sgidIndex', local.sgidIndex, 0, qp.device.ports[qp.port - 1]!.gids.length - 1);
  if (qp.state !== 'RESET') V.fail(op, 'qp', `QP ${qp.qpn} is in ${qp.state}, not RESET`);
  qp.toInit({ accessFlags: local.accessFlags ?? ['LOCAL_WRITE', 'REMOTE_WRITE', 'REMOTE_READ', 'REMOTE_ATOMIC'] });
  const rtr: Parameters<Qp['toRtr']>[0] = { remote, pathMtu: local.pathMtu ?? 1024, rqPsn: remote.psn };
  if (local.maxDestRdAtomic !== undefined) rtr.maxDestRdAtomic = local.maxDestRdAtomic;
  if (local.minRnrTimer !== undefined) rtr.minRnrTimer = local.minRnrTimer;
  if (local.sgidIndex !== undefined) rtr.sgidIndex = local.sgidIndex;
  qp.toRtr(rtr);
  const rts: Parameters<Qp['toRts']>[0] = { sqPsn: local.psn ?? qp.sqPsn };
  if (local.timeout !== undefined) rts.timeout = local.timeout;
  if (local.retryCnt !== undefined) rts.retryCnt = local.retryCnt;
  if (local.rnrRetry !== undefined) rts.rnrRetry = local.rnrRetry;
  if (local.maxRdAtomic !== undefined) rts.maxRdAtomic = local.maxRdAtomic;
  qp.toRts(rts);
  return qp;
}
