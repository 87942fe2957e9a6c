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
 */
import { RdResource, type RecvWqe } from './wqe.js';
import { ACCESS, St, WC_STATUS, type TransportQp as Qp, type PortLike as Port, type MemoryRegion as Mr } from './types.js';
import { aethAck, aethNak, aethRnrNak, NakCode } from '../aeth.js';
import { Hdr, OPCODE_MASK, Op } from '../opcode.js';
import { packetsFor, psnAdd, psnDiff } from '../psn.js';
import { PktInfo, parseIb } from '../packet.js';
import { C } from '../counters.js';
import { finishAndSend, hdrOff, writeBth } from './build.js';
import { ipv4HeaderChecksum } from '../wire/net.js';
import { scatterSgl, sglUsable } from './sgl.js';
import { completionLost } from './completer.js';

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
  writeBth(b, 0x11, false, 0, qp.destQpn, false, psn);
  b[12] = syndrome;
  b[13] = (msn >>> 16) & 0xff; b[14] = (msn >>> 8) & 0xff; b[15] = msn & 0xff;
  finishAndSend(p, b, 16, 0, qp.dest);
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
  writeBth(b, 0x12, false, 0, qp.destQpn, false, psn);
  b[12] = aethAck();
  b[13] = (msn >>> 16) & 0xff; b[14] = (msn >>> 8) & 0xff; b[15] = msn & 0xff;
  b.writeBigUInt64BE(orig, 16);
  finishAndSend(p, b, 24, 0, qp.dest);
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
 * The R_Key check of IBA 9.7.5.1.x / C9-... (rxe check_rkey): the MR with this R_Key when it is
 * of this QP's PD, valid and allows `need`, else null. The caller then checks that it holds
 * [va, va+len) (mr.offsetOf: -1 when not) and keeps the MR and the offset it returns.
 */
