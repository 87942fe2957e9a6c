/**
 * RX direct placement (issue 15, RX): arming the link for the full-MTU MIDDLE packets an RC SEND or
 * WRITE in progress (the responder) or a READ's responses (the requester's completer) must receive
 * next, and applying what the per-packet path would have done for a run of packets the link placed
 * (native/place-rx.cc copies their payloads into the MR; native-link.ts reports them in runs).
 *
 * The transport stays the authority. The responder's side first: for a WRITE, it arms only from
 * its own state after EXECUTE (a WRITE FIRST or MIDDLE handled: r.mr, r.mrOff, r.resid, r.psn)
 * and only for packets whose handling would be
 * the plain path CHK_PSN → CHK_OP_SEQ → CHK_OP_VALID → CHK_LENGTH → EXECUTE → ACKNOWLEDGE: the
 * expected PSN, a full-MTU MIDDLE, the LAST (>= 1 byte) left to JS. Any other packet to the QP
 * disarms it in the addon before it reaches JS, which then handles it in order as ever.
 *
 * Disarming is synchronous (Link.disarmPlacement returns when no byte can land any more): the
 * addon touches armed memory only inside a call JS makes while handing over a receive batch, on
 * this same thread, so disarming before returning to the user (MR deregistration or
 * invalidation, any QP modify or state change, destroy, device teardown) is enough.
 */
import { PLACE_READ_MIDDLE, PLACE_SEND_MIDDLE, PLACE_WRITE_MIDDLE, type Link, type PlacementArm } from '../link/link.js';
import type { TransportQp as Qp } from './types.js';
import { ACCESS, WcStatusIdx, WrOp } from './types.js';
import type { MemoryRegion, SgeLike } from './shared.js';
import { psnAdd, psnDiff } from '../psn.js';
import { CompState, RespState, Reason } from './role-states.js';
import { sglUsable } from './sgl.js';
import { completeWqe } from './complete.js';
import { madeProgress } from './retry.js';
import { Role } from './trace.js';
import { fatalNak, queueAck, recvFailed } from './responder-answers.js';
import { OPCODE_MASK } from '../opcode.js';
import { NakCode } from '../aeth.js';

/** RC SEND and RDMA WRITE FIRST and MIDDLE (IBA 9.2.1 table 38; the addon places only MIDDLEs) */
const SEND_FIRST = 0x00,
  SEND_MIDDLE = 0x01,
  WRITE_FIRST = 0x06,
  WRITE_MIDDLE = 0x07;

/** the links each armed QP is armed on (the ports its WRITE and its READ responses arrived by) */
/**
 * The one argument object every arm fills: armPlacement reads it before it returns, so an arm
 * allocates nothing (an object literal per arm was one young object per message: issue 15's heap check).
 */
const ARM: PlacementArm = { qpn: 0, opcode: 0, psn: 0, pmtu: 0, mem: new Uint8Array(0), off: 0, budget: 0, srcIpNum: 0, srcPort: 0 };
const NO_MEM = ARM.mem;

function armLink(
  link: Link,
  qpn: number,
  opcode: number,
  psn: number,
  pmtu: number,
  mem: Uint8Array,
  off: number,
  budget: number,
  srcIpNum: number,
  srcPort: number,
): boolean {
  ARM.qpn = qpn;
  ARM.opcode = opcode;
  ARM.psn = psn;
  ARM.pmtu = pmtu;
  ARM.mem = mem;
  ARM.off = off;
  ARM.budget = budget;
  ARM.srcIpNum = srcIpNum;
  ARM.srcPort = srcPort;
  const ok = link.armPlacement!(ARM);
  ARM.mem = NO_MEM; // keeps no region's memory alive
  return ok;
}

const armedOn = new WeakMap<Qp, Link[]>();
/** the MR a QP's READ arm (its SEND arm) places into: an MR's deregistration disarms the QPs placing into it */
const readArmMr = new WeakMap<Qp, MemoryRegion>();
const sendArmMr = new WeakMap<Qp, MemoryRegion>();

