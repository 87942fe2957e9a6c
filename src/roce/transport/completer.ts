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
import { WqeState, type SendWqe } from './wqe.js';
import { isRdAtomic, wcOpcodeFor, type TransportQp as Qp } from './types.js';
import { St, WC_STATUS, WrOp } from './types.js';
import { AethType, NakCode, RNR_TIMER_US } from '../aeth.js';
import { Hdr, Op } from '../opcode.js';
import { psnAdd, psnDiff } from '../psn.js';
import { C } from '../counters.js';
import type { PktInfo } from '../packet.js';
import { scatterSgl, sglUsable } from './sgl.js';
import { sendReadRequest } from './build.js';
import { OPC } from '../opcode.js';
import { aethType, aethValue } from '../aeth.js';
import { hdrOff } from './build.js';
import { BthView } from '../wire/bth.js';
import { AethView, AtomicAckView } from '../wire/exth.js';
import { CompState, Reason } from './role-states.js';
import { NO_OPCODE, Role } from './trace.js';

const atomicOrig = Buffer.alloc(8);

/** Local ACK timeout in ms: 4.096 µs × 2^timeout (IBA 9.7.6.1.3); 0 means none. */
export function ackTimeoutMs(timeout: number): number {
  return timeout === 0 ? 0 : (4.096 * 2 ** timeout) / 1000;
}

/**
 * A request packet just left (or the peer made progress): the ACK timer measures from now, as
 * rxe's requester re-arms its retransmit timer for every packet it sends. Timing from the first
 * unacknowledged packet instead fired for packets that were still waiting in our own queues
 * behind other QPs (issue 10: thousands of QPs resent whole messages for nothing); a loss in
 * the middle of a flight is found by the responder's sequence NAK, a loss at its tail by this
 * timer one timeout after the last packet.
 */
export function armRetransmit(qp: Qp): void {
  const c = qp.comp;
  if (qp.timeout === 0 || qp.type !== 'RC') return;
  const ms = ackTimeoutMs(qp.timeout);
  const now = qp.device.sched.now();
  c.deadline = now + ms;
  if (!c.timer) startAckTimer(qp, ms);
  // Time one packet at a time for the round-trip estimate (not one resent: Karn).
  if (c.sampleP < 0 && c.retriedAt < 0) {
    c.sampleP = psnAdd(qp.req.psn, -1);
    c.sampleT = now;
  }
}

/**
 * The ACK timer is lazy: every ACK that makes progress moves the deadline
 * (restartRetransmit) without touching the timer; when the timer fires before
 * the deadline it re-arms for the rest. One timer per timeout period instead
 * of a clearTimeout/setTimeout pair per ACK.
 */
function startAckTimer(qp: Qp, ms: number): void {
  const c = qp.comp;
  c.timer = qp.device.sched.setTimer(
    ms,
    (c.onTimer ??= (): void => {
      c.timer = null;
      if (c.deadline === Infinity) return;
      const left = c.deadline - qp.device.sched.now();
      if (left > 0.5) {
        startAckTimer(qp, left);
        return;
      }
      c.deadline = Infinity;
      onTimeout(qp);
    }),
  );
}

/** Stops the ACK timer (retry, RNR wait, flush, reset, close). */
export function stopAckTimer(qp: Qp): void {
  const c = qp.comp;
  qp.device.sched.clearTimer(c.timer);
  c.timer = null;
  c.deadline = Infinity;
  qp.device.sched.clearTimer(c.probeTimer);
  c.probeTimer = null;
  c.probeAt = Infinity;
}

/** Packets sent and not yet acknowledged (IBA 9.7.6.1.3: what the ACK timer guards). */
export function unacked(qp: Qp): boolean {
  return psnDiff(qp.req.psn, qp.comp.psn) > 0;
}

function restartRetransmit(qp: Qp): void {
  qp.comp.deadline = Infinity;
  if (unacked(qp)) armRetransmit(qp);
}

function onTimeout(qp: Qp): void {
  if (qp.closed || (qp.state !== 'RTS' && qp.state !== 'SQD')) return;
  if (!unacked(qp)) return;
  qp.device.ports[qp.port - 1]!.counters.v[C.timeouts]!++;
  qp.traceRing.record(Role.COMP, CompState.ERROR_RETRY, NO_OPCODE, qp.comp.psn, Reason.TIMEOUT);
  retry(qp);
}

