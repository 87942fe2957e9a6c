/**
 * Send completions (IBA 10.8, rxe_comp.c COMP_WQE): the completion of the head send WQE into the
 * send CQ, the CQ-overflow rule, and UC/UD's completion once the last packet is out.
 */
import { WqeState, type SendWqe } from './wqe.js';
import { wcOpcodeFor, type TransportQp as Qp } from './types.js';
import { WcStatusIdx, WC_STATUS } from './types.js';
import { Ctr } from '../counters.js';

/** Posts the completion of the head send WQE (errors always; success when signaled). */
export function completeWqe(qp: Qp, wqe: SendWqe, status: number): void {
  let lost = false;
  if (status !== WcStatusIdx.SUCCESS || wqe.signaled) {
    const w = qp.sendCq.slot();
    if (w) {
      w.wrId = wqe.wrId;
      w.status = WC_STATUS[status]!;
      w.opcode = wcOpcodeFor(wqe.op);
      w.byteLen = wqe.length;
      w.qpn = qp.qpn;
      qp.sendCq.commit(status !== WcStatusIdx.SUCCESS);
    } else lost = true;
  }
  wqe.state = WqeState.DONE;
  if (wqe.rdCounted) {
    wqe.rdCounted = false;
    qp.req.rdAtomic--;
  }
  qp.sqHead++;
  if (qp.req.nextWqe < qp.sqHead) qp.req.nextWqe = qp.sqHead;
  if (lost) {
    completionLost(qp);
    return;
  }
  if (status !== WcStatusIdx.SUCCESS) {
    if (qp.state !== 'ERR') qp.setState('ERR');
    return;
  }
  if (qp.state === 'SQD' && qp.sqHead === qp.req.nextWqe && qp.sqDrainNotify) qp.device.asyncEvent({ type: 'SQ_DRAINED', qp });
}

/**
 * A completion the CQ had no room for (the CQ raised CQ_ERR). rxe moves the QP to ERR rather than
 * lose completions silently (rxe_resp.c RESPST_ERR_CQ_OVERFLOW); the QP's owner learns it from
 * QP_FATAL. Completions after that are flushes into the same full CQ and are dropped with it.
 */
export function completionLost(qp: Qp): void {
  qp.device.ports[qp.port - 1]!.counters.counts[Ctr.cq_overflow]!++;
  if (qp.state === 'ERR' || qp.state === 'RESET') return;
  qp.setState('ERR');
  qp.device.asyncEvent({ type: 'QP_FATAL', qp });
}

/** UC and UD: a send WQE is done once its last packet is out (no ACKs). */
export function completeUnacked(qp: Qp): void {
  while (qp.sqHead < qp.req.nextWqe) {
    const w = qp.sq[qp.sqHead % qp.cap.maxSendWr]!;
    if (w.state !== WqeState.PENDING) break;
    completeWqe(qp, w, WcStatusIdx.SUCCESS);
  }
}