function noteArmed(qp: Qp, link: Link): void {
  const ls = armedOn.get(qp);
  if (ls === undefined) armedOn.set(qp, [link]);
  else if (!ls.includes(link)) ls.push(link);
}

/**
 * After the receive path handled a request of `qp` that arrived by `link` from srcIpNum:srcPort:
 * arms the link for the rest of the WRITE in progress, if there is one the addon can place.
 */
export function armAfterRequest(qp: Qp, link: Link, srcIpNum: number, srcPort: number): void {
  const r = qp.resp;
  const st = qp.state;
  if (qp.type !== 'RC' || qp.closed || (st !== 'RTR' && st !== 'RTS' && st !== 'SQD')) return;
  if (r.lastOp === SEND_FIRST || r.lastOp === SEND_MIDDLE) {
    armSend(qp, link, srcIpNum, srcPort);
    return;
  }
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
  if (armLink(link, qp.qpn, PLACE_WRITE_MIDDLE, r.psn, mtu, mr.buffer, r.mrOff, pkts * mtu, srcIpNum, srcPort)) {
    noteArmed(qp, link);
  }
}

/**
 * Mid-SEND (its FIRST or a MIDDLE was the last packet executed): arms the link for the next SEND
 * MIDDLEs, into the receive WQE's SGE where the message goes on. Their handling would be the plain
 * path CHK_PSN → CHK_OP_SEQ → CHK_OP_VALID → EXECUTE (scatterRecv) → ACKNOWLEDGE as long as they
 * fit the WQE, which the budget (whole MTUs of that SGE) makes sure of; the LAST (SEND_LAST, an
 * opcode of its own) always goes by JS. Not into an MR that can be invalidated: its memory could
 * become unusable without a disarm.
 */
function armSend(qp: Qp, link: Link, srcIpNum: number, srcPort: number): void {
  const r = qp.resp;
  const w = r.wqe;
  if (w === null || r.reads.length > 0 || r.backlog.length > 0 || r.stash.size > 0) return;
  if (!sglUsable(w.sg, qp.pd, true)) return;
  const at = sgeAt(w.sg, r.offset);
  if (at === null || at.sge.mr.invalidatable) return;
  const mtu = qp.pathMtu;
  const pkts = Math.floor(Math.min(at.room, w.length - r.offset) / mtu);
  if (pkts < 1) return;
  if (armLink(link, qp.qpn, PLACE_SEND_MIDDLE, r.psn, mtu, at.sge.mr.buffer, at.off, pkts * mtu, srcIpNum, srcPort)) {
    noteArmed(qp, link);
    sendArmMr.set(qp, at.sge.mr);
  }
}

/**
 * `count` SEND MIDDLE packets of `qp` from firstPsn on, `pmtu` bytes each, were placed into the
 * receive WQE by the link: the responder's state and trace, and the ACK, as handling each would
 * have left them (execute's scatterRecv, acknowledge). A failed check throws (QP to ERR,
 * rcvd_internal_err), as applyPlaced's.
 */
export function applyPlacedSend(qp: Qp, firstPsn: number, count: number, pmtu: number, ackReq: boolean): void {
  const r = qp.resp;
  const st = qp.state;
  const w = r.wqe;
  const bytes = count * pmtu;
  if (
    qp.type !== 'RC' ||
    (st !== 'RTR' && st !== 'RTS' && st !== 'SQD' && st !== 'SQE') ||
    r.psn !== firstPsn ||
    (r.lastOp !== SEND_FIRST && r.lastOp !== SEND_MIDDLE) ||
    w === null ||
    pmtu !== qp.pathMtu ||
    r.offset + bytes > w.length
  ) {
    disarmPlacement(qp);
    throw new Error('placed SEND packets the responder did not expect');
  }
  // scatterRecv's check (an MR that can be invalidated is never armed; deregistration disarms): the
  // per-packet path fails the WQE on the first packet whose memory is gone.
  if (!sglUsable(w.sg, qp.pd, true)) {
    disarmPlacement(qp);
    recvFailed(qp, w, WcStatusIdx.LOC_PROT_ERR, firstPsn, r.offset, OPCODE_MASK[SEND_MIDDLE]!, false);
    qp.traceRing.record(Role.RESP, RespState.ERR_MALFORMED_WQE, SEND_MIDDLE, firstPsn, Reason.LOC_PROT);
    return;
  }
  r.offset += bytes;
  acknowledgeRun(qp, SEND_MIDDLE, firstPsn, count, ackReq);
}

