/**
 * The responder's states (IBA 9.7.5.1, rxe_resp.c; role-states.ts RespState), one step function
 * each: a step takes the request's context and returns the next state. What differs between RC,
 * UC and UD is one row per QP type (TypeRow), not branches inside the steps.
 */
import { copyBytes } from '../wire/copy.js';
import type { TransportQp as Qp, MemoryRegion as Mr } from './types.js';
import { ACCESS, WcStatusIdx } from './types.js';
import { aethAck, aethNak, aethRnrNak, NakCode } from '../aeth.js';
import { Hdr, OPCODE_MASK, Op, OPC } from '../opcode.js';
import { packetsFor, psnAdd, psnDiff } from '../psn.js';
import type { PktInfo } from '../packet.js';
import { Ctr } from '../counters.js';
import { hdrOff } from './build.js';
import type { RecvWqe } from './wqe.js';
import { AtomicEthView, DethView, RethView } from '../wire/exth.js';
import { BthView } from '../wire/bth.js';
import { Reason, RespState } from './role-states.js';
import { Role } from './trace.js';
import { READ_BUDGET_MIN } from './state.js';
import {
  abandonMessage,
  completeRecv,
  fatalNak,
  nextResource,
  port,
  queueAck,
  recvFailed,
  scatterRecv,
  sendAck,
  sendAtomicAck,
  udGrh,
} from './responder-answers.js';

/** out-of-sequence packets past a gap before its sequence NAK (TCP's duplicate-ACK threshold) */
const NAK_AFTER = 3;
/** how far ahead of the expected PSN a request is kept, and how many are kept per QP */
const STASH_PSNS = 64;
export const STASH_MAX = 64;
const KIND = Op.SEND | Op.WRITE | Op.READ | Op.ATOMIC;
/** the source address of a request that has none to give (from the stash: RC does not use it) */
export const NO_SRC = new Uint8Array(4);

/**
 * The R_Key check of IBA 9.7.5.1.x / C9-... (rxe check_rkey): an MR with this
 * R_Key, of this QP's PD, valid, allowing `need`, holding [va, va+len).
 * Returns the offset into the MR (c.mr holds the MR, null when there is none) or -1.
 */
function checkRkey(c: RespCtx, buf: Buffer, rkeyOff: number, vaOff: number, len: number, need: number): number {
  const qp = c.qp;
  const r = qp.resp;
  // Read here, not passed in: a key past 2^30 would be boxed for the call (issue 15's heap check).
  const rkey = buf.readUInt32BE(rkeyOff);
  // The MR the last R_Key resolved to, if this is the same key and it still allows the access;
  // anything else is looked up in the device's table (a key freed and given to a new MR is found
  // there). The table's lookup needs the key as a heap number, once per key change, not per packet.
  let mr = r.keyMr;
  if (mr === null || mr.rkey !== rkey || mr.pd !== qp.pd || !mr.allows(need)) {
    mr = qp.device.mrByRkey.get(rkey) ?? null;
    r.keyMr = mr;
    c.mr = mr;
    if (mr === null || mr.pd !== qp.pd || !mr.allows(need)) return -1;
  }
  c.mr = mr;
  return offsetIn(mr, buf, vaOff, len);
}

/**
 * Offset into mr of [va, va+len), va the 64-bit big-endian address at vaBuf[vaOff], or -1 if it is
 * not all inside (as Mr.offsetOf, without a bigint per packet, and with the halves read here so no
 * number past 2^30 is boxed to be passed on: issue 15's heap check). Each difference is exact; when
 * the high halves differ by 2^21 or more the sum is inexact but beyond 2^52, far past any region.
 */
function offsetIn(mr: Mr, vaBuf: Buffer, vaOff: number, len: number): number {
  const d = (vaBuf.readUInt32BE(vaOff) - mr.addrHi) * 0x1_0000_0000 + (vaBuf.readUInt32BE(vaOff + 4) - mr.addrLo);
  return d >= 0 && d + len <= mr.length ? d : -1;
}

/**
 * A reorder buffer in front of the RC responder (softroce's own; rxe drops every packet past a
 * gap): a request up to STASH_PSNS ahead of the expected PSN is kept (a copy; it passed every
 * check of the receive path, it is from the peer) and handled in PSN order once the missing one
 * arrives, so a reordering does not cost a go-back-N resend of everything after it. What the
 * responder executes, acknowledges and NAKs is what it would have for the same packets in order.
 */
