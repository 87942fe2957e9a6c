/**
 * Queue pair (IBA 10.2.4, 11.2.5). The public face follows ibv_create_qp /
 * ibv_modify_qp / ibv_post_send / ibv_post_recv; the transport state each IBA
 * role keeps lives here too (requester `req`, completer `comp`, responder
 * `resp`), and src/roce/transport/* runs the three state machines over it.
 */
import { VerbsError, InvalidQpAttrError } from './errors.js';
import { assertQpTransition, type QpState, type QpType } from './qp-state.js';
import { ACCESS, WrOp, accessBits, type Access, type RecvWr, type SendWr, type Sge, type WcOpcode } from './types.js';
import { checkSgl, RecvWqe, type Ah, type Pd, type Srq } from './objects.js';
import type { Cq } from './cq.js';
import type { Device } from './device.js';
import type { Mr } from './mr.js';
import { gidFromString, gidToIpv4Number, type Gid } from '../roce/gid.js';
import { gidToAddress } from './objects.js';
import { isMtu, type Mtu } from '../roce/opcode.js';
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
}

/** A saved responder resource for READ and ATOMIC (IBA 9.7.5.1.6: duplicates are answered from it). */
export class RdResource {
  psn = -1;
  lastPsn = -1;
  atomic = false;
  orig = 0n;
  msn = 0;
}

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
  state: QpState = 'RESET';
  closed = false;
  /** COMM_EST raised (first packet received in RTR) */
  commEst = false;

  // attributes (ibv_qp_attr), with the values rxe starts from
  port = 1;
  pkeyIndex = 0;
  qkey = 0;
  accessFlags = 0;
  pathMtu: Mtu = 1024;
  destQpn = 0;
  rqPsn = 0;
  sqPsn = 0;
  maxDestRdAtomic = 0;
  minRnrTimer = 0;
  timeout = 0;
  retryCnt = 0;
  rnrRetry = 0;
  maxRdAtomic = 0;
  sqDrainNotify = false;
  av: Required<Omit<Av, 'dgid'>> & { dgid: Gid } | null = null;
  /** where RC/UC packets go: derived from the AV once, at modify() */
  dest: Dest = { ip: '', ipNum: 0, family: 4, port: 4791, bytes: new Uint8Array(16), tos: 0 };

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
    deadline: Infinity, onTimer: null as (() => void) | null };
  /** responder (rxe resp): expected PSN, MSN, message in progress, saved READ/ATOMIC resources */
  readonly resp = {
    psn: 0, msn: 0, lastOp: -1, wqe: null as RecvWqe | null, offset: 0, nakPsn: -1, oosMax: 0, oosCount: 0, dropMsg: false,
    mr: null as Mr | null, mrOff: 0, resid: 0, writeLen: 0,
    res: [] as RdResource[], resNext: 0,
    /** READ responses still to send: [psn, mr, off, len] per pending READ */
    reads: [] as Array<{ psn: number; mr: Mr | null; off: number; len: number; sentPsn: number }>,
    /** requests that arrived while READ responses were being sent (kept in order) */
    backlog: [] as Array<{ buf: Buffer; len: number; srcIp: string; srcPort: number; ipId: number; srcBytes: Uint8Array }>,
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

  /** Value checks (rxe_qp_chk_attr): all before any change. */
  private checkValues(a: QpAttrs): void {
    const bad = (arg: string, msg: string): never => { throw new VerbsError('EINVAL', 'ibv_modify_qp', msg, arg); };
    const dev = this.device;
    if (a.port !== undefined && (a.port < 1 || a.port > dev.ports.length)) bad('port', `port ${a.port} not in 1..${dev.ports.length}`);
    if (a.pkeyIndex !== undefined && a.pkeyIndex !== 0) bad('pkeyIndex', `pkeyIndex ${a.pkeyIndex} not in the P_Key table (1 entry)`);
    if (a.qkey !== undefined && (!Number.isInteger(a.qkey) || a.qkey < 0 || a.qkey > 0xffffffff)) bad('qkey', 'qkey must be a 32-bit value');
    if (a.pathMtu !== undefined) {
      if (!isMtu(a.pathMtu)) bad('pathMtu', `pathMtu ${a.pathMtu} is not 256, 512, 1024, 2048 or 4096`);
      const active = dev.ports[(a.port ?? this.port) - 1]!.activeMtu;
      if (a.pathMtu > active) bad('pathMtu', `pathMtu ${a.pathMtu} > port active_mtu ${active}`);
    }
    for (const k of ['rqPsn', 'sqPsn'] as const) if (a[k] !== undefined && (!Number.isInteger(a[k]) || a[k]! < 0 || a[k]! > PSN_MASK)) bad(k, `${k} must be a 24-bit value`);
    if (a.destQpn !== undefined && (!Number.isInteger(a.destQpn) || a.destQpn < 1 || a.destQpn >= 0xffffff)) bad('destQpn', 'destQpn must be a QPN');
    if (a.maxRdAtomic !== undefined && (a.maxRdAtomic < 0 || a.maxRdAtomic > dev.attr.maxQpInitRdAtom)) bad('maxRdAtomic', `maxRdAtomic ${a.maxRdAtomic} > ${dev.attr.maxQpInitRdAtom}`);
    if (a.maxDestRdAtomic !== undefined && (a.maxDestRdAtomic < 0 || a.maxDestRdAtomic > dev.attr.maxQpRdAtom)) bad('maxDestRdAtomic', `maxDestRdAtomic ${a.maxDestRdAtomic} > ${dev.attr.maxQpRdAtom}`);
    if (a.minRnrTimer !== undefined && (a.minRnrTimer < 0 || a.minRnrTimer > 31)) bad('minRnrTimer', 'minRnrTimer is a 5-bit code');
    if (a.timeout !== undefined && (a.timeout < 0 || a.timeout > 31)) bad('timeout', 'timeout is 0..31');
    if (a.retryCnt !== undefined && (a.retryCnt < 0 || a.retryCnt > 7)) bad('retryCnt', 'retryCnt is 0..7');
    if (a.rnrRetry !== undefined && (a.rnrRetry < 0 || a.rnrRetry > 7)) bad('rnrRetry', 'rnrRetry is 0..7');
    if (a.accessFlags !== undefined) accessBits(a.accessFlags, 'accessFlags', 'ibv_modify_qp', (c, o, m, arg) => new VerbsError(c, o, m, arg));
    if (a.av !== undefined) {
      let g: Gid | undefined;
      try { g = typeof a.av.dgid === 'string' ? gidFromString(a.av.dgid) : a.av.dgid; } catch { bad('av', `bad dgid ${String(a.av.dgid)}`); }
      if (!(g instanceof Uint8Array) || g.length !== 16) bad('av', 'dgid must be 16 bytes');
      const si = a.av.sgidIndex ?? 0;
      const port = dev.ports[(a.port ?? this.port) - 1]!;
      if (si < 0 || si >= port.gids.length) bad('av', `sgidIndex ${si} not in the GID table (${port.gids.length})`);
    }
  }

  private apply(a: QpAttrs, to: QpState): void {
    if (a.port !== undefined) this.port = a.port;
    // UD and GSI messages are bounded by the port's MTU, not a path MTU (rxe's get_mtu()).
    if ((this.type === 'UD' || this.type === 'GSI') && to === 'INIT') this.pathMtu = this.device.queryPort(this.port).activeMtu;
    if (a.pkeyIndex !== undefined) this.pkeyIndex = a.pkeyIndex;
    if (a.qkey !== undefined) this.qkey = a.qkey >>> 0;
    if (a.accessFlags !== undefined) this.accessFlags = accessBits(a.accessFlags, 'accessFlags', 'ibv_modify_qp', (c, o, m, arg) => new VerbsError(c, o, m, arg));
    if (a.pathMtu !== undefined) this.pathMtu = a.pathMtu;
    if (a.destQpn !== undefined) this.destQpn = a.destQpn;
    if (a.maxDestRdAtomic !== undefined) this.maxDestRdAtomic = a.maxDestRdAtomic;
    if (a.minRnrTimer !== undefined) this.minRnrTimer = a.minRnrTimer;
    if (a.timeout !== undefined) this.timeout = a.timeout;
    if (a.retryCnt !== undefined) { this.retryCnt = a.retryCnt; this.comp.retryCnt = a.retryCnt; }
    if (a.rnrRetry !== undefined) { this.rnrRetry = a.rnrRetry; this.comp.rnrRetry = a.rnrRetry; }
    if (a.maxRdAtomic !== undefined) this.maxRdAtomic = a.maxRdAtomic;
    if (a.enSqdAsyncNotify !== undefined) this.sqDrainNotify = a.enSqdAsyncNotify;
    if (a.av !== undefined) {
      const g = typeof a.av.dgid === 'string' ? gidFromString(a.av.dgid) : a.av.dgid;
      this.av = {
        dgid: g, sgidIndex: a.av.sgidIndex ?? 0, hopLimit: a.av.hopLimit ?? 64, trafficClass: a.av.trafficClass ?? 0,
        flowLabel: a.av.flowLabel ?? 0, sl: a.av.sl ?? 0, udpPort: a.av.udpPort ?? 4791,
      };
      const addr = gidToAddress(g);
      this.dest = { ip: addr.ip, ipNum: addr.family === 4 ? gidToIpv4Number(g) : 0, family: addr.family, port: this.av.udpPort, bytes: g, tos: this.av.trafficClass & 0xff };
    }
    if (a.rqPsn !== undefined) { this.rqPsn = a.rqPsn; this.resp.psn = a.rqPsn; }
    if (a.sqPsn !== undefined) { this.sqPsn = a.sqPsn; this.req.psn = a.sqPsn; this.req.maxPsn = a.sqPsn; this.comp.psn = a.sqPsn; }
    if (a.state !== undefined) this.setState(to);
  }

  /** State changes with their side effects (IBA 10.3.1). */
  setState(to: QpState): void {
    const from = this.state;
    this.state = to;
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
    Object.assign(this.comp, { psn: 0, retriedAt: -1 });
    Object.assign(this.resp, { psn: 0, msn: 0, lastOp: -1, wqe: null, offset: 0, nakPsn: -1, dropMsg: false, mr: null, mrOff: 0, resid: 0, reads: [], backlog: [] });
    this.commEst = false;
  }

  toInit(o: { port?: number; pkeyIndex?: number; accessFlags?: readonly Access[]; qkey?: number } = {}): this {
    const a: QpAttrs = { state: 'INIT', port: o.port ?? 1, pkeyIndex: o.pkeyIndex ?? 0 };
    if (this.type === 'UD' || this.type === 'GSI') a.qkey = o.qkey ?? 0;
    else a.accessFlags = o.accessFlags ?? [];
    if (this.type === 'GSI') delete a.port;
    this.modify(a);
    return this;
  }
  toRtr(o: { remote?: { qpn: number; gid: Gid | string; udpPort?: number }; pathMtu?: Mtu; rqPsn?: number; maxDestRdAtomic?: number; minRnrTimer?: number; sgidIndex?: number; hopLimit?: number; trafficClass?: number } = {}): this {
    if (this.type === 'UD' || this.type === 'GSI') { this.modify({ state: 'RTR' }); return this; }
    if (!o.remote) throw new InvalidQpAttrError(this.state, 'RTR', ['av', 'destQpn'], []);
    const av: Av = { dgid: o.remote.gid, sgidIndex: o.sgidIndex ?? this.device.defaultSgidIndex(), hopLimit: o.hopLimit ?? 64, trafficClass: o.trafficClass ?? 0 };
    if (o.remote.udpPort !== undefined) av.udpPort = o.remote.udpPort;
    const a: QpAttrs = { state: 'RTR', av, pathMtu: o.pathMtu ?? 1024, destQpn: o.remote.qpn, rqPsn: o.rqPsn ?? 0 };
    if (this.type === 'RC') { a.maxDestRdAtomic = o.maxDestRdAtomic ?? 1; a.minRnrTimer = o.minRnrTimer ?? 12; }
    this.modify(a);
    return this;
  }
  toRts(o: { sqPsn?: number; timeout?: number; retryCnt?: number; rnrRetry?: number; maxRdAtomic?: number } = {}): this {
    const a: QpAttrs = { state: 'RTS', sqPsn: o.sqPsn ?? 0 };
    if (this.type === 'RC') { a.timeout = o.timeout ?? 14; a.retryCnt = o.retryCnt ?? 7; a.rnrRetry = o.rnrRetry ?? 7; a.maxRdAtomic = o.maxRdAtomic ?? 1; }
    this.modify(a);
    return this;
  }

  /** What the peer needs for an out-of-band exchange (the pingpong LID:QPN:PSN:GID message). */
  endpoint(sgidIndex = this.device.defaultSgidIndex()): { qpn: number; psn: number; gid: Gid } {
    return { qpn: this.qpn, psn: this.sqPsn, gid: this.device.ports[this.port - 1]!.gids[sgidIndex]!.gid };
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

  /** ibv_post_send. Throws for what C returns at once (ENOMEM full, EINVAL bad WR); the rest completes. */
  postSend(wr: SendWr | readonly SendWr[]): void {
    this.live('ibv_post_send');
    const list = Array.isArray(wr) ? wr : [wr as SendWr];
    const op = 'ibv_post_send';
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
    const code = WrOp[w.opcode as keyof typeof WrOp];
    if (code === undefined) throw new VerbsError('EINVAL', op, `unknown opcode ${String(w.opcode)}`, 'opcode');
    const t = this.type;
    if ((t === 'UD' || t === 'GSI') && code !== WrOp.SEND && code !== WrOp.SEND_WITH_IMM) throw new VerbsError('EINVAL', op, `${w.opcode} is not allowed on a UD QP`, 'opcode');
    if (t === 'UC' && (code === WrOp.RDMA_READ || code >= WrOp.ATOMIC_CMP_AND_SWP || code === WrOp.SEND_WITH_INV)) throw new VerbsError('EINVAL', op, `${w.opcode} is not allowed on a UC QP`, 'opcode');
    const len = checkSgl(w.sg, this.cap.maxSendSge, op);
    if (w.inline && len > this.cap.maxInline) throw new VerbsError('EINVAL', op, `inline data ${len} > maxInline ${this.cap.maxInline}`, 'inline');
    if (w.inline && (code === WrOp.RDMA_READ || code >= WrOp.ATOMIC_CMP_AND_SWP)) throw new VerbsError('EINVAL', op, 'inline is for sends and writes', 'inline');
    if (len > this.device.attr.maxMsgSize) throw new VerbsError('EINVAL', op, `message of ${len} bytes > ${this.device.attr.maxMsgSize}`, 'sg');
    if (t === 'UD' || t === 'GSI') {
      if (!w.ud) throw new VerbsError('EINVAL', op, 'a UD send needs ud: { ah, remoteQpn, remoteQkey }', 'ud');
      if (w.ud.ah.closed || w.ud.ah.pd !== this.pd) throw new VerbsError('EINVAL', op, 'AH is closed or of another PD', 'ud');
      if (len > this.pathMtu) throw new VerbsError('EINVAL', op, `UD message of ${len} bytes > path MTU ${this.pathMtu}`, 'sg');
    }
    if (code >= WrOp.ATOMIC_CMP_AND_SWP && len !== 8) throw new VerbsError('EINVAL', op, 'an atomic needs one 8-byte local buffer', 'sg');
    if ('remote' in w && (typeof w.remote.addr !== 'bigint' || !Number.isInteger(w.remote.rkey))) throw new VerbsError('EINVAL', op, 'remote needs { addr: bigint, rkey }', 'remote');
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

  /** ibv_post_recv. */
  postRecv(wr: RecvWr | readonly RecvWr[]): void {
    this.live('ibv_post_recv');
    const op = 'ibv_post_recv';
    if (this.srq) throw new VerbsError('EINVAL', op, 'this QP uses an SRQ: post to the SRQ', 'qp');
    if (this.state === 'RESET') throw new VerbsError('EINVAL', op, 'QP is in RESET', 'qp');
    const list = Array.isArray(wr) ? wr : [wr as RecvWr];
    if (this.rqCount + list.length > this.cap.maxRecvWr) throw new VerbsError('ENOMEM', op, 'receive queue is full', 'wr');
    for (const w of list) checkSgl(w.sg, this.cap.maxRecvSge, op);
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
    this.closed = true;
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

/**
 * One-call bring-up of an RC/UC QP from RESET to RTS against a peer's
 * endpoint (rust-ibverbs `handshake`, what rdma_cm does with the CM's data).
 */
export function connectQp(
  qp: Qp,
  local: { psn?: number; accessFlags?: readonly Access[]; pathMtu?: Mtu; timeout?: number; retryCnt?: number; rnrRetry?: number; minRnrTimer?: number; maxRdAtomic?: number; maxDestRdAtomic?: number; sgidIndex?: number },
  remote: { qpn: number; psn: number; gid: Gid | string; udpPort?: number },
): Qp {
  qp.toInit({ accessFlags: local.accessFlags ?? ['LOCAL_WRITE', 'REMOTE_WRITE', 'REMOTE_READ', 'REMOTE_ATOMIC'] });
  const rtr: Parameters<Qp['toRtr']>[0] = { remote, pathMtu: local.pathMtu ?? 1024, rqPsn: remote.psn };
  if (local.maxDestRdAtomic !== undefined) rtr.maxDestRdAtomic = local.maxDestRdAtomic;
  if (local.minRnrTimer !== undefined) rtr.minRnrTimer = local.minRnrTimer;
  if (local.sgidIndex !== undefined) rtr.sgidIndex = local.sgidIndex;
  qp.toRtr(rtr);
  const rts: Parameters<Qp['toRts']>[0] = { sqPsn: local.psn ?? 0 };
  if (local.timeout !== undefined) rts.timeout = local.timeout;
  if (local.retryCnt !== undefined) rts.retryCnt = local.retryCnt;
  if (local.rnrRetry !== undefined) rts.rnrRetry = local.rnrRetry;
  if (local.maxRdAtomic !== undefined) rts.maxRdAtomic = local.maxRdAtomic;
  qp.toRts(rts);
  return qp;
}