/** No byte of `qp` is placed after this returns (any state change, destroy, an MR going away). */
export function disarmPlacement(qp: Qp): void {
  const links = armedOn.get(qp);
  if (links === undefined) return;
  armedOn.delete(qp);
  readArmMr.delete(qp);
  sendArmMr.delete(qp);
  for (const l of links) l.disarmPlacement?.(qp.qpn);
}

/** Whether bytes for `qp` may be placed into `mr` (its responder's WRITE or its READ's responses). */
export function placesInto(qp: Qp, mr: MemoryRegion): boolean {
  return armedOn.has(qp) && (qp.resp.mr === mr || readArmMr.get(qp) === mr || sendArmMr.get(qp) === mr);
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
  acknowledgeRun(qp, WRITE_MIDDLE, firstPsn, count, ackReq);
}

/**
 * ACKNOWLEDGE for a run of `count` placed MIDDLEs of opcode `op` (responder-steps.ts acknowledge,
 * per packet): the expected PSN past the run, the last opcode, one trace decision per packet (as the
 * per-packet path records them, folded when repeated), and the coalesced ACK if the last asked.
 */
function acknowledgeRun(qp: Qp, op: number, firstPsn: number, count: number, ackReq: boolean): void {
  const r = qp.resp;
  r.lastOp = op;
  r.nakPsn = -1;
  const lastPsn = psnAdd(firstPsn, count - 1);
  let psn = firstPsn;
  for (let j = 0; j < count - 1; j++) {
    qp.traceRing.record(Role.RESP, RespState.ACKNOWLEDGE, op, psn, Reason.NO_ACK_REQ);
    psn = psnAdd(psn, 1);
  }
  r.psn = psnAdd(lastPsn, 1);
  if (ackReq) queueAck(qp, lastPsn);
  qp.traceRing.record(Role.RESP, RespState.ACKNOWLEDGE, op, lastPsn, ackReq ? Reason.ACK_QUEUED : Reason.NO_ACK_REQ);
}

/**
 * The requester's side. After the completer took a READ response of `qp` that arrived by `link`
 * from srcIpNum:srcPort: arms the link for the READ's next MIDDLE responses, if the head WQE is a
 * READ whose responses have all come in order so far (none kept ahead of a missing one) and whose
 * next bytes go to one SGE. Those responses' handling would be the plain path GET_ACK → CHECK_PSN
 * → CHECK_ACK → GET_WQE → READ (read-response.ts, the in-order case): the expected PSN, a full
 * MTU, the LAST (>= 1 byte) left to JS. Any other packet to the QP disarms it in the addon.
 */