function stashAhead(qp: Qp, p: PktInfo, psn: number, d: number): void {
  const st = qp.resp.stash;
  if (d > STASH_PSNS || st.size >= STASH_MAX || st.has(psn)) return;
  st.set(psn, Buffer.from(p.buf.subarray(p.bthOff, p.bthOff + p.len)));
}

/**
 * Which responder checks apply to a QP type and how an error ends (IBA 9.7 RC, 9.8 UC, 9.8.x UD),
 * so the steps below say "if this type NAKs" instead of interleaving the three transports.
 */
interface TypeRow {
  /** the DETH's Q_Key must be the QP's (UD, IBA 10.2.5) */
  readonly qkey: boolean;
  /** the CHK_PSN step for this type */
  readonly chkPsn: Step;
  /** opcode sequence and the QP's remote access flags are checked (connected QPs) */
  readonly opChecks: boolean;
  /** an error is NAKed (RC; class C errors also move the QP to ERR); otherwise the message is dropped */
  readonly nak: boolean;
  /** a dropped message leaves the rest of it to be dropped, and the PSN moves past it (UC) */
  readonly dropsMessage: boolean;
  /** AckReq asks for an ACK (RC) */
  readonly acks: boolean;
  /** a receive starts with the 40-byte GRH (UD) */
  readonly grh: boolean;
}

type Step = (c: RespCtx) => number;

/**
 * One request being processed: the packet's fields (read once through the views), the QP, and
 * what the steps found. One per nesting level, kept in a pool (a request can start another: the
 * READ it queues drains the backlog), so processing a packet allocates nothing.
 */
class RespCtx {
  qp!: Qp;
  p!: PktInfo;
  counts!: Float64Array;
  row!: TypeRow;
  readonly bth = new BthView();
  readonly reth = new RethView();
  readonly deth = new DethView();
  readonly atm = new AtomicEthView();
  srcBytes: Uint8Array = NO_SRC;
  ipId = 0;
  op = 0;
  mask = 0;
  psn = 0;
  ackReq = false;
  se = false;
  /** what the decision was (role-states.ts Reason), recorded in the QP's trace */
  reason: number = Reason.NONE;
  /** a receive WQE taken by this packet (WRITE with immediate), or the one that failed (ERR_LENGTH) */
  wqe: RecvWqe | null = null;
  /** what checkRkey found, and the offset into it */
  mr: Mr | null = null;
  off = 0;
  /** the receive completion status for ERR_LENGTH / ERR_MALFORMED_WQE, and the bytes placed */
  status = 0;
  byteLen = 0;
  /** UC drop: whether the rest of the message is dropped too, and whether the message is abandoned */
  dropRest = false;
  abandon = false;
  /** READ responses to send once the decision is recorded */
  runReads = false;
}

const ctxPool: RespCtx[] = [];
let depth = 0;

/**
 * Runs a request through the states from GET_REQ until DONE and records the decision in the QP's
 * trace. True when READ responses were queued (the caller sends them: responder.ts runReads).
 */
export function runRequestSteps(qp: Qp, p: PktInfo, ipId: number, srcBytes: Uint8Array): boolean {
  const c = ctxPool[depth] ?? (ctxPool[depth] = new RespCtx());
  depth++;
  try {
    const bth = c.bth.bind(p.buf, p.bthOff);
    c.qp = qp;
    c.p = p;
    c.counts = port(qp).counters.counts;
    c.row = qp.type === 'RC' ? RC_ROW : qp.type === 'UC' ? UC_ROW : UD_ROW;
    c.ipId = ipId;
    c.srcBytes = srcBytes;
    c.op = p.opcode;
    c.mask = p.mask;
    c.psn = bth.psn;
    c.ackReq = bth.ackReq;
    c.se = bth.se;
    c.reason = Reason.NONE;
    c.wqe = null;
    c.mr = null;
    c.off = 0;
    c.dropRest = false;
    c.abandon = false;
    c.runReads = false;
    let s: number = RespState.GET_REQ;
    for (;;) {
      const next = RESP_STEPS[s]!(c);
      if (next === RespState.DONE) break;
      s = next;
    }
    // The state the packet ended in is its decision (ACKNOWLEDGE, ERR_NAK_PSN, DROP, ...).
    qp.traceRing.record(Role.RESP, s, c.op, c.psn, c.reason);
    return c.runReads;
  } finally {
    depth--;
  }
}