function mrForRkey(qp: Qp, rkey: number, need: number): Mr | null {
  const mr = qp.device.mrByRkey.get(rkey);
  return mr && mr.pd === qp.pd && mr.allows(need) ? mr : null;
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

function bthPsn(p: PktInfo): number {
  const b = p.buf, o = p.bthOff;
  return (b[o + 9]! << 16) | (b[o + 10]! << 8) | b[o + 11]!;
}

/** Entry from the receive path. While READ responses are going out, later requests wait in order. */
export function onRequest(qp: Qp, p: PktInfo, srcIp: string, srcPort: number, ipId: number, srcBytes: Uint8Array): void {
  const st = qp.state;
  if (st !== 'RTR' && st !== 'RTS' && st !== 'SQD' && st !== 'SQE') { port(qp).counters.v[C.rcvd_bad_state]!++; return; }
  if (qp.resp.reads.length > 0 || qp.resp.backlog.length > 0) {
    // A duplicate READ (the requester went back for a response it missed) restarts its stream
    // now instead of waiting behind the streams still going out: those only add duplicates.
    if (qp.type === 'RC' && (p.mask & Op.READ) !== 0 && psnDiff(bthPsn(p), qp.resp.psn) < 0) {
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

function processRequest(qp: Qp, p: PktInfo, ipId: number, srcBytes: Uint8Array): void {
  const v = port(qp).counters.v;
  const b = p.buf;
  const o = p.bthOff;
  const op = p.opcode;
  const mask = p.mask;
  const psn = (b[o + 9]! << 16) | (b[o + 10]! << 8) | b[o + 11]!;
  const ackReq = (b[o + 8]! & 0x80) !== 0;
  const se = (b[o + 1]! & 0x80) !== 0;
  const r = qp.resp;
  const ud = qp.type === 'UD' || qp.type === 'GSI';

  if (ud) {
    const qkey = b.readUInt32BE(o + 12);
    if (qkey !== qp.qkey) { v[C.rcvd_bad_qkey]!++; return; }
  }
  // (RC/UC: the source address was checked against the AV on the receive path, recv.ts.)
  if (qp.state === 'RTR' && !qp.commEst) {
    qp.commEst = true;
    qp.device.asyncEvent({ type: 'COMM_EST', qp }); // IBA 11.6.3: first packet received in RTR
  }

  if (qp.type === 'RC') {
    const d = psnDiff(psn, r.psn);
    if (d > 0) {
      v[C.out_of_sequence]!++;
      stashAhead(qp, p, psn, d);
      if (r.gapPsn !== r.psn) { r.gapPsn = r.psn; r.oosCount = 0; }
      // One sequence NAK per gap (IBA 9.7.5.1.1), but only once NAK_AFTER packets have passed
      // it: a packet merely reordered by a few arrives by itself, and the ones past it wait in
      // the stash, so go-back-N does not resend a flight for a reordering. One more NAK whenever
      // the requester has gone back (a PSN below the highest seen since the NAK): its resend of
      // the missing PSN was lost too. (A resend starts at the NAKed PSN, so its packets land just
      // above it; a PSN far above that is merely reordered within the old flight and is not a
      // reason to NAK again.) A NAK can be lost as well: repeat it every 16 out-of-sequence packets.
      const first = r.nakPsn !== r.psn;
      if (first ? ++r.oosCount >= NAK_AFTER : (psnDiff(psn, r.oosMax) < 0 && d <= 4) || ++r.oosCount >= 16) {
        r.nakPsn = r.psn;
        r.oosCount = 0;
        sendAck(qp, aethNak(NakCode.PSN_SEQ_ERROR), r.psn);
      }
      r.oosMax = psn;
      return;
    }
    if (d < 0) {
      v[C.duplicate_request]!++;
      duplicate(qp, p, psn, ackReq);
      return;
    }
  } else if (qp.type === 'UC') {
    if (psn !== r.psn) {
      v[C.out_of_sequence]!++;
      // IBA 9.8.3.x: a UC gap drops the message in progress; a new message may start at once.
      abandonMessage(qp);
      r.psn = psn;
      if (!(mask & Op.START)) { r.dropMsg = true; r.psn = psnAdd(psn, 1); return; }
    }
    if (r.dropMsg) {
      if (!(mask & Op.START)) { r.psn = psnAdd(psn, 1); return; }
      r.dropMsg = false;
    }
  }

  if (!ud) {
    // Opcode sequence (IBA 9.8.3.x, rxe check_op_seq).
    const prev = r.lastOp >= 0 ? OPCODE_MASK[r.lastOp]! : Op.END;
    const inMsg = (prev & Op.END) === 0;
    const bad = (mask & Op.START) ? inMsg : !inMsg || (prev & KIND) !== (mask & KIND);
    if (bad) {
      if (qp.type === 'RC') fatalNak(qp, NakCode.INVALID_REQUEST, psn);
      else { abandonMessage(qp); r.dropMsg = true; r.psn = psnAdd(psn, 1); }
      return;
    }
    // The QP's remote access flags (rxe check_op_valid).
    const need = mask & Op.WRITE ? ACCESS.REMOTE_WRITE : mask & Op.READ ? ACCESS.REMOTE_READ : mask & Op.ATOMIC ? ACCESS.REMOTE_ATOMIC : 0;
    if (need && !(qp.accessFlags & need)) {
      if (qp.type === 'RC') fatalNak(qp, NakCode.INVALID_REQUEST, psn);
      else { r.dropMsg = true; r.psn = psnAdd(psn, 1); }
      return;
    }
  }

  if (mask & Op.SEND) {
    if (mask & Op.START) {
      // A UC message dropped half-way leaves its receive WQE to the next message.
      const wqe = r.wqe ?? qp.takeRecv();
      if (!wqe) {
        if (qp.type === 'RC') {
          v[C.send_rnr_err]!++;
          sendAck(qp, aethRnrNak(qp.minRnrTimer), psn); // IBA 9.7.5.2.8: retry this PSN later
        } else {
          v[C.rcvd_no_recv_wqe]!++;
          if (qp.type === 'UC') { r.dropMsg = true; r.psn = psnAdd(psn, 1); }
        }
        return;
      }
      r.wqe = wqe;
      r.offset = 0;
      if (ud) {
        const g = udGrh(qp, p.payloadLen, ipId, srcBytes);
        const st = scatterRecv(qp, wqe, 0, g, 0, 40);
        if (st !== St.SUCCESS) { recvFailed(qp, wqe, st, psn, 0, mask, se); return; }
        r.offset = 40;
      }
    }
    const wqe = r.wqe!;
    const st = scatterRecv(qp, wqe, r.offset, b, p.payloadOff, p.payloadLen);
    if (st !== St.SUCCESS) { recvFailed(qp, wqe, st, psn, r.offset, mask, se); return; }
    r.offset += p.payloadLen;
    if (mask & Op.END) {
      let inv = 0;
      if (mask & Op.INV) {
        inv = b.readUInt32BE(o + hdrOff(op, Hdr.IETH));
        // Only an MR that can be invalidated (registered `invalidatable`, softroce's stand-in for a
        // fast-registration MR) may be; rxe refuses a user MR the same way (rxe_invalidate_mr).
        const mr = qp.device.mrByRkey.get(inv);
        if (!mr || mr.pd !== qp.pd || !mr.invalidatable) { fatalNak(qp, NakCode.INVALID_REQUEST, psn); return; }
        mr.invalidate(); // IBA 10.6.5: the remote invalidation takes the R_Key out of use
      }
      const imm = mask & Op.IMM ? b.readUInt32BE(o + hdrOff(op, Hdr.IMMDT)) : 0;
      const srcQp = ud ? ((b[o + 17]! << 16) | (b[o + 18]! << 8) | b[o + 19]!) : qp.destQpn;
      r.wqe = null;
      if (!completeRecv(qp, wqe, St.SUCCESS, r.offset, mask, se, imm, srcQp, inv)) return;
      r.msn = (r.msn + 1) & 0xffffff;
      v[C.rdma_recvs]!++;
    }
  } else if (mask & Op.WRITE) {
    if (mask & Op.START) {
      const ro = o + hdrOff(op, Hdr.RETH);
      const va = b.readBigUInt64BE(ro);
      const rkey = b.readUInt32BE(ro + 8);
      const len = b.readUInt32BE(ro + 12);
      // A zero-length WRITE touches no memory: no R_Key or address is checked (IBA C9-88, rxe).
      const mr = len === 0 ? null : mrForRkey(qp, rkey, ACCESS.REMOTE_WRITE);
      const off = len === 0 ? 0 : mr === null ? -1 : mr.offsetOf(va, len);
      if (off < 0) {
        if (qp.type === 'RC') fatalNak(qp, NakCode.REMOTE_ACCESS_ERROR, psn);
        else { r.dropMsg = !(mask & Op.END); r.psn = psnAdd(psn, 1); }
        return;
      }
      r.mr = mr;
      r.mrOff = off;
      r.resid = len;
      r.writeLen = len;
    }
    let wqe: RecvWqe | null = null;
    if (mask & Op.IMM) {
      // WRITE with immediate consumes a receive WQE at its last packet (IBA 9.4.3): check before placing.
      wqe = qp.takeRecv();
      if (!wqe) {
        if (qp.type === 'RC') { v[C.send_rnr_err]!++; sendAck(qp, aethRnrNak(qp.minRnrTimer), psn); }
        else { v[C.rcvd_no_recv_wqe]!++; r.dropMsg = false; r.psn = psnAdd(psn, 1); }
        return;
      }
    }
    const n = p.payloadLen;
    if (n > r.resid || ((mask & Op.END) && n !== r.resid) || (!r.mr && n > 0)) {
      if (wqe) qp.returnRecv(wqe);
      if (qp.type === 'RC') fatalNak(qp, NakCode.INVALID_REQUEST, psn);
      else { r.dropMsg = !(mask & Op.END); r.psn = psnAdd(psn, 1); }
      return;
    }
    // The MR may have been deregistered or invalidated since the first packet: no byte lands
    // after that (the rest of the message is refused as a remote access error, as at its start).
    if (r.mr && !r.mr.allows(ACCESS.REMOTE_WRITE)) {
      if (wqe) qp.returnRecv(wqe);
      r.mr = null;
      if (qp.type === 'RC') fatalNak(qp, NakCode.REMOTE_ACCESS_ERROR, psn);
      else { r.dropMsg = !(mask & Op.END); r.psn = psnAdd(psn, 1); }
      return;
    }
    if (n > 0) b.copy(r.mr!.buffer, r.mrOff, p.payloadOff, p.payloadOff + n);
    r.mrOff += n;
    r.resid -= n;
    if (mask & Op.END) {
      r.mr = null;
      if (wqe && !completeRecv(qp, wqe, St.SUCCESS, r.writeLen, mask, se, b.readUInt32BE(o + hdrOff(op, Hdr.IMMDT)))) return;
      r.msn = (r.msn + 1) & 0xffffff;
    }
  } else if (mask & Op.READ) {
    const ro = o + hdrOff(op, Hdr.RETH);
    const va = b.readBigUInt64BE(ro);
    const rkey = b.readUInt32BE(ro + 8);
    const len = b.readUInt32BE(ro + 12);
    // A zero-length READ reads nothing: no R_Key or address is checked (IBA C9-88, rxe).
    const mr = len === 0 ? null : mrForRkey(qp, rkey, ACCESS.REMOTE_READ);
    const off = len === 0 ? 0 : mr === null ? -1 : mr.offsetOf(va, len);
    if (off < 0 || len > qp.device.attr.maxMsgSize) { fatalNak(qp, NakCode.REMOTE_ACCESS_ERROR, psn); return; }
    const n = packetsFor(len, qp.pathMtu);
    const res = nextResource(qp);
    res.psn = psn;
    res.lastPsn = psnAdd(psn, n - 1);
    res.atomic = false;
    res.va = va;
    res.len = len;
    res.rkey = rkey;
    r.psn = psnAdd(psn, n);
    r.lastOp = op;
    r.nakPsn = -1;
    r.msn = (r.msn + 1) & 0xffffff;
    r.reads.push({ psn, mr, off, len, sentPsn: psn });
    runReads(qp);
    return;
  } else if (mask & Op.ATOMIC) {
    const ao = o + hdrOff(op, Hdr.ATMETH);
    const va = b.readBigUInt64BE(ao);
    const rkey = b.readUInt32BE(ao + 8);
    const mr = mrForRkey(qp, rkey, ACCESS.REMOTE_ATOMIC);
    const off = mr === null ? -1 : mr.offsetOf(va, 8);
    if (off < 0) { fatalNak(qp, NakCode.REMOTE_ACCESS_ERROR, psn); return; }
    if ((off & 7) !== 0) { fatalNak(qp, NakCode.INVALID_REQUEST, psn); return; } // IBA 9.4.5: 8-byte aligned
    const orig = mr!.buffer.readBigUInt64LE(off);
    const a = b.readBigUInt64BE(ao + 12);
    const cmp = b.readBigUInt64BE(ao + 20);
    const next = op === 0x13 ? (orig === cmp ? a : orig) : BigInt.asUintN(64, orig + a);
    mr!.buffer.writeBigUInt64LE(next, off);
    r.msn = (r.msn + 1) & 0xffffff;
    const res = nextResource(qp);
    res.psn = psn;
    res.lastPsn = psn;
    res.atomic = true;
    res.orig = orig;
    res.msn = r.msn;
    r.psn = psnAdd(psn, 1);
    r.lastOp = op;
    r.nakPsn = -1;
    sendAtomicAck(qp, psn, r.msn, orig);
    return;
  }
  r.psn = psnAdd(psn, 1);
  r.lastOp = op;
  r.nakPsn = -1;
  if (qp.type === 'RC' && ackReq) queueAck(qp, psn);
}

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
function duplicate(qp: Qp, p: PktInfo, psn: number, ackReq: boolean): void {
  const mask = p.mask;
  const r = qp.resp;
  if (mask & (Op.SEND | Op.WRITE)) {
    // Already delivered: acknowledge up to the newest PSN received, deliver nothing.
    if (ackReq) sendAck(qp, aethAck(), psnAdd(r.psn, -1));
    return;
  }
  if (mask & Op.ATOMIC) {
    const res = r.res.find((x) => x.atomic && x.psn === psn);
    if (res) sendAtomicAck(qp, psn, res.msn, res.orig); // the saved result: the atomic does not run again
    return;
  }
  if (mask & Op.READ) {
    const res = r.res.find((x) => !x.atomic && x.psn >= 0 && psnDiff(psn, x.psn) >= 0 && psnDiff(psn, x.lastPsn) <= 0);
    if (!res) return;
    const b = p.buf;
    const ro = p.bthOff + hdrOff(p.opcode, Hdr.RETH);
    const va = b.readBigUInt64BE(ro);
    const rkey = b.readUInt32BE(ro + 8);
    const len = b.readUInt32BE(ro + 12);
    // Only a replay of the request that was saved: the same R_Key and a part of its range (as rxe
    // checks a duplicate READ). Anything else is not the peer going back: dropped, as counted above.
    if (rkey !== res.rkey || va < res.va || BigInt(len) > BigInt(res.len) || va + BigInt(len) > res.va + BigInt(res.len)) return;
    const mr = len === 0 ? null : mrForRkey(qp, rkey, ACCESS.REMOTE_READ);
    const off = len === 0 ? 0 : mr === null ? -1 : mr.offsetOf(va, len);
    // The MR went away (dereg, invalidation) since the first request: the replay is a remote
    // access error like any later access, not silence the requester would retry into forever.
    if (off < 0) { fatalNak(qp, NakCode.REMOTE_ACCESS_ERROR, psn); return; }
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
    runReads(qp);
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
    const opc = first ? (last ? 0x10 : 0x0d) : last ? 0x0f : 0x0e;
    writeBth(b, opc, false, 0, qp.destQpn, false, rd.sentPsn);
    let p = 12;
    if (first || last) {
      b[12] = aethAck();
      b[13] = (r.msn >>> 16) & 0xff; b[14] = (r.msn >>> 8) & 0xff; b[15] = r.msn & 0xff;
      p = 16;
    }
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
