/**
 * The responder (IBA 9.7.5.1, rxe_resp.c): checks a request's PSN, opcode
 * sequence, access and resources, executes it (SEND into a receive WQE, WRITE
 * and READ against an MR found by R_Key, ATOMIC exactly once), acknowledges
 * it, and answers duplicates as the spec says: a duplicate SEND or WRITE is
 * acknowledged, not delivered again; a duplicate READ is answered again; a
 * duplicate ATOMIC gets its saved result back and never runs twice.
 *
 * PSN gaps get one sequence-error NAK per gap; a SEND with no receive posted
 * gets an RNR NAK; a bad R_Key or range a remote-access NAK; an opcode out of
 * sequence or not permitted an invalid-request NAK. The last two move the
 * responder's QP to the error state, as rxe's class C errors do.
 *
 * A request runs rxe_resp.c's states (states.ts RespState), one step function each, from GET_REQ
 * until DONE: CHK_PSN → CHK_OP_SEQ → CHK_OP_VALID → (CHK_RKEY, CHK_RESOURCE, CHK_LENGTH as the
 * operation needs) → EXECUTE → COMPLETE → ACKNOWLEDGE, or READ_REPLY / ATOMIC_REPLY, or one of
 * DUPLICATE_REQUEST, ERR_NAK_PSN, ERR_NAK_INVALID, ERR_NAK_ACCESS, ERR_NAK_RNR, ERR_LENGTH,
 * ERR_MALFORMED_WQE, DROP. What differs between RC, UC and UD is one row per type (TypeRow). The
 * state a request ends in and why is recorded in the QP's trace ring (trace.ts).
 */
import { RdResource, type Qp } from '../../verbs/qp.js';
import { ACCESS, St, WC_STATUS } from '../../verbs/types.js';
import { aethAck, aethNak, aethRnrNak, NakCode } from '../aeth.js';
import { Hdr, OPCODE_MASK, Op } from '../opcode.js';
import { packetsFor, psnAdd, psnDiff } from '../psn.js';
import { PktInfo, parseIb } from '../packet.js';
import { C } from '../counters.js';
import { finishAndSend, hdrOff, payloadOff, writeBth } from './build.js';
import { ipv4HeaderChecksum } from '../wire/net.js';
import type { RecvWqe } from '../../verbs/objects.js';
import type { Mr } from '../../verbs/mr.js';
import { scatterSgl, sglUsable } from './sgl.js';
import { completionLost } from './completer.js';
import type { Port } from '../../verbs/device.js';
import { OPC, READ_RESPONSE_OPCODE, hdrBit } from '../opcode.js';
import { writeAeth } from './build.js';
import { AtomicEthView, DethView, RethView } from '../wire/exth.js';
import { BthView } from '../wire/bth.js';
import { Reason, RespState } from './states.js';
import { Role } from './trace.js';

const BACKLOG_MAX = 4096;
/** out-of-sequence packets past a gap before its sequence NAK (TCP's duplicate-ACK threshold) */
const NAK_AFTER = 3;
/** how far ahead of the expected PSN a request is kept, and how many are kept per QP */
const STASH_PSNS = 64;
const STASH_MAX = 64;
const READ_BUDGET = 64;
const KIND = Op.SEND | Op.WRITE | Op.READ | Op.ATOMIC;

function port(qp: Qp): Port {
  return qp.device.ports[qp.port - 1]!;
}

/**
 * Sends an ACK / NAK / RNR NAK (IBA 9.7.5.1.2) now, after any coalesced ACK
 * still waiting (responses leave in PSN order). Dropped (and counted) when the
 * tx pool is empty.
 */
export function sendAck(qp: Qp, syndrome: number, psn: number, msn = qp.resp.msn): void {
  if (qp.resp.ackPending) flushAck(qp);
  const p = port(qp);
  const b = p.link.allocTx();
  if (!b) { p.counters.v[C.ack_deferred]!++; return; }
  writeBth(b, OPC.RC_ACKNOWLEDGE, false, 0, qp.destQpn, false, psn);
  finishAndSend(p, b, writeAeth(b, OPC.RC_ACKNOWLEDGE, syndrome, msn), 0, qp.dest);
}

