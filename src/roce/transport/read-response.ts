/**
 * Placement of READ responses by PSN (IBA 9.7.5.2.5, rxe do_read) and the re-request of a hole:
 * the completer's READ state (completer.ts) hands each response for the head WQE here.
 */
import type { SendWqe } from './wqe.js';
import type { TransportQp as Qp } from './types.js';
import { WcStatusIdx, WrOp } from './types.js';
import { psnAdd, psnDiff } from '../psn.js';
import { Ctr } from '../counters.js';
import type { PktInfo } from '../packet.js';
import { scatterSgl, sglUsable } from './sgl.js';
import { sendReadRequest, txPortOf } from './build.js';
import { Reason } from './role-states.js';
import { completeWqe } from './complete.js';
import { ackTimeoutMs, armRetransmit, madeProgress } from './retry.js';

/** Responses a READ may run ahead of a missing one before the missing one is asked for again. */
const READ_REORDER_SLACK = 3;

/** The responses READ `w` asked for (its PSN range). */
function readPackets(w: SendWqe): number {
  return w.lastPsn === w.firstPsn ? 1 : psnDiff(w.lastPsn, w.firstPsn) + 1;
}

/** Whether response `i` of READ `w` arrived ahead of a missing one and was kept. */
export function readBit(w: SendWqe, i: number): boolean {
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
export function readResponse(qp: Qp, w: SendWqe, p: PktInfo, idx: number, counters: Float64Array): number {
  const total = readPackets(w);
  const done = psnDiff(qp.comp.psn, w.firstPsn); // responses in order so far
  if (idx < done || readBit(w, idx)) {
    counters[Ctr.rcvd_stale_resp]!++;
    return Reason.STALE;
  } // a duplicate
  const mtu = qp.pathMtu;
  const off = idx * mtu;
  const n = p.payloadLen;
  // Every response carries a full MTU but the last of the READ (a replayed part ends with a LAST
  // of a full MTU: where a response ends its own request is not where the READ ends).
  if (n > mtu || off + n > w.length || (n < mtu && off + n !== w.length)) {
    completeWqe(qp, w, WcStatusIdx.BAD_RESP_ERR);
    return Reason.BAD_RESPONSE;
  }
  // The READ's local buffer may have been deregistered since the post: nothing lands in it.
  if (!sglUsable(w.sg, qp.pd, true)) {
    completeWqe(qp, w, WcStatusIdx.LOC_PROT_ERR);
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
  const c = qp.comp;
  if (c.holePsn >= 0 && psnDiff(c.psn, c.holePsn) > 0) holeProgress(qp);
  if (k === total) completeWqe(qp, w, WcStatusIdx.SUCCESS);
  else if (w.rdMaxSeen - k > READ_REORDER_SLACK || w.rdMaxSeen === total - 1) askReadHole(qp, w, k, total);
  madeProgress(qp);
  return Reason.READ_DATA;
}

/**
 * Asks again for the responses from `from` up to the next one received (once per hole: holes are
 * asked for in order, and a retry that asked for several at once (requester.ts sendRead) leaves
 * rdAsked at the last of them).
 *
 * Not while `from` is inside the range asked for last: its replay is arriving, in order, one
 * response at a time, and each moves the first missing one on by one. Asking again from there made
 * the responder restart the replay per response (responder-steps.ts duplicate): a 633-response
 * hole (an IPv6 socket overrun on a clean link) was asked for 633 times, and a 16 MiB READ sent
 * 2.07x its packets. A replay that stops short is asked for again by the hole probe, from where it
 * stopped (reaskHole).
 */
function askReadHole(qp: Qp, w: SendWqe, from: number, total: number): void {
  if (from <= w.rdAsked || from < w.rdAskedEnd) return;
  let to = from + 1;
  while (to < total && !readBit(w, to)) to++;
  const mtu = qp.pathMtu;
  const off = from * mtu;
  const len = Math.min(w.length, to * mtu) - off;
  const port = txPortOf(qp);
  if (!sendReadRequest(port, qp.dest, qp.srcPort, qp.destQpn, psnAdd(w.firstPsn, from), w.remoteAddr + BigInt(off), w.rkey, len)) return;
  w.rdAsked = from;
  w.rdAskedEnd = to;
  port.counters.counts[Ctr.read_hole_requests]!++;
  armRetransmit(qp);
  const c = qp.comp;
  const psn = psnAdd(w.firstPsn, from);
  if (psn !== c.holePsn) {
    c.holePsn = psn;
    c.holeAsks = 0;
    c.holeAskedAt = qp.device.sched.now();
  }
  c.holeEnd = psnAdd(w.firstPsn, to);
  c.holeAsks++;
  armHoleProbe(qp);
}

/** A hole request's answer gets at least this long (ms) before the hole is asked for again... */
const HOLE_PTO_MIN_MS = 1;
/** ...and this many of its measured round trips. */
const HOLE_PTO_RTTS = 4;
/** Asks for one hole (the first and the re-asks) before it is left to the ACK timer. */
const HOLE_ASKS_MAX = 3;

/**
 * The hole's probe: one hole is asked for at a time, always the first missing, so a hole request
 * or its answer that is lost stalled every later hole until the ACK timer (67 ms at timeout 14,
 * once per lost hole request: a 16 MiB READ at 5% loss took 43x its clean time). If the hole is
 * still missing a few of its round trips after the ask, it is asked for again (a requester may
 * resend a request at any time, IBA 9.7.6.1.3), up to HOLE_ASKS_MAX times; a probe as long as
 * half the ACK timeout is not armed (the timer does as well).
 */
function armHoleProbe(qp: Qp): void {
  const c = qp.comp;
  if (qp.timeout === 0 || c.holeAsks > HOLE_ASKS_MAX) return;
  const pto = holePto(c);
  if (pto > ackTimeoutMs(qp.timeout) / 2) return;
  const sched = qp.device.sched;
  c.hole.arm(sched, qp, reaskHole, pto, sched.now());
}

/** How long a hole request's answer gets before the hole is asked for again. */
function holePto(c: Qp['comp']): number {
  return Math.max(HOLE_PTO_MIN_MS, HOLE_PTO_RTTS * c.holeRtt);
}

/**
 * The hole probe fired: the hole asked for last is still not filled. It is asked for again from
 * the first response still missing: the hole's start if nothing of it came, else where its replay
 * stopped (a new hole, with its own asks).
 */
function reaskHole(qp: Qp): void {
  const c = qp.comp;
  if (qp.closed || (qp.state !== 'RTS' && qp.state !== 'SQD') || c.holePsn < 0 || c.rnrTimer !== null) return;
  if (psnDiff(c.psn, c.holePsn) < 0 || psnDiff(c.psn, c.holeEnd) >= 0) return; // filled, or a rewind moved on
  const w = qp.sq[qp.sqHead % qp.cap.maxSendWr];
  if (w === undefined || qp.sqHead >= qp.sqTail || w.op !== WrOp.RDMA_READ || !w.psnAssigned) return;
  const total = readPackets(w);
  const from = psnDiff(c.psn, w.firstPsn);
  if (from < 0 || from >= total) return;
  w.rdAsked = from - 1;
  w.rdAskedEnd = -1;
  askReadHole(qp, w, from, total);
}

/**
 * Responses of the hole asked for last arrived in order. The first is a round-trip sample if the
 * hole was asked once (Karn); holeAskedAt < 0 marks it taken. Until the whole range is in, the
 * probe counts from this arrival: a long replay is not asked for again while it flows.
 */
function holeProgress(qp: Qp): void {
  const c = qp.comp;
  if (c.holeAsks === 1 && c.holeAskedAt >= 0) {
    const rtt = qp.device.sched.now() - c.holeAskedAt;
    c.holeRtt = c.holeRtt === 0 ? rtt : c.holeRtt + (rtt - c.holeRtt) / 8;
  }
  c.holeAskedAt = -1;
  if (psnDiff(c.psn, c.holeEnd) >= 0) {
    c.holePsn = -1;
    c.holeAsks = 0;
    c.hole.at = Infinity;
  } else armHoleProbe(qp);
}
