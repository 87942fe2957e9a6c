/**
 * The IB CM protocol engine for RoCE (the kernel's drivers/infiniband/core/cm.c): one CmAgent per (device,
 * port) owning that port's QP1, CM ids with the states of ib-cm-states.ts, MAD retransmission on the
 * device's scheduler, MRA, REJ, TimeWait, DREQ/DREP and SIDR. rdma_cm (cm-id.ts) drives it; this layer knows
 * nothing of IP addresses, port spaces or the cma_hdr.
 *
 * Facts it follows (roce-wire.md g, cm-and-lag.md 1, and the lab captures where they differ):
 * - TIDs: kernelCmTid(agent hi_tid, our local comm ID), the low word byte-swapped as an x86 kernel sends it.
 *   REP, RTU, REJ and MRA reuse the REQ's TID (`tid` of the id); a DREQ forms a TID from the sender's own
 *   comm ID (so the active side's DREQ repeats its REQ's TID, as ib_write_bw_rdma_cm.pcap shows); a DREP
 *   reuses the DREQ's.
 * - Timers (cm-defs.ts, cm.c): a REQ is resent every 2·conv(packet life) + conv(remote CM response timeout)
 *   ms (6144 at packet life 18), maxCmRetries times after the first send; the passive side times its REP
 *   and DREQ with conv(the REQ's local CM response timeout) and the REQ's max CM retries (cm_req_handler);
 *   an MRA moves the pending timer to conv(service timeout) + conv(AV timeout) from now, for this and later
 *   retries (ib_modify_mad); TimeWait lasts conv(AV timeout): packet life + 1 on the active side (then
 *   cm_ack_timeout(REP target ACK delay, that − 1), cm_rep_handler), the REQ's Local ACK Timeout on the
 *   passive side (its packet life is that − 1, cm_format_path_from_req).
 * - Passive side: responder resources and initiator depth are swapped for the receiving side in the
 *   events' `param` (cm_format_req_event / cm_format_rep_event); `req` / `rep` are the message as received.
 * - Received MADs that are malformed, of another class or version, not method Send, ClassPortInfo (a Get is
 *   dropped, not answered), LAP and APR, or for no id, are dropped and counted by reason in `counters`;
 *   nothing received ever throws.
 *
 * Events are delivered to the id's handler synchronously from the receive turn or the timer; a handler
 * that throws does not break the engine (re-thrown on the next tick, as verbs' emitGuarded does).
 */
import { VerbsError } from '../verbs/errors.js';
import type { Device } from '../verbs/device.js';
import type { TimerHandle } from '../roce/sched.js';
import {
  CmMadError,
  CM_ARI_SIZE,
  CM_PRIVATE_DATA_SIZE,
  MadMethod,
  cmMadHeader,
  emitCmMad,
  kernelCmTid,
  makeCmMsg,
  parseCmMad,
  type CmMsg,
  type CmMsgOf,
  type CmMsgType,
  type CmRep,
  type CmReq,
  type CmSidrReq,
} from './mad.js';
import {
  CMA_CM_RESPONSE_TIMEOUT,
  CMA_MAX_CM_RETRIES,
  CmMsgResponded,
  CmRejReason,
  CmTransport,
  SIDR_REQ_TIMEOUT_MS,
  SidrStatus,
  cmAckTimeout,
  ibMtuFromBytes,
  kernelCmTimeoutMs,
  kernelMadRetryTimeoutMs,
  kernelMraTimeoutMs,
  rocePathLid,
  roceSubnetLocal,
} from './cm-defs.js';
import { recvTransition, sendTransition, type IbCmSendOp, type IbCmState } from './ib-cm-states.js';
import { CmQp1, type MadAv, type MadSource } from './ib-cm-qp1.js';

export type { IbCmState } from './ib-cm-states.js';
export type { CmReq, CmRep, CmSidrReq } from './mad.js';

/** One direction's path, as rdma_cm builds it on RoCE (roce-wire.md h.4). */
export interface CmPath {
  port: number;
  sgidIndex: number;
  sgid: Uint8Array;
  dgid: Uint8Array;
  trafficClass: number;
  hopLimit: number;
  flowLabel: number;
  sl: number;
  mtu: 1 | 2 | 3 | 4 | 5;
  packetLifeTime: number;
  pkey: number;
}

export interface CmReqParams {
  serviceId: bigint;
  path: CmPath;
  qpn: number;
  qpType: 'RC' | 'UC';
  startingPsn: number;
  responderResources: number;
  initiatorDepth: number;
  retryCount: number;
  rnrRetryCount: number;
  srq: boolean;
  privateData?: Uint8Array;
  /** 20, 20, 15 (rdma_cm's CMA_CM_RESPONSE_TIMEOUT and CMA_MAX_CM_RETRIES) */
  localCmResponseTimeout?: number;
  remoteCmResponseTimeout?: number;
  maxCmRetries?: number;
}

export interface CmRepParams {
  qpn: number;
  startingPsn: number;
  responderResources: number;
  initiatorDepth: number;
  rnrRetryCount: number;
  srq: boolean;
  failoverAccepted?: number;
  privateData?: Uint8Array;
}

/** The receiving side's view of a REQ or REP (ib_cm_req_event_param / ib_cm_rep_event_param): responder
 *  resources and initiator depth swapped, so they can go straight into the local QP's attributes. */
export interface CmConnParam {
  remoteQpn: number;
  startingPsn: number;
  responderResources: number;
  initiatorDepth: number;
  retryCount: number;
  rnrRetryCount: number;
  srq: boolean;
}

export type IbCmEvent =
  | { type: 'REQ_RECEIVED'; id: IbCmId; listenId: IbCmId; req: CmReq; path: CmPath; privateData: Uint8Array; param: CmConnParam }
  | { type: 'REP_RECEIVED'; rep: CmRep; privateData: Uint8Array; param: CmConnParam }
  | { type: 'RTU_RECEIVED'; privateData: Uint8Array }
  /** ib_cm_notify(COMM_EST) established a connection whose RTU had not come (id.establish()) */
  | { type: 'USER_ESTABLISHED' }
  | { type: 'REJ_RECEIVED'; reason: number; ari: Uint8Array; privateData: Uint8Array }
  | { type: 'MRA_RECEIVED'; serviceTimeout: number }
  | { type: 'DREQ_RECEIVED'; privateData: Uint8Array }
  | { type: 'DREP_RECEIVED'; privateData: Uint8Array }
  | { type: 'TIMEWAIT_EXIT' }
  | { type: 'REQ_ERROR' | 'REP_ERROR' | 'DREQ_ERROR' | 'SIDR_REQ_ERROR'; status: number }
  | { type: 'SIDR_REQ_RECEIVED'; id: IbCmId; listenId: IbCmId; sidrReq: CmSidrReq; path: CmPath; privateData: Uint8Array }
  | { type: 'SIDR_REP_RECEIVED'; status: number; qpn: number; qkey: number; privateData: Uint8Array };

