/**
 * Queue pair (IBA 10.2.4, 11.2.5). The public face follows ibv_create_qp /
 * ibv_modify_qp / ibv_post_send / ibv_post_recv. The transport state each IBA
 * role keeps (requester `req`, completer `comp`, responder `resp`) is typed in
 * src/roce/transport/state.ts; src/roce/transport/* runs the three state machines
 * over a Qp through the TransportQp interface it implements.
 */
import { randomInt } from 'node:crypto';
import { VerbsError } from './errors.js';
import type { QpState, QpType } from './qp-state.js';
import { accessBits, type RecvWr, type SendWr } from './types.js';
import type { Pd, Srq } from './objects.js';
import type { Cq } from './cq.js';
import type { Device } from './device.js';
import type { Mr } from './mr.js';
import type { Mtu } from '../roce/opcode.js';
import { PSN_MASK } from '../roce/psn.js';
import { flowLabelToSourcePort, flowSourcePort, qpSourcePort } from '../roce/flow.js';
import type { Dest } from '../roce/transport/types.js';
import { ReqInfo, CompInfo, RespInfo } from '../roce/transport/state.js';
import type { PortLike, TransportQp } from '../roce/transport/types.js';
import { SendWqe, RecvWqe } from '../roce/transport/wqe.js';
import { TraceRing, type TraceEntry } from '../roce/transport/trace.js';
import { flushQp } from '../roce/transport/flush.js';
import { stopAckTimer } from '../roce/transport/retry.js';
import { flushAck } from '../roce/transport/responder.js';
import { disarmPlacement } from '../roce/transport/place.js';
import type { CreateQpOptions, MrEndpoint, QpAttrs, QpCap, QpEndpoint } from './qp-attrs.js';
import { checkModify, destOf, initAttrs, qpAv, rtrAttrs, rtsAttrs, type InitOptions, type QpAv, type RtrOptions, type RtsOptions } from './qp-modify.js';
import { qpEndpoint, queryQp, type QpInfo } from './qp-query.js';
import { postRecvList, postSendList } from './qp-post.js';
import { openRoceV1 } from './port.js';
import { mcastGid } from './mcast.js';

// The attribute types moved to qp-attrs.ts; importable from here as before.
export type { Av, CreateQpOptions, MrEndpoint, QpAttrs, QpCap, QpEndpoint } from './qp-attrs.js';
export type { InitOptions, QpAv, RtrOptions, RtsOptions } from './qp-modify.js';
export type { QpInfo } from './qp-query.js';

export class Qp implements TransportQp {
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
  #av: QpAv | null = null;
  /** where RC/UC packets go: derived from the AV once, at modify() */
  #dest: Dest = { ip: '', ipNum: 0, family: 4, port: 4791, bytes: new Uint8Array(16), tos: 0, sgidIndex: 0, sgidGen: 0 };
  /** the UDP source port of this QP's packets: rxe's hash of the QPN at creation; once the AV is set, its flow label or the one derived from both QPNs (flow.ts) */
  #srcPort: number;
  /** the flow entropy given at RESET -> INIT (QpAttrs.flowEntropy), null when none */
  #flowEntropy: number | null = null;
  /**
   * @internal the port this QP's packets leave by when a bonded device (src/lag) put it on one of its
   * member links; null: its port (TransportQp.txPort)
   */
  txPort: PortLike | null = null;

