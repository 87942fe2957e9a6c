/**
 * What the responder sends and posts (IBA 9.7.5.1.2, rxe_resp.c): ACKs (coalesced per receive
 * burst), NAKs and RNR NAKs, atomic ACKs, class C errors (NAK, then the QP to ERR), receive
 * completions, and the receive WQE's scatter. The responder's state steps (responder-steps.ts)
 * and its READ streaming (responder.ts) share them.
 */
import { RdResource } from './wqe.js';
import type { TransportQp as Qp } from './types.js';
import { WcStatusIdx, WC_STATUS } from './types.js';
import { aethAck, aethNak, NakCode } from '../aeth.js';
import { Op, OPC } from '../opcode.js';
import { psnAdd } from '../psn.js';
import { Ctr } from '../counters.js';
import { finishAndSend, payloadOff, txPortOf, writeAeth, writeBth } from './build.js';
import { ipv4HeaderChecksum } from '../wire/net.js';
import type { RecvWqe } from './wqe.js';
import { scatterSgl, sglUsable } from './sgl.js';
import { completionLost } from './complete.js';
import type { PortLike as Port } from './types.js';

export function port(qp: Qp): Port {
  return qp.device.ports[qp.port - 1]!;
}

/**
 * Sends an ACK / NAK / RNR NAK (IBA 9.7.5.1.2) now, after any coalesced ACK
 * still waiting (responses leave in PSN order). Dropped (and counted) when the
 * tx pool is empty.
 */
export function sendAck(qp: Qp, syndrome: number, psn: number, msn = qp.resp.msn): void {
  if (qp.resp.ackPending) flushAck(qp);
  const p = txPortOf(qp);
  const b = p.link.allocTx();
  if (!b) {
    p.counters.counts[Ctr.ack_deferred]!++;
    return;
  }
  writeBth(b, OPC.RC_ACKNOWLEDGE, false, 0, qp.destQpn, false, psn);
  finishAndSend(p, b, writeAeth(b, OPC.RC_ACKNOWLEDGE, syndrome, msn), 0, qp.dest, qp.srcPort);
}

/**
 * A positive ACK for a request that asked for one, coalesced: every request
 * that arrives in the same receive burst (one batch of the native link, else one
 * event-loop turn) is acknowledged by one ACK for the newest PSN when it ends. IBA 9.7.5.1.1 lets an ACK
 * acknowledge every request up to its PSN; the requester completes all of
 * them (rxe's completer does the same with our ACKs). On a busy responder
 * this halves the packets per small message.
 */
export function queueAck(qp: Qp, psn: number): void {
  const r = qp.resp;
  // The app closed the QP (or moved it to ERR) from this request's completion: answer now, the
  // request was delivered and its sender waits for the ACK.
  if (qp.closed || qp.state === 'ERR') {
    sendAck(qp, aethAck(), psn, r.msn);
    return;
  }
  r.ackPsn = psn;
  r.ackMsn = r.msn;
  if (r.ackPending) return;
  r.ackPending = true;
  // Where the link hands over a whole receive batch in one callback (caps.rxBatch), the end of that
  // callback (sched.soon: a microtask, or with the addon right after its callback) is the end of
  // the burst: the ACK leaves in the same turn, with the application's answer to the request it
  // acknowledges, instead of one loop phase later (a ping-pong's sender waits for it before it may
  // post again). Elsewhere one callback per datagram: the turn's end.
  const fn = r.ackFlush ?? (r.ackFlush = ackFlushFn(qp));
  if (port(qp).link.caps.rxBatch === true) qp.device.sched.soon(fn);
  else qp.device.sched.defer(fn);
}

/**
 * The QP's flush function, made once. Not an arrow inside queueAck: a function that creates a
 * closure over its parameter allocates a context for it on every call, whether or not the closure
 * is made then (V8), and queueAck runs per ACKed request (issue 15's heap check).
 */
function ackFlushFn(qp: Qp): () => void {
  return (): void => flushAck(qp);
}