/**
 * A positive ACK for a request that asked for one, coalesced: every request
 * that arrives in the same event-loop turn (a receive burst) is acknowledged
 * by one ACK for the newest PSN when the turn ends. IBA 9.7.5.1.1 lets an ACK
 * acknowledge every request up to its PSN; the requester completes all of
 * them (rxe's completer does the same with our ACKs). On a busy responder
 * this halves the packets per small message.
 */
function queueAck(qp: Qp, psn: number): void {
  const r = qp.resp;
  // The app closed the QP (or moved it to ERR) from this request's completion: answer now, the
  // request was delivered and its sender waits for the ACK.
  if (qp.closed || qp.state === 'ERR') { sendAck(qp, aethAck(), psn, r.msn); return; }
  r.ackPsn = psn;
  r.ackMsn = r.msn;
  if (r.ackPending) return;
  r.ackPending = true;
  qp.device.sched.defer(r.ackFlush ??= (): void => flushAck(qp));
}

/** Sends the coalesced ACK, if one waits and the QP can still answer. */
export function flushAck(qp: Qp): void {
  const r = qp.resp;
  if (!r.ackPending) return;
  r.ackPending = false;
  if (qp.closed || qp.state === 'RESET' || qp.state === 'INIT' || qp.state === 'ERR') return;
  sendAck(qp, aethAck(), r.ackPsn, r.ackMsn);
}

function sendAtomicAck(qp: Qp, psn: number, msn: number, orig: bigint): void {
  if (qp.resp.ackPending) flushAck(qp);
  const p = port(qp);
  const b = p.link.allocTx();
  if (!b) { p.counters.v[C.ack_deferred]!++; return; }
  writeBth(b, OPC.RC_ATOMIC_ACKNOWLEDGE, false, 0, qp.destQpn, false, psn);
  const at = writeAeth(b, OPC.RC_ATOMIC_ACKNOWLEDGE, aethAck(), msn); // AtomicAckETH follows the AETH (IBA 9.3.6)
  b.writeBigUInt64BE(orig, at);
  finishAndSend(p, b, payloadOff(OPC.RC_ATOMIC_ACKNOWLEDGE), 0, qp.dest);
}

/** A class C error (rxe do_class_ac_error): NAK, then the responder QP goes to ERR. */
function fatalNak(qp: Qp, code: number, psn: number): void {
  sendAck(qp, aethNak(code), psn);
  if (qp.resp.wqe) {
    completeRecv(qp, qp.resp.wqe, code === NakCode.REMOTE_ACCESS_ERROR ? St.REM_ACCESS_ERR : St.REM_INV_REQ_ERR, 0, 0, false);
    qp.resp.wqe = null;
  }
  qp.device.asyncEvent({ type: code === NakCode.REMOTE_ACCESS_ERROR ? 'QP_ACCESS_ERR' : 'QP_REQ_ERR', qp });
  qp.setState('ERR');
}

/** Posts a receive completion; false when the CQ had no room (the QP then goes to ERR: completionLost). */
function completeRecv(qp: Qp, wqe: RecvWqe, status: number, byteLen: number, opFlags: number, solicited: boolean, imm = 0, srcQp = qp.destQpn, invRkey = 0): boolean {
  const w = qp.recvCq.slot();
  if (!w) { completionLost(qp); return false; }
  w.wrId = wqe.wrId;
  w.status = WC_STATUS[status]!;
  w.opcode = opFlags & Op.WRITE ? 'RECV_RDMA_WITH_IMM' : 'RECV';
  w.byteLen = byteLen;
  w.qpn = qp.qpn;
  w.srcQp = srcQp;
  w.withImm = (opFlags & Op.IMM) !== 0;
  w.imm = imm;
  w.withInv = (opFlags & Op.INV) !== 0;
  w.invalidatedRkey = invRkey;
  w.grh = qp.type === 'UD' || qp.type === 'GSI';
  w.solicited = solicited;
  qp.recvCq.commit(solicited || status !== St.SUCCESS);
  return true;
}

