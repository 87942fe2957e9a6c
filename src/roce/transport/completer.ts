/**
 * The completer (IBA 9.7.5.2, rxe_comp.c): consumes ACKs, NAKs, READ
 * responses and atomic ACKs for an RC QP, completes send WQEs in order, and
 * drives recovery: the local ACK timer (4.096 µs × 2^timeout) and PSN
 * sequence NAKs rewind the requester (go-back-N) against retry_cnt (7 =
 * forever, as in rxe); RNR NAKs
 * wait out the RNR timer against rnr_retry (7 = forever). An ACK never
 * completes a READ or ATOMIC implicitly: its response is missing, so that is
 * a retry (IBA 9.7.5.1.3 implicit NAK).
 *
 * A response runs rxe_comp.c's states (role-states.ts CompState), one step function each, from
 * GET_ACK until DONE: GET_ACK → CHECK_PSN → CHECK_ACK → COMP_ACK | GET_WQE → READ | ATOMIC, or
 * ERROR_RETRY / RNR_RETRY / ERROR / DROP. rxe's WRITE_SEND, UPDATE_COMP and COMP_WQE are ackUpTo
 * and completeWqe (an ACK completes several WQEs at once). The state a response ends in and why
 * is recorded in the QP's trace ring (trace.ts), as are ACK timeouts and exhausted retries.
 */
import type { SendWqe } from './wqe.js';
import { isRdAtomic, type TransportQp as Qp } from './types.js';
import { WcStatusIdx, WrOp } from './types.js';
import { AethType, NakCode, RNR_TIMER_US } from '../aeth.js';
import { Hdr, Op } from '../opcode.js';
import { psnAdd, psnDiff } from '../psn.js';
import { Ctr } from '../counters.js';
import type { PktInfo } from '../packet.js';
import { scatterSgl, sglUsable } from './sgl.js';
import { OPC } from '../opcode.js';
import { aethType, aethValue } from '../aeth.js';
import { hdrOff } from './build.js';
import { BthView } from '../wire/bth.js';
import { AethView, AtomicAckView } from '../wire/exth.js';
import { CompState, Reason } from './role-states.js';
import { Role } from './trace.js';
import { completeWqe } from './complete.js';
import { madeProgress, retry, rewind, stopAckTimer } from './retry.js';
import { readResponse } from './read-response.js';

// The completer's helpers live in complete.ts, flush.ts, retry.ts and read-response.ts; their names stay importable from here.
export { completeWqe, completionLost, completeUnacked } from './complete.js';
export { flushQp } from './flush.js';
export { ackTimeoutMs, armRetransmit, stopAckTimer, unacked, rewind, retry } from './retry.js';

const atomicOrig = Buffer.alloc(8);

/** Acknowledges WQEs up to psn (inclusive or not). False when a READ/ATOMIC would be passed over. */
function ackUpTo(qp: Qp, psn: number, inclusive: boolean): boolean {
  const cap = qp.cap.maxSendWr;
  let progress = false;
  while (qp.sqHead < qp.sqTail) {
    const w = qp.sq[qp.sqHead % cap]!;
    // A WQE waiting to be resent after a go-back-N rewind keeps its PSNs: an ACK for them counts.
    if (!w.psnAssigned) break;
    const d = psnDiff(psn, w.lastPsn);
    const covered = inclusive ? d >= 0 : d > 0;
    if (!covered) {
      // A partial ACK of a multi-packet SEND/WRITE moves comp.psn inside it.
      if (!isRdAtomic(w.op) && psnDiff(psn, w.firstPsn) >= 0) {
        const np = inclusive ? psnAdd(psn, 1) : psn;
        if (psnDiff(np, qp.comp.psn) > 0) {
          qp.comp.psn = np;
          progress = true;
        }
      }
      break;
    }
    if (isRdAtomic(w.op)) {
      if (progress) madeProgress(qp);
      return false;
    }
    qp.comp.psn = psnAdd(w.lastPsn, 1);
    completeWqe(qp, w, WcStatusIdx.SUCCESS);
    progress = true;
    if (qp.state !== 'RTS' && qp.state !== 'SQD') return true;
  }
  if (progress) madeProgress(qp);
  return true;
}

type CompStep = (c: CompCtx) => number;