/** Sends the coalesced ACK, if one waits and the QP can still answer. */
export function flushAck(qp: Qp): void {
  const r = qp.resp;
  if (!r.ackPending) return;
  r.ackPending = false;
  if (qp.closed || qp.state === 'RESET' || qp.state === 'INIT' || qp.state === 'ERR') return;
  sendAck(qp, aethAck(), r.ackPsn, r.ackMsn);
}

export function sendAtomicAck(qp: Qp, psn: number, msn: number, orig: bigint): void {
  if (qp.resp.ackPending) flushAck(qp);
  const p = txPortOf(qp);
  const b = p.link.allocTx();
  if (!b) {
    p.counters.counts[Ctr.ack_deferred]!++;
    return;
  }
  writeBth(b, OPC.RC_ATOMIC_ACKNOWLEDGE, false, 0, qp.destQpn, false, psn);
  const at = writeAeth(b, OPC.RC_ATOMIC_ACKNOWLEDGE, aethAck(), msn); // AtomicAckETH follows the AETH (IBA 9.3.6)
  b.writeBigUInt64BE(orig, at);
  finishAndSend(p, b, payloadOff(OPC.RC_ATOMIC_ACKNOWLEDGE), 0, qp.dest, qp.srcPort);
}

/** A class C error (rxe do_class_ac_error): NAK, then the responder QP goes to ERR. */
export function fatalNak(qp: Qp, code: number, psn: number): void {
  sendAck(qp, aethNak(code), psn);
  if (qp.resp.wqe) {
    completeRecv(qp, qp.resp.wqe, code === NakCode.REMOTE_ACCESS_ERROR ? WcStatusIdx.REM_ACCESS_ERR : WcStatusIdx.REM_INV_REQ_ERR, 0, 0, false);
    qp.resp.wqe = null;
  }
  qp.device.asyncEvent({ type: code === NakCode.REMOTE_ACCESS_ERROR ? 'QP_ACCESS_ERR' : 'QP_REQ_ERR', qp });
  qp.setState('ERR');
}

/** Posts a receive completion; false when the CQ had no room (the QP then goes to ERR: completionLost). */
export function completeRecv(
  qp: Qp,
  wqe: RecvWqe,
  status: number,
  byteLen: number,
  opFlags: number,
  solicited: boolean,
  imm = 0,
  srcQp = qp.destQpn,
  invRkey = 0,
): boolean {
  const w = qp.recvCq.slot();
  if (!w) {
    completionLost(qp);
    return false;
  }
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
  qp.recvCq.commit(solicited || status !== WcStatusIdx.SUCCESS);
  return true;
}

/**
 * Copies n bytes into a receive WQE's SGL at message offset `at`. Returns SUCCESS, LOC_LEN_ERR
 * when the message does not fit, or LOC_PROT_ERR when an SGE no longer names live memory of the
 * QP's PD with LOCAL_WRITE (an MR closed after the post: checked on every packet, nothing lands).
 */
export function scatterRecv(qp: Qp, wqe: RecvWqe, at: number, src: Buffer, from: number, n: number): number {
  if (!sglUsable(wqe.sg, qp.pd, true)) return WcStatusIdx.LOC_PROT_ERR;
  if (at + n > wqe.length) return WcStatusIdx.LOC_LEN_ERR;
  scatterSgl(wqe.sg, at, src, from, n);
  return WcStatusIdx.SUCCESS;
}

/**
 * A receive WQE that cannot take the message (too short, or its memory gone): the WQE completes
 * with that error and the QP goes to ERR (rxe: RESPST_ERR_LENGTH / RESPST_ERR_MALFORMED_WQE). An RC
 * requester is told with a NAK: invalid request for a length error (IBA 9.7.5.2.4), remote
 * operational error for a local protection fault here (IBA table 9.9, class D1).
 */
export function recvFailed(qp: Qp, wqe: RecvWqe, status: number, psn: number, byteLen: number, mask: number, se: boolean): void {
  const r = qp.resp;
  r.wqe = null;
  if (qp.type === 'RC') sendAck(qp, aethNak(status === WcStatusIdx.LOC_LEN_ERR ? NakCode.INVALID_REQUEST : NakCode.REMOTE_OPERATIONAL_ERROR), psn);
  if (!completeRecv(qp, wqe, status, byteLen, mask, se)) return;
  if (qp.type === 'RC' || status === WcStatusIdx.LOC_PROT_ERR) qp.setState('ERR');
  else if (qp.type === 'UC') {
    // UC: the message is over (its WQE completed with the error), so the opcode sequence restarts
    // too; left inside the message, a following MIDDLE/LAST would be scattered into the WQE just
    // cleared (a TypeError out of the receive path) and a new FIRST refused. (Found by the fuzzer.)
    r.dropMsg = !(mask & Op.END);
    r.psn = psnAdd(psn, 1);
    r.lastOp = -1;
  }
}