/**
 * Copies n bytes into a receive WQE's SGL at message offset `at`. Returns SUCCESS, LOC_LEN_ERR
 * when the message does not fit, or LOC_PROT_ERR when an SGE no longer names live memory of the
 * QP's PD with LOCAL_WRITE (an MR closed after the post: checked on every packet, nothing lands).
 */
function scatterRecv(qp: Qp, wqe: RecvWqe, at: number, src: Buffer, from: number, n: number): number {
  if (!sglUsable(wqe.sg, qp.pd, true)) return St.LOC_PROT_ERR;
  if (at + n > wqe.length) return St.LOC_LEN_ERR;
  scatterSgl(wqe.sg, at, src, from, n);
  return St.SUCCESS;
}

/**
 * A receive WQE that cannot take the message (too short, or its memory gone): the WQE completes
 * with that error and the QP goes to ERR (rxe: RESPST_ERR_LENGTH / RESPST_ERR_MALFORMED_WQE). An RC
 * requester is told with a NAK: invalid request for a length error (IBA 9.7.5.2.4), remote
 * operational error for a local protection fault here (IBA table 9.9, class D1).
 */
function recvFailed(qp: Qp, wqe: RecvWqe, status: number, psn: number, byteLen: number, mask: number, se: boolean): void {
  const r = qp.resp;
  r.wqe = null;
  if (qp.type === 'RC') sendAck(qp, aethNak(status === St.LOC_LEN_ERR ? NakCode.INVALID_REQUEST : NakCode.REMOTE_OPERATIONAL_ERROR), psn);
  if (!completeRecv(qp, wqe, status, byteLen, mask, se)) return;
  if (qp.type === 'RC' || status === St.LOC_PROT_ERR) qp.setState('ERR');
  else if (qp.type === 'UC') {
    // UC: the message is over (its WQE completed with the error), so the opcode sequence restarts
    // too; left inside the message, a following MIDDLE/LAST would be scattered into the WQE just
    // cleared (a TypeError out of the receive path) and a new FIRST refused. (Found by the fuzzer.)
    r.dropMsg = !(mask & Op.END);
    r.psn = psnAdd(psn, 1);
    r.lastOp = -1;
  }
}

/**
 * The R_Key check of IBA 9.7.5.1.x / C9-... (rxe check_rkey): an MR with this
 * R_Key, of this QP's PD, valid, allowing `need`, holding [va, va+len).
 * Returns the offset into the MR (c.mr holds the MR, null when there is none) or -1.
 */
function checkRkey(c: RespCtx, rkey: number, va: bigint, len: number, need: number): number {
  const qp = c.qp;
  const mr = qp.device.mrByRkey.get(rkey);
  c.mr = mr ?? null;
  return mr && mr.pd === qp.pd && mr.allows(need) ? mr.offsetOf(va, len) : -1;
}

const grh = Buffer.alloc(40);
/** The 40-byte GRH at the head of a UD receive: for IPv4, 20 zero bytes then the IPv4 header (rxe_resp.c). */
function udGrh(qp: Qp, payloadLen: number, ipId: number, srcBytes: Uint8Array): Buffer {
  const p = port(qp);
  grh.fill(0);
  if (p.link.family === 4) {
    const h = 20;
    grh[h] = 0x45;
    grh.writeUInt16BE(20 + 8 + 12 + 8 + payloadLen + 4 + ((4 - (payloadLen & 3)) & 3), h + 2);
    grh.writeUInt16BE(ipId, h + 4);
    grh.writeUInt16BE(0x4000, h + 6);
    grh[h + 8] = 64; // the socket does not show the TTL
    grh[h + 9] = 17;
    grh.set(srcBytes.subarray(0, 4), h + 12);
    grh.set(p.addrBytes, h + 16);
    grh.writeUInt16BE(ipv4HeaderChecksum(grh, h), h + 10);
  } else {
    grh[0] = 0x60;
    grh.writeUInt16BE(8 + 12 + 8 + payloadLen + 4, 4);
    grh[6] = 17;
    grh[7] = 64;
    grh.set(srcBytes, 8);
    grh.set(p.addrBytes, 24);
  }
  return grh;
}