/**
 * One response being processed: its fields (read once through the views), the QP, and what the
 * steps found. Pooled per nesting level as the responder's are (a completion's callback may run
 * more of the transport), so a response allocates nothing.
 */
class CompCtx {
  qp!: Qp;
  p!: PktInfo;
  counts!: Float64Array;
  readonly bth = new BthView();
  readonly aeth = new AethView();
  psn = 0;
  /** the head send WQE the response is about (CHECK_ACK, GET_WQE) */
  wqe: SendWqe | null = null;
  /** the completion status for ERROR */
  status = 0;
  /** the AETH syndrome's value bits (RNR timer code, NAK code) */
  val = 0;
  reason: number = Reason.NONE;
}

const compPool: CompCtx[] = [];
let compDepth = 0;

/** A response packet (ACK, NAK, READ response, atomic ACK) for an RC QP: runs the completer's states. */
export function onResponse(qp: Qp, p: PktInfo): void {
  const c = compPool[compDepth] ?? (compPool[compDepth] = new CompCtx());
  compDepth++;
  try {
    c.qp = qp;
    c.p = p;
    c.counts = qp.device.ports[qp.port - 1]!.counters.counts;
    c.psn = c.bth.bind(p.buf, p.bthOff).psn;
    c.wqe = null;
    c.status = WcStatusIdx.SUCCESS;
    c.val = 0;
    c.reason = Reason.NONE;
    let s: number = CompState.GET_ACK;
    for (;;) {
      const next = COMP_STEPS[s]!(c);
      if (next === CompState.DONE) break;
      s = next;
    }
    qp.traceRing.record(Role.COMP, s, p.opcode, c.psn, c.reason);
  } finally {
    compDepth--;
  }
}

/** GET_ACK: the QP takes responses only in RTS, SQD and SQE. */
function getAck(c: CompCtx): number {
  const st = c.qp.state;
  if (st !== 'RTS' && st !== 'SQD' && st !== 'SQE') {
    c.counts[Ctr.rcvd_bad_state]!++;
    c.reason = Reason.BAD_STATE;
    return CompState.DROP;
  }
  return CompState.CHECK_PSN;
}

/**
 * CHECK_PSN: judged against what was ever sent (req.maxPsn), not the resend pointer: a response
 * for a PSN sent before a go-back-N rewind is real (rxe compares with the WQE's PSNs). A PSN never
 * sent, or a response with no WQE outstanding, is forged or corrupt: it completes nothing.
 */
function checkPsn(c: CompCtx): number {
  const qp = c.qp;
  if (qp.sqHead >= qp.sqTail || psnDiff(c.psn, qp.req.maxPsn) >= 0) {
    c.counts[Ctr.rcvd_bad_psn]!++;
    c.reason = Reason.BAD_PSN;
    return CompState.DROP;
  }
  // Older than anything outstanding: a duplicate.
  if (psnDiff(c.psn, qp.comp.psn) < 0) {
    c.counts[Ctr.rcvd_stale_resp]!++;
    c.reason = Reason.STALE;
    return CompState.DROP;
  }
  return CompState.CHECK_ACK;
}

function live(qp: Qp): boolean {
  return qp.state === 'RTS' || qp.state === 'SQD';
}