export function armAfterResponse(qp: Qp, link: Link, srcIpNum: number, srcPort: number): void {
  const w = headRead(qp);
  if (w === null) return;
  const mtu = qp.pathMtu;
  const total = psnDiff(w.lastPsn, w.firstPsn) + 1;
  const done = psnDiff(qp.comp.psn, w.firstPsn);
  // Past the FIRST, in order with nothing kept ahead, and every response's PSN sent (CHECK_PSN).
  if (done < 1 || w.rdMaxSeen !== done - 1 || !w.psnAssigned || psnDiff(w.lastPsn, qp.req.maxPsn) >= 0) return;
  if (!sglUsable(w.sg, qp.pd, true)) return;
  // Responses done .. total - 2 are full MTUs; the LAST stays with JS. Their bytes must lie in one SGE.
  let pkts = total - 1 - done;
  const at = sgeAt(w.sg, done * mtu);
  if (pkts < 1 || at === null) return;
  pkts = Math.min(pkts, Math.floor(at.room / mtu));
  if (pkts < 1) return;
  if (armLink(link, qp.qpn, PLACE_READ_MIDDLE, qp.comp.psn, mtu, at.sge.mr.buffer, at.off, pkts * mtu, srcIpNum, srcPort)) {
    noteArmed(qp, link);
    readArmMr.set(qp, at.sge.mr);
  }
}

/** The head send WQE if it is a READ the completer takes responses for (RTS or SQD), else null. */
function headRead(qp: Qp): Qp['sq'][number] | null {
  const st = qp.state;
  if (qp.type !== 'RC' || qp.closed || (st !== 'RTS' && st !== 'SQD') || qp.sqHead >= qp.sqTail) return null;
  const w = qp.sq[qp.sqHead % qp.cap.maxSendWr]!;
  return w.op === WrOp.RDMA_READ ? w : null;
}

/** sgeAt's answer (one, reused: an arm per message allocates nothing) */
const where = { sge: null as unknown as SgeLike, off: 0, room: 0 };
/** Where byte `at` of an SGE list lies: its SGE, the offset in that MR's buffer, and the bytes of the SGE from there. */
function sgeAt(sg: readonly SgeLike[], at: number): typeof where | null {
  let skip = at;
  for (const s of sg) {
    if (skip < s.length) {
      where.sge = s;
      where.off = s.offset + skip;
      where.room = s.length - skip;
      return where;
    }
    skip -= s.length;
  }
  return null;
}

/**
 * `count` READ RESPONSE MIDDLEs of `qp` from firstPsn on, `pmtu` bytes each, were placed into the
 * READ's local buffer by the link: the completer's state, the WQE and the trace as taking each in
 * order would have left them (read-response.ts readResponse, in-order case). The checks are the
 * per-packet path's; arming and disarming make them hold, so a failure here throws (the receive
 * path moves the QP to ERR, rcvd_internal_err).
 */
export function applyPlacedRead(qp: Qp, firstPsn: number, count: number, pmtu: number): void {
  const w = headRead(qp);
  const idx = w === null ? -1 : psnDiff(firstPsn, w.firstPsn);
  if (
    w === null ||
    qp.comp.psn !== firstPsn ||
    idx < 1 ||
    w.rdMaxSeen !== idx - 1 ||
    pmtu !== qp.pathMtu ||
    idx + count > psnDiff(w.lastPsn, w.firstPsn) ||
    (idx + count) * pmtu > w.length
  ) {
    disarmPlacement(qp);
    throw new Error('placed READ responses the completer did not expect');
  }
  // readResponse's check: the local buffer may have been invalidated without a disarm (a
  // deregistration disarms). The per-packet path fails the READ on the first such response.
  if (!sglUsable(w.sg, qp.pd, true)) {
    disarmPlacement(qp);
    completeWqe(qp, w, WcStatusIdx.LOC_PROT_ERR);
    qp.traceRing.record(Role.COMP, CompState.READ, PLACE_READ_MIDDLE, firstPsn, Reason.LOC_PROT);
    return;
  }
  const k = idx + count;
  w.rdMaxSeen = k - 1;
  w.sent = Math.min(w.length, k * pmtu);
  qp.comp.psn = psnAdd(w.firstPsn, k);
  let psn = firstPsn;
  for (let j = 0; j < count; j++) {
    qp.traceRing.record(Role.COMP, CompState.READ, PLACE_READ_MIDDLE, psn, Reason.READ_DATA);
    psn = psnAdd(psn, 1);
  }
  madeProgress(qp);
}
