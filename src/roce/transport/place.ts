/**
 * RX direct placement (issue 15, RX), the responder's side: arming the link for the WRITE MIDDLE
 * packets an RC WRITE in progress must receive next, and applying what the per-packet path would
 * have done for a run of packets the link placed (native/place-rx.cc copies their payloads into the
 * MR; native-link.ts reports them in runs).
 *
 * The responder stays the authority. It arms only from its own state after EXECUTE (a WRITE FIRST
 * or MIDDLE handled: r.mr, r.mrOff, r.resid, r.psn) and only for packets whose handling would be
 * the plain path CHK_PSN → CHK_OP_SEQ → CHK_OP_VALID → CHK_LENGTH → EXECUTE → ACKNOWLEDGE: the
 * expected PSN, a full-MTU MIDDLE, the LAST (>= 1 byte) left to JS. Any other packet to the QP
 * disarms it in the addon before it reaches JS, which then handles it in order as ever.
 *
 * Disarming is synchronous (Link.disarmPlacement returns when no byte can land any more): the
 * addon touches armed memory only inside a call JS makes while handing over a receive batch, on
 * this same thread, so disarming before returning to the user (MR deregistration or
 * invalidation, any QP modify or state change, destroy, device teardown) is enough.
 */
import type { Link } from '../link/link.js';
import type { TransportQp as Qp } from './types.js';
import { ACCESS } from './types.js';
import { psnAdd } from '../psn.js';
import { RespState, Reason } from './role-states.js';
import { Role } from './trace.js';
import { fatalNak, queueAck } from './responder-answers.js';
import { NakCode } from '../aeth.js';

/** RC RDMA WRITE FIRST and MIDDLE (IBA 9.2.1 table 38; the addon places only MIDDLE, 0x07) */
const WRITE_FIRST = 0x06,
  WRITE_MIDDLE = 0x07;

/** the link each armed QP is armed on (the port its WRITE arrived by) */
const armedOn = new WeakMap<Qp, Link>();

/**
 * After the receive path handled a request of `qp` that arrived by `link` from srcIpNum:srcPort:
 * arms the link for the rest of the WRITE in progress, if there is one the addon can place.
 */
export function armAfterRequest(qp: Qp, link: Link, srcIpNum: number, srcPort: number): void {
  const r = qp.resp;
  const st = qp.state;
  if (qp.type !== 'RC' || qp.closed || (st !== 'RTR' && st !== 'RTS' && st !== 'SQD')) return;
  // Mid-WRITE (its FIRST or a MIDDLE was the last packet executed), with its MR still writable.
  if (r.lastOp !== WRITE_FIRST && r.lastOp !== WRITE_MIDDLE) return;
  const mr = r.mr;
  if (mr === null || !mr.allows(ACCESS.REMOTE_WRITE) || (qp.accessFlags & ACCESS.REMOTE_WRITE) === 0) return;
  // Nothing waits to be handled before the next packet (READ responses, the backlog, the stash):
  // placed packets must be exactly the next ones the responder would execute.
  if (r.reads.length > 0 || r.backlog.length > 0 || r.stash.size > 0) return;
  const mtu = qp.pathMtu;
  // Whole MTUs that leave the LAST packet (>= 1 byte: r.resid - 1) to JS.
  const pkts = Math.floor((r.resid - 1) / mtu);
  if (pkts < 1 || r.mrOff + pkts * mtu > mr.buffer.length) return;
  if (
    link.armPlacement!({
      qpn: qp.qpn,
      psn: r.psn,
      pmtu: mtu,
      mem: mr.buffer,
      off: r.mrOff,
      budget: pkts * mtu,
      srcIpNum,
      srcPort,
    })
  ) {
    armedOn.set(qp, link);
  }
}

/** No byte of `qp` is placed after this returns (any state change, destroy, an MR going away). */
export function disarmPlacement(qp: Qp): void {
  const link = armedOn.get(qp);
  if (link === undefined) return;
  armedOn.delete(qp);
  link.disarmPlacement?.(qp.qpn);
}

/**
 * `count` WRITE MIDDLE packets of `qp` from firstPsn on, `pmtu` bytes each, were placed into the
 * MR by the link: the responder's state, counters, trace and ACK as handling each would have left
 * them (chkPsnRc, chkOpSeq, chkOpValid, chkLength, execute, acknowledge for a MIDDLE). The checks
 * are the slow path's; arming and disarming make them hold, so a failure here means the bytes of
 * an unexpected packet landed: it throws, and the receive path moves the QP to ERR as for a local QP
 * error (rcvd_internal_err, recv.ts).
 */
export function applyPlaced(qp: Qp, firstPsn: number, count: number, pmtu: number, ackReq: boolean): void {
  const r = qp.resp;
  const st = qp.state;
  const bytes = count * pmtu;
  if (
    qp.type !== 'RC' ||
    (st !== 'RTR' && st !== 'RTS' && st !== 'SQD' && st !== 'SQE') ||
    r.psn !== firstPsn ||
    (r.lastOp !== WRITE_FIRST && r.lastOp !== WRITE_MIDDLE) ||
    r.mr === null ||
    pmtu !== qp.pathMtu ||
    bytes >= r.resid
  ) {
    disarmPlacement(qp);
    throw new Error('placed packets the responder did not expect');
  }
  // EXECUTE's check: the MR may have been invalidated without a disarm (it cannot have been
  // deregistered: that disarms). The slow path refuses the first such packet with a remote access
  // error and moves the QP to ERR.
  if (!r.mr.allows(ACCESS.REMOTE_WRITE) || (qp.accessFlags & ACCESS.REMOTE_WRITE) === 0) {
    disarmPlacement(qp);
    const opOk = (qp.accessFlags & ACCESS.REMOTE_WRITE) !== 0;
    if (opOk) r.mr = null;
    fatalNak(qp, opOk ? NakCode.REMOTE_ACCESS_ERROR : NakCode.INVALID_REQUEST, firstPsn);
    // (recorded after the NAK, as runRequestSteps records a decision once its step ran)
    qp.traceRing.record(
      Role.RESP,
      opOk ? RespState.ERR_NAK_ACCESS : RespState.ERR_NAK_INVALID,
      WRITE_MIDDLE,
      firstPsn,
      opOk ? Reason.MR_GONE : Reason.OP_NOT_PERMITTED,
    );
    return;
  }
  r.mrOff += bytes;
  r.resid -= bytes;
  r.lastOp = WRITE_MIDDLE;
  r.nakPsn = -1;
  // One trace decision per packet, as the per-packet path records them (folded when repeated).
  const lastPsn = psnAdd(firstPsn, count - 1);
  let psn = firstPsn;
  for (let j = 0; j < count - 1; j++) {
    qp.traceRing.record(Role.RESP, RespState.ACKNOWLEDGE, WRITE_MIDDLE, psn, Reason.NO_ACK_REQ);
    psn = psnAdd(psn, 1);
  }
  r.psn = psnAdd(lastPsn, 1);
  if (ackReq) queueAck(qp, lastPsn);
  qp.traceRing.record(Role.RESP, RespState.ACKNOWLEDGE, WRITE_MIDDLE, lastPsn, ackReq ? Reason.ACK_QUEUED : Reason.NO_ACK_REQ);
}