/** CHECK_ACK: what the response says (IBA 9.7.5.2): an ACK, an RNR NAK, a NAK, or data (READ response, atomic ACK). */
function checkAck(c: CompCtx): number {
  const qp = c.qp;
  const p = c.p;
  if (p.opcode !== OPC.RC_ACKNOWLEDGE) {
    // READ responses and atomic ACKs acknowledge everything before them (IBA 9.7.5.1.3).
    if (!ackUpTo(qp, c.psn, false)) {
      // An earlier READ/ATOMIC is still unanswered: its response was lost.
      c.reason = Reason.IMPLICIT_NAK;
      return qp.comp.retriedAt !== qp.comp.psn ? CompState.ERROR_RETRY : CompState.DONE;
    }
    if (!live(qp)) return CompState.DONE;
    return CompState.GET_WQE;
  }
  const syn = c.aeth.bind(p.buf, p.bthOff + hdrOff(p.opcode, Hdr.AETH)).syndrome;
  const type = aethType(syn);
  c.val = aethValue(syn);
  if (type === AethType.ACK) return CompState.COMP_ACK;
  ackUpTo(qp, c.psn, false);
  if (!live(qp)) return CompState.DONE;
  const head = qp.sq[qp.sqHead % qp.cap.maxSendWr]!;
  // A NAK names the PSN of a request that was sent: the head WQE must hold it.
  if (qp.sqHead >= qp.sqTail || !head.psnAssigned || psnDiff(c.psn, head.firstPsn) < 0 || psnDiff(c.psn, head.lastPsn) > 0) {
    c.counts[Ctr.rcvd_bad_psn]!++;
    c.reason = Reason.BAD_PSN;
    return CompState.DROP;
  }
  c.wqe = head;
  if (type === AethType.RNR_NAK) return CompState.RNR_RETRY;
  if (type === AethType.NAK) {
    const code = c.val;
    if (code === NakCode.PSN_SEQ_ERROR) {
      c.counts[Ctr.rcvd_seq_err]!++;
      // A NAK for a PSN we already went back to is stale unless we have resent past it since
      // (then our resend was lost as well and the responder says so again).
      if (qp.comp.retriedAt !== qp.comp.psn || psnDiff(qp.req.psn, qp.comp.psn) >= 2) {
        c.reason = Reason.SEQ_NAK;
        return CompState.ERROR_RETRY;
      }
      c.reason = Reason.SEQ_NAK_STALE;
      return CompState.DONE;
    }
    const row = NAK_STATUS[code];
    c.status = row ? row[0] : WcStatusIdx.BAD_RESP_ERR;
    c.reason = row ? row[1] : Reason.BAD_RESPONSE;
    return CompState.ERROR;
  }
  c.status = WcStatusIdx.BAD_RESP_ERR; // the reserved AETH type
  c.reason = Reason.BAD_RESPONSE;
  return CompState.ERROR;
}

/** The completion status a NAK code gives the head WQE (IBA 9.7.5.2.4, table 9.9), and the trace reason. */
const NAK_STATUS: readonly (readonly [status: number, reason: number] | undefined)[] = (() => {
  const t: (readonly [number, number])[] = [];
  t[NakCode.INVALID_REQUEST] = [WcStatusIdx.REM_INV_REQ_ERR, Reason.NAK_INVALID];
  t[NakCode.REMOTE_ACCESS_ERROR] = [WcStatusIdx.REM_ACCESS_ERR, Reason.NAK_ACCESS];
  t[NakCode.REMOTE_OPERATIONAL_ERROR] = [WcStatusIdx.REM_OP_ERR, Reason.NAK_OPERATIONAL];
  return t;
})();

/** COMP_ACK: an ACK completes every SEND/WRITE up to its PSN; one that would pass a READ/ATOMIC is an implicit NAK. */
function compAck(c: CompCtx): number {
  const qp = c.qp;
  if (!ackUpTo(qp, c.psn, true) && qp.comp.retriedAt !== qp.comp.psn) {
    c.reason = Reason.IMPLICIT_NAK;
    return CompState.ERROR_RETRY;
  }
  c.reason = Reason.ACKED;
  return CompState.DONE;
}

/** GET_WQE: the head WQE a READ response or atomic ACK is for. */
function getWqe(c: CompCtx): number {
  const qp = c.qp;
  if (qp.sqHead >= qp.sqTail) {
    c.counts[Ctr.rcvd_stale_resp]!++;
    c.reason = Reason.STALE;
    return CompState.DROP;
  }
  c.wqe = qp.sq[qp.sqHead % qp.cap.maxSendWr]!;
  if (c.p.mask & Op.READ) return CompState.READ;
  if (c.p.opcode === OPC.RC_ATOMIC_ACKNOWLEDGE) return CompState.ATOMIC;
  return CompState.DONE;
}

/** READ (rxe do_read): a READ response for the head WQE, placed by its PSN (readResponse). */
function readState(c: CompCtx): number {
  const w = c.wqe!;
  const psn = c.psn;
  if (w.op !== WrOp.RDMA_READ || psnDiff(psn, w.firstPsn) < 0 || psnDiff(psn, w.lastPsn) > 0) {
    c.counts[Ctr.rcvd_stale_resp]!++;
    c.reason = Reason.STALE;
    return CompState.DROP;
  }
  c.reason = readResponse(c.qp, w, c.p, psnDiff(psn, w.firstPsn), c.counts);
  return CompState.DONE;
}