/** Posts the completion of the head send WQE (errors always; success when signaled). */
export function completeWqe(qp: Qp, wqe: SendWqe, status: number): void {
  let lost = false;
  if (status !== St.SUCCESS || wqe.signaled) {
    const w = qp.sendCq.slot();
    if (w) {
      w.wrId = wqe.wrId;
      w.status = WC_STATUS[status]!;
      w.opcode = wcOpcodeFor(wqe.op);
      w.byteLen = wqe.length;
      w.qpn = qp.qpn;
      qp.sendCq.commit(status !== St.SUCCESS);
    } else lost = true;
  }
  wqe.state = WqeState.DONE;
  if (wqe.rdCounted) {
    wqe.rdCounted = false;
    qp.req.rdAtomic--;
  }
  qp.sqHead++;
  if (qp.req.idx < qp.sqHead) qp.req.idx = qp.sqHead;
  if (lost) {
    completionLost(qp);
    return;
  }
  if (status !== St.SUCCESS) {
    if (qp.state !== 'ERR') qp.setState('ERR');
    return;
  }
  if (qp.state === 'SQD' && qp.sqHead === qp.req.idx && qp.sqDrainNotify) qp.device.asyncEvent({ type: 'SQ_DRAINED', qp });
}

/**
 * A completion the CQ had no room for (the CQ raised CQ_ERR). rxe moves the QP to ERR rather than
 * lose completions silently (rxe_resp.c RESPST_ERR_CQ_OVERFLOW); the QP's owner learns it from
 * QP_FATAL. Completions after that are flushes into the same full CQ and are dropped with it.
 */
export function completionLost(qp: Qp): void {
  qp.device.ports[qp.port - 1]!.counters.v[C.cq_overflow]!++;
  if (qp.state === 'ERR' || qp.state === 'RESET') return;
  qp.setState('ERR');
  qp.device.asyncEvent({ type: 'QP_FATAL', qp });
}

/** UC and UD: a send WQE is done once its last packet is out (no ACKs). */
export function completeUnacked(qp: Qp): void {
  while (qp.sqHead < qp.req.idx) {
    const w = qp.sq[qp.sqHead % qp.cap.maxSendWr]!;
    if (w.state !== WqeState.PENDING) break;
    completeWqe(qp, w, St.SUCCESS);
  }
}

/** Moving to ERR (IBA 10.3.1): every outstanding WR completes with WR_FLUSH_ERR. */
export function flushQp(qp: Qp): void {
  stopAckTimer(qp);
  qp.device.sched.clearTimer(qp.comp.rnrTimer);
  qp.comp.rnrTimer = null;
  while (qp.sqHead < qp.sqTail) {
    const wqe = qp.sq[qp.sqHead % qp.cap.maxSendWr]!;
    const w = qp.sendCq.slot();
    if (w) {
      w.wrId = wqe.wrId;
      w.status = 'WR_FLUSH_ERR';
      w.opcode = wcOpcodeFor(wqe.op);
      w.byteLen = 0;
      w.qpn = qp.qpn;
      qp.sendCq.commit(true);
    } else qp.device.ports[qp.port - 1]!.counters.v[C.cq_overflow]!++;
    wqe.state = WqeState.DONE;
    wqe.rdCounted = false;
    qp.sqHead++;
  }
  qp.req.idx = qp.sqHead;
  qp.req.rdAtomic = 0;
  if (qp.resp.wqe) {
    flushRecv(qp, qp.resp.wqe);
    qp.resp.wqe = null;
  }
  if (!qp.srq) {
    while (qp.rqCount > 0) flushRecv(qp, qp.takeRecv()!);
  } else if (qp.state === 'ERR') {
    // IBA 11.6.3: a QP on an SRQ that enters the error state reports LAST_WQE_REACHED.
    qp.device.asyncEvent({ type: 'LAST_WQE_REACHED', qp });
  }
  qp.resp.reads.length = 0;
  qp.resp.backlog.length = 0;
  qp.resp.stash.clear();
}