/** For a look at a packet's BTH before it is processed (bound and read at once, nothing in between). */
const peekBth = new BthView();

/** Entry from the receive path. While READ responses are going out, later requests wait in order. */
export function onRequest(qp: Qp, p: PktInfo, srcIp: string, srcPort: number, ipId: number, srcBytes: Uint8Array): void {
  const st = qp.state;
  if (st !== 'RTR' && st !== 'RTS' && st !== 'SQD' && st !== 'SQE') {
    port(qp).counters.v[C.rcvd_bad_state]!++;
    qp.traceRing.record(Role.RESP, RespState.ERR_STATE, p.opcode, peekBth.bind(p.buf, p.bthOff).psn, Reason.BAD_STATE);
    return;
  }
  if (qp.resp.reads.length > 0 || qp.resp.backlog.length > 0) {
    // A duplicate READ (the requester went back for a response it missed) restarts its stream
    // now instead of waiting behind the streams still going out: those only add duplicates.
    if (qp.type === 'RC' && (p.mask & Op.READ) !== 0 && psnDiff(peekBth.bind(p.buf, p.bthOff).psn, qp.resp.psn) < 0) {
      processRequest(qp, p, ipId, srcBytes);
      return;
    }
    if (qp.resp.backlog.length < BACKLOG_MAX) {
      qp.resp.backlog.push({ buf: Buffer.from(p.buf.subarray(p.bthOff, p.bthOff + p.len)), len: p.len, srcIp, srcPort, ipId, srcBytes: Uint8Array.from(srcBytes) });
    }
    return;
  }
  processRequest(qp, p, ipId, srcBytes);
  if (qp.resp.stash.size > 0) drainStash(qp);
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

const stashInfo = new PktInfo();
const NO_SRC = new Uint8Array(4);
function drainStash(qp: Qp): void {
  const r = qp.resp;
  const st = r.stash;
  let budget = STASH_MAX;
  while (st.size > 0 && budget-- > 0 && r.reads.length === 0 && r.backlog.length === 0) {
    if (qp.state !== 'RTR' && qp.state !== 'RTS' && qp.state !== 'SQD') { st.clear(); return; }
    const b = st.get(r.psn);
    if (b === undefined) break;
    st.delete(r.psn);
    if (parseIb(stashInfo, b, 0, b.length) !== 0) continue;
    processRequest(qp, stashInfo, 0, NO_SRC); // RC: the source address and IPv4 ID are not used
  }
  // What the requester resent meanwhile made older entries duplicates: nothing waits for them.
  if (st.size > 0) for (const k of st.keys()) if (psnDiff(k, r.psn) < 0) st.delete(k);
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
  v!: Float64Array;
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
  /** what the decision was (states.ts Reason), recorded in the QP's trace */
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

function processRequest(qp: Qp, p: PktInfo, ipId: number, srcBytes: Uint8Array): void {
  const c = ctxPool[depth] ?? (ctxPool[depth] = new RespCtx());
  depth++;
  try {
    const bth = c.bth.bind(p.buf, p.bthOff);
    c.qp = qp;
    c.p = p;
    c.v = port(qp).counters.v;
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
    if (c.runReads) runReads(qp);
  } finally {
    depth--;
  }
}

/** GET_REQ: the packet is ours to process (UD: its Q_Key); the first packet in RTR establishes the connection. */
function getReq(c: RespCtx): number {
  const qp = c.qp;
  if (c.row.qkey) {
    const deth = c.deth.bind(c.p.buf, c.p.bthOff + hdrOff(c.op, Hdr.DETH));
    if (deth.qkey !== qp.qkey) { c.v[C.rcvd_bad_qkey]!++; c.reason = Reason.BAD_QKEY; return RespState.DROP; }
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
    c.v[C.out_of_sequence]!++;
    abandonMessage(c.qp);
    r.psn = c.psn;
    if (!start) { r.dropMsg = true; r.psn = psnAdd(c.psn, 1); c.reason = Reason.UC_PSN_GAP; return RespState.DROP; }
  }
  if (r.dropMsg) {
    if (!start) { r.psn = psnAdd(c.psn, 1); c.reason = Reason.UC_DROPPING; return RespState.DROP; }
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
  if (bad) { c.reason = Reason.BAD_OP_SEQ; c.abandon = true; c.dropRest = true; return RespState.ERR_NAK_INVALID; }
  return RespState.CHK_OP_VALID;
}

/** CHK_OP_VALID (rxe check_op_valid): the QP's remote access flags permit the operation. */
function chkOpValid(c: RespCtx): number {
  const mask = c.mask;
  const need = mask & Op.WRITE ? ACCESS.REMOTE_WRITE : mask & Op.READ ? ACCESS.REMOTE_READ : mask & Op.ATOMIC ? ACCESS.REMOTE_ATOMIC : 0;
  if (need && !(c.qp.accessFlags & need)) { c.reason = Reason.OP_NOT_PERMITTED; c.dropRest = true; return RespState.ERR_NAK_INVALID; }
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
    if (!wqe) { c.reason = Reason.NO_RECV_WQE; c.dropRest = true; return RespState.ERR_NAK_RNR; }
    r.wqe = wqe;
    r.offset = 0;
    if (c.row.grh) {
      const g = udGrh(qp, c.p.payloadLen, c.ipId, c.srcBytes);
      const st = scatterRecv(qp, wqe, 0, g, 0, 40);
      if (st !== St.SUCCESS) return recvError(c, wqe, st, 0);
      r.offset = 40;
    }
    return RespState.EXECUTE;
  }
  // WRITE with immediate consumes a receive WQE at its last packet (IBA 9.4.3): check before placing.
  const wqe = qp.takeRecv();
  if (!wqe) { c.reason = Reason.NO_RECV_WQE; c.dropRest = false; return RespState.ERR_NAK_RNR; }
  c.wqe = wqe;
  return RespState.CHK_LENGTH;
}

/** CHK_LENGTH (rxe check_length): a WRITE's packets add up to exactly its RETH's DMA length. */
function chkLength(c: RespCtx): number {
  const r = c.qp.resp;
  const n = c.p.payloadLen;
  if (n > r.resid || ((c.mask & Op.END) && n !== r.resid) || (!r.mr && n > 0)) {
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
    c.off = checkRkey(c, a.rkey, a.va, 8, ACCESS.REMOTE_ATOMIC);
    if (c.off < 0) { c.reason = Reason.BAD_RKEY; return RespState.ERR_NAK_ACCESS; }
    if ((c.off & 7) !== 0) { c.reason = Reason.MISALIGNED; return RespState.ERR_NAK_INVALID; } // IBA 9.4.5: 8-byte aligned
    return RespState.ATOMIC_REPLY;
  }
  const reth = c.reth.bind(c.p.buf, c.p.bthOff + hdrOff(c.op, Hdr.RETH));
  const len = reth.dmaLen;
  // A zero-length WRITE or READ touches no memory: no R_Key or address is checked (IBA C9-88, rxe).
  c.off = len === 0 ? 0 : checkRkey(c, reth.rkey, reth.va, len, mask & Op.READ ? ACCESS.REMOTE_READ : ACCESS.REMOTE_WRITE);
  if (len === 0) c.mr = null;
  if (mask & Op.READ) {
    if (c.off < 0 || len > qp.device.attr.maxMsgSize) { c.reason = Reason.BAD_RKEY; return RespState.ERR_NAK_ACCESS; }
    return RespState.READ_REPLY;
  }
  if (c.off < 0) { c.reason = Reason.BAD_RKEY; c.dropRest = !(mask & Op.END); return RespState.ERR_NAK_ACCESS; }
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
    if (st !== St.SUCCESS) return recvError(c, wqe, st, r.offset);
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
  if (n > 0) p.buf.copy(r.mr!.buffer, r.mrOff, p.payloadOff, p.payloadOff + n);
  r.mrOff += n;
  r.resid -= n;
  return end ? RespState.COMPLETE : RespState.ACKNOWLEDGE;
}

/** The receive WQE cannot take the message: ERR_LENGTH (too short) or ERR_MALFORMED_WQE (its memory is gone). */
function recvError(c: RespCtx, wqe: RecvWqe, status: number, byteLen: number): number {
  c.wqe = wqe;
  c.status = status;
  c.byteLen = byteLen;
  c.reason = status === St.LOC_LEN_ERR ? Reason.LOC_LEN : Reason.LOC_PROT;
  return status === St.LOC_LEN_ERR ? RespState.ERR_LENGTH : RespState.ERR_MALFORMED_WQE;
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
      if (!mr || mr.pd !== qp.pd || !mr.invalidatable) { c.reason = Reason.BAD_INV_RKEY; return RespState.ERR_NAK_INVALID; }
      mr.invalidate(); // IBA 10.6.5: the remote invalidation takes the R_Key out of use
    }
    const imm = mask & Op.IMM ? b.readUInt32BE(o + hdrOff(c.op, Hdr.IMMDT)) : 0;
    const srcQp = c.row.qkey ? c.deth.srcQp : qp.destQpn;
    r.wqe = null;
    if (!completeRecv(qp, wqe, St.SUCCESS, r.offset, mask, c.se, imm, srcQp, inv)) { c.reason = Reason.CQ_FULL; return RespState.DONE; }
    r.msn = (r.msn + 1) & 0xffffff;
    c.v[C.rdma_recvs]!++;
    return RespState.ACKNOWLEDGE;
  }
  r.mr = null;
  if (c.wqe && !completeRecv(qp, c.wqe, St.SUCCESS, r.writeLen, mask, c.se, b.readUInt32BE(o + hdrOff(c.op, Hdr.IMMDT)))) { c.reason = Reason.CQ_FULL; return RespState.DONE; }
  r.msn = (r.msn + 1) & 0xffffff;
  return RespState.ACKNOWLEDGE;
}