const atomicOrigView = new AtomicAckView();

/** ATOMIC (rxe do_atomic): the original value into the WR's buffer, and the WQE completes. */
function atomicState(c: CompCtx): number {
  const qp = c.qp;
  const w = c.wqe!;
  const psn = c.psn;
  if (!(w.op === WrOp.ATOMIC_CMP_AND_SWP || w.op === WrOp.ATOMIC_FETCH_AND_ADD) || psn !== w.firstPsn || psn !== qp.comp.psn) {
    c.counts[Ctr.rcvd_stale_resp]!++;
    c.reason = Reason.STALE;
    return CompState.DROP;
  }
  if (!sglUsable(w.sg, qp.pd, true)) {
    c.status = WcStatusIdx.LOC_PROT_ERR;
    c.reason = Reason.LOC_PROT;
    return CompState.ERROR;
  }
  // The original value lands in host order, as ibv atomics deliver it, scattered over the
  // WR's SGEs (8 bytes in all, checked at post) as rxe's completer copies it.
  atomicOrig.writeBigUInt64LE(atomicOrigView.bind(c.p.buf, c.p.bthOff + hdrOff(c.p.opcode, Hdr.ATMACK)).origData, 0);
  scatterSgl(w.sg, 0, atomicOrig, 0, 8);
  qp.comp.psn = psnAdd(psn, 1);
  completeWqe(qp, w, WcStatusIdx.SUCCESS);
  madeProgress(qp);
  c.reason = Reason.ATOMIC_DONE;
  return CompState.DONE;
}

/** ERROR: the head WQE completes with the status found (the QP then goes to ERR, completeWqe). */
function errorState(c: CompCtx): number {
  completeWqe(c.qp, c.wqe!, c.status);
  return CompState.DONE;
}

/** ERROR_RETRY: go-back-N against retry_cnt (retry). */
function errorRetry(c: CompCtx): number {
  retry(c.qp);
  return CompState.DONE;
}

/** RNR_RETRY (IBA 9.7.5.2.8): wait out the RNR timer the NAK names, then resend from its PSN; against rnr_retry. */
function rnrRetry(c: CompCtx): number {
  const qp = c.qp;
  const head = c.wqe!;
  c.counts[Ctr.rcvd_rnr_err]!++;
  if (qp.comp.rnrRetry <= 0) {
    c.counts[Ctr.retry_rnr_exceeded_err]!++;
    c.reason = Reason.RNR_EXCEEDED;
    completeWqe(qp, head, WcStatusIdx.RNR_RETRY_EXC_ERR);
    return CompState.DONE;
  }
  c.reason = Reason.RNR_NAK;
  if (qp.rnrRetry !== 7) qp.comp.rnrRetry--; // IBA 9.7.5.2.8: 7 means retry forever
  stopAckTimer(qp);
  qp.comp.psn = c.psn;
  rewind(qp);
  if (!qp.comp.rnrTimer) {
    qp.comp.rnrTimer = qp.device.sched.setTimer(RNR_TIMER_US[c.val]! / 1000, () => {
      qp.comp.rnrTimer = null;
      qp.device.kick(qp);
    });
  }
  return CompState.DONE;
}

function compDrop(): number {
  return CompState.DONE;
}

/** The step of each state (CompState order). WRITE_SEND, UPDATE_COMP and COMP_WQE are inside ackUpTo / completeWqe. */
const COMP_STEPS: readonly CompStep[] = (() => {
  const t: CompStep[] = [];
  t[CompState.GET_ACK] = getAck;
  t[CompState.CHECK_PSN] = checkPsn;
  t[CompState.CHECK_ACK] = checkAck;
  t[CompState.COMP_ACK] = compAck;
  t[CompState.GET_WQE] = getWqe;
  t[CompState.READ] = readState;
  t[CompState.ATOMIC] = atomicState;
  t[CompState.ERROR] = errorState;
  t[CompState.ERROR_RETRY] = errorRetry;
  t[CompState.RNR_RETRY] = rnrRetry;
  t[CompState.DROP] = compDrop;
  return t;
})();