/** GET_REQ: the packet is ours to process (UD: its Q_Key); the first packet in RTR establishes the connection. */
function getReq(c: RespCtx): number {
  const qp = c.qp;
  if (c.row.qkey) {
    const deth = c.deth.bind(c.p.buf, c.p.bthOff + hdrOff(c.op, Hdr.DETH));
    if (deth.qkey !== qp.qkey) {
      c.counts[Ctr.rcvd_bad_qkey]!++;
      c.reason = Reason.BAD_QKEY;
      return RespState.DROP;
    }
  }
  // (RC/UC: the source address was checked against the AV on the receive path, recv.ts.)
  if (qp.state === 'RTR' && !qp.commEst) {
    qp.commEst = true;
    qp.device.asyncEvent({ type: 'COMM_EST', qp }); // IBA 11.6.3: first packet received in RTR
  }
  return RespState.CHK_PSN;
}

function chkPsn(c: RespCtx): number {
  return c.row.chkPsn(c);
}

/** RC (rxe check_psn): the expected PSN goes on; a later one is a gap, an earlier one a duplicate. */
function chkPsnRc(c: RespCtx): number {
  const d = psnDiff(c.psn, c.qp.resp.psn);
  if (d > 0) return RespState.ERR_NAK_PSN;
  if (d < 0) return RespState.DUPLICATE_REQUEST;
  return RespState.CHK_OP_SEQ;
}

/** UC (IBA 9.8.3.x): a gap drops the message in progress; a new message may start at once. */
function chkPsnUc(c: RespCtx): number {
  const r = c.qp.resp;
  const start = (c.mask & Op.START) !== 0;
  if (c.psn !== r.psn) {
    c.counts[Ctr.out_of_sequence]!++;
    abandonMessage(c.qp);
    r.psn = c.psn;
    if (!start) {
      r.dropMsg = true;
      r.psn = psnAdd(c.psn, 1);
      c.reason = Reason.UC_PSN_GAP;
      return RespState.DROP;
    }
  }
  if (r.dropMsg) {
    if (!start) {
      r.psn = psnAdd(c.psn, 1);
      c.reason = Reason.UC_DROPPING;
      return RespState.DROP;
    }
    r.dropMsg = false;
  }
  return RespState.CHK_OP_SEQ;
}

/** UD: no PSN check (IBA 9.8.4: each datagram stands alone), no opcode sequence. */
function chkPsnUd(c: RespCtx): number {
  return c.row.opChecks ? RespState.CHK_OP_SEQ : afterOpChecks(c);
}

/** Where an operation's checks go after the opcode checks: SEND wants a receive WQE, the rest an R_Key. */
function afterOpChecks(c: RespCtx): number {
  const m = c.mask;
  if (m & Op.SEND) return RespState.CHK_RESOURCE;
  if (m & Op.WRITE) return m & Op.START ? RespState.CHK_RKEY : m & Op.IMM ? RespState.CHK_RESOURCE : RespState.CHK_LENGTH;
  if (m & (Op.READ | Op.ATOMIC)) return RespState.CHK_RKEY;
  return RespState.ACKNOWLEDGE; // FLUSH, ATOMIC_WRITE: acknowledged, not executed
}

/** CHK_OP_SEQ (IBA 9.8.3.x, rxe check_op_seq): a FIRST/ONLY outside a message, a MIDDLE/LAST of the same kind inside one. */
function chkOpSeq(c: RespCtx): number {
  const r = c.qp.resp;
  const mask = c.mask;
  const prev = r.lastOp >= 0 ? OPCODE_MASK[r.lastOp]! : Op.END;
  const inMsg = (prev & Op.END) === 0;
  const bad = mask & Op.START ? inMsg : !inMsg || (prev & KIND) !== (mask & KIND);
  if (bad) {
    c.reason = Reason.BAD_OP_SEQ;
    c.abandon = true;
    c.dropRest = true;
    return RespState.ERR_NAK_INVALID;
  }
  return RespState.CHK_OP_VALID;
}