function flushRecv(qp: Qp, r: { wrId: number }): void {
  const w = qp.recvCq.slot();
  if (!w) {
    qp.device.ports[qp.port - 1]!.counters.v[C.cq_overflow]!++;
    return;
  }
  w.wrId = r.wrId;
  w.status = 'WR_FLUSH_ERR';
  w.opcode = 'RECV';
  w.byteLen = 0;
  w.qpn = qp.qpn;
  qp.recvCq.commit(true);
}

/** Go-back-N (IBA 9.7.5.2.8): resend from comp.psn, keeping what was acknowledged. */
export function rewind(qp: Qp): void {
  const cap = qp.cap.maxSendWr;
  const mtu = qp.pathMtu;
  for (let n = qp.sqHead; n < qp.sqTail; n++) {
    const w = qp.sq[n % cap]!;
    // Every WQE sent at least once is rewound, also one an earlier rewind left waiting: a partial
    // ACK may since have moved comp.psn into it, and its resend must start there, at its old PSNs.
    if (!w.psnAssigned) break;
    w.rdAsked = -1; // a READ's holes may be asked for again after a rewind
    const into = psnDiff(qp.comp.psn, w.firstPsn);
    if (into > 0 && psnDiff(qp.comp.psn, w.lastPsn) <= 0 && !(w.op === WrOp.ATOMIC_CMP_AND_SWP || w.op === WrOp.ATOMIC_FETCH_AND_ADD)) {
      w.sent = into * mtu;
      w.state = WqeState.PROCESSING;
    } else {
      w.sent = 0;
      w.state = WqeState.POSTED;
    }
  }
  qp.req.idx = qp.sqHead;
  qp.req.psn = qp.comp.psn;
  qp.req.sinceAckReq = 0;
}

/** A transport retry (timeout, sequence NAK, implicit NAK): counted against retry_cnt. */
export function retry(qp: Qp): void {
  const counters = qp.device.ports[qp.port - 1]!.counters.v;
  const head = qp.sq[qp.sqHead % qp.cap.maxSendWr]!;
  if (qp.comp.retryCnt <= 0) {
    counters[C.retry_exceeded_err]!++;
    qp.traceRing.record(Role.COMP, CompState.ERROR, NO_OPCODE, qp.comp.psn, Reason.RETRY_EXCEEDED);
    completeWqe(qp, head, St.RETRY_EXC_ERR);
    return;
  }
  // retry_cnt = 7 retries forever, as rxe does (rxe_comp.c; what ibv_rc_pingpong and perftest
  // ask for). The IBA reads 7 as a count; rxe is the reference here (README, "differs").
  if (qp.retryCnt !== 7) qp.comp.retryCnt--;
  counters[C.completer_retry_err]!++;
  qp.req.window = Math.max(MIN_WINDOW, qp.req.window >> 1);
  qp.comp.retriedAt = qp.comp.psn;
  qp.comp.sampleP = -1; // Karn: no round-trip sample across a resend
  stopAckTimer(qp);
  rewind(qp);
  qp.device.kick(qp);
}

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
    completeWqe(qp, w, St.SUCCESS);
    progress = true;
    if (qp.state !== 'RTS' && qp.state !== 'SQD') return true;
  }
  if (progress) madeProgress(qp);
  return true;
}

const MIN_WINDOW = 8;
const MAX_WINDOW = 128;

function madeProgress(qp: Qp): void {
  // A late response from before a rewind can acknowledge past where the requester resumed:
  // restart the requester from comp.psn so PSNs keep matching their packets.
  if (psnDiff(qp.comp.psn, qp.req.psn) > 0) rewind(qp);
  // Additive increase: one more PSN of window per window's worth of progress.
  if (qp.req.window < MAX_WINDOW && ++qp.req.grow >= qp.req.window >> 3) {
    qp.req.grow = 0;
    qp.req.window++;
  }
  // rxe resets the retry budgets whenever the peer makes progress.
  qp.comp.retryCnt = qp.retryCnt;
  qp.comp.rnrRetry = qp.rnrRetry;
  qp.comp.retriedAt = -1;
  const c = qp.comp;
  c.probes = 0;
  if (c.sampleP >= 0 && psnDiff(c.psn, c.sampleP) > 0) {
    // A round-trip sample (RFC 6298's smoothing): what the tail-loss probe waits for (requester.ts).
    const rtt = qp.device.sched.now() - c.sampleT;
    c.srtt = c.srtt === 0 ? rtt : c.srtt + (rtt - c.srtt) / 8;
    c.sampleP = -1;
  }
  restartRetransmit(qp);
  qp.device.kick(qp);
}

