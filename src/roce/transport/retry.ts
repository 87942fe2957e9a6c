/**
 * Loss recovery of an RC requester (IBA 9.7.6.1.3, 9.7.5.2.8; rxe_comp.c's retransmit timer and
 * ERROR_RETRY): the local ACK timer (lazy-timer.ts: one timer per timeout period), go-back-N rewind of the
 * send queue to comp.psn, a retry counted against retry_cnt, and what progress from the peer
 * resets (the retry budgets, the window's additive increase, the round-trip estimate).
 * The completer (completer.ts) and the requester (requester.ts) drive it.
 */
import { WqeState } from './wqe.js';
import type { TransportQp as Qp } from './types.js';
import { WcStatusIdx, WrOp } from './types.js';
import { psnAdd, psnDiff } from '../psn.js';
import { Ctr } from '../counters.js';
import { CompState, Reason } from './role-states.js';
import { NO_OPCODE, Role } from './trace.js';
import { completeWqe } from './complete.js';

/**
 * The local ACK timeout of each 5-bit `timeout` attribute, in ms: 4.096 µs × 2^timeout (IBA
 * 9.7.6.1.3); 0 means none. A table: it is read for every request packet sent (armRetransmit),
 * where the power showed in profiles (issue 15).
 */
const ACK_TIMEOUT_MS = Float64Array.from({ length: 32 }, (_, t) => (t === 0 ? 0 : (4.096 * 2 ** t) / 1000));

/** Local ACK timeout in ms: 4.096 µs × 2^timeout (IBA 9.7.6.1.3); 0 means none. */
export function ackTimeoutMs(timeout: number): number {
  return ACK_TIMEOUT_MS[timeout & 31]!;
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
  const sched = qp.device.sched;
  const now = sched.now();
  // Never before the deadline (IBA 9.7.6.1.3: the timeout is a lower bound; the timer's slack is
  // 0). Re-arming only for more than 0.5 ms fired up to half a millisecond early, a third of
  // timeout 8's 1 ms: READs streaming in order timed out and restarted (issue 15).
  c.ack.arm(sched, qp, onAckTimer, ackTimeoutMs(qp.timeout), now);
  // Time one packet at a time for the round-trip estimate (not one resent: Karn).
  if (c.sampleP < 0 && c.retriedAt < 0) {
    c.sampleP = psnAdd(qp.req.psn, -1);
    c.sampleT = now;
  }
}

/** Stops the ACK timer and both probes (retry, RNR wait, flush, reset, close). */
export function stopAckTimer(qp: Qp): void {
  const c = qp.comp;
  c.ack.stop();
  c.probe.stop();
  c.hole.stop();
  c.holePsn = -1;
}

/** Packets sent and not yet acknowledged (IBA 9.7.6.1.3: what the ACK timer guards). */
export function unacked(qp: Qp): boolean {
  return psnDiff(qp.req.psn, qp.comp.psn) > 0;
}

function restartRetransmit(qp: Qp): void {
  qp.comp.ack.at = Infinity;
  if (unacked(qp)) armRetransmit(qp);
}

function onAckTimer(qp: Qp): void {
  if (qp.closed || (qp.state !== 'RTS' && qp.state !== 'SQD')) return;
  if (!unacked(qp)) return;
  qp.device.ports[qp.port - 1]!.counters.counts[Ctr.timeouts]!++;
  qp.traceRing.record(Role.COMP, CompState.ERROR_RETRY, NO_OPCODE, qp.comp.psn, Reason.TIMEOUT);
  retry(qp);
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
    w.rdAskedEnd = -1;
    const into = psnDiff(qp.comp.psn, w.firstPsn);
    if (into > 0 && psnDiff(qp.comp.psn, w.lastPsn) <= 0 && !(w.op === WrOp.ATOMIC_CMP_AND_SWP || w.op === WrOp.ATOMIC_FETCH_AND_ADD)) {
      w.sent = into * mtu;
      w.state = WqeState.PROCESSING;
    } else {
      w.sent = 0;
      w.state = WqeState.POSTED;
    }
  }
  qp.req.nextWqe = qp.sqHead;
  qp.req.psn = qp.comp.psn;
  qp.req.sinceAckReq = 0;
}

/** A transport retry (timeout, sequence NAK, implicit NAK): counted against retry_cnt. */
export function retry(qp: Qp): void {
  const counters = qp.device.ports[qp.port - 1]!.counters.counts;
  const head = qp.sq[qp.sqHead % qp.cap.maxSendWr]!;
  if (qp.comp.retryCnt <= 0) {
    counters[Ctr.retry_exceeded_err]!++;
    qp.traceRing.record(Role.COMP, CompState.ERROR, NO_OPCODE, qp.comp.psn, Reason.RETRY_EXCEEDED);
    completeWqe(qp, head, WcStatusIdx.RETRY_EXC_ERR);
    return;
  }
  // retry_cnt = 7 retries forever, as rxe does (rxe_comp.c; what ibv_rc_pingpong and perftest
  // ask for). The IBA reads 7 as a count; rxe is the reference here (README, "differs").
  if (qp.retryCnt !== 7) qp.comp.retryCnt--;
  counters[Ctr.completer_retry_err]!++;
  qp.req.window = Math.max(MIN_WINDOW, qp.req.window >> 1);
  qp.comp.retriedAt = qp.comp.psn;
  qp.comp.sampleP = -1; // Karn: no round-trip sample across a resend
  stopAckTimer(qp);
  rewind(qp);
  qp.device.kick(qp);
}

/**
 * The QP's packets leave by another physical port from now on (a LAG failover: the bond moved it off
 * a dead port). What it had in flight went into the dead port, so it is resent now on the new one
 * instead of one ACK timeout later; not a retry: the peer did nothing wrong, retry_cnt is not spent
 * and the window is kept (as APM's migration resends without a fault, IBA 17.2.8). Nothing to do
 * when all is acknowledged, or while an RNR wait runs (its timer resends). mlx5 leaves this to the
 * ACK timer, which costs a timeout (67 ms at timeout 14) per failover.
 */
export function resendOnNewPath(qp: Qp): boolean {
  if (qp.type !== 'RC' || qp.closed || (qp.state !== 'RTS' && qp.state !== 'SQD')) return false;
  if (!unacked(qp) || qp.comp.rnrTimer !== null) return false;
  qp.comp.retriedAt = qp.comp.psn;
  qp.comp.sampleP = -1; // Karn: no round-trip sample across a resend
  stopAckTimer(qp);
  rewind(qp);
  qp.device.kick(qp);
  return true;
}

const MIN_WINDOW = 8;
const MAX_WINDOW = 128;

export function madeProgress(qp: Qp): void {
  // A late response from before a rewind can acknowledge past where the requester resumed:
  // restart the requester from comp.psn so PSNs keep matching their packets.
  if (psnDiff(qp.comp.psn, qp.req.psn) > 0) rewind(qp);
  // Additive increase: one more PSN of window per window's worth of progress.
  if (qp.req.window < MAX_WINDOW && ++qp.req.windowCredit >= qp.req.window >> 3) {
    qp.req.windowCredit = 0;
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
