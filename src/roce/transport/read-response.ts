/**
 * Placement of READ responses by PSN (IBA 9.7.5.2.5, rxe do_read) and the re-request of a hole:
 * the completer's READ state (completer.ts) hands each response for the head WQE here.
 */
import type { SendWqe } from './wqe.js';
import type { TransportQp as Qp } from './types.js';
import { WcStatusIdx } from './types.js';
import { psnAdd, psnDiff } from '../psn.js';
import { Ctr } from '../counters.js';
import type { PktInfo } from '../packet.js';
import { scatterSgl, sglUsable } from './sgl.js';
import { sendReadRequest, txPortOf } from './build.js';
import { Reason } from './role-states.js';
import { completeWqe } from './complete.js';
import { armRetransmit, madeProgress } from './retry.js';

/** Responses a READ may run ahead of a missing one before the missing one is asked for again. */
const READ_REORDER_SLACK = 3;

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
  const total = w.lastPsn === w.firstPsn ? 1 : psnDiff(w.lastPsn, w.firstPsn) + 1;
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
  if (k === total) completeWqe(qp, w, WcStatusIdx.SUCCESS);
  else if (w.rdMaxSeen - k > READ_REORDER_SLACK || w.rdMaxSeen === total - 1) askReadHole(qp, w, k, total);
  madeProgress(qp);
  return Reason.READ_DATA;
}

/**
 * Asks again for the responses from `from` up to the next one received (once per hole: holes are
 * asked for in order, and a retry that asked for several at once (requester.ts sendRead) leaves
 * rdAsked at the last of them).
 */
function askReadHole(qp: Qp, w: SendWqe, from: number, total: number): void {
  if (from <= w.rdAsked) return;
  let to = from + 1;
  while (to < total && !readBit(w, to)) to++;
  const mtu = qp.pathMtu;
  const off = from * mtu;
  const len = Math.min(w.length, to * mtu) - off;
  const port = txPortOf(qp);
  if (!sendReadRequest(port, qp.dest, qp.srcPort, qp.destQpn, psnAdd(w.firstPsn, from), w.remoteAddr + BigInt(off), w.rkey, len)) return;
  w.rdAsked = from;
  port.counters.counts[Ctr.read_hole_requests]!++;
  armRetransmit(qp);
}