/** An id's event handler; the id is passed too (as ib_cm's handler gets its cm_id), since an id made for a
 *  received REQ starts with its listener's handler. */
export type IbCmHandler = (ev: IbCmEvent, id: IbCmId) => void;

/** -ETIMEDOUT, the status of the *_ERROR events when retries run out (IB_WC_RESP_TIMEOUT_ERR in cm.c). */
export const CM_ETIMEDOUT = -110;
/** The MRA service timeout rdma_cm uses (cma.c CMA_CM_MRA_SETTING): 24, about 68.7 s. */
export const CMA_CM_MRA_SERVICE_TIMEOUT = 24;

const ERROR_EVENT = { REQ: 'REQ_ERROR', REP: 'REP_ERROR', DREQ: 'DREQ_ERROR', SIDR_REQ: 'SIDR_REQ_ERROR' } as const;
const SEND_OP_NAME: Record<IbCmSendOp, string> = {
  listen: 'ib_cm_listen',
  req: 'ib_send_cm_req',
  rep: 'ib_send_cm_rep',
  rtu: 'ib_send_cm_rtu',
  rej: 'ib_send_cm_rej',
  mra: 'ib_send_cm_mra',
  dreq: 'ib_send_cm_dreq',
  drep: 'ib_send_cm_drep',
  sidr_req: 'ib_send_cm_sidr_req',
  sidr_rep: 'ib_send_cm_sidr_rep',
  establish: 'ib_cm_notify',
};

/** Each agent registers its own MAD agent in the kernel, with the next hi_tid (ib_mad.c ib_mad_client_id). */
let nextHiTid = 1;
const EMPTY = new Uint8Array(0);

function copy(b: Uint8Array): Uint8Array {
  return Uint8Array.from(b);
}
/** A parsed message with its byte fields copied out of the receive buffer (the buffer is re-posted). */
function detach<T extends CmMsg>(m: T): T {
  const o: Record<string, unknown> = { ...m, hdr: { ...m.hdr } };
  for (const [k, v] of Object.entries(o)) if (v instanceof Uint8Array) o[k] = copy(v);
  return o as T;
}
function remoteKey(commId: number, guid: bigint): string {
  return `${commId >>> 0}:${guid}`;
}
function avFromPath(p: CmPath): MadAv {
  return { dgid: copy(p.dgid), sgidIndex: p.sgidIndex, trafficClass: p.trafficClass, hopLimit: p.hopLimit, flowLabel: p.flowLabel, sl: p.sl };
}

/** What is being retried for an id (cm_id_priv->msg): the MAD, where it goes, how often and how many more. */
interface Pending {
  kind: 'REQ' | 'REP' | 'DREQ' | 'SIDR_REQ';
  mad: Buffer;
  av: MadAv;
  left: number;
  timeoutMs: number;
  timer: TimerHandle | null;
}

const agents = new WeakMap<Device, Map<number, CmAgent>>();

export class CmAgent {
  readonly device: Device;
  readonly port: number;
  /** the upper 32 bits of the TIDs this agent forms */
  readonly hiTid: number;
  readonly #counters: Record<string, number> = Object.create(null) as Record<string, number>;
  #refs = 0;
  #qp1: CmQp1 | null;
  /** every id with a comm ID, by local comm ID (destroyed ids stay while in TimeWait) */
  readonly ids = new Map<number, IbCmId>();
  readonly listeners = new Map<bigint, IbCmId>();
  /** (remote comm ID, remote CA GUID) → id: duplicate REQ and stale detection (cm.c remote_id_table) */
  readonly remoteIds = new Map<string, IbCmId>();
  /** (remote QPN, remote CA GUID) → id, while connected (cm.c remote_qpn_table) */
  readonly remoteQpns = new Map<string, IbCmId>();
  /** (SIDR request ID, sender GID) → id while the SIDR_REQ is with the consumer (remote_sidr_table) */
  readonly remoteSidr = new Map<string, IbCmId>();
  readonly #all = new Set<IbCmId>();