  get state(): QpState {
    return this.#state;
  }
  get closed(): boolean {
    return this.#closed;
  }
  /** COMM_EST raised (first packet received in RTR) */
  get commEst(): boolean {
    return this.#commEst;
  }
  /** @internal the responder marks COMM_EST */
  set commEst(v: boolean) {
    this.#commEst = v;
  }
  get port(): number {
    return this.#port;
  }
  get pkeyIndex(): number {
    return this.#pkeyIndex;
  }
  get qkey(): number {
    return this.#qkey;
  }
  /** ACCESS bits */
  get accessFlags(): number {
    return this.#accessFlags;
  }
  get pathMtu(): Mtu {
    return this.#pathMtu;
  }
  get destQpn(): number {
    return this.#destQpn;
  }
  get rqPsn(): number {
    return this.#rqPsn;
  }
  /** the initial send PSN (random until toRts/modify sets one) */
  get sqPsn(): number {
    return this.#sqPsn;
  }
  get maxDestRdAtomic(): number {
    return this.#maxDestRdAtomic;
  }
  get minRnrTimer(): number {
    return this.#minRnrTimer;
  }
  get timeout(): number {
    return this.#timeout;
  }
  get retryCnt(): number {
    return this.#retryCnt;
  }
  get rnrRetry(): number {
    return this.#rnrRetry;
  }
  get maxRdAtomic(): number {
    return this.#maxRdAtomic;
  }
  get sqDrainNotify(): boolean {
    return this.#sqDrainNotify;
  }
  get av(): Readonly<QpAv> | null {
    return this.#av;
  }
  /** @internal where RC/UC packets go */
  get dest(): Dest {
    return this.#dest;
  }
  /** The UDP source port of everything this QP sends (src/roce/flow.ts); a flow label in the AV sets it (rxe_modify_qp). */
  get srcPort(): number {
    return this.#srcPort;
  }
  /** The flow entropy given at RESET -> INIT (qp.toInit({ flowEntropy })), or null. */
  get flowEntropy(): number | null {
    return this.#flowEntropy;
  }

  // send queue: absolute counters, index = n % cap
  readonly sq: SendWqe[];
  sqHead = 0; // oldest not yet completed
  sqTail = 0; // next free
  // receive queue
  readonly rq: RecvWqe[];
  rqHead = 0;
  rqCount = 0;

  /** requester (rxe req), completer (rxe comp) and responder (rxe resp) state: src/roce/transport/state.ts */
  readonly req = new ReqInfo();
  readonly comp = new CompInfo();
  readonly resp = new RespInfo();
  /** the three roles' last decisions (src/roce/transport/trace.ts), for qp.trace() and stuck dumps */
  readonly traceRing = new TraceRing();

  constructor(device: Device, pd: Pd, qpn: number, type: QpType, o: CreateQpOptions | null, cap: Required<QpCap>, sendCq: Cq, recvCq: Cq) {
    this.device = device;
    this.pd = pd;
    this.qpn = qpn;
    this.#srcPort = qpSourcePort(qpn);
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
    const to = checkModify(this, attrs);
    if (to !== null && attrs.av !== undefined) {
      const port = attrs.port ?? this.#port;
      openRoceV1('ibv_modify_qp', 'av.sgidIndex', attrs.av.sgidIndex ?? this.device.defaultSgidIndex(port), this.device.ports[port - 1]!);
    }
    // RX direct placement: any modify disarms (synchronously: nothing lands after this returns);
    // the responder re-arms from the state the modify leaves, on the next WRITE packet it handles.
    if (to !== null) disarmPlacement(this);
    if (to !== null) this.apply(attrs, to);
  }