/** ACKNOWLEDGE: the expected PSN moves past the packet; RC answers AckReq (coalesced, queueAck). */
function acknowledge(c: RespCtx): number {
  const r = c.qp.resp;
  r.psn = psnAdd(c.psn, 1);
  r.lastOp = c.op;
  r.nakPsn = -1;
  if (c.row.acks && c.ackReq) { queueAck(c.qp, c.psn); c.reason = Reason.ACK_QUEUED; }
  else if (c.reason === Reason.NONE) c.reason = Reason.NO_ACK_REQ;
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
  c.v[C.out_of_sequence]!++;
  stashAhead(qp, c.p, psn, d);
  if (r.gapPsn !== r.psn) { r.gapPsn = r.psn; r.oosCount = 0; }
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
    c.v[C.send_rnr_err]!++;
    sendAck(qp, aethRnrNak(qp.minRnrTimer), c.psn);
    return RespState.DONE;
  }
  c.v[C.rcvd_no_recv_wqe]!++;
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
  c.v[C.duplicate_request]!++;
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

function abandonMessage(qp: Qp): void {
  const r = qp.resp;
  // The receive WQE of a dropped UC message is reused for the next one (rxe resets it).
  if (r.wqe) r.offset = 0;
  r.mr = null;
  r.lastOp = -1;
}

