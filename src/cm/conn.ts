/**
 * What rdma_cm's connection calls need besides the id's state (cm-id.ts): conn params as librdmacm checks
 * and defaults them (ucma_valid_param, ucma_copy_conn_param_to_kern), the QP attributes the CM sets at
 * RTR and RTS from a handshake (the kernel's ib_cm_init_qp_attr: cm_init_qp_rtr_attr / _rts_attr, as
 * librdmacm's ucma_modify_qp_rtr / _rts apply them), and the listeners shared per (CM agent, service ID).
 */
import { VerbsError } from '../verbs/errors.js';
import type { Device } from '../verbs/device.js';
import type { QpAttrs } from '../verbs/qp.js';
import type { Access } from '../verbs/types.js';
import type { Mtu } from '../roce/opcode.js';
import type { CmAgent, CmPath, IbCmEvent, IbCmId } from './ib-cm.js';
import type { CmAddr } from './addr.js';
import { CMA_USER_PRIVATE_DATA } from './cma-hdr.js';

/** RDMA_UDP_QKEY: the Q_Key of every rdma_cm UD QP (librdmacm rdma_cma.h). */
export const RDMA_UDP_QKEY = 0x01234567;
/** RDMA_MAX_RESP_RES / RDMA_MAX_INIT_DEPTH: "the device's maximum" in a conn param. */
export const RDMA_MAX_RESP_RES = 0xff;
export const RDMA_MAX_INIT_DEPTH = 0xff;
/**
 * The RNR timer the CM gives the QP at RTR (IBA 9.7.5.2.8 code 12: 0.64 ms). The kernel's cm_init_qp_rtr_attr
 * uses the id's min_rnr_timer, which is 0 (655.36 ms) unless a kernel ULP sets it; librdmacm users then wait
 * 0.65 s per RNR NAK. softroce takes rxe's usual 12 (rxe_param.h RXE_DEFAULT_MIN_RNR_TIMER), a documented difference.
 */
export const CM_MIN_RNR_TIMER = 12;

/** struct rdma_conn_param, as connect() and accept() take it. */
export interface ConnParam {
  /** the user's private data: at most 56 bytes on connect (TCP: 92 less the 36-byte cma_hdr), 180 on a UD connect, 196 on accept */
  privateData?: Uint8Array;
  /** RDMA reads / atomics the peer may have outstanding at us (0xFF: the device maximum) */
  responderResources?: number;
  /** RDMA reads / atomics we may have outstanding at the peer (0xFF: the device maximum) */
  initiatorDepth?: number;
  /** transport retries (0..7); default 7 */
  retryCount?: number;
  /** RNR retries (0..7, 7 = infinite); default 7 */
  rnrRetryCount?: number;
  /** the QP uses an SRQ (for an external QP; with createQp the QP's own) */
  srq?: boolean;
  /** the QP number, for a QP the application drives itself (no id.createQp) */
  qpNum?: number;
}

/** The conn param an event carries (CONNECT_REQUEST, CONNECT_RESPONSE, ESTABLISHED): the peer's, for this side. */
export interface ConnInfo {
  readonly responderResources: number;
  readonly initiatorDepth: number;
  readonly retryCount: number;
  readonly rnrRetryCount: number;
  readonly srq: boolean;
  readonly qpNum: number;
}

/** A conn param with librdmacm's defaults filled in and 0xFF resolved to the device's maximum. */
export interface ConnValues {
  responderResources: number;
  initiatorDepth: number;
  retryCount: number;
  rnrRetryCount: number;
  srq: boolean;
  qpNum: number | undefined;
  privateData: Uint8Array;
}

function int(op: string, name: string, v: unknown, lo: number, hi: number): number | undefined {
  if (v === undefined) return undefined;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < lo || v > hi)
    throw new VerbsError('EINVAL', op, `${name} must be an integer in ${lo}..${hi}, got ${typeof v === 'number' ? v : typeof v}`, name);
  return v;
}