  private constructor(dev: Device, port: number) {
    this.device = dev;
    this.port = port;
    this.hiTid = nextHiTid++;
    this.#qp1 = new CmQp1(
      dev,
      port,
      (mad, src) => this.#receive(mad, src),
      (n) => this.count(n),
    );
  }

  /** The agent of (dev, port), created (QP1 opened) on first use; each acquire needs a release. */
  static acquire(dev: Device, port = 1): CmAgent {
    if (dev.closed) throw new VerbsError('ENODEV', 'ib_cm_add_one', 'the device is closed', 'device');
    if (!Number.isInteger(port) || port < 1 || port > dev.ports.length)
      throw new VerbsError('EINVAL', 'ib_cm_add_one', `port ${port} not in 1..${dev.ports.length}`, 'port');
    let m = agents.get(dev);
    if (!m) agents.set(dev, (m = new Map<number, CmAgent>()));
    let a = m.get(port);
    if (!a) m.set(port, (a = new CmAgent(dev, port)));
    a.#refs++;
    return a;
  }

  /** Drops a reference; the last one destroys every id (without sending: the port goes away), its timers
   *  and QP1. */
  release(): void {
    if (this.#refs <= 0) return;
    if (--this.#refs > 0) return;
    for (const id of [...this.#all]) id.teardown();
    this.ids.clear();
    this.listeners.clear();
    this.remoteIds.clear();
    this.remoteQpns.clear();
    this.remoteSidr.clear();
    this.#qp1?.close();
    this.#qp1 = null;
    const m = agents.get(this.device);
    m?.delete(this.port);
    if (m && m.size === 0) agents.delete(this.device);
  }

  get released(): boolean {
    return this.#qp1 === null;
  }

  createId(handler: IbCmHandler): IbCmId {
    if (!this.#qp1) throw new VerbsError('ENODEV', 'ib_create_cm_id', 'the CM agent was released', 'agent');
    if (typeof handler !== 'function') throw new VerbsError('EINVAL', 'ib_create_cm_id', 'handler must be a function', 'handler');
    return new IbCmId(this, handler);
  }

  /** Sent and received per message type (sent_REQ, rcvd_REP, ...), retries (retry_REQ, ...), timeouts, and
   *  drops by reason (drop_*). */
  get counters(): Readonly<Record<string, number>> {
    return this.#counters;
  }

  /** @internal */
  count(name: string): void {
    this.#counters[name] = (this.#counters[name] ?? 0) + 1;
  }

  /** @internal IbCmId */
  track(id: IbCmId, on: boolean): void {
    if (on) this.#all.add(id);
    else this.#all.delete(id);
  }

  /** @internal a random non-zero comm ID unused on this agent (cm.c: xarray index xor a random operand) */
  newCommId(): number {
    for (;;) {
      const v = (Math.random() * 0x100000000) >>> 0;
      if (v !== 0 && !this.ids.has(v)) return v;
    }
  }

  /** @internal emits and sends one MAD; counted as sent_<type> */
  sendMsg(msg: CmMsg, av: MadAv): Buffer {
    const buf = emitCmMad(msg);
    this.sendRaw(buf, msg.type, av);
    return buf;
  }

  /** @internal */
  sendRaw(buf: Buffer, type: CmMsgType, av: MadAv): void {
    if (this.#qp1?.send(buf, av)) this.count(`sent_${type}`);
  }

  /** @internal the index of a GID of ours on this port, or -1 */
  gidIndex(gid: Uint8Array): number {
    return this.#qp1 ? this.#qp1.gidIndex(gid) : -1;
  }

  /** @internal An AV answering a received MAD (cm_init_av_for_response: from the GRH). */
  avForResponse(src: MadSource): MadAv {
    const i = this.gidIndex(src.dgid);
    return {
      dgid: copy(src.sgid),
      sgidIndex: i >= 0 ? i : this.device.defaultSgidIndex(this.port),
      trafficClass: src.trafficClass,
      // The GRH's hop limit is what was left on arrival; answer with the route's default (roce-wire g.1).
      hopLimit: 64,
      flowLabel: src.flowLabel,
      sl: 0,
    };
  }

  get #activeMtu(): 1 | 2 | 3 | 4 | 5 {
    const e = ibMtuFromBytes(this.device.queryPort(this.port).activeMtu);
    return (e >= 1 && e <= 5 ? e : 3) as 1 | 2 | 3 | 4 | 5;
  }

  // ---------------------------------------------------------------- receive ---

  #receive(mad: Buffer, src: MadSource): void {
    const m = parseCmMad(mad);
    if (m instanceof CmMadError) {
      this.count(`drop_${m.reason}`);
      return;
    }
    this.count(`rcvd_${m.type}`);
    if (m.hdr.method !== MadMethod.SEND) {
      this.count('drop_method');
      return;
    }
    switch (m.type) {
      case 'REQ':
        return this.#onReq(m, src);
      case 'SIDR_REQ':
        return this.#onSidrReq(m, src);
      case 'DREQ':
        return this.#onDreq(m, src);
      case 'LAP':
      case 'APR':
        // Alternate paths do not exist on RoCE (rdma_cm never loads one).
        this.count(`drop_${m.type}`);
        return;
      default: {
        const id = this.#idFor(m);
        if (!id) {
          this.count(`drop_no_id_${m.type}`);
          return;
        }
        id.receive(m);
      }
    }
  }

  /** The id a REP / RTU / REJ / MRA / DREP / SIDR_REP is for (cm_acquire_id and its REJ / MRA variants). */
  #idFor(m: CmMsg): IbCmId | undefined {
    switch (m.type) {
      case 'SIDR_REP':
        return this.ids.get(m.requestId);
      case 'REP':
        return this.ids.get(m.remoteCommId); // the remote ID is learnt from this REP
      case 'REJ':
      case 'MRA': {
        if (m.type === 'REJ' && m.reason === CmRejReason.TIMEOUT && m.rejectInfoLength >= 8) {
          // cm_acquire_rejected_id: a peer that gave up on its REQ (ib_destroy_cm_id in REQ_SENT) names
          // itself by its CA GUID in the ARI; it may not know our comm ID yet.
          const guid = new DataView(m.ari.buffer, m.ari.byteOffset, 8).getBigUint64(0);
          return this.remoteIds.get(remoteKey(m.localCommId, guid));
        }
        const id = this.ids.get(m.remoteCommId);
        // A REJ or MRA of our REQ cannot name our peer's comm ID yet (cm_acquire_rejected_id / _mraed_id).
        const ofReq = m.type === 'REJ' ? m.messageRejected === CmMsgResponded.REQ : m.messageMraed === CmMsgResponded.REQ;
        if (ofReq || !id || id.remoteCommId === m.localCommId) return id;
        return undefined;
      }
      case 'RTU':
      case 'DREP': {
        const id = this.ids.get(m.remoteCommId);
        return id && id.remoteCommId === m.localCommId ? id : undefined;
      }
      default:
        return undefined;
    }
  }

  /** cm_req_handler / cm_match_req. */
  #onReq(req: CmMsgOf<'REQ'>, src: MadSource): void {
    // The REQ's primary remote GID is ours: no such GID on this port → dropped, no reply (cm-and-lag.md 1).
    const sgidIndex = this.gidIndex(req.primaryRemoteGid);
    if (sgidIndex < 0) {
      this.count('drop_req_gid');
      return;
    }
    const dup = this.remoteIds.get(remoteKey(req.localCommId, req.localCaGuid));
    if (dup) {
      dup.duplicateReq(src);
      return;
    }
    const old = this.remoteQpns.get(remoteKey(req.localQpn, req.localCaGuid));
    if (old) {
      // A connection of that QP is still up here: this one is stale (cm_insert_remote_qpn).
      this.count('rej_stale_qpn');
      this.#issueRej(req, src, CmRejReason.STALE_CONN);
      return;
    }
    const listen = this.listeners.get(req.serviceId);
    if (!listen) {
      this.#issueRej(req, src, CmRejReason.INVALID_SERVICE_ID);
      return;
    }
    const kept = detach(req);
    const id = new IbCmId(this, listen.handler);
    id.acceptReq(kept, src, listen, sgidIndex, this.#activeMtu);
  }

  /** cm_issue_rej: a REJ with no id behind it, answering from the received MAD. */
  #issueRej(req: CmMsgOf<'REQ'>, src: MadSource, reason: number): void {
    const rej = makeCmMsg('REJ', {
      hdr: cmMadHeader('REJ', req.hdr.transactionId),
      localCommId: 0,
      remoteCommId: req.localCommId,
      messageRejected: CmMsgResponded.REQ,
      reason,
    });
    this.sendMsg(rej, this.avForResponse(src));
  }

  #onDreq(dreq: CmMsgOf<'DREQ'>, src: MadSource): void {
    const id = this.ids.get(dreq.remoteCommId);
    if (!id || id.remoteCommId !== dreq.localCommId) {
      // cm_issue_drep: a DREQ for nothing we know still gets its DREP, from the GRH.
      this.count('drep_unmatched_dreq');
      const drep = makeCmMsg('DREP', { hdr: cmMadHeader('DREP', dreq.hdr.transactionId), localCommId: dreq.remoteCommId, remoteCommId: dreq.localCommId });
      this.sendMsg(drep, this.avForResponse(src));
      return;
    }
    id.receiveDreq(dreq, src);
  }

  /** cm_sidr_req_handler. */
  #onSidrReq(req: CmMsgOf<'SIDR_REQ'>, src: MadSource): void {
    const key = `${req.requestId}:${Buffer.from(src.sgid).toString('hex')}`;
    if (this.remoteSidr.has(key)) {
      this.count('drop_dup_SIDR_REQ');
      return;
    }
    const listen = this.listeners.get(req.serviceId);
    if (!listen) {
      const rep = makeCmMsg('SIDR_REP', {
        hdr: cmMadHeader('SIDR_REP', req.hdr.transactionId),
        requestId: req.requestId,
        status: SidrStatus.UNSUPPORTED,
        serviceId: req.serviceId,
      });
      this.sendMsg(rep, this.avForResponse(src));
      return;
    }
    const id = new IbCmId(this, listen.handler);
    id.acceptSidrReq(detach(req), src, listen, key, this.#activeMtu);
  }
}