const grh = Buffer.alloc(40);
/**
 * The destination of the datagram being received when it is not the port's own address (a multicast
 * group: 4 bytes IPv4, 16 IPv6), set by the receive path around its delivery to each attached QP; the
 * UD GRH carries it as the DGID, as rxe's copy of the IP header does. null: the port's address.
 */
let rxDst: Uint8Array | null = null;
/** recv.ts: the datagram now delivered was sent to `dst` (null: to the port's address). */
export function setRxDestination(dst: Uint8Array | null): void {
  rxDst = dst;
}
/** The ipId the receive path gives a request that came as RoCEv1 (link/rocev1-link.ts): no IP header, a GRH. */
export const IPID_ROCEV1 = -1;
/**
 * The 40-byte GRH at the head of a UD receive: for IPv4, 20 zero bytes then the IPv4 header (rxe_resp.c).
 * For a RoCEv1 packet, the IB GRH it came with (IBA 8.3; TClass, Flow Label and HopLmt are not kept by
 * the link: 0, 0, 64): IPVer 6, NxtHdr 0x1B, the source and destination GIDs (IPv4-mapped for IPv4).
 */
export function udGrh(qp: Qp, payloadLen: number, ipId: number, srcBytes: Uint8Array): Buffer {
  const p = port(qp);
  grh.fill(0);
  if (ipId === IPID_ROCEV1) {
    grh[0] = 0x60;
    grh.writeUInt16BE(12 + 8 + payloadLen + ((4 - (payloadLen & 3)) & 3) + 4, 4); // BTH DETH payload pad ICRC
    grh[6] = 0x1b;
    grh[7] = 64;
    putGid(srcBytes, 8);
    putGid(rxDst ?? p.addrBytes, 24);
  } else if (p.link.family === 4) {
    const h = 20;
    grh[h] = 0x45;
    grh.writeUInt16BE(20 + 8 + 12 + 8 + payloadLen + 4 + ((4 - (payloadLen & 3)) & 3), h + 2);
    grh.writeUInt16BE(ipId, h + 4);
    grh.writeUInt16BE(0x4000, h + 6);
    grh[h + 8] = 64; // the socket does not show the TTL
    grh[h + 9] = 17;
    grh.set(srcBytes.subarray(0, 4), h + 12);
    grh.set(rxDst ?? p.addrBytes, h + 16);
    grh.writeUInt16BE(ipv4HeaderChecksum(grh, h), h + 10);
  } else {
    grh[0] = 0x60;
    grh.writeUInt16BE(8 + 12 + 8 + payloadLen + 4, 4);
    grh[6] = 17;
    grh[7] = 64;
    grh.set(srcBytes, 8);
    grh.set(rxDst ?? p.addrBytes, 24);
  }
  return grh;
}

/** An address (4 bytes: IPv4-mapped, IBA A17.4.5.1) or a GID (16 bytes) into the UD GRH at `off`. */
function putGid(a: Uint8Array, off: number): void {
  if (a.length === 16) grh.set(a, off);
  else {
    grh[off + 10] = 0xff;
    grh[off + 11] = 0xff;
    grh.set(a.subarray(0, 4), off + 12);
  }
}

export function abandonMessage(qp: Qp): void {
  const r = qp.resp;
  // The receive WQE of a dropped UC message is reused for the next one (rxe resets it).
  if (r.wqe) r.offset = 0;
  r.mr = null;
  r.lastOp = -1;
}

export function nextResource(qp: Qp): RdResource {
  const r = qp.resp;
  if (r.res.length === 0) r.res.push(new RdResource());
  const res = r.res[r.resNext % r.res.length]!;
  r.resNext++;
  return res;
}