function nextResource(qp: Qp): RdResource {
  const r = qp.resp;
  if (r.res.length === 0) r.res.push(new RdResource());
  const res = r.res[r.resNext % r.res.length]!;
  r.resNext++;
  return res;
}

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
    if (res) { sendAtomicAck(qp, psn, res.msn, res.orig); c.reason = Reason.DUP_ATOMIC_REPLAYED; } // the saved result: the atomic does not run again
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
    const off = len === 0 ? 0 : checkRkey(c, rkey, va, len, ACCESS.REMOTE_READ);
    const mr = len === 0 ? null : c.mr;
    // The MR went away (dereg, invalidation) since the first request: the replay is a remote
    // access error like any later access, not silence the requester would retry into forever.
    if (off < 0) { c.reason = Reason.BAD_RKEY; fatalNak(qp, NakCode.REMOTE_ACCESS_ERROR, psn); return; }
    // rxe's replay: the stream for what is asked restarts at the PSN asked for, and a stream still
    // sending any of those PSNs stops: never a second stream for the same responses (that
    // multiplied READ traffic under loss). A requester that asks for a hole below the stream in
    // progress (a part of the READ, completer.ts askReadHole) gets it first; the stream then goes on.
    const last = psnAdd(psn, packetsFor(len, qp.pathMtu) - 1);
    for (let i = r.reads.length - 1; i >= 0; i--) {
      const e = r.reads[i]!;
      const eLast = psnAdd(e.psn, packetsFor(e.len, qp.pathMtu) - 1);
      if (psnDiff(e.sentPsn, last) <= 0 && psnDiff(psn, eLast) <= 0) r.reads.splice(i, 1);
    }
    r.reads.unshift({ psn, mr, off, len, sentPsn: psn });
    c.reason = Reason.DUP_READ_REPLAYED;
    c.runReads = true;
  }
}

