/**
 * The requester (IBA 9.7.4, rxe_req.c): turns send WQEs into request packets.
 * It segments by path MTU, assigns PSNs, sets AckReq on the last packet of a
 * message (and every 64 packets, RXE_MAX_PKT_PER_ACK), honours the fence and
 * max_rd_atomic, keeps at most `req.window` PSNs unacknowledged (at most 128,
 * RXE_MAX_UNACKED_PSNS; halved on every retry and grown back as ACKs arrive,
 * so go-back-N does not resend a whole flight per loss on a lossy path),
 * and stops when the link's tx pool is empty (resumed on 'drain'). Work per
 * run is bounded; the rest is rescheduled.
 */
import { WqeState, type SendWqe } from './wqe.js';
import { WrOp, isRdAtomic, type TransportQp as Qp, type PortLike as Port } from './types.js';
import { Hdr } from '../opcode.js';
import { packetsFor, psnAdd, psnDiff } from '../psn.js';
import { finishAndSend, hdrOff, payloadOff, writeBth } from './build.js';
import { gatherSgl, sglUsable } from './sgl.js';
import { ackTimeoutMs, armRetransmit, completeUnacked, completeWqe } from './completer.js';
import { St } from './types.js';
import { C } from '../counters.js';

export const MAX_PKT_PER_ACK = 64;
const BUDGET = 64;

/** [first, middle, last, only] opcode (low 5 bits) of each WR opcode (IBA 9.2.1 table 38). */
const SEQ: readonly (readonly [number, number, number, number])[] = [
  [0x00, 0x01, 0x02, 0x04], // SEND
  [0x00, 0x01, 0x03, 0x05], // SEND_WITH_IMM
  [0x00, 0x01, 0x16, 0x17], // SEND_WITH_INV
  [0x06, 0x07, 0x08, 0x0a], // RDMA_WRITE
  [0x06, 0x07, 0x09, 0x0b], // RDMA_WRITE_WITH_IMM
];

function prefix(qp: Qp): number {
  return qp.type === 'RC' ? 0x00 : qp.type === 'UC' ? 0x20 : 0x60;
}

/**
 * One run: at most `max` packets (the device's run queue picks the share, smaller when many QPs
 * wait); a QP with more to send goes to the back of that queue. Returns the packets sent.
 */
export function runRequester(qp: Qp, max = BUDGET): number {
  if (qp.state !== 'RTS' && qp.state !== 'SQD') return 0;
  if (qp.comp.rnrTimer) return 0; // waiting out an RNR NAK
  const port = qp.device.ports[qp.port - 1]!;
  const cap = qp.cap.maxSendWr;
  let budget = max;
  while (budget > 0) {
    if (qp.req.idx >= qp.sqTail) break;
    const wqe = qp.sq[qp.req.idx % cap]!;
    if (wqe.localErr) {
      // A WR that failed local checks completes in error once everything before it has (IBA 10.8.3).
      if (qp.req.idx === qp.sqHead) completeWqe(qp, wqe, wqe.localErr);
      break;
    }
    if (wqe.state === WqeState.POSTED) {
      if (qp.state === 'SQD') break; // SQ drain: no new message starts (IBA 10.3.1.2)
      if (qp.type === 'RC') {
        // The device's share of unacknowledged packets is taken: no new message (device.ts holdNew).
        if (qp.device.holdNew(qp)) break;
        // IBA 10.8.3.3: a fenced WR waits for every earlier READ and ATOMIC.
        if (wqe.fence && qp.req.rdAtomic > 0) break;
        if (isRdAtomic(wqe.op) && !wqe.rdCounted && qp.req.rdAtomic >= Math.max(1, qp.maxRdAtomic)) break;
      }
    }
    if (qp.type === 'RC' && psnDiff(qp.req.psn, qp.comp.psn) >= qp.req.window) break;
    // An MR deregistered (or invalidated) after the post: no byte of it leaves (IBA 10.6.3.4,
    // rxe's requester fails the WQE with LOC_PROT_ERR when its L_Key no longer resolves).
    if (wqe.inline === null && wqe.length > 0 && !isRdAtomic(wqe.op) && !sglUsable(wqe.sg, qp.pd, false)) {
      wqe.localErr = St.LOC_PROT_ERR;
      continue;
    }
    const buf = port.link.allocTx();
    if (!buf) { qp.device.waitTx(qp, port, budget < max); break; }
    sendPacket(qp, port, wqe, buf);
    budget--;
  }
  if (budget === 0) qp.device.kick(qp);
  return max - budget;
}

