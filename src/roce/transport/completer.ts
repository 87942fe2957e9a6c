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
 * The named states of rxe_comp.c map onto: checkPsn (in each handler), checkAck
 * (onResponse), do_read / do_atomic, completeWqe, retry, rnrWait, error.
 */
import { WqeState, type SendWqe } from './wqe.js';
import { St, WC_STATUS, WrOp, isRdAtomic, wcOpcodeFor, type TransportQp as Qp } from './types.js';
import { AethType, NakCode, RNR_TIMER_US } from '../aeth.js';
import { Op } from '../opcode.js';
import { psnAdd, psnDiff } from '../psn.js';
import { C } from '../counters.js';
import type { PktInfo } from '../packet.js';
import { scatterSgl, sglUsable } from './sgl.js';
import { sendReadRequest } from './build.js';

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
  if (c.sampleP < 0 && c.retriedAt < 0) { c.sampleP = psnAdd(qp.req.psn, -1); c.sampleT = now; }
}


/**
 * The ACK timer is lazy: every ACK that makes progress moves the deadline
 * (restartRetransmit) without touching the timer; when the timer fires before
 * the deadline it re-arms for the rest. One timer per timeout period instead
 * of a clearTimeout/setTimeout pair per ACK.
 */
function startAckTimer(qp: Qp, ms: number): void {
  const c = qp.comp;
  c.timer = qp.device.sched.setTimer(ms, c.onTimer ??= (): void => {
    c.timer = null;
    if (c.deadline === Infinity) return;
    const left = c.deadline - qp.device.sched.now();
    if (left > 0.5) { startAckTimer(qp, left); return; }
    c.deadline = Infinity;
    onTimeout(qp);
  });
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
  if (wqe.rdCounted) { wqe.rdCounted = false; qp.req.rdAtomic--; }
  qp.sqHead++;
  if (qp.req.idx < qp.sqHead) qp.req.idx = qp.sqHead;
  if (lost) { completionLost(qp); return; }
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
      w.wrId = wqe.wrId; w.status = 'WR_FLUSH_ERR'; w.opcode = wcOpcodeFor(wqe.op); w.byteLen = 0; w.qpn = qp.qpn;
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
  if (!w) { qp.device.ports[qp.port - 1]!.counters.v[C.cq_overflow]!++; return; }
  w.wrId = r.wrId; w.status = 'WR_FLUSH_ERR'; w.opcode = 'RECV'; w.byteLen = 0; w.qpn = qp.qpn;
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
        if (psnDiff(np, qp.comp.psn) > 0) { qp.comp.psn = np; progress = true; }
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
  if (qp.req.window < MAX_WINDOW && ++qp.req.grow >= qp.req.window >> 3) { qp.req.grow = 0; qp.req.window++; }
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
function readResponse(qp: Qp, w: SendWqe, p: PktInfo, idx: number, counters: Float64Array): void {
  const total = w.lastPsn === w.firstPsn ? 1 : psnDiff(w.lastPsn, w.firstPsn) + 1;
  const done = psnDiff(qp.comp.psn, w.firstPsn); // responses in order so far
  if (idx < done || readBit(w, idx)) { counters[C.rcvd_stale_resp]!++; return; } // a duplicate
  const mtu = qp.pathMtu;
  const off = idx * mtu;
  const n = p.payloadLen;
  // Every response carries a full MTU but the last of the READ (a replayed part ends with a LAST
  // of a full MTU: where a response ends its own request is not where the READ ends).
  if (n > mtu || off + n > w.length || (n < mtu && off + n !== w.length)) { completeWqe(qp, w, St.BAD_RESP_ERR); return; }
  // The READ's local buffer may have been deregistered since the post: nothing lands in it.
  if (!sglUsable(w.sg, qp.pd, true)) { completeWqe(qp, w, St.LOC_PROT_ERR); return; }
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
    return;
  }
  let k = done + 1;
  while (k < total && readBit(w, k)) k++;
  w.sent = Math.min(w.length, k * mtu);
  qp.comp.psn = psnAdd(w.firstPsn, k);
  if (k === total) completeWqe(qp, w, St.SUCCESS);
  else if (w.rdMaxSeen - k > READ_REORDER_SLACK || w.rdMaxSeen === total - 1) askReadHole(qp, w, k, total);
  madeProgress(qp);
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

/** A response packet (ACK, NAK, READ response, atomic ACK) for an RC QP. */
export function onResponse(qp: Qp, p: PktInfo): void {
  const counters = qp.device.ports[qp.port - 1]!.counters.v;
  if (qp.state !== 'RTS' && qp.state !== 'SQD' && qp.state !== 'SQE') { counters[C.rcvd_bad_state]!++; return; }
  const b = p.buf;
  const o = p.bthOff;
  const psn = (b[o + 9]! << 16) | (b[o + 10]! << 8) | b[o + 11]!;
  const mask = p.mask;
  // Judged against what was ever sent (req.maxPsn), not the resend pointer: a response for a PSN
  // sent before a go-back-N rewind is real (rxe compares with the WQE's PSNs). A PSN never sent,
  // or a response with no WQE outstanding, is forged or corrupt: it completes nothing.
  if (qp.sqHead >= qp.sqTail || psnDiff(psn, qp.req.maxPsn) >= 0) { counters[C.rcvd_bad_psn]!++; return; }
  if (psnDiff(psn, qp.comp.psn) < 0) { counters[C.rcvd_stale_resp]!++; return; } // older than anything outstanding: a duplicate
  const cap = qp.cap.maxSendWr;

  if (p.opcode === 0x11) { // ACKNOWLEDGE
    const syn = b[o + 12]!;
    const type = (syn >> 5) & 3;
    const val = syn & 0x1f;
    if (type === AethType.ACK) {
      if (!ackUpTo(qp, psn, true) && qp.comp.retriedAt !== qp.comp.psn) retry(qp);
      return;
    }
    ackUpTo(qp, psn, false);
    if (qp.state !== 'RTS' && qp.state !== 'SQD') return;
    const head = qp.sq[qp.sqHead % cap]!;
    // A NAK names the PSN of a request that was sent: the head WQE must hold it.
    if (qp.sqHead >= qp.sqTail || !head.psnAssigned || psnDiff(psn, head.firstPsn) < 0 || psnDiff(psn, head.lastPsn) > 0) {
      counters[C.rcvd_bad_psn]!++;
      return;
    }
    if (type === AethType.RNR_NAK) {
      counters[C.rcvd_rnr_err]!++;
      if (qp.comp.rnrRetry <= 0) {
        counters[C.retry_rnr_exceeded_err]!++;
        completeWqe(qp, head, St.RNR_RETRY_EXC_ERR);
        return;
      }
      if (qp.rnrRetry !== 7) qp.comp.rnrRetry--; // IBA 9.7.5.2.8: 7 means retry forever
      stopAckTimer(qp);
      qp.comp.psn = psn;
      rewind(qp);
      if (!qp.comp.rnrTimer) {
        qp.comp.rnrTimer = qp.device.sched.setTimer(RNR_TIMER_US[val]! / 1000, () => {
          qp.comp.rnrTimer = null;
          qp.device.kick(qp);
        });
      }
      return;
    }
    if (type === AethType.NAK) {
      switch (val) {
        case NakCode.PSN_SEQ_ERROR:
          counters[C.rcvd_seq_err]!++;
          // A NAK for a PSN we already went back to is stale unless we have resent past it since
          // (then our resend was lost as well and the responder says so again).
          if (qp.comp.retriedAt !== qp.comp.psn || psnDiff(qp.req.psn, qp.comp.psn) >= 2) retry(qp);
          return;
        case NakCode.INVALID_REQUEST: completeWqe(qp, head, St.REM_INV_REQ_ERR); return;
        case NakCode.REMOTE_ACCESS_ERROR: completeWqe(qp, head, St.REM_ACCESS_ERR); return;
        case NakCode.REMOTE_OPERATIONAL_ERROR: completeWqe(qp, head, St.REM_OP_ERR); return;
        default: completeWqe(qp, head, St.BAD_RESP_ERR); return;
      }
    }
    completeWqe(qp, head, St.BAD_RESP_ERR);
    return;
  }

  // READ responses and atomic ACKs acknowledge everything before them (IBA 9.7.5.1.3).
  if (!ackUpTo(qp, psn, false)) {
    // An earlier READ/ATOMIC is still unanswered: its response was lost.
    if (qp.comp.retriedAt !== qp.comp.psn) retry(qp);
    return;
  }
  if (qp.state !== 'RTS' && qp.state !== 'SQD') return;
  if (qp.sqHead >= qp.sqTail) { counters[C.rcvd_stale_resp]!++; return; }
  const w = qp.sq[qp.sqHead % cap]!;

  if (mask & Op.READ) {
    if (w.op !== WrOp.RDMA_READ || psnDiff(psn, w.firstPsn) < 0 || psnDiff(psn, w.lastPsn) > 0) { counters[C.rcvd_stale_resp]!++; return; }
    readResponse(qp, w, p, psnDiff(psn, w.firstPsn), counters);
    return;
  }
  if (p.opcode === 0x12) { // ATOMIC_ACKNOWLEDGE
    if (!(w.op === WrOp.ATOMIC_CMP_AND_SWP || w.op === WrOp.ATOMIC_FETCH_AND_ADD) || psn !== w.firstPsn || psn !== qp.comp.psn) { counters[C.rcvd_stale_resp]!++; return; }
    if (!sglUsable(w.sg, qp.pd, true)) { completeWqe(qp, w, St.LOC_PROT_ERR); return; }
    // The original value lands in host order, as ibv atomics deliver it, scattered over the
    // WR's SGEs (8 bytes in all, checked at post) as rxe's completer copies it.
    atomicOrig.writeBigUInt64LE(b.readBigUInt64BE(p.bthOff + 16), 0);
    scatterSgl(w.sg, 0, atomicOrig, 0, 8);
    qp.comp.psn = psnAdd(psn, 1);
    completeWqe(qp, w, St.SUCCESS);
    madeProgress(qp);
  }
}