/**
 * ucma_valid_param + ucma_copy_conn_param_to_kern: responder resources and initiator depth above the
 * device's maximum are EINVAL (0xFF means the maximum); retry and RNR retry default to 7; private data
 * over `maxPrivate` is EINVAL. `defaults` are the id's own values (the device maximum on the active side,
 * the request's, clamped, on the passive side).
 */
export function connValues(
  op: string,
  p: ConnParam | undefined,
  dev: Device,
  maxPrivate: number,
  defaults: { responderResources: number; initiatorDepth: number },
): ConnValues {
  if (p !== undefined && (typeof p !== 'object' || p === null)) throw new VerbsError('EINVAL', op, 'the conn param must be an object', 'param');
  const o = p ?? {};
  const maxResp = dev.attr.maxQpRdAtom,
    maxInit = dev.attr.maxQpInitRdAtom;
  const rr = int(op, 'responderResources', o.responderResources, 0, 255);
  const id = int(op, 'initiatorDepth', o.initiatorDepth, 0, 255);
  if (rr !== undefined && rr !== RDMA_MAX_RESP_RES && rr > maxResp)
    throw new VerbsError('EINVAL', op, `responderResources ${rr} is over the device's ${maxResp}`, 'responderResources');
  if (id !== undefined && id !== RDMA_MAX_INIT_DEPTH && id > maxInit)
    throw new VerbsError('EINVAL', op, `initiatorDepth ${id} is over the device's ${maxInit}`, 'initiatorDepth');
  const pd = o.privateData ?? new Uint8Array(0);
  if (!(pd instanceof Uint8Array)) throw new VerbsError('EINVAL', op, 'privateData must be a Uint8Array', 'privateData');
  if (pd.length > maxPrivate) throw new VerbsError('EINVAL', op, `privateData is ${pd.length} bytes, at most ${maxPrivate}`, 'privateData');
  if (o.srq !== undefined && typeof o.srq !== 'boolean') throw new VerbsError('EINVAL', op, 'srq must be a boolean', 'srq');
  return {
    responderResources: rr === undefined ? defaults.responderResources : rr === RDMA_MAX_RESP_RES ? maxResp : rr,
    initiatorDepth: id === undefined ? defaults.initiatorDepth : id === RDMA_MAX_INIT_DEPTH ? maxInit : id,
    retryCount: int(op, 'retryCount', o.retryCount, 0, 7) ?? 7,
    rnrRetryCount: int(op, 'rnrRetryCount', o.rnrRetryCount, 0, 7) ?? 7,
    srq: o.srq ?? false,
    qpNum: int(op, 'qpNum', o.qpNum, 1, 0xffffff),
    privateData: pd,
  };
}

/** The user's private-data room per call (cma-hdr.ts CMA_USER_PRIVATE_DATA). */
export const PRIVATE_DATA_MAX = {
  connectRc: CMA_USER_PRIVATE_DATA.REQ,
  connectUd: CMA_USER_PRIVATE_DATA.SIDR_REQ,
  acceptRc: CMA_USER_PRIVATE_DATA.REP,
  acceptUd: CMA_USER_PRIVATE_DATA.SIDR_REP,
  reject: CMA_USER_PRIVATE_DATA.REJ,
} as const;

/** IBA's MTU enum (1..5) in bytes. */
export function mtuBytes(e: number): Mtu {
  return (256 << (Math.min(5, Math.max(1, e)) - 1)) as Mtu;
}

/** What both sides' RTR and RTS need from the handshake. */
export interface Handshake {
  path: CmPath;
  remoteQpn: number;
  /**
   * The Starting PSN of the peer's REQ or REP: the PSN we send from. Linux's cm.c reads a CM message's
   * Starting PSN as the PSN its sender will receive (cm_req_handler and cm_rep_handler set sq_psn from it;
   * ib_send_cm_req and ib_send_cm_rep set rq_psn from their own), and rxe's QPs follow that.
   */
  remotePsn: number;
  /** the Starting PSN of our REQ or REP: the PSN we expect to receive */
  localPsn: number;
  /** reads the peer may have at us (our max_dest_rd_atomic) and we may have at it (our max_rd_atomic) */
  responderResources: number;
  initiatorDepth: number;
  retryCount: number;
  rnrRetryCount: number;
  /** the Local ACK Timeout exponent (cm_id_priv->av.timeout) */
  ackTimeout: number;
}