/** CHK_OP_VALID (rxe check_op_valid): the QP's remote access flags permit the operation. */
function chkOpValid(c: RespCtx): number {
  const mask = c.mask;
  const need = mask & Op.WRITE ? ACCESS.REMOTE_WRITE : mask & Op.READ ? ACCESS.REMOTE_READ : mask & Op.ATOMIC ? ACCESS.REMOTE_ATOMIC : 0;
  if (need && !(c.qp.accessFlags & need)) {
    c.reason = Reason.OP_NOT_PERMITTED;
    c.dropRest = true;
    return RespState.ERR_NAK_INVALID;
  }
  return afterOpChecks(c);
}

/** CHK_RESOURCE: a receive WQE for a SEND's first packet or a WRITE with immediate (IBA 9.4.3, rxe check_resource). */
function chkResource(c: RespCtx): number {
  const qp = c.qp;
  const r = qp.resp;
  if (c.mask & Op.SEND) {
    if (!(c.mask & Op.START)) return RespState.EXECUTE;
    // A UC message dropped half-way leaves its receive WQE to the next message.
    const wqe = r.wqe ?? qp.takeRecv();
    if (!wqe) {
      c.reason = Reason.NO_RECV_WQE;
      c.dropRest = true;
      return RespState.ERR_NAK_RNR;
    }
    r.wqe = wqe;
    r.offset = 0;
    if (c.row.grh) {
      const g = udGrh(qp, c.p.payloadLen, c.ipId, c.srcBytes);
      const st = scatterRecv(qp, wqe, 0, g, 0, 40);
      if (st !== WcStatusIdx.SUCCESS) return recvError(c, wqe, st, 0);
      r.offset = 40;
    }
    return RespState.EXECUTE;
  }
  // WRITE with immediate consumes a receive WQE at its last packet (IBA 9.4.3): check before placing.
  const wqe = qp.takeRecv();
  if (!wqe) {
    c.reason = Reason.NO_RECV_WQE;
    c.dropRest = false;
    return RespState.ERR_NAK_RNR;
  }
  c.wqe = wqe;
  return RespState.CHK_LENGTH;
}

/** CHK_LENGTH (rxe check_length): a WRITE's packets add up to exactly its RETH's DMA length. */
function chkLength(c: RespCtx): number {
  const r = c.qp.resp;
  const n = c.p.payloadLen;
  if (n > r.resid || (c.mask & Op.END && n !== r.resid) || (!r.mr && n > 0)) {
    if (c.wqe) c.qp.returnRecv(c.wqe);
    c.reason = Reason.BAD_LENGTH;
    c.dropRest = !(c.mask & Op.END);
    return RespState.ERR_NAK_INVALID;
  }
  return RespState.EXECUTE;
}

/** CHK_RKEY (rxe check_rkey): the MR named by a WRITE's, READ's or ATOMIC's R_Key allows it over its range. */
function chkRkey(c: RespCtx): number {
  const qp = c.qp;
  const r = qp.resp;
  const mask = c.mask;
  if (mask & Op.ATOMIC) {
    const a = c.atm.bind(c.p.buf, c.p.bthOff + hdrOff(c.op, Hdr.ATMETH));
    c.off = checkRkey(c, a.buf, a.off + 8, a.off, 8, ACCESS.REMOTE_ATOMIC);
    if (c.off < 0) {
      c.reason = Reason.BAD_RKEY;
      return RespState.ERR_NAK_ACCESS;
    }
    if ((c.off & 7) !== 0) {
      c.reason = Reason.MISALIGNED;
      return RespState.ERR_NAK_INVALID;
    } // IBA 9.4.5: 8-byte aligned
    return RespState.ATOMIC_REPLY;
  }
  const reth = c.reth.bind(c.p.buf, c.p.bthOff + hdrOff(c.op, Hdr.RETH));
  const len = reth.dmaLen;
  // A zero-length WRITE or READ touches no memory: no R_Key or address is checked (IBA C9-88, rxe).
  c.off = len === 0 ? 0 : checkRkey(c, reth.buf, reth.off + 8, reth.off, len, mask & Op.READ ? ACCESS.REMOTE_READ : ACCESS.REMOTE_WRITE);
  if (len === 0) c.mr = null;
  if (mask & Op.READ) {
    if (c.off < 0 || len > qp.device.attr.maxMsgSize) {
      c.reason = Reason.BAD_RKEY;
      return RespState.ERR_NAK_ACCESS;
    }
    return RespState.READ_REPLY;
  }
  if (c.off < 0) {
    c.reason = Reason.BAD_RKEY;
    c.dropRest = !(mask & Op.END);
    return RespState.ERR_NAK_ACCESS;
  }
  r.mr = c.mr;
  r.mrOff = c.off;
  r.resid = len;
  r.writeLen = len;
  return mask & Op.IMM ? RespState.CHK_RESOURCE : RespState.CHK_LENGTH;
}