/** Responses a READ may run ahead of a missing one before the missing one is asked for again. */
const READ_REORDER_SLACK = 3;

function readBit(w: SendWqe, i: number): boolean {
  return w.rdHave !== null && (w.rdHave[i >> 3]! & (1 << (i & 7))) !== 0;
}

/**
 * One READ response for the head WQE, `idx` packets into it (IBA 9.7.5.2.5 / rxe do_read). The
 * PSN says where its bytes go, so a response that arrives ahead of a missing one is kept (a bit
 * per packet) instead of thrown away, and only the hole is asked for again: a READ request for
 * [first missing, next one received), a part of the original request, which the responder replays
 * (rxe's duplicate_request takes exactly that range). One hole request at a time, always at the
 * first missing response, so every later request (a rewind's too) starts at or above it, as
 * rxe requires of a replay. Go-back-N restarted the whole rest of the stream per loss instead:
 * 2.6x the packets of a 16 MiB READ at 1% loss, 21x at 5% + reordering (issue 10).
 */
function readResponse(qp: Qp, w: SendWqe, p: PktInfo, idx: number, counters: Float64Array): number {
  const total = w.lastPsn === w.firstPsn ? 1 : psnDiff(w.lastPsn, w.firstPsn) + 1;
  const done = psnDiff(qp.comp.psn, w.firstPsn); // responses in order so far
  if (idx < done || readBit(w, idx)) {
    counters[C.rcvd_stale_resp]!++;
    return Reason.STALE;
  } // a duplicate
  const mtu = qp.pathMtu;
  const off = idx * mtu;
  const n = p.payloadLen;
  // Every response carries a full MTU but the last of the READ (a replayed part ends with a LAST
  // of a full MTU: where a response ends its own request is not where the READ ends).
  if (n > mtu || off + n > w.length || (n < mtu && off + n !== w.length)) {
    completeWqe(qp, w, St.BAD_RESP_ERR);
    return Reason.BAD_RESPONSE;
  }
  // The READ's local buffer may have been deregistered since the post: nothing lands in it.
  if (!sglUsable(w.sg, qp.pd, true)) {
    completeWqe(qp, w, St.LOC_PROT_ERR);
    return Reason.LOC_PROT;
  }
  scatterSgl(w.sg, off, p.buf, p.payloadOff, n);
  if (idx > w.rdMaxSeen) w.rdMaxSeen = idx;
  if (idx !== done) {
    // Ahead of a missing one: keep it, and ask for the hole once the stream has clearly passed it.
    const bytes = (total + 7) >> 3;
    if (w.rdHave === null || w.rdHave.length < bytes) {
      const m = new Uint8Array(Math.max(bytes, 64));
      if (w.rdHave !== null) m.set(w.rdHave);
      w.rdHave = m;
    }
    w.rdHave[idx >> 3]! |= 1 << (idx & 7);
    if (idx - done > READ_REORDER_SLACK || idx === total - 1) askReadHole(qp, w, done, total);
    return Reason.READ_HOLE;
  }
  let k = done + 1;
  while (k < total && readBit(w, k)) k++;
  w.sent = Math.min(w.length, k * mtu);
  qp.comp.psn = psnAdd(w.firstPsn, k);
  if (k === total) completeWqe(qp, w, St.SUCCESS);
  else if (w.rdMaxSeen - k > READ_REORDER_SLACK || w.rdMaxSeen === total - 1) askReadHole(qp, w, k, total);
  madeProgress(qp);
  return Reason.READ_DATA;
}

