/**
 * Moving a QP to ERR flushes it (IBA 10.3.1, 11.6.3): every outstanding send and receive WR
 * completes with WR_FLUSH_ERR, the timers stop, the responder forgets its READ state.
 */
import { WqeState } from './wqe.js';
import { wcOpcodeFor, type TransportQp as Qp } from './types.js';
import { Ctr } from '../counters.js';
import { stopAckTimer } from './retry.js';

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
    } else qp.device.ports[qp.port - 1]!.counters.counts[Ctr.cq_overflow]!++;
    wqe.state = WqeState.DONE;
    wqe.rdCounted = false;
    qp.sqHead++;
  }
  qp.req.nextWqe = qp.sqHead;
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
    qp.device.ports[qp.port - 1]!.counters.counts[Ctr.cq_overflow]!++;
    return;
  }
  w.wrId = r.wrId;
  w.status = 'WR_FLUSH_ERR';
  w.opcode = 'RECV';
  w.byteLen = 0;
  w.qpn = qp.qpn;
  qp.recvCq.commit(true);
}