/** EXECUTE: a SEND's payload into the receive WQE, a WRITE's into the MR. */
function execute(c: RespCtx): number {
  const qp = c.qp;
  const r = qp.resp;
  const p = c.p;
  const end = (c.mask & Op.END) !== 0;
  if (c.mask & Op.SEND) {
    const wqe = r.wqe!;
    const st = scatterRecv(qp, wqe, r.offset, p.buf, p.payloadOff, p.payloadLen);
    if (st !== WcStatusIdx.SUCCESS) return recvError(c, wqe, st, r.offset);
    r.offset += p.payloadLen;
    return end ? RespState.COMPLETE : RespState.ACKNOWLEDGE;
  }
  // The MR may have been deregistered or invalidated since the first packet: no byte lands
  // after that (the rest of the message is refused as a remote access error, as at its start).
  if (r.mr && !r.mr.allows(ACCESS.REMOTE_WRITE)) {
    if (c.wqe) qp.returnRecv(c.wqe);
    r.mr = null;
    c.reason = Reason.MR_GONE;
    c.dropRest = !end;
    return RespState.ERR_NAK_ACCESS;
  }
  const n = p.payloadLen;
  if (n > 0) copyBytes(p.buf, p.payloadOff, r.mr!.buffer, r.mrOff, n);
  r.mrOff += n;
  r.resid -= n;
  return end ? RespState.COMPLETE : RespState.ACKNOWLEDGE;
}

/** The receive WQE cannot take the message: ERR_LENGTH (too short) or ERR_MALFORMED_WQE (its memory is gone). */
function recvError(c: RespCtx, wqe: RecvWqe, status: number, byteLen: number): number {
  c.wqe = wqe;
  c.status = status;
  c.byteLen = byteLen;
  c.reason = status === WcStatusIdx.LOC_LEN_ERR ? Reason.LOC_LEN : Reason.LOC_PROT;
  return status === WcStatusIdx.LOC_LEN_ERR ? RespState.ERR_LENGTH : RespState.ERR_MALFORMED_WQE;
}

/** COMPLETE: the last packet of a SEND or a WRITE with immediate completes its receive WQE; the MSN moves on. */
function complete(c: RespCtx): number {
  const qp = c.qp;
  const r = qp.resp;
  const b = c.p.buf;
  const o = c.p.bthOff;
  const mask = c.mask;
  if (mask & Op.SEND) {
    const wqe = r.wqe!;
    let inv = 0;
    if (mask & Op.INV) {
      inv = b.readUInt32BE(o + hdrOff(c.op, Hdr.IETH));
      // Only an MR that can be invalidated (registered `invalidatable`, softroce's stand-in for a
      // fast-registration MR) may be; rxe refuses a user MR the same way (rxe_invalidate_mr).
      const mr = qp.device.mrByRkey.get(inv);
      if (!mr || mr.pd !== qp.pd || !mr.invalidatable) {
        c.reason = Reason.BAD_INV_RKEY;
        return RespState.ERR_NAK_INVALID;
      }
      mr.invalidate(); // IBA 10.6.5: the remote invalidation takes the R_Key out of use
    }
    const imm = mask & Op.IMM ? b.readUInt32BE(o + hdrOff(c.op, Hdr.IMMDT)) : 0;
    const srcQp = c.row.qkey ? c.deth.srcQp : qp.destQpn;
    r.wqe = null;
    if (!completeRecv(qp, wqe, WcStatusIdx.SUCCESS, r.offset, mask, c.se, imm, srcQp, inv)) {
      c.reason = Reason.CQ_FULL;
      return RespState.DONE;
    }
    r.msn = (r.msn + 1) & 0xffffff;
    c.counts[Ctr.rdma_recvs]!++;
    return RespState.ACKNOWLEDGE;
  }
  r.mr = null;
  if (c.wqe && !completeRecv(qp, c.wqe, WcStatusIdx.SUCCESS, r.writeLen, mask, c.se, b.readUInt32BE(o + hdrOff(c.op, Hdr.IMMDT)))) {
    c.reason = Reason.CQ_FULL;
    return RespState.DONE;
  }
  r.msn = (r.msn + 1) & 0xffffff;
  return RespState.ACKNOWLEDGE;
}