function sendPacket(qp: Qp, port: Port, wqe: SendWqe, b: Buffer): void {
  const mtu = qp.pathMtu;
  const rc = qp.type === 'RC';
  const ud = qp.type === 'UD' || qp.type === 'GSI';
  if (wqe.state === WqeState.POSTED) {
    wqe.psnAssigned = true;
    wqe.firstPsn = qp.req.psn;
    const n = wqe.op === WrOp.RDMA_READ ? packetsFor(wqe.length, mtu) : isRdAtomic(wqe.op) ? 1 : packetsFor(wqe.length, mtu);
    wqe.lastPsn = psnAdd(wqe.firstPsn, n - 1);
    wqe.state = WqeState.PROCESSING;
    if (isRdAtomic(wqe.op) && !wqe.rdCounted && rc) { wqe.rdCounted = true; qp.req.rdAtomic++; }
  }
  const d = wqe.ah ? wqe.ah.dest : qp.dest;
  const destQp = ud ? wqe.remoteQpn : qp.destQpn;
  const psn = qp.req.psn;

  if (wqe.op === WrOp.RDMA_READ) {
    // One request for what is still missing (on a retry, from the first missing response).
    const rest = wqe.length - wqe.sent;
    writeBth(b, 0x0c, false, 0, destQp, true, psn);
    const r = hdrOff(0x0c, Hdr.RETH);
    b.writeBigUInt64BE(BigInt.asUintN(64, wqe.remoteAddr + BigInt(wqe.sent)), r);
    b.writeUInt32BE(wqe.rkey, r + 8);
    b.writeUInt32BE(rest, r + 12);
    advancePsn(qp, psnAdd(psn, packetsFor(rest, mtu)));
    finishAndSend(port, b, payloadOff(0x0c), 0, d);
    wqe.state = WqeState.PENDING;
    qp.req.idx++;
    qp.req.sinceAckReq = 0;
    armRetransmit(qp);
    armProbe(qp);
    return;
  }
  if (wqe.op === WrOp.ATOMIC_CMP_AND_SWP || wqe.op === WrOp.ATOMIC_FETCH_AND_ADD) {
    const opc = wqe.op === WrOp.ATOMIC_CMP_AND_SWP ? 0x13 : 0x14;
    writeBth(b, opc, false, 0, destQp, true, psn);
    const a = hdrOff(opc, Hdr.ATMETH);
    b.writeBigUInt64BE(BigInt.asUintN(64, wqe.remoteAddr), a);
    b.writeUInt32BE(wqe.rkey, a + 8);
    // CMP_SWP: swap data then compare data; FETCH_ADD: the add value, compare unused (IBA 9.3.3).
    b.writeBigUInt64BE(opc === 0x13 ? wqe.swap : wqe.compareAdd, a + 12);
    b.writeBigUInt64BE(opc === 0x13 ? wqe.compareAdd : 0n, a + 20);
    advancePsn(qp, psnAdd(psn, 1));
    finishAndSend(port, b, payloadOff(opc), 0, d);
    wqe.state = WqeState.PENDING;
    qp.req.idx++;
    qp.req.sinceAckReq = 0;
    armRetransmit(qp);
    armProbe(qp);
    return;
  }

  const remaining = wqe.length - wqe.sent;
  const n = remaining < mtu ? remaining : mtu;
  const first = wqe.sent === 0;
  const last = remaining <= mtu;
  const seq = SEQ[wqe.op]!;
  const low = first ? (last ? seq[3] : seq[0]) : last ? seq[2] : seq[1];
  const opc = prefix(qp) | low;
  let ackReq = false;
  if (rc) {
    // Ask for an ACK four times per window, so one lost ACK does not stall a small window until the timer.
    // And on the packet that fills the window: otherwise nothing would be acknowledged until the timer.
    if (last || ++qp.req.sinceAckReq >= Math.min(MAX_PKT_PER_ACK, qp.req.window >> 2) ||
        psnDiff(psnAdd(psn, 1), qp.comp.psn) >= qp.req.window) { ackReq = true; qp.req.sinceAckReq = 0; }
  }
  const se = last && wqe.solicited && (wqe.op <= WrOp.SEND_WITH_INV || wqe.op === WrOp.RDMA_WRITE_WITH_IMM);
  writeBth(b, opc, se, 0, destQp, ackReq, psn);
  if (ud) {
    const o = hdrOff(opc, Hdr.DETH);
    // IBA 10.2.5: a Q_Key with the high bit set means "use the QP's own Q_Key".
    b.writeUInt32BE((wqe.remoteQkey & 0x80000000) !== 0 ? qp.qkey : wqe.remoteQkey, o);
    b[o + 4] = 0;
    b[o + 5] = (qp.qpn >>> 16) & 0xff; b[o + 6] = (qp.qpn >>> 8) & 0xff; b[o + 7] = qp.qpn & 0xff;
  }
  if (first && (wqe.op === WrOp.RDMA_WRITE || wqe.op === WrOp.RDMA_WRITE_WITH_IMM)) {
    const r = hdrOff(opc, Hdr.RETH);
    b.writeBigUInt64BE(BigInt.asUintN(64, wqe.remoteAddr), r);
    b.writeUInt32BE(wqe.rkey, r + 8);
    b.writeUInt32BE(wqe.length, r + 12);
  }
  if (last && (wqe.op === WrOp.SEND_WITH_IMM || wqe.op === WrOp.RDMA_WRITE_WITH_IMM)) b.writeUInt32BE(wqe.imm, hdrOff(opc, Hdr.IMMDT));
  if (last && wqe.op === WrOp.SEND_WITH_INV) b.writeUInt32BE(wqe.invRkey, hdrOff(opc, Hdr.IETH));
  const p = payloadOff(opc);
  gather(wqe, wqe.sent, b, p, n);
  wqe.sent += n;
  advancePsn(qp, psnAdd(psn, 1));
  finishAndSend(port, b, p + n, n, d);
  if (last) {
    wqe.state = WqeState.PENDING;
    qp.req.idx++;
    if (wqe.op <= WrOp.SEND_WITH_INV) port.counters.v[C.rdma_sends]!++;
    if (!rc) completeUnacked(qp);
  }
  if (rc) { armRetransmit(qp); armProbe(qp); }
}