/** Sends READ responses (bounded per turn), then handles requests that waited behind them. */
export function runReads(qp: Qp): void {
  const r = qp.resp;
  if (r.ackPending && r.reads.length > 0) flushAck(qp);
  const pt = port(qp);
  const mtu = qp.pathMtu;
  let budget = READ_BUDGET;
  while (r.reads.length > 0 && budget > 0) {
    if (qp.state === 'ERR' || qp.state === 'RESET') { r.reads.length = 0; break; }
    const rd = r.reads[0]!;
    // Deregistered or invalidated since the request: no byte of it is served after that; the
    // requester gets a remote access NAK for the response it would have had (rxe checks the MR
    // state per response packet).
    if (rd.mr !== null && !rd.mr.allows(ACCESS.REMOTE_READ)) { fatalNak(qp, NakCode.REMOTE_ACCESS_ERROR, rd.sentPsn); return; }
    const b = pt.link.allocTx();
    if (!b) { r.waitingDrain = true; return; }
    const idx = psnDiff(rd.sentPsn, rd.psn);
    const off = idx * mtu;
    const rest = rd.len - off;
    const n = rest < mtu ? rest : mtu;
    const first = idx === 0;
    const last = rest <= mtu;
    const opc = READ_RESPONSE_OPCODE[(first ? 2 : 0) + (last ? 1 : 0)]!;
    writeBth(b, opc, false, 0, qp.destQpn, false, rd.sentPsn);
    // FIRST, LAST and ONLY carry an AETH (IBA 9.3.5), MIDDLE none: the opcode table says which.
    const p = OPCODE_MASK[opc]! & hdrBit(Hdr.AETH) ? writeAeth(b, opc, aethAck(), r.msn) : payloadOff(opc);
    if (n > 0) rd.mr!.buffer.copy(b, p, rd.off + off, rd.off + off + n);
    finishAndSend(pt, b, p + n, n, qp.dest);
    rd.sentPsn = psnAdd(rd.sentPsn, 1);
    if (last) r.reads.shift();
    budget--;
  }
  if (r.reads.length > 0) {
    scheduleReads(qp);
    return;
  }
  drainBacklog(qp);
}

function scheduleReads(qp: Qp): void {
  if (qp.resp.scheduled) return;
  qp.resp.scheduled = true;
  qp.device.sched.defer(() => {
    qp.resp.scheduled = false;
    if (!qp.closed) runReads(qp);
  });
}

const backlogInfo = new PktInfo();
function drainBacklog(qp: Qp): void {
  const r = qp.resp;
  let budget = READ_BUDGET;
  while (r.backlog.length > 0 && r.reads.length === 0 && budget-- > 0) {
    const e = r.backlog.shift()!;
    if (parseIb(backlogInfo, e.buf, 0, e.len) !== 0) continue;
    processRequest(qp, backlogInfo, e.ipId, e.srcBytes);
  }
  if (r.backlog.length > 0 && r.reads.length === 0) scheduleReads(qp);
  if (r.backlog.length === 0 && r.reads.length === 0 && r.stash.size > 0) drainStash(qp);
}

export { payloadOff };