export class IbCmId {
  readonly agent: CmAgent;
  #handler: IbCmHandler;
  #state: IbCmState = 'IDLE';
  #localCommId = 0;
  #remoteCommId = 0;
  #remoteGuid = 0n;
  #remoteQpn = 0;
  #localQpn = 0;
  #serviceId = 0n;
  /** the TID of the exchange this id answers in (the REQ's, then a DREQ's) */
  #tid = 0n;
  #av: MadAv | null = null;
  /** the AV's timeout exponent (cm_av.timeout): TimeWait and the MRA wait */
  #avTimeout = 0;
  /** the wait between retries of our REP / DREQ (the passive side: conv(REQ's local response timeout)) */
  #timeoutMs = 0;
  #maxCmRetries = CMA_MAX_CM_RETRIES;
  #pending: Pending | null = null;
  #timewait: TimerHandle | null = null;
  /** the last REP / RTU / MRA we sent, for the duplicates that get them again */
  #lastRep: Buffer | null = null;
  #lastRtu: Buffer | null = null;
  #lastMra: Buffer | null = null;
  #sidrKey: string | null = null;
  #destroyed = false;

  /** @internal CmAgent.createId */
  constructor(agent: CmAgent, handler: IbCmHandler) {
    this.agent = agent;
    this.#handler = handler;
    agent.track(this, true);
  }

  get state(): IbCmState {
    return this.#state;
  }
  get localCommId(): number {
    return this.#localCommId;
  }
  get remoteCommId(): number {
    return this.#remoteCommId;
  }
  get serviceId(): bigint {
    return this.#serviceId;
  }
  get destroyed(): boolean {
    return this.#destroyed;
  }
  /** @internal */
  get handler(): IbCmHandler {
    return this.#handler;
  }
  /** Where this id's events go from now on (an id made for a received REQ starts with its listener's). */
  setHandler(h: IbCmHandler): void {
    if (typeof h !== 'function') throw new VerbsError('EINVAL', 'ib_cm_id', 'handler must be a function', 'handler');
    this.#handler = h;
  }

  // ------------------------------------------------------------ consumer ops ---

  /** ib_cm_listen: REQs and SIDR_REQs for `serviceId` on this agent come to this id. */
  listen(serviceId: bigint): void {
    this.#next('listen');
    if (typeof serviceId !== 'bigint' || serviceId < 0n || serviceId >= 1n << 64n)
      throw new VerbsError('EINVAL', 'ib_cm_listen', 'serviceId must be a 64-bit unsigned bigint', 'serviceId');
    if (this.agent.listeners.has(serviceId))
      throw new VerbsError('EADDRINUSE', 'ib_cm_listen', `service ID 0x${serviceId.toString(16)} is already listened on`, 'serviceId');
    this.agent.listeners.set(serviceId, this);
    this.#serviceId = serviceId;
    this.#state = 'LISTEN';
  }

  /** ib_send_cm_req (cm_format_req with a RoCE path). */
  sendReq(p: CmReqParams): void {
    const op = 'ib_send_cm_req';
    const to = this.#next('req');
    if (!p || typeof p !== 'object' || !p.path) throw new VerbsError('EINVAL', op, 'params with a path are required', 'path');
    const path = p.path;
    const lrt = p.localCmResponseTimeout ?? CMA_CM_RESPONSE_TIMEOUT;
    const rrt = p.remoteCmResponseTimeout ?? CMA_CM_RESPONSE_TIMEOUT;
    const retries = p.maxCmRetries ?? CMA_MAX_CM_RETRIES;
    const commId = this.agent.newCommId();
    const tid = kernelCmTid(this.agent.hiTid, commId);
    const msg = makeCmMsg('REQ', {
      hdr: cmMadHeader('REQ', tid),
      localCommId: commId,
      serviceId: p.serviceId,
      localCaGuid: this.agent.device.attr.nodeGuid,
      localQkey: 0,
      localQpn: p.qpn,
      responderResources: p.responderResources,
      initiatorDepth: p.initiatorDepth,
      remoteCmResponseTimeout: rrt,
      transportServiceType: p.qpType === 'UC' ? CmTransport.UC : CmTransport.RC,
      startingPsn: p.startingPsn,
      localCmResponseTimeout: lrt,
      retryCount: p.retryCount,
      pkey: path.pkey,
      pathMtu: path.mtu,
      rnrRetryCount: p.rnrRetryCount,
      maxCmRetries: retries,
      srq: p.srq ? 1 : 0,
      primaryLocalLid: rocePathLid(path.hopLimit),
      primaryRemoteLid: rocePathLid(path.hopLimit),
      primaryLocalGid: path.sgid,
      primaryRemoteGid: path.dgid,
      primaryFlowLabel: path.flowLabel,
      primaryTrafficClass: path.trafficClass,
      primaryHopLimit: path.hopLimit,
      primarySl: path.sl,
      primarySubnetLocal: roceSubnetLocal(path.hopLimit),
      primaryLocalAckTimeout: cmAckTimeout(this.agent.device.attr.localCaAckDelay, path.packetLifeTime),
      privateData: p.privateData ?? EMPTY,
    });
    if (p.qpType !== 'RC' && p.qpType !== 'UC') throw new VerbsError('EINVAL', op, 'qpType must be RC or UC', 'qpType');
    if (path.port !== this.agent.port) throw new VerbsError('EINVAL', op, `path.port ${path.port} is not this agent's port ${this.agent.port}`, 'path.port');
    const mad = this.#emit(op, msg);
    this.#setLocalCommId(commId);
    this.#remoteCommId = 0;
    this.#remoteGuid = 0n;
    this.#remoteQpn = 0;
    this.#lastRtu = this.#lastMra = null;
    this.#tid = tid;
    this.#serviceId = p.serviceId;
    this.#localQpn = p.qpn;
    this.#av = avFromPath(path);
    this.#avTimeout = Math.min(31, path.packetLifeTime + 1);
    this.#timeoutMs = kernelMadRetryTimeoutMs(path.packetLifeTime, rrt);
    this.#maxCmRetries = retries;
    this.#state = to;
    this.#startPending('REQ', mad, this.#timeoutMs, retries);
  }