/** The tail-loss probe waits this many round trips for an ACK, at least PROBE_MIN_MS. */
const PROBE_RTTS = 3;
const PROBE_MIN_MS = 0.3;
const MAX_PROBES = 4;

/**
 * The tail-loss probe (a requester may resend any packet at any time, IBA 9.7.6.1.3). A loss in
 * the middle of a flight is found by the responder's sequence NAK; a loss at its tail, or of the
 * ACK for it, is not, and the ACK timer (67 ms at timeout 14) would wait for it. So a few
 * measured round trips after the last packet left with no progress, the oldest unacknowledged
 * packet is sent again with AckReq: if it was lost, the responder takes it and acknowledges it
 * (the next probe then sends the next one); if only the ACK was lost, it is a duplicate and the
 * responder acknowledges everything it has. At most MAX_PROBES per stall without progress; then
 * the ACK timer and retry_cnt rule as before.
 */
function armProbe(qp: Qp): void {
  const c = qp.comp;
  if (qp.timeout === 0) return;
  const rto = ackTimeoutMs(qp.timeout);
  const pto = Math.max(PROBE_MIN_MS, PROBE_RTTS * c.srtt);
  if (c.srtt === 0 || pto > rto / 2 || c.probes >= MAX_PROBES) return;
  c.probeAt = qp.device.sched.now() + pto;
  if (!c.probeTimer) startProbeTimer(qp, pto);
}