/** ACKNOWLEDGE: the expected PSN moves past the packet; RC answers AckReq (coalesced, queueAck). */
function acknowledge(c: RespCtx): number {
  const r = c.qp.resp;
  r.psn = psnAdd(c.psn, 1);
  r.lastOp = c.op;
  r.nakPsn = -1;
  if (c.row.acks && c.ackReq) {
    queueAck(c.qp, c.psn);
    c.reason = Reason.ACK_QUEUED;
  } else if (c.reason === Reason.NONE) c.reason = Reason.NO_ACK_REQ;
  return RespState.DONE;
}

/** READ_REPLY: the READ is saved as a resource (for a replay) and its responses queued (runReads). */
function readReply(c: RespCtx): number {
  const qp = c.qp;
  const r = qp.resp;
  const reth = c.reth;
  const len = reth.dmaLen;
  const n = packetsFor(len, qp.pathMtu);
  const res = nextResource(qp);
  res.psn = c.psn;
  res.lastPsn = psnAdd(c.psn, n - 1);
  res.atomic = false;
  res.va = reth.va;
  res.len = len;
  res.rkey = reth.rkey;
  r.psn = psnAdd(c.psn, n);
  r.lastOp = c.op;
  r.nakPsn = -1;
  r.msn = (r.msn + 1) & 0xffffff;
  r.reads.push({ psn: c.psn, mr: c.mr, off: c.off, len, sentPsn: c.psn });
  c.runReads = true;
  c.reason = Reason.READ_QUEUED;
  return RespState.DONE;
}

/** ATOMIC_REPLY: executed exactly once, its original value saved (a duplicate gets it back) and sent. */
function atomicReply(c: RespCtx): number {
  const qp = c.qp;
  const r = qp.resp;
  const a = c.atm;
  const mr = c.mr!;
  const orig = mr.buffer.readBigUInt64LE(c.off);
  const add = a.swapAdd;
  const next = c.op === OPC.RC_COMPARE_SWAP ? (orig === a.compare ? add : orig) : BigInt.asUintN(64, orig + add);
  mr.buffer.writeBigUInt64LE(next, c.off);
  r.msn = (r.msn + 1) & 0xffffff;
  const res = nextResource(qp);
  res.psn = c.psn;
  res.lastPsn = c.psn;
  res.atomic = true;
  res.orig = orig;
  res.msn = r.msn;
  r.psn = psnAdd(c.psn, 1);
  r.lastOp = c.op;
  r.nakPsn = -1;
  sendAtomicAck(qp, c.psn, r.msn, orig);
  c.reason = Reason.ATOMIC_DONE;
  return RespState.DONE;
}

/**
 * ERR_NAK_PSN (RC): a request past the expected PSN. One sequence NAK per gap (IBA 9.7.5.1.1),
 * but only once NAK_AFTER packets have passed it: a packet merely reordered by a few arrives by
 * itself, and the ones past it wait in the stash, so go-back-N does not resend a flight for a
 * reordering. One more NAK whenever the requester has gone back (a PSN below the highest seen
 * since the NAK): its resend of the missing PSN was lost too. (A resend starts at the NAKed PSN,
 * so its packets land just above it; a PSN far above that is merely reordered within the old
 * flight and is not a reason to NAK again.) A NAK can be lost as well: repeat it every 16
 * out-of-sequence packets.
 */