  /** @internal device.openGsi: QP1 belongs to its port from creation (no port attribute at INIT for GSI) */
  bindGsiPort(port: number): void {
    if (this.type === 'GSI' && this.#state === 'RESET') this.#port = port;
  }

  private apply(a: QpAttrs, to: QpState): void {
    const from = this.#state;
    // A move to ERR or RESET first sends the ACK the responder is coalescing for requests it has already
    // executed and completed: rxe acknowledges in the same pass as the receive (rxe_resp.c), so its peer
    // has the ACK before any later modify; ours would be dropped by flushAck in ERR and the peer retry.
    if ((to === 'ERR' || to === 'RESET') && this.resp.ackPending) flushAck(this);
    if (a.port !== undefined) this.#port = a.port;
    // UD and GSI messages are bounded by the port's MTU, not a path MTU (rxe's get_mtu()).
    if ((this.type === 'UD' || this.type === 'GSI') && to === 'INIT') this.#pathMtu = this.device.queryPort(this.#port).activeMtu;
    if (a.pkeyIndex !== undefined) this.#pkeyIndex = a.pkeyIndex;
    if (a.qkey !== undefined) this.#qkey = a.qkey >>> 0;
    if (a.accessFlags !== undefined)
      this.#accessFlags = accessBits(a.accessFlags, 'accessFlags', 'ibv_modify_qp', (c, o, m, arg) => new VerbsError(c, o, m, arg));
    if (a.pathMtu !== undefined) this.#pathMtu = a.pathMtu;
    if (a.destQpn !== undefined) this.#destQpn = a.destQpn;
    if (a.maxDestRdAtomic !== undefined) this.#maxDestRdAtomic = a.maxDestRdAtomic;
    if (a.minRnrTimer !== undefined) this.#minRnrTimer = a.minRnrTimer;
    if (a.timeout !== undefined) this.#timeout = a.timeout;
    if (a.retryCnt !== undefined) {
      this.#retryCnt = a.retryCnt;
      this.comp.retryCnt = a.retryCnt;
    }
    if (a.rnrRetry !== undefined) {
      this.#rnrRetry = a.rnrRetry;
      this.comp.rnrRetry = a.rnrRetry;
    }
    if (a.maxRdAtomic !== undefined) this.#maxRdAtomic = a.maxRdAtomic;
    if (a.enSqdAsyncNotify !== undefined) this.#sqDrainNotify = a.enSqdAsyncNotify;
    if (to === 'INIT' && from === 'RESET') this.#flowEntropy = null;
    if (a.flowEntropy !== undefined) {
      // The UDP source port carries the flow's entropy (IBA A17.4.3: the source port is the flow's
      // entropy for ECMP), folded to a flow label as rdma_flow_label_to_udp_sport folds one.
      this.#flowEntropy = a.flowEntropy >>> 0;
      this.#srcPort = flowLabelToSourcePort(this.#flowEntropy & 0xfffff);
    }
    if (a.av !== undefined) {
      this.#av = qpAv(a.av, this.device.defaultSgidIndex(this.#port));
      this.#dest = destOf(this.#av, this.device.ports[this.#port - 1]!);
      // An AV without a flow label keeps the entropy's port; without either, both QPNs' label (rxe).
      const fl = this.#av.flowLabel !== 0 ? this.#av.flowLabel : (this.#flowEntropy ?? 0) & 0xfffff;
      this.#srcPort = flowSourcePort(this.qpn, fl, this.#destQpn);
    }
    if (a.rqPsn !== undefined) {
      this.#rqPsn = a.rqPsn;
      this.resp.psn = a.rqPsn;
    }
    if (a.sqPsn !== undefined) {
      this.#sqPsn = a.sqPsn;
      this.req.psn = a.sqPsn;
      this.req.maxPsn = a.sqPsn;
      this.comp.psn = a.sqPsn;
    }
    if (a.state !== undefined) this.setState(to);
    // A bonded device gives the QP its LAG port here (mlx5 sets the TX affinity at RESET -> INIT).
    if (from === 'RESET' && to === 'INIT') this.device.qpInit(this);
  }

  /** @internal State changes with their side effects (IBA 10.3.1); the transport moves QPs to ERR/SQD with it. */
  setState(to: QpState): void {
    disarmPlacement(this); // RX direct placement: no byte lands in a QP whose state changed
    const from = this.#state;
    this.#state = to;
    if (to === 'RESET') this.resetQueues();
    if (to === 'INIT' && from === 'RESET') {
      // MSN starts at 0 on RESET → INIT (IBA 9.7.5.1.2).
      this.resp.init(this.device.attr.maxQpRdAtom);
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
    this.req.reset();
    this.comp.reset();
    this.resp.reset();
    this.#commEst = false;
  }

  toInit(o: InitOptions = {}): this {
    this.modify(initAttrs(this, o));
    return this;
  }
  /**
   * RESET/INIT → RTR. For RC/UC `remote` is the peer's endpoint (`qp.endpoint()` on the other side, or
   * its JSON); the receive PSN is `rqPsn`, else `remote.psn`: there is no default, since a wrong
   * expected PSN silently drops the peer's first messages (and a fixed one can be guessed).
   */
  toRtr(o: RtrOptions = {}): this {
    this.modify(rtrAttrs(this, o));
    return this;
  }
  /** RTR → RTS. `sqPsn` defaults to this QP's random initial PSN, the one endpoint() gave the peer. */
  toRts(o: RtsOptions = {}): this {
    this.modify(rtsAttrs(this, o));
    return this;
  }

  /**
   * What the peer needs for an out-of-band exchange (the pingpong LID:QPN:PSN:GID message), as a
   * JSON-serialisable object: the GID as text, and with `{ mr }` the region's address (a 0x-hex
   * string: `BigInt(ep.addr)`, or `remoteOf(ep)`) and R_Key, for RDMA to it. The PSN is the QP's
   * random initial send PSN; connectQp/toRts use it unless told otherwise.
   */
  endpoint(): QpEndpoint;
  endpoint(o: { mr: Mr; sgidIndex?: number; port?: number }): QpEndpoint & MrEndpoint;
  endpoint(o: { mr?: Mr; sgidIndex?: number; port?: number }): QpEndpoint & Partial<MrEndpoint>;
  endpoint(o: { mr?: Mr; sgidIndex?: number; port?: number } = {}): QpEndpoint & Partial<MrEndpoint> {
    return qpEndpoint(this, o);
  }

  /**
   * The last decisions of this QP's requester, completer and responder, oldest first (at most 64;
   * identical consecutive ones folded into one entry with a count). For debugging a stuck or
   * retrying QP; the CLIs print it when a timeout kills them.
   */
  trace(): TraceEntry[] {
    return this.traceRing.entries();
  }

  query(): QpInfo {
    this.live('ibv_query_qp');
    return queryQp(this);
  }

  /**
   * ibv_post_send. Throws for what C returns at once (ENOMEM full, EINVAL bad WR); the rest completes.
   * A list is all-or-nothing: every WR is checked completely before any is queued.
   */
  postSend(wr: SendWr | readonly SendWr[]): void {
    this.live('ibv_post_send');
    postSendList(this, wr);
  }

  /** ibv_post_recv. A list is all-or-nothing; every SGE must be writable memory of this QP's PD. */
  postRecv(wr: RecvWr | readonly RecvWr[]): void {
    this.live('ibv_post_recv');
    postRecvList(this, wr);
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
    if (this.srq) {
      this.srq.giveBack(e);
      return;
    }
    this.rqHead = (this.rqHead - 1 + this.cap.maxRecvWr) % this.cap.maxRecvWr;
    this.rqCount++;
    if (this.rq[this.rqHead] !== e) this.rq[this.rqHead] = e;
  }

  /** Send WQEs not completed yet. */
  get outstanding(): number {
    return this.sqTail - this.sqHead;
  }

  /**
   * ibv_attach_mcast: this UD QP receives what is sent to the multicast group `gid` (an MGID: ff00::/8,
   * or ::ffff:224.0.0.0/4 for an IPv4 group, as rdma_cm makes it) on its port, to QPN 0xFFFFFF, Q_Key
   * checked as for any UD receive. The port's link joins the IP group when it is the group's first QP
   * there (mcastJoined says when the membership is in place). `lid` is ignored on RoCE (no LIDs).
   * Attaching again is a no-op (rxe). EINVAL: not a UD QP ('qp'), not a multicast GID ('gid'); limits
   * as rxe's: ENOMEM past max_mcast_grp groups, EINVAL past max_mcast_qp_attach QPs in a group or
   * max_total_mcast_qp_attach in the device (mcast.ts).
   */
  attachMcast(gid: string | Uint8Array, lid = 0): void {
    const g = this.mcastArgs('ibv_attach_mcast', gid, lid);
    this.device.mcast.attach('ibv_attach_mcast', this, g);
  }
  /** ibv_detach_mcast: EINVAL ('gid') when the QP is not attached to the group; the group's last QP on the port leaves the IP group. */
  detachMcast(gid: string | Uint8Array, lid = 0): void {
    const g = this.mcastArgs('ibv_detach_mcast', gid, lid);
    this.device.mcast.detach('ibv_detach_mcast', this, g);
  }
  /**
   * Resolves once the port's link receives the group's datagrams (a UDP link's socket is bound and has
   * joined: a few event-loop turns after attachMcast); rejects with the link's error (VerbsError).
   */
  async mcastJoined(gid: string | Uint8Array): Promise<void> {
    await this.device.mcast.joined('ibv_attach_mcast', this, this.mcastArgs('ibv_attach_mcast', gid, 0));
  }
  /** ib_attach_mcast's checks: a live UD QP, a multicast GID, a 16-bit LID. */
  private mcastArgs(op: string, gid: string | Uint8Array, lid: number): Uint8Array {
    this.live(op);
    if (this.type !== 'UD') throw new VerbsError('EINVAL', op, `QP ${this.qpn} is ${this.type}: only UD QPs join multicast groups`, 'qp');
    if (!Number.isInteger(lid) || lid < 0 || lid > 0xffff) throw new VerbsError('EINVAL', op, `lid ${lid} is not a 16-bit LID`, 'lid');
    return mcastGid(op, gid);
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
    disarmPlacement(this);
    this.device.destroyQp(this);
  }
  [Symbol.dispose](): void {
    this.close();
  }
}
