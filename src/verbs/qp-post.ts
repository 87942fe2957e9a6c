/**
 * ibv_post_send and ibv_post_recv on a QP: the checks C returns at once for (EINVAL in the wrong
 * state or for a bad WR, ENOMEM when the queue is full), all before any WR of a list is queued,
 * then the WQEs queued and the requester scheduled (or, in ERR, flushed: IBA 10.3.1).
 */
import { VerbsError } from './errors.js';
import type { RecvWr, SendWr } from './types.js';
import { checkRecvWr, fillRecvWqe } from './objects.js';
import type { Qp } from './qp.js';
import { flushQp } from '../roce/transport/flush.js';
import { checkSendWr, fillSendWqe } from './send-wr.js';

/** ibv_post_send after the QP's liveness check: all-or-nothing; every WR is checked completely before any is queued. */
export function postSendList(qp: Qp, wr: SendWr | readonly SendWr[]): void {
  const op = 'ibv_post_send';
  // One WR (the common post, e.g. perftest's loop) is not wrapped in an array.
  const list: readonly SendWr[] | null = Array.isArray(wr) ? wr : null;
  if (qp.state === 'RESET' || qp.state === 'INIT' || qp.state === 'RTR') {
    throw new VerbsError('EINVAL', op, `QP ${qp.qpn} is in ${qp.state}; sends need RTS`, 'qp');
  }
  if (qp.sqTail - qp.sqHead + (list === null ? 1 : list.length) > qp.cap.maxSendWr) throw new VerbsError('ENOMEM', op, 'send queue is full', 'wr');
  if (list === null) {
    checkSendWr(qp, wr as SendWr);
    fillSendWqe(qp, qp.sq[qp.sqTail % qp.cap.maxSendWr]!, wr as SendWr);
    qp.sqTail++;
  } else {
    // Validate every WR before queueing any (a failed post queues nothing).
    for (const w of list) checkSendWr(qp, w);
    for (const w of list) {
      fillSendWqe(qp, qp.sq[qp.sqTail % qp.cap.maxSendWr]!, w);
      qp.sqTail++;
    }
  }
  if (qp.state === 'ERR') flushQp(qp);
  else qp.device.kick(qp, true);
}

/** ibv_post_recv after the QP's liveness check: all-or-nothing; every SGE must be writable memory of the QP's PD. */
export function postRecvList(qp: Qp, wr: RecvWr | readonly RecvWr[]): void {
  const op = 'ibv_post_recv';
  if (qp.srq) throw new VerbsError('EINVAL', op, 'this QP uses an SRQ: post to the SRQ', 'qp');
  if (qp.state === 'RESET') throw new VerbsError('EINVAL', op, 'QP is in RESET', 'qp');
  // One WR (the common post) is not wrapped in an array.
  const one = !Array.isArray(wr);
  const n = one ? 1 : (wr as readonly RecvWr[]).length;
  if (qp.rqCount + n > qp.cap.maxRecvWr) throw new VerbsError('ENOMEM', op, 'receive queue is full', 'wr');
  if (one) {
    checkRecvWr(wr as RecvWr, qp.pd, qp.cap.maxRecvSge, op);
    fillRecvWqe(qp.rq[(qp.rqHead + qp.rqCount) % qp.cap.maxRecvWr]!, wr as RecvWr);
    qp.rqCount++;
  } else {
    const list = wr as readonly RecvWr[];
    for (const w of list) checkRecvWr(w, qp.pd, qp.cap.maxRecvSge, op);
    for (const w of list) {
      fillRecvWqe(qp.rq[(qp.rqHead + qp.rqCount) % qp.cap.maxRecvWr]!, w);
      qp.rqCount++;
    }
  }
  if (qp.state === 'ERR') flushQp(qp);
}