/**
 * cm_init_qp_rtr_attr: the path's AV (its flow label becomes the UDP source port, rxe_modify_qp), path MTU
 * (no larger than the port's), remote QPN, receive PSN, max_dest_rd_atomic; and the access flags of
 * cm_init_qp_init_attr: remote write, plus remote read and atomics when we grant responder resources.
 */
export function rtrAttrs(h: Handshake, activeMtu: Mtu, dev: Device): QpAttrs {
  const access: Access[] = ['LOCAL_WRITE', 'REMOTE_WRITE'];
  if (h.responderResources > 0) access.push('REMOTE_READ', 'REMOTE_ATOMIC');
  const mtu = mtuBytes(h.path.mtu);
  return {
    state: 'RTR',
    accessFlags: access,
    av: {
      dgid: h.path.dgid,
      sgidIndex: h.path.sgidIndex,
      hopLimit: h.path.hopLimit,
      trafficClass: h.path.trafficClass,
      flowLabel: h.path.flowLabel,
      sl: h.path.sl,
    },
    pathMtu: mtu < activeMtu ? mtu : activeMtu,
    destQpn: h.remoteQpn,
    rqPsn: h.localPsn,
    maxDestRdAtomic: Math.min(h.responderResources, dev.attr.maxQpRdAtom),
    minRnrTimer: CM_MIN_RNR_TIMER,
  };
}

/** cm_init_qp_rts_attr: send PSN, local ACK timeout, retry and RNR retry counts, max_rd_atomic. */
export function rtsAttrs(h: Handshake, dev: Device): QpAttrs {
  return {
    state: 'RTS',
    sqPsn: h.remotePsn,
    timeout: h.ackTimeout,
    retryCnt: h.retryCount,
    rnrRetry: h.rnrRetryCount,
    maxRdAtomic: Math.min(h.initiatorDepth, dev.attr.maxQpInitRdAtom),
  };
}

/** The listener of one agent for one service ID, shared by the rdma_cm ids listening on that port there. */
export interface SharedListen {
  readonly ib: IbCmId;
  readonly ids: Set<ListenMember>;
}

/** A listening rdma_cm id as the shared listener sees it. */
export interface ListenMember {
  incoming(ev: Extract<IbCmEvent, { type: 'REQ_RECEIVED' | 'SIDR_REQ_RECEIVED' }>, address: string): boolean;
  address(): CmAddr | null;
}

const listens = new Map<CmAgent, Map<bigint, SharedListen>>();

/** The agent's listener for `sid`, created (ib_cm_listen) on first use. A REQ goes to the id whose bound address is the cma_hdr's destination, else to a wildcard one (cma_find_listener). */
export function sharedListen(agent: CmAgent, sid: bigint, dispatch: (l: SharedListen, ev: IbCmEvent) => void): SharedListen {
  let m = listens.get(agent);
  if (!m) listens.set(agent, (m = new Map<bigint, SharedListen>()));
  let l = m.get(sid);
  if (!l) {
    const ib = agent.createId((ev) => dispatch(l!, ev));
    ib.listen(sid);
    l = { ib, ids: new Set() };
    m.set(sid, l);
  }
  return l;
}

/** An id stops listening on `agent`; the agent's listener goes with the last one. */
export function leaveListen(agent: CmAgent, sid: bigint, who: ListenMember): void {
  const m = listens.get(agent);
  const l = m?.get(sid);
  if (!m || !l) return;
  l.ids.delete(who);
  if (l.ids.size > 0) return;
  m.delete(sid);
  if (m.size === 0) listens.delete(agent);
  l.ib.destroy();
}