function startProbeTimer(qp: Qp, ms: number): void {
  const c = qp.comp;
  c.probeTimer = qp.device.sched.setTimer(ms, c.onProbe ??= (): void => {
    c.probeTimer = null;
    if (c.probeAt === Infinity) return;
    const left = c.probeAt - qp.device.sched.now();
    if (left > 0.05) { startProbeTimer(qp, left); return; }
    c.probeAt = Infinity;
    probe(qp);
  });
}

function probe(qp: Qp): void {
  if (qp.closed || (qp.state !== 'RTS' && qp.state !== 'SQD') || qp.comp.rnrTimer) return;
  // The oldest unacknowledged packet, once it has been sent (since the last go-back-N rewind).
  if (psnDiff(qp.req.psn, qp.comp.psn) <= 0) return;
  qp.comp.probes++;
  qp.device.ports[qp.port - 1]!.counters.v[C.tail_probes]!++;
  resendAt(qp, qp.comp.psn);
}

/**
 * Sends the packet with PSN `target` once more, asking for an ACK, and leaves the requester
 * exactly where it was: the WQE holding that PSN is set up as if the requester were about to send
 * it, sendPacket builds it as it built it before (same PSN, opcode and bytes; a READ asks again
 * from that response on), then the WQE and the pointers are restored.
 */
function resendAt(qp: Qp, target: number): void {
  const cap = qp.cap.maxSendWr;
  let n = qp.sqHead;
  for (; n < qp.sqTail; n++) {
    const w = qp.sq[n % cap]!;
    if (!w.psnAssigned) return;
    if (psnDiff(target, w.firstPsn) >= 0 && psnDiff(target, w.lastPsn) <= 0) break;
  }
  if (n >= qp.sqTail) return;
  const w = qp.sq[n % cap]!;
  if (w.localErr) return;
  const port = qp.device.ports[qp.port - 1]!;
  const buf = port.link.allocTx();
  if (!buf) return;
  const saved = { psn: qp.req.psn, idx: qp.req.idx, since: qp.req.sinceAckReq, state: w.state, sent: w.sent };
  qp.req.psn = target;
  qp.req.idx = n;
  qp.req.sinceAckReq = 1 << 30; // this packet asks for an ACK
  w.state = WqeState.PROCESSING;
  w.sent = isRdAtomic(w.op) && w.op !== WrOp.RDMA_READ ? 0 : psnDiff(target, w.firstPsn) * qp.pathMtu;
  sendPacket(qp, port, w, buf);
  qp.req.psn = saved.psn;
  qp.req.idx = saved.idx;
  qp.req.sinceAckReq = saved.since;
  w.state = saved.state;
  w.sent = saved.sent;
}

/** The next PSN to send; remembers the highest ever sent (the completer refuses responses beyond it). */
function advancePsn(qp: Qp, next: number): void {
  qp.req.psn = next;
  if (psnDiff(next, qp.req.maxPsn) > 0) qp.req.maxPsn = next;
}

/** Copies message bytes [from, from+n) of a WQE (its inline copy, or its SGL) to dst. */
export function gather(wqe: SendWqe, from: number, dst: Buffer, at: number, n: number): void {
  if (n === 0) return;
  if (wqe.inline) wqe.inline.copy(dst, at, from, from + n);
  else gatherSgl(wqe.sg, from, dst, at, n);
}