function errNakPsn(c: RespCtx): number {
  const qp = c.qp;
  const r = qp.resp;
  const psn = c.psn;
  const d = psnDiff(psn, r.psn);
  c.counts[Ctr.out_of_sequence]!++;
  stashAhead(qp, c.p, psn, d);
  if (r.gapPsn !== r.psn) {
    r.gapPsn = r.psn;
    r.oosCount = 0;
  }
  const first = r.nakPsn !== r.psn;
  c.reason = Reason.PSN_GAP_HELD;
  if (first ? ++r.oosCount >= NAK_AFTER : (psnDiff(psn, r.oosMax) < 0 && d <= 4) || ++r.oosCount >= 16) {
    r.nakPsn = r.psn;
    r.oosCount = 0;
    sendAck(qp, aethNak(NakCode.PSN_SEQ_ERROR), r.psn);
    c.reason = Reason.PSN_GAP_NAKED;
  }
  r.oosMax = psn;
  return RespState.DONE;
}

/** A UC message that cannot be taken is dropped; the PSN moves past the packet (IBA 9.8.3.x). */
function ucDrop(c: RespCtx): void {
  const r = c.qp.resp;
  if (c.abandon) abandonMessage(c.qp);
  r.dropMsg = c.dropRest;
  r.psn = psnAdd(c.psn, 1);
}

/** ERR_NAK_INVALID: RC: invalid request NAK and the QP to ERR (class C); UC: the message is dropped. */
function errNakInvalid(c: RespCtx): number {
  if (c.row.nak) fatalNak(c.qp, NakCode.INVALID_REQUEST, c.psn);
  else ucDrop(c);
  return RespState.DONE;
}

/** ERR_NAK_ACCESS: RC: remote access NAK and the QP to ERR (class C); UC: the message is dropped. */
function errNakAccess(c: RespCtx): number {
  if (c.row.nak) fatalNak(c.qp, NakCode.REMOTE_ACCESS_ERROR, c.psn);
  else ucDrop(c);
  return RespState.DONE;
}

/** ERR_NAK_RNR: no receive WQE. RC: RNR NAK, the requester retries this PSN later (IBA 9.7.5.2.8); UC/UD: dropped. */
function errNakRnr(c: RespCtx): number {
  const qp = c.qp;
  if (c.row.nak) {
    c.counts[Ctr.send_rnr_err]!++;
    sendAck(qp, aethRnrNak(qp.minRnrTimer), c.psn);
    return RespState.DONE;
  }
  c.counts[Ctr.rcvd_no_recv_wqe]!++;
  if (c.row.dropsMessage) ucDrop(c);
  return RespState.DONE;
}

/** ERR_LENGTH / ERR_MALFORMED_WQE: the receive WQE completes in error (recvFailed). */
function errRecv(c: RespCtx): number {
  recvFailed(c.qp, c.wqe!, c.status, c.psn, c.byteLen, c.mask, c.se);
  return RespState.DONE;
}

function drop(): number {
  return RespState.DONE;
}

function duplicateRequest(c: RespCtx): number {
  c.counts[Ctr.duplicate_request]!++;
  duplicate(c);
  return RespState.DONE;
}

const RC_ROW: TypeRow = { qkey: false, chkPsn: chkPsnRc, opChecks: true, nak: true, dropsMessage: false, acks: true, grh: false };
const UC_ROW: TypeRow = { qkey: false, chkPsn: chkPsnUc, opChecks: true, nak: false, dropsMessage: true, acks: false, grh: false };
const UD_ROW: TypeRow = { qkey: true, chkPsn: chkPsnUd, opChecks: false, nak: false, dropsMessage: false, acks: false, grh: true };