/** Asks again for the responses from `from` up to the next one received (once per hole). */
function askReadHole(qp: Qp, w: SendWqe, from: number, total: number): void {
  if (w.rdAsked === from) return;
  let to = from + 1;
  while (to < total && !readBit(w, to)) to++;
  const mtu = qp.pathMtu;
  const off = from * mtu;
  const len = Math.min(w.length, to * mtu) - off;
  const port = qp.device.ports[qp.port - 1]!;
  if (!sendReadRequest(port, qp.dest, qp.destQpn, psnAdd(w.firstPsn, from), w.remoteAddr + BigInt(off), w.rkey, len)) return;
  w.rdAsked = from;
  port.counters.v[C.read_hole_requests]!++;
  armRetransmit(qp);
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
  v!: Float64Array;
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
    c.v = qp.device.ports[qp.port - 1]!.counters.v;
    c.psn = c.bth.bind(p.buf, p.bthOff).psn;
    c.wqe = null;
    c.status = St.SUCCESS;
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
    c.v[C.rcvd_bad_state]!++;
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
    c.v[C.rcvd_bad_psn]!++;
    c.reason = Reason.BAD_PSN;
    return CompState.DROP;
  }
  // Older than anything outstanding: a duplicate.
  if (psnDiff(c.psn, qp.comp.psn) < 0) {
    c.v[C.rcvd_stale_resp]!++;
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
    c.v[C.rcvd_bad_psn]!++;
    c.reason = Reason.BAD_PSN;
    return CompState.DROP;
  }
  c.wqe = head;
  if (type === AethType.RNR_NAK) return CompState.RNR_RETRY;
  if (type === AethType.NAK) {
    const code = c.val;
    if (code === NakCode.PSN_SEQ_ERROR) {
      c.v[C.rcvd_seq_err]!++;
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
    c.status = row ? row[0] : St.BAD_RESP_ERR;
    c.reason = row ? row[1] : Reason.BAD_RESPONSE;
    return CompState.ERROR;
  }
  c.status = St.BAD_RESP_ERR; // the reserved AETH type
  c.reason = Reason.BAD_RESPONSE;
  return CompState.ERROR;
}

/** The completion status a NAK code gives the head WQE (IBA 9.7.5.2.4, table 9.9), and the trace reason. */
const NAK_STATUS: readonly (readonly [status: number, reason: number] | undefined)[] = (() => {
  const t: (readonly [number, number])[] = [];
  t[NakCode.INVALID_REQUEST] = [St.REM_INV_REQ_ERR, Reason.NAK_INVALID];
  t[NakCode.REMOTE_ACCESS_ERROR] = [St.REM_ACCESS_ERR, Reason.NAK_ACCESS];
  t[NakCode.REMOTE_OPERATIONAL_ERROR] = [St.REM_OP_ERR, Reason.NAK_OPERATIONAL];
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
    c.v[C.rcvd_stale_resp]!++;
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
    c.v[C.rcvd_stale_resp]!++;
    c.reason = Reason.STALE;
    return CompState.DROP;
  }
  c.reason = readResponse(c.qp, w, c.p, psnDiff(psn, w.firstPsn), c.v);
  return CompState.DONE;
}

const atomicOrigView = new AtomicAckView();

/** ATOMIC (rxe do_atomic): the original value into the WR's buffer, and the WQE completes. */
function atomicState(c: CompCtx): number {
  const qp = c.qp;
  const w = c.wqe!;
  const psn = c.psn;
  if (!(w.op === WrOp.ATOMIC_CMP_AND_SWP || w.op === WrOp.ATOMIC_FETCH_AND_ADD) || psn !== w.firstPsn || psn !== qp.comp.psn) {
    c.v[C.rcvd_stale_resp]!++;
    c.reason = Reason.STALE;
    return CompState.DROP;
  }
  if (!sglUsable(w.sg, qp.pd, true)) {
    c.status = St.LOC_PROT_ERR;
    c.reason = Reason.LOC_PROT;
    return CompState.ERROR;
  }
  // The original value lands in host order, as ibv atomics deliver it, scattered over the
  // WR's SGEs (8 bytes in all, checked at post) as rxe's completer copies it.
  atomicOrig.writeBigUInt64LE(atomicOrigView.bind(c.p.buf, c.p.bthOff + hdrOff(c.p.opcode, Hdr.ATMACK)).origData, 0);
  scatterSgl(w.sg, 0, atomicOrig, 0, 8);
  qp.comp.psn = psnAdd(psn, 1);
  completeWqe(qp, w, St.SUCCESS);
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
  c.v[C.rcvd_rnr_err]!++;
  if (qp.comp.rnrRetry <= 0) {
    c.v[C.retry_rnr_exceeded_err]!++;
    c.reason = Reason.RNR_EXCEEDED;
    completeWqe(qp, head, St.RNR_RETRY_EXC_ERR);
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