  /** ib_send_cm_rep. */
  sendRep(p: CmRepParams): void {
    const op = 'ib_send_cm_rep';
    const to = this.#next('rep');
    const msg = makeCmMsg('REP', {
      hdr: cmMadHeader('REP', this.#tid),
      localCommId: this.#localCommId,
      remoteCommId: this.#remoteCommId,
      localQkey: 0,
      localQpn: p.qpn,
      startingPsn: p.startingPsn,
      responderResources: p.responderResources,
      initiatorDepth: p.initiatorDepth,
      targetAckDelay: this.agent.device.attr.localCaAckDelay,
      failoverAccepted: p.failoverAccepted ?? 0,
      rnrRetryCount: p.rnrRetryCount,
      srq: p.srq ? 1 : 0,
      localCaGuid: this.agent.device.attr.nodeGuid,
      privateData: p.privateData ?? EMPTY,
    });
    const mad = this.#emit(op, msg);
    this.#localQpn = p.qpn;
    this.#lastRep = mad;
    this.#state = to;
    this.#startPending('REP', mad, this.#timeoutMs, this.#maxCmRetries);
  }

  /** ib_send_cm_rtu: the active side, once its QP is in RTS. */
  sendRtu(privateData?: Uint8Array): void {
    const to = this.#next('rtu');
    const msg = makeCmMsg('RTU', {
      hdr: cmMadHeader('RTU', this.#tid),
      localCommId: this.#localCommId,
      remoteCommId: this.#remoteCommId,
      privateData: privateData ?? EMPTY,
    });
    const mad = this.#emit('ib_send_cm_rtu', msg);
    this.#lastRtu = mad;
    this.#state = to;
    this.agent.sendRaw(mad, 'RTU', this.#av!);
  }

  /** ib_send_cm_rej (cm_format_rej: Local Comm ID 0 and Message REJected = REQ while in REQ_RCVD). */
  sendRej(reason: number, o: { ari?: Uint8Array; privateData?: Uint8Array } = {}): void {
    const op = 'ib_send_cm_rej';
    const from = this.#state;
    const to = this.#next('rej');
    if (!Number.isInteger(reason) || reason < 0 || reason > 0xffff) throw new VerbsError('EINVAL', op, 'reason must be 0..65535', 'reason');
    const ari = o.ari ?? EMPTY;
    if (ari.length > CM_ARI_SIZE) throw new VerbsError('EINVAL', op, `ARI is ${ari.length} bytes, at most ${CM_ARI_SIZE}`, 'ari');
    const mad = this.#emit(op, this.#formatRej(from, reason, ari, o.privateData ?? EMPTY));
    this.#cancelPending();
    this.agent.sendRaw(mad, 'REJ', this.#av!);
    this.#enter(to);
  }

  #formatRej(from: IbCmState, reason: number, ari: Uint8Array, privateData: Uint8Array): CmMsgOf<'REJ'> {
    const rejected =
      from === 'REQ_RCVD' || from === 'MRA_REQ_SENT'
        ? CmMsgResponded.REQ
        : from === 'REP_RCVD' || from === 'MRA_REP_SENT'
          ? CmMsgResponded.REP
          : CmMsgResponded.OTHER;
    return makeCmMsg('REJ', {
      hdr: cmMadHeader('REJ', this.#tid),
      localCommId: from === 'REQ_RCVD' ? 0 : this.#localCommId,
      remoteCommId: this.#remoteCommId,
      messageRejected: rejected,
      rejectInfoLength: ari.length,
      reason,
      ari,
      privateData,
    });
  }

  /**
   * ib_send_cm_mra: tells the peer to wait `serviceTimeout` (an exponent) longer for our REP or RTU.
   * `delay: true` (IB_CM_MRA_FLAG_DELAY, what rdma_cm does on every REQ) sends nothing now: the MRA goes
   * out only in answer to a duplicate REQ / REP.
   */
  sendMra(serviceTimeout = CMA_CM_MRA_SERVICE_TIMEOUT, o: { delay?: boolean; privateData?: Uint8Array } = {}): void {
    const op = 'ib_send_cm_mra';
    const from = this.#state;
    const to = this.#next('mra');
    if (!Number.isInteger(serviceTimeout) || serviceTimeout < 0 || serviceTimeout > 31)
      throw new VerbsError('EINVAL', op, 'serviceTimeout must be 0..31', 'serviceTimeout');
    const msg = makeCmMsg('MRA', {
      hdr: cmMadHeader('MRA', this.#tid),
      localCommId: this.#localCommId,
      remoteCommId: this.#remoteCommId,
      messageMraed: from === 'REQ_RCVD' ? CmMsgResponded.REQ : CmMsgResponded.REP,
      serviceTimeout,
      privateData: o.privateData ?? EMPTY,
    });
    const mad = this.#emit(op, msg);
    this.#lastMra = mad;
    this.#state = to;
    if (!o.delay) this.agent.sendRaw(mad, 'MRA', this.#av!);
  }

  /** ib_send_cm_dreq: retried like the REQ / REP; DREQ_ERROR and TimeWait when unanswered. */
  sendDreq(privateData?: Uint8Array): void {
    const to = this.#next('dreq');
    const mad = this.#emit('ib_send_cm_dreq', this.#formatDreq(privateData ?? EMPTY));
    this.#state = to;
    this.#startPending('DREQ', mad, this.#timeoutMs, this.#maxCmRetries);
  }

  #formatDreq(privateData: Uint8Array): CmMsgOf<'DREQ'> {
    return makeCmMsg('DREQ', {
      hdr: cmMadHeader('DREQ', kernelCmTid(this.agent.hiTid, this.#localCommId)),
      localCommId: this.#localCommId,
      remoteCommId: this.#remoteCommId,
      remoteQpn: this.#remoteQpn,
      privateData,
    });
  }

  /** ib_send_cm_drep: answers the DREQ (its TID) and enters TimeWait. */
  sendDrep(privateData?: Uint8Array): void {
    const to = this.#next('drep');
    const mad = this.#emit('ib_send_cm_drep', this.#formatDrep(this.#tid, privateData ?? EMPTY));
    this.agent.sendRaw(mad, 'DREP', this.#av!);
    this.#enter(to);
  }

  #formatDrep(tid: bigint, privateData: Uint8Array): CmMsgOf<'DREP'> {
    return makeCmMsg('DREP', { hdr: cmMadHeader('DREP', tid), localCommId: this.#localCommId, remoteCommId: this.#remoteCommId, privateData });
  }

  /** ib_send_cm_sidr_req: rdma_cm's UD "connect"; retried every `timeoutMs` (4096) up to `maxRetries` (15) times. */
  sendSidrReq(o: { serviceId: bigint; path: CmPath; privateData?: Uint8Array; timeoutMs?: number; maxRetries?: number }): void {
    const op = 'ib_send_cm_sidr_req';
    const to = this.#next('sidr_req');
    const commId = this.agent.newCommId();
    const tid = kernelCmTid(this.agent.hiTid, commId);
    const msg = makeCmMsg('SIDR_REQ', {
      hdr: cmMadHeader('SIDR_REQ', tid),
      requestId: commId,
      pkey: o.path.pkey,
      serviceId: o.serviceId,
      privateData: o.privateData ?? EMPTY,
    });
    const timeoutMs = o.timeoutMs ?? SIDR_REQ_TIMEOUT_MS;
    const retries = o.maxRetries ?? CMA_MAX_CM_RETRIES;
    if (!(timeoutMs > 0)) throw new VerbsError('EINVAL', op, 'timeoutMs must be positive', 'timeoutMs');
    if (!Number.isInteger(retries) || retries < 0) throw new VerbsError('EINVAL', op, 'maxRetries must be a non-negative integer', 'maxRetries');
    const mad = this.#emit(op, msg);
    this.#setLocalCommId(commId);
    this.#tid = tid;
    this.#serviceId = o.serviceId;
    this.#av = avFromPath(o.path);
    this.#state = to;
    this.#startPending('SIDR_REQ', mad, timeoutMs, retries);
  }

  /** ib_send_cm_sidr_rep: answers the SIDR_REQ this id was made for; the id goes back to IDLE. */
  sendSidrRep(o: { status: number; qpn: number; qkey: number; privateData?: Uint8Array }): void {
    const to = this.#next('sidr_rep');
    const msg = makeCmMsg('SIDR_REP', {
      hdr: cmMadHeader('SIDR_REP', this.#tid),
      requestId: this.#remoteCommId,
      status: o.status,
      qpn: o.qpn,
      serviceId: this.#serviceId,
      qkey: o.qkey >>> 0,
      privateData: o.privateData ?? EMPTY,
    });
    const mad = this.#emit('ib_send_cm_sidr_rep', msg);
    this.agent.sendRaw(mad, 'SIDR_REP', this.#av!);
    this.#enter(to);
  }

  /**
   * ib_cm_notify(IB_EVENT_COMM_EST): the rdma_cm layer calls this when the passive QP receives its first
   * packet before the RTU came (the kernel's QP raises COMM_EST; here the rdma_cm layer watches the QP's
   * first receive completion or the device's COMM_EST async event). REP_SENT / MRA_REP_RCVD → ESTABLISHED,
   * the REP's retries stop, and a USER_ESTABLISHED event follows; a later RTU is then a dropped duplicate.
   * Returns false (nothing done) when already ESTABLISHED; EINVAL in other states.
   */
  establish(): boolean {
    if (this.#state === 'ESTABLISHED') return false;
    const to = this.#next('establish');
    this.#cancelPending();
    this.#state = to;
    // cm_establish queues the event as work: delivered on a later turn, not inside the caller.
    this.agent.device.sched.defer(() => this.#emitEvent({ type: 'USER_ESTABLISHED' }));
    return true;
  }

  /**
   * ib_destroy_cm_id: what the state calls for is sent first (cm_destroy_id): a connected id sends a DREQ
   * (once: no retries) and enters TimeWait, a DREQ received is answered with a DREP, a REQ not yet answered
   * is rejected (28, or 4 "timeout" with our GUID as ARI while our own REQ was pending), a SIDR_REQ gets a
   * SIDR_REP "rejected". No event reaches the handler afterwards; an id in TimeWait stays known to the agent
   * (to answer a late DREQ and refuse a stale REQ) until its TimeWait ends.
   */
  destroy(): void {
    if (this.#destroyed) return;
    try {
      if (!this.agent.released) this.#farewell();
    } finally {
      this.#destroyed = true;
      if (this.#state !== 'TIMEWAIT') this.#forget();
    }
  }

  /** What cm_destroy_id sends for the state the id is in. */
  #farewell(): void {
    const guid = Buffer.alloc(8);
    guid.writeBigUInt64BE(this.agent.device.attr.nodeGuid);
    switch (this.#state) {
      case 'LISTEN':
        if (this.agent.listeners.get(this.#serviceId) === this) this.agent.listeners.delete(this.#serviceId);
        this.#enter('IDLE');
        break;
      case 'SIDR_REQ_SENT':
        this.#cancelPending();
        this.#enter('IDLE');
        break;
      case 'SIDR_REQ_RCVD':
        this.sendSidrRep({ status: SidrStatus.REJECT, qpn: 0, qkey: 0 });
        break;
      case 'REQ_SENT':
      case 'MRA_REQ_RCVD':
        this.sendRej(CmRejReason.TIMEOUT, { ari: guid });
        break;
      case 'REQ_RCVD':
      case 'MRA_REQ_SENT':
      case 'REP_RCVD':
      case 'MRA_REP_SENT':
      case 'REP_SENT':
      case 'MRA_REP_RCVD':
        this.sendRej(CmRejReason.CONSUMER_DEFINED);
        break;
      case 'ESTABLISHED':
        this.agent.sendRaw(emitCmMad(this.#formatDreq(EMPTY)), 'DREQ', this.#av!);
        this.#enter('TIMEWAIT');
        break;
      case 'DREQ_SENT':
        this.#cancelPending();
        this.#enter('TIMEWAIT');
        break;
      case 'DREQ_RCVD':
        this.sendDrep();
        break;
      default:
        break;
    }
  }

  /** @internal CmAgent.release: everything stops, nothing is sent. */
  teardown(): void {
    this.#destroyed = true;
    this.#cancelPending();
    this.agent.device.sched.clearTimer(this.#timewait);
    this.#timewait = null;
    this.#state = 'IDLE';
    this.agent.track(this, false);
  }

  // ------------------------------------------------------------- internals ---

  /** The state `op` leads to from here, or EINVAL (and nothing sent). */
  #next(op: IbCmSendOp): IbCmState {
    const name = SEND_OP_NAME[op];
    if (this.#destroyed) throw new VerbsError('EINVAL', name, 'the CM id was destroyed', 'id');
    if (this.agent.released) throw new VerbsError('ENODEV', name, 'the CM agent was released', 'agent');
    const to = sendTransition(op, this.#state);
    if (!to) throw new VerbsError('EINVAL', name, `not allowed in state ${this.#state}`, 'state');
    return to;
  }

  /** emitCmMad with its errors as the VerbsError a C caller would get (EINVAL naming the field). */
  #emit(op: string, msg: CmMsg): Buffer {
    try {
      return emitCmMad(msg);
    } catch (err) {
      if (err instanceof CmMadError) {
        const max = CM_PRIVATE_DATA_SIZE[msg.type];
        const what = err.reason === 'private-data-too-long' ? `private data over ${max} bytes` : err.message;
        throw new VerbsError('EINVAL', op, what, err.field);
      }
      throw err;
    }
  }

  #emitEvent(ev: IbCmEvent): void {
    if (this.#destroyed) return;
    try {
      this.#handler(ev, this);
    } catch (err) {
      process.nextTick(() => {
        throw err;
      });
    }
  }

  #startPending(kind: Pending['kind'], mad: Buffer, timeoutMs: number, retries: number): void {
    this.#cancelPending();
    const p: Pending = { kind, mad, av: this.#av!, left: retries, timeoutMs, timer: null };
    this.#pending = p;
    this.agent.sendRaw(mad, kind, p.av);
    this.#arm(p, timeoutMs);
  }

  #arm(p: Pending, ms: number): void {
    const sched = this.agent.device.sched;
    sched.clearTimer(p.timer);
    p.timer = sched.setTimer(ms, () => this.#expire(p));
  }

  #expire(p: Pending): void {
    if (this.#pending !== p || this.agent.released) return;
    p.timer = null;
    if (p.left > 0) {
      p.left--;
      this.agent.count(`retry_${p.kind}`);
      this.agent.sendRaw(p.mad, p.kind, p.av);
      this.#arm(p, p.timeoutMs);
      return;
    }
    // cm_process_send_error: retries spent.
    this.#pending = null;
    this.agent.count(`timeout_${p.kind}`);
    this.#enter(p.kind === 'DREQ' ? 'TIMEWAIT' : 'IDLE');
    this.#emitEvent({ type: ERROR_EVENT[p.kind], status: CM_ETIMEDOUT });
  }

  #cancelPending(): void {
    if (!this.#pending) return;
    this.agent.device.sched.clearTimer(this.#pending.timer);
    this.#pending = null;
  }

  /** Enters IDLE or TIMEWAIT (cm_reset_to_idle / cm_enter_timewait), or just sets another state. */
  #enter(s: IbCmState): void {
    const a = this.agent;
    if (s === 'TIMEWAIT') {
      this.#cancelPending();
      this.#dropRemoteQpn();
      this.#state = 'TIMEWAIT';
      a.device.sched.clearTimer(this.#timewait);
      this.#timewait = a.device.sched.setTimer(kernelCmTimeoutMs(this.#avTimeout), () => this.#timewaitExit());
      return;
    }
    this.#state = s;
    if (s === 'IDLE') {
      this.#cancelPending();
      this.#dropRemote();
      if (this.#sidrKey !== null) {
        if (a.remoteSidr.get(this.#sidrKey) === this) a.remoteSidr.delete(this.#sidrKey);
        this.#sidrKey = null;
      }
      if (this.#destroyed) this.#forget();
    }
  }

  #timewaitExit(): void {
    this.#timewait = null;
    if (this.#state !== 'TIMEWAIT') return;
    this.#state = 'IDLE';
    this.#dropRemote();
    if (this.#destroyed) this.#forget();
    else this.#emitEvent({ type: 'TIMEWAIT_EXIT' });
  }

  #dropRemoteQpn(): void {
    const k = remoteKey(this.#remoteQpn, this.#remoteGuid);
    if (this.agent.remoteQpns.get(k) === this) this.agent.remoteQpns.delete(k);
  }

  #dropRemote(): void {
    this.#dropRemoteQpn();
    const k = remoteKey(this.#remoteCommId, this.#remoteGuid);
    if (this.agent.remoteIds.get(k) === this) this.agent.remoteIds.delete(k);
  }

  /** Removes a destroyed id from the agent's tables for good. */
  #forget(): void {
    const a = this.agent;
    this.#cancelPending();
    a.device.sched.clearTimer(this.#timewait);
    this.#timewait = null;
    this.#dropRemote();
    if (a.ids.get(this.#localCommId) === this) a.ids.delete(this.#localCommId);
    if (a.listeners.get(this.#serviceId) === this) a.listeners.delete(this.#serviceId);
    a.track(this, false);
  }

  /** A new comm ID for a new exchange (an IDLE id may connect again); the old one is released. */
  #setLocalCommId(commId: number): void {
    const ids = this.agent.ids;
    if (this.#localCommId !== 0 && ids.get(this.#localCommId) === this) ids.delete(this.#localCommId);
    this.#localCommId = commId;
    ids.set(commId, this);
  }

  #remember(remoteCommId: number, guid: bigint, remoteQpn: number): void {
    this.#remoteCommId = remoteCommId;
    this.#remoteGuid = guid;
    this.#remoteQpn = remoteQpn;
    this.agent.remoteIds.set(remoteKey(remoteCommId, guid), this);
    this.agent.remoteQpns.set(remoteKey(remoteQpn, guid), this);
  }

  // ------------------------------------------------------ received messages ---

  /** @internal CmAgent: a new passive id for a REQ a listener takes (cm_req_handler). */
  acceptReq(req: CmReq, src: MadSource, listen: IbCmId, sgidIndex: number, activeMtu: 1 | 2 | 3 | 4 | 5): void {
    const a = this.agent;
    this.#setLocalCommId(a.newCommId());
    this.#remember(req.localCommId, req.localCaGuid, req.localQpn);
    this.#serviceId = req.serviceId;
    this.#tid = req.hdr.transactionId;
    this.#av = a.avForResponse(src);
    // cm_format_path_from_req: the packet life is the Local ACK Timeout less one; av.timeout adds it back.
    const life = req.primaryLocalAckTimeout - (req.primaryLocalAckTimeout > 0 ? 1 : 0);
    this.#avTimeout = Math.min(31, life + 1);
    this.#timeoutMs = kernelCmTimeoutMs(req.localCmResponseTimeout);
    this.#maxCmRetries = req.maxCmRetries;
    this.#state = 'REQ_RCVD';
    const mtu = req.pathMtu >= 1 && req.pathMtu <= 5 ? (req.pathMtu as 1 | 2 | 3 | 4 | 5) : activeMtu;
    const path: CmPath = {
      port: a.port,
      sgidIndex,
      sgid: copy(req.primaryRemoteGid),
      dgid: copy(req.primaryLocalGid),
      trafficClass: req.primaryTrafficClass,
      hopLimit: req.primaryHopLimit,
      flowLabel: req.primaryFlowLabel,
      sl: req.primarySl,
      mtu,
      packetLifeTime: life,
      pkey: req.pkey,
    };
    // cm_req_handler then builds the id's AV from that primary path (cm_init_av_by_path): the REP and every
    // later MAD go with the requested traffic class, flow label and SL, not the defaults of a bare response
    // (a real ucmatose -t 96 client gets its REP from rxe with DSCP 0x60). Ours could not echo a received
    // TOS anyway: the socket does not show it, so the response AV's traffic class is 0.
    this.#av = { ...this.#av, trafficClass: path.trafficClass, flowLabel: path.flowLabel, sl: path.sl };
    const param: CmConnParam = {
      remoteQpn: req.localQpn,
      startingPsn: req.startingPsn,
      responderResources: req.initiatorDepth,
      initiatorDepth: req.responderResources,
      retryCount: req.retryCount,
      rnrRetryCount: req.rnrRetryCount,
      srq: req.srq === 1,
    };
    this.#emitEvent({ type: 'REQ_RECEIVED', id: this, listenId: listen, req, path, privateData: req.privateData, param });
  }

  /** @internal CmAgent: a new id for a SIDR_REQ a listener takes (cm_sidr_req_handler). */
  acceptSidrReq(req: CmSidrReq, src: MadSource, listen: IbCmId, key: string, activeMtu: 1 | 2 | 3 | 4 | 5): void {
    const a = this.agent;
    this.#remoteCommId = req.requestId;
    this.#serviceId = req.serviceId;
    this.#tid = req.hdr.transactionId;
    this.#av = a.avForResponse(src);
    this.#sidrKey = key;
    a.remoteSidr.set(key, this);
    this.#state = 'SIDR_REQ_RCVD';
    const path: CmPath = {
      port: a.port,
      sgidIndex: this.#av.sgidIndex,
      sgid: copy(src.dgid),
      dgid: copy(src.sgid),
      trafficClass: src.trafficClass,
      hopLimit: this.#av.hopLimit,
      flowLabel: src.flowLabel,
      sl: 0,
      mtu: activeMtu,
      packetLifeTime: 0,
      pkey: req.pkey,
    };
    this.#emitEvent({ type: 'SIDR_REQ_RECEIVED', id: this, listenId: listen, sidrReq: req, path, privateData: req.privateData });
  }

  /** @internal cm_dup_req_handler: the REQ of a connection we already have came again. */
  duplicateReq(src: MadSource): void {
    const a = this.agent;
    a.count('dup_REQ');
    switch (this.#state) {
      case 'MRA_REQ_SENT':
        // rdma_cm's delayed MRA goes out now (service timeout 24): the peer stops resending the REQ.
        if (this.#lastMra) a.sendRaw(this.#lastMra, 'MRA', this.#av ?? a.avForResponse(src));
        return;
      case 'REP_SENT':
      case 'MRA_REP_RCVD':
        // The REP was lost or is late: send it again now rather than at its next retry.
        if (this.#lastRep) a.sendRaw(this.#lastRep, 'REP', this.#av ?? a.avForResponse(src));
        return;
      case 'TIMEWAIT': {
        const mad = emitCmMad(this.#formatRej('TIMEWAIT', CmRejReason.STALE_CONN, EMPTY, EMPTY));
        a.sendRaw(mad, 'REJ', a.avForResponse(src));
        return;
      }
      default:
        // REQ_RCVD: the consumer has it and has not answered yet; anything later: nothing to say.
        a.count('drop_dup_REQ');
    }
  }

  /** @internal cm_dreq_handler, with the id matched on both comm IDs. */
  receiveDreq(dreq: CmMsgOf<'DREQ'>, src: MadSource): void {
    const a = this.agent;
    if (dreq.remoteQpn !== this.#localQpn) {
      a.count('drop_dreq_qpn');
      return;
    }
    if (this.#state === 'TIMEWAIT') {
      // Our DREP was lost: answer again (with this DREQ's TID).
      a.count('dup_DREQ');
      a.sendRaw(emitCmMad(this.#formatDrep(dreq.hdr.transactionId, EMPTY)), 'DREP', a.avForResponse(src));
      return;
    }
    const to = recvTransition('DREQ', this.#state);
    if (!to) {
      a.count(this.#state === 'DREQ_RCVD' ? 'dup_DREQ' : 'drop_state_DREQ');
      return;
    }
    this.#cancelPending();
    this.#tid = dreq.hdr.transactionId;
    this.#state = to;
    this.#emitEvent({ type: 'DREQ_RECEIVED', privateData: copy(dreq.privateData) });
  }

  /** @internal REP, RTU, REJ, MRA, DREP, SIDR_REP for this id. */
  receive(m: CmMsg): void {
    const a = this.agent;
    switch (m.type) {
      case 'REP': {
        const to = recvTransition('REP', this.#state);
        if (!to) {
          // cm_dup_rep_handler: our RTU (or MRA) was lost; only for the connection we answered.
          if (m.localCommId !== this.#remoteCommId) return a.count('drop_state_REP');
          a.count('dup_REP');
          if (this.#state === 'ESTABLISHED' && this.#lastRtu) a.sendRaw(this.#lastRtu, 'RTU', this.#av!);
          else if (this.#state === 'MRA_REP_SENT' && this.#lastMra) a.sendRaw(this.#lastMra, 'MRA', this.#av!);
          else a.count('drop_dup_REP');
          return;
        }
        const rep = detach(m);
        this.#cancelPending();
        this.#remember(rep.localCommId, rep.localCaGuid, rep.localQpn);
        // cm_rep_handler: the AV's timeout from the peer's ACK delay and our packet life.
        this.#avTimeout = cmAckTimeout(rep.targetAckDelay, Math.max(0, this.#avTimeout - 1));
        this.#state = to;
        const param: CmConnParam = {
          remoteQpn: rep.localQpn,
          startingPsn: rep.startingPsn,
          responderResources: rep.initiatorDepth,
          initiatorDepth: rep.responderResources,
          retryCount: 0,
          rnrRetryCount: rep.rnrRetryCount,
          srq: rep.srq === 1,
        };
        this.#emitEvent({ type: 'REP_RECEIVED', rep, privateData: rep.privateData, param });
        return;
      }
      case 'RTU': {
        const to = recvTransition('RTU', this.#state);
        if (!to) return a.count('drop_state_RTU');
        this.#cancelPending();
        this.#state = to;
        this.#emitEvent({ type: 'RTU_RECEIVED', privateData: copy(m.privateData) });
        return;
      }
      case 'MRA': {
        const to = recvTransition('MRA', this.#state);
        const want = this.#state === 'REQ_SENT' ? CmMsgResponded.REQ : CmMsgResponded.REP;
        if (!to || m.messageMraed !== want || !this.#pending) {
          return a.count(this.#state === 'MRA_REQ_RCVD' || this.#state === 'MRA_REP_RCVD' ? 'dup_MRA' : 'drop_state_MRA');
        }
        this.#state = to;
        // ib_modify_mad: this wait and the later ones take the MRA's time.
        const p = this.#pending;
        p.timeoutMs = kernelMraTimeoutMs(m.serviceTimeout, this.#avTimeout);
        this.#arm(p, p.timeoutMs);
        this.#emitEvent({ type: 'MRA_RECEIVED', serviceTimeout: m.serviceTimeout });
        return;
      }
      case 'REJ': {
        let to = recvTransition('REJ', this.#state);
        if (!to) return a.count('drop_state_REJ');
        if (m.reason === CmRejReason.STALE_CONN) to = 'TIMEWAIT';
        const ari = copy(m.ari.subarray(0, Math.min(m.rejectInfoLength, CM_ARI_SIZE)));
        const privateData = copy(m.privateData);
        this.#cancelPending();
        this.#enter(to);
        this.#emitEvent({ type: 'REJ_RECEIVED', reason: m.reason, ari, privateData });
        return;
      }
      case 'DREP': {
        const to = recvTransition('DREP', this.#state);
        if (!to) return a.count('drop_state_DREP');
        this.#enter(to);
        this.#emitEvent({ type: 'DREP_RECEIVED', privateData: copy(m.privateData) });
        return;
      }
      case 'SIDR_REP': {
        const to = recvTransition('SIDR_REP', this.#state);
        if (!to) return a.count('drop_state_SIDR_REP');
        this.#enter(to);
        this.#emitEvent({ type: 'SIDR_REP_RECEIVED', status: m.status, qpn: m.qpn, qkey: m.qkey, privateData: copy(m.privateData) });
        return;
      }
      default:
        a.count(`drop_state_${m.type}`);
    }
  }

  /** The wait before this id's next retry, for tests and diagnostics (0 when nothing is pending). */
  get retryTimeoutMs(): number {
    return this.#pending?.timeoutMs ?? 0;
  }
  /** Which MAD is being retried, if any. */
  get pending(): Pending['kind'] | null {
    return this.#pending?.kind ?? null;
  }
}