/** The step of each state (RespState order). */
const RESP_STEPS: readonly Step[] = (() => {
  const t: Step[] = [];
  t[RespState.GET_REQ] = getReq;
  t[RespState.CHK_PSN] = chkPsn;
  t[RespState.CHK_OP_SEQ] = chkOpSeq;
  t[RespState.CHK_OP_VALID] = chkOpValid;
  t[RespState.CHK_RESOURCE] = chkResource;
  t[RespState.CHK_LENGTH] = chkLength;
  t[RespState.CHK_RKEY] = chkRkey;
  t[RespState.EXECUTE] = execute;
  t[RespState.READ_REPLY] = readReply;
  t[RespState.ATOMIC_REPLY] = atomicReply;
  t[RespState.COMPLETE] = complete;
  t[RespState.ACKNOWLEDGE] = acknowledge;
  t[RespState.DUPLICATE_REQUEST] = duplicateRequest;
  t[RespState.ERR_NAK_PSN] = errNakPsn;
  t[RespState.ERR_NAK_INVALID] = errNakInvalid;
  t[RespState.ERR_NAK_ACCESS] = errNakAccess;
  t[RespState.ERR_NAK_RNR] = errNakRnr;
  t[RespState.ERR_LENGTH] = errRecv;
  t[RespState.ERR_MALFORMED_WQE] = errRecv;
  t[RespState.DROP] = drop;
  t[RespState.ERR_STATE] = drop;
  return t;
})();

/** IBA 9.7.5.1.6 / C9-106..: how a duplicate request is answered. */
function duplicate(c: RespCtx): void {
  const qp = c.qp;
  const mask = c.mask;
  const psn = c.psn;
  const r = qp.resp;
  if (mask & (Op.SEND | Op.WRITE)) {
    // Already delivered: acknowledge up to the newest PSN received, deliver nothing.
    if (c.ackReq) sendAck(qp, aethAck(), psnAdd(r.psn, -1));
    c.reason = c.ackReq ? Reason.DUP_ACKED : Reason.DUP_IGNORED;
    return;
  }
  c.reason = Reason.DUP_IGNORED;
  if (mask & Op.ATOMIC) {
    const res = r.res.find((x) => x.atomic && x.psn === psn);
    if (res) {
      sendAtomicAck(qp, psn, res.msn, res.orig);
      c.reason = Reason.DUP_ATOMIC_REPLAYED;
    } // the saved result: the atomic does not run again
    return;
  }
  if (mask & Op.READ) {
    const res = r.res.find((x) => !x.atomic && x.psn >= 0 && psnDiff(psn, x.psn) >= 0 && psnDiff(psn, x.lastPsn) <= 0);
    if (!res) return;
    const reth = c.reth.bind(c.p.buf, c.p.bthOff + hdrOff(c.op, Hdr.RETH));
    const va = reth.va;
    const rkey = reth.rkey;
    const len = reth.dmaLen;
    // Only a replay of the request that was saved: the same R_Key and a part of its range (as rxe
    // checks a duplicate READ). Anything else is not the peer going back: dropped, as counted above.
    if (rkey !== res.rkey || va < res.va || BigInt(len) > BigInt(res.len) || va + BigInt(len) > res.va + BigInt(res.len)) return;
    const off = len === 0 ? 0 : checkRkey(c, reth.buf, reth.off + 8, reth.off, len, ACCESS.REMOTE_READ);
    const mr = len === 0 ? null : c.mr;
    // The MR went away (dereg, invalidation) since the first request: the replay is a remote
    // access error like any later access, not silence the requester would retry into forever.
    if (off < 0) {
      c.reason = Reason.BAD_RKEY;
      fatalNak(qp, NakCode.REMOTE_ACCESS_ERROR, psn);
      return;
    }
    // rxe's replay: the stream for what is asked restarts at the PSN asked for, and a stream still
    // sending any of those PSNs stops: never a second stream for the same responses (that
    // multiplied READ traffic under loss). A requester that asks for a hole below the stream in
    // progress (a part of the READ, read-response.ts askReadHole) gets it first; the stream then goes on.
    const last = psnAdd(psn, packetsFor(len, qp.pathMtu) - 1);
    for (let i = r.reads.length - 1; i >= 0; i--) {
      const e = r.reads[i]!;
      const eLast = psnAdd(e.psn, packetsFor(e.len, qp.pathMtu) - 1);
      if (psnDiff(e.sentPsn, last) <= 0 && psnDiff(psn, eLast) <= 0) r.reads.splice(i, 1);
    }
    r.reads.unshift({ psn, mr, off, len, sentPsn: psn });
    c.reason = Reason.DUP_READ_REPLAYED;
    // The requester lost responses: fewer per run from now on (responder.ts runReads).
    r.readBudget = Math.max(READ_BUDGET_MIN, r.readBudget >> 1);
    r.readCleanRuns = 0;
    c.runReads = true;
  }
}
