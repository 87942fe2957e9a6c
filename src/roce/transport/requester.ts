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
import { copyBytes } from '../wire/copy.js';
import { WqeState, type SendWqe } from './wqe.js';
import { isRdAtomic, type TransportQp as Qp } from './types.js';
import { WrOp } from './types.js';
import { Hdr } from '../opcode.js';
import { packetsFor, psnAdd, psnDiff } from '../psn.js';
import { finishAndSend, hdrOff, payloadOff, sendReadRequest, txPortOf, writeBth } from './build.js';
import { gatherSgl, sglUsable } from './sgl.js';
import { readBit } from './read-response.js';
import { ackTimeoutMs, armRetransmit } from './retry.js';
import { completeUnacked, completeWqe } from './complete.js';
import { WcStatusIdx } from './types.js';
import { Ctr } from '../counters.js';
import type { PortLike as Port } from './types.js';
import { MESSAGE_OPCODES, OPC, type MessageOpcodes } from '../opcode.js';
import { qpTransportPrefix, writeRethAt } from './build.js';
import type { Dest } from './types.js';
import { AtomicEthView, DethView } from '../wire/exth.js';
import { Reason, ReqState } from './role-states.js';
import { NO_OPCODE, Role } from './trace.js';
import { ROCEV1_PORT, SEG_MAX_PKTS, newSegmentRun } from '../link/link.js';

export const MAX_PKT_PER_ACK = 64;
const BUDGET = 64;

/** The opcode sequence (opcode.ts) of each SEND / WRITE WR opcode, by WrOp. */
const SEQ: readonly MessageOpcodes[] = (() => {
  const t: MessageOpcodes[] = [];
  t[WrOp.SEND] = MESSAGE_OPCODES.SEND;
  t[WrOp.SEND_WITH_IMM] = MESSAGE_OPCODES.SEND_WITH_IMM;
  t[WrOp.SEND_WITH_INV] = MESSAGE_OPCODES.SEND_WITH_INV;
  t[WrOp.RDMA_WRITE] = MESSAGE_OPCODES.RDMA_WRITE;
  t[WrOp.RDMA_WRITE_WITH_IMM] = MESSAGE_OPCODES.RDMA_WRITE_WITH_IMM;
  return t;
})();

/**
 * Why a WQE may not go out now (IBA 10.8.3, rxe_req.c), or Reason.NONE. A new message waits for
 * an SQ drain, the device's share of unacknowledged packets, a fence, max_rd_atomic; every packet
 * waits for room in the window (RC).
 */
function gate(qp: Qp, wqe: SendWqe): number {
  if (wqe.state === WqeState.POSTED) {
    if (qp.state === 'SQD') return Reason.SQ_DRAINING; // SQ drain: no new message starts (IBA 10.3.1.2)
    if (qp.type === 'RC') {
      // The device's share of unacknowledged packets is taken: no new message (device.ts holdNew).
      if (qp.device.holdNew(qp)) return Reason.DEVICE_HOLD;
      // IBA 10.8.3.3: a fenced WR waits for every earlier READ and ATOMIC.
      if (wqe.fence && qp.req.rdAtomic > 0) return Reason.FENCE;
      if (isRdAtomic(wqe.op) && !wqe.rdCounted && qp.req.rdAtomic >= Math.max(1, qp.maxRdAtomic)) return Reason.RD_ATOMIC_LIMIT;
    }
  }
  if (qp.type === 'RC' && psnDiff(qp.req.psn, qp.comp.psn) >= qp.req.window) return Reason.WINDOW_FULL;
  return Reason.NONE;
}

/** The opcode of the packet sendPacket built last (for the trace). */
let lastOpcode = NO_OPCODE;

/**
 * One run: at most `max` packets (the device's run queue picks the share, smaller when many QPs
 * wait); a QP with more to send goes to the back of that queue. Returns the packets sent.
 */
export function runRequester(qp: Qp, max = BUDGET): number {
  if (qp.state !== 'RTS' && qp.state !== 'SQD') return 0;
  if (qp.comp.rnrTimer) {
    // waiting out an RNR NAK
    if (qp.req.nextWqe < qp.sqTail) qp.traceRing.record(Role.REQ, ReqState.WAIT, NO_OPCODE, qp.req.psn, Reason.RNR_WAIT);
    return 0;
  }
  const port = txPortOf(qp);
  const cap = qp.cap.maxSendWr;
  let budget = max;
  let wait: number = Reason.NONE;
  let fast = true;
  while (budget > 0) {
    if (qp.req.nextWqe >= qp.sqTail) break;
    const wqe = qp.sq[qp.req.nextWqe % cap]!;
    if (wqe.localErr) {
      // A WR that failed local checks completes in error once everything before it has (IBA 10.8.3).
      if (qp.req.nextWqe === qp.sqHead) {
        qp.traceRing.record(Role.REQ, ReqState.ERROR, NO_OPCODE, qp.req.psn, Reason.LOCAL_ERR);
        completeWqe(qp, wqe, wqe.localErr);
      }
      break;
    }
    wait = gate(qp, wqe);
    if (wait !== Reason.NONE) break;
    // An MR deregistered (or invalidated) after the post: no byte of it leaves (IBA 10.6.3.4,
    // rxe's requester fails the WQE with LOC_PROT_ERR when its L_Key no longer resolves).
    if (wqe.inline === null && wqe.length > 0 && !isRdAtomic(wqe.op) && !sglUsable(wqe.sg, qp.pd, false)) {
      wqe.localErr = WcStatusIdx.LOC_PROT_ERR;
      continue;
    }
    if (fast && port.link.sendSegments !== undefined && SEQ[wqe.op] !== undefined && qp.type !== 'UD' && qp.type !== 'GSI') {
      const r = sendRunFast(qp, port, wqe, budget);
      // A run cut short (the socket is full, or packets held before it): the rest of this turn goes
      // the per-packet way, which queues behind them.
      if (r >= 0 && r < fastRun.n) fast = false;
      if (r > 0) {
        budget -= r;
        continue;
      }
    }
    const buf = port.link.allocTx();
    if (!buf) {
      qp.device.waitTx(qp, port, budget < max);
      wait = Reason.TX_POOL_EMPTY;
      break;
    }
    sendPacket(qp, port, wqe, buf);
    budget--;
  }
  // The run's decisions: what it sent (the last packet), and what it is waiting for.
  if (budget < max) qp.traceRing.record(Role.REQ, ReqState.SEND, lastOpcode, psnAdd(qp.req.psn, -1), budget === 0 ? Reason.BUDGET_USED : Reason.SENT);
  if (wait !== Reason.NONE) qp.traceRing.record(Role.REQ, ReqState.WAIT, NO_OPCODE, qp.req.psn, wait);
  if (budget === 0) qp.device.kick(qp);
  return max - budget;
}

/**
 * Builds and sends the next packet of `wqe` at req.psn. A WQE's first packet assigns its PSNs;
 * then the path for its kind (SENDERS: a READ request, an ATOMIC, a SEND/WRITE segment).
 */
function sendPacket(qp: Qp, port: Port, wqe: SendWqe, b: Buffer): void {
  startWqe(qp, wqe);
  SENDERS[wqe.op]!(qp, port, wqe, b, wqe.ah ? wqe.ah.dest : qp.dest);
}

/** A WQE's first packet assigns its PSNs. */
function startWqe(qp: Qp, wqe: SendWqe): void {
  if (wqe.state === WqeState.POSTED) {
    wqe.psnAssigned = true;
    wqe.firstPsn = qp.req.psn;
    const n = wqe.op === WrOp.RDMA_READ ? packetsFor(wqe.length, qp.pathMtu) : isRdAtomic(wqe.op) ? 1 : packetsFor(wqe.length, qp.pathMtu);
    wqe.lastPsn = psnAdd(wqe.firstPsn, n - 1);
    wqe.state = WqeState.PROCESSING;
    if (isRdAtomic(wqe.op) && !wqe.rdCounted && qp.type === 'RC') {
      wqe.rdCounted = true;
      qp.req.rdAtomic++;
    }
  }
}

type Sender = (qp: Qp, port: Port, wqe: SendWqe, b: Buffer, d: Dest) => void;

/** A READ or ATOMIC request is out: one request per WQE, it waits for its response (PENDING). */
function requestSent(qp: Qp, wqe: SendWqe): void {
  wqe.state = WqeState.PENDING;
  qp.req.nextWqe++;
  qp.req.sinceAckReq = 0;
  armRetransmit(qp);
  armProbe(qp);
}

/** Further holes a READ's retry asks for besides the first (sendRead): a request packet each. */
const READ_RETRY_GAPS = 32;

/**
 * RDMA READ: one request for what is still missing. A retry (a timeout's rewind, a tail probe)
 * asks for the holes only: a request from each missing response up to the next one that already
 * arrived (the first in the WQE's own packet, up to READ_RETRY_GAPS more after it). What lies
 * after the last response received is asked for only when there is no hole before it: while
 * holes remain, the stream is most likely still coming (a slow receive queue is what made the
 * timer fire), and asking for it restarts the stream over responses already on their way. A later
 * retry asks for it if it does not come. The responses kept after a hole (read-response.ts) are
 * not asked for again; each part is a part of the original request, which the responder replays
 * (responder-steps.ts duplicate, rxe's duplicate_request). Asking for the whole rest instead
 * restarted a 16 MiB READ's stream at every timeout: 1.6x the packets at 1% loss (issue 15).
 * The PSNs go on after the READ's last, whatever was asked: later WQEs keep theirs.
 */
function sendRead(qp: Qp, port: Port, wqe: SendWqe, b: Buffer, d: Dest): void {
  const psn = qp.req.psn;
  const opc = OPC.RC_RDMA_READ_REQUEST;
  let len = wqe.length - wqe.sent;
  const mtu = qp.pathMtu;
  const from = Math.floor(wqe.sent / mtu);
  let next = -1; // where the holes after the first are looked for
  if (wqe.rdMaxSeen > from) {
    let to = from + 1;
    while (to <= wqe.rdMaxSeen && !readBit(wqe, to)) to++;
    if (to <= wqe.rdMaxSeen) {
      len = Math.min(len, (to - from) * mtu);
      next = to;
    }
  }
  lastOpcode = opc;
  writeBth(b, opc, false, 0, qp.destQpn, true, psn);
  writeRethAt(b, opc, wqe.remoteHi | 0, wqe.remoteLo | 0, wqe.sent, wqe.rkey | 0, len);
  advancePsn(qp, psnAdd(wqe.lastPsn, 1));
  finishAndSend(port, b, payloadOff(opc), 0, d, qp.srcPort);
  if (next >= 0) {
    wqe.rdAsked = from;
    wqe.rdAskedEnd = next;
    askReadGaps(qp, port, wqe, next, d);
  }
  requestSent(qp, wqe);
}

/** The holes of a READ from response `at` on (sendRead's retry), each asked for by its own request. */
function askReadGaps(qp: Qp, port: Port, wqe: SendWqe, at: number, d: Dest): void {
  const mtu = qp.pathMtu;
  const end = wqe.rdMaxSeen; // the last response received: no hole is looked for after it
  for (let gaps = 0; gaps < READ_RETRY_GAPS; gaps++) {
    while (at < end && readBit(wqe, at)) at++;
    if (at >= end) return;
    let to = at + 1;
    while (to < end && !readBit(wqe, to)) to++;
    const off = at * mtu;
    if (
      !sendReadRequest(port, d, qp.srcPort, qp.destQpn, psnAdd(wqe.firstPsn, at), wqe.remoteAddr + BigInt(off), wqe.rkey, Math.min(wqe.length, to * mtu) - off)
    )
      return;
    port.counters.counts[Ctr.read_hole_requests]!++;
    wqe.rdAsked = at; // read-response.ts askReadHole does not ask for it again
    wqe.rdAskedEnd = to;
    at = to;
  }
}

const txAtm = new AtomicEthView();
const txDeth = new DethView();

/** ATOMIC CMP_AND_SWP / FETCH_AND_ADD: one packet. */
function sendAtomic(qp: Qp, port: Port, wqe: SendWqe, b: Buffer, d: Dest): void {
  const psn = qp.req.psn;
  const cas = wqe.op === WrOp.ATOMIC_CMP_AND_SWP;
  const opc = cas ? OPC.RC_COMPARE_SWAP : OPC.RC_FETCH_ADD;
  lastOpcode = opc;
  writeBth(b, opc, false, 0, qp.destQpn, true, psn);
  const a = txAtm.bind(b, hdrOff(opc, Hdr.ATMETH));
  a.va = wqe.remoteAddr;
  a.rkey = wqe.rkey;
  // CMP_SWP: swap data then compare data; FETCH_ADD: the add value, compare unused (IBA 9.3.3).
  a.swapAdd = cas ? wqe.swap : wqe.compareAdd;
  a.compare = cas ? wqe.compareAdd : 0n;
  advancePsn(qp, psnAdd(psn, 1));
  finishAndSend(port, b, payloadOff(opc), 0, d, qp.srcPort);
  requestSent(qp, wqe);
}

/** SEND / WRITE: the next segment of the message (FIRST, MIDDLE, LAST or ONLY). */
function sendSegment(qp: Qp, port: Port, wqe: SendWqe, b: Buffer, d: Dest): void {
  const mtu = qp.pathMtu;
  const rc = qp.type === 'RC';
  const ud = qp.type === 'UD' || qp.type === 'GSI';
  const destQp = ud ? wqe.remoteQpn : qp.destQpn;
  const psn = qp.req.psn;
  const remaining = wqe.length - wqe.sent;
  const n = remaining < mtu ? remaining : mtu;
  const first = wqe.sent === 0;
  const last = remaining <= mtu;
  const seq = SEQ[wqe.op]!;
  const low = first ? (last ? seq[3] : seq[0]) : last ? seq[2] : seq[1];
  const opc = qpTransportPrefix(qp.type) | low;
  lastOpcode = opc;
  let ackReq = false;
  if (rc) {
    // Ask for an ACK four times per window, so one lost ACK does not stall a small window until the timer.
    // And on the packet that fills the window: otherwise nothing would be acknowledged until the timer.
    if (last || ++qp.req.sinceAckReq >= Math.min(MAX_PKT_PER_ACK, qp.req.window >> 2) || psnDiff(psnAdd(psn, 1), qp.comp.psn) >= qp.req.window) {
      ackReq = true;
      qp.req.sinceAckReq = 0;
    }
  }
  const se = last && wqe.solicited && (wqe.op <= WrOp.SEND_WITH_INV || wqe.op === WrOp.RDMA_WRITE_WITH_IMM);
  writeBth(b, opc, se, 0, destQp, ackReq, psn);
  if (ud) {
    const deth = txDeth.bind(b, hdrOff(opc, Hdr.DETH));
    // IBA 10.2.5: a Q_Key with the high bit set means "use the QP's own Q_Key".
    deth.qkey = (wqe.remoteQkey & 0x80000000) !== 0 ? qp.qkey : wqe.remoteQkey;
    deth.srcQp = qp.qpn;
  }
  if (first && (wqe.op === WrOp.RDMA_WRITE || wqe.op === WrOp.RDMA_WRITE_WITH_IMM))
    writeRethAt(b, opc, wqe.remoteHi | 0, wqe.remoteLo | 0, 0, wqe.rkey | 0, wqe.length);
  if (last && (wqe.op === WrOp.SEND_WITH_IMM || wqe.op === WrOp.RDMA_WRITE_WITH_IMM)) b.writeUInt32BE(wqe.imm, hdrOff(opc, Hdr.IMMDT));
  if (last && wqe.op === WrOp.SEND_WITH_INV) b.writeUInt32BE(wqe.invRkey, hdrOff(opc, Hdr.IETH));
  const p = payloadOff(opc);
  gather(wqe, wqe.sent, b, p, n);
  wqe.sent += n;
  const fresh = psnDiff(psn, qp.req.maxPsn) >= 0;
  advancePsn(qp, psnAdd(psn, 1));
  finishAndSend(port, b, p + n, n, d, qp.srcPort);
  afterSend(qp, port, wqe, last, fresh);
}

/**
 * What follows a packet or a run leaving, on both paths: a message whose last packet left is
 * PENDING (a SEND counted once, when that packet first leaves: `fresh`, not again when a probe or a
 * go-back-N rewind resends it); UC completes it now; RC arms the retransmit timer and the probe
 * (`arm`; a multi-WQE run arms them once, after its last WQE).
 */
function afterSend(qp: Qp, port: Port, wqe: SendWqe, ended: boolean, fresh: boolean, arm = true): void {
  const rc = qp.type === 'RC';
  if (ended) {
    wqe.state = WqeState.PENDING;
    qp.req.nextWqe++;
    if (fresh && wqe.op <= WrOp.SEND_WITH_INV) port.counters.counts[Ctr.rdma_sends]!++;
    if (!rc) completeUnacked(qp);
  }
  if (rc && arm) {
    armRetransmit(qp);
    armProbe(qp);
  }
}

/**
 * The TX fast path (issue 15): the next packets of a SEND / WRITE as one run the link sends in
 * native code (Link.sendSegments: pad, ICRC, payload gathered from the MRs without a copy, UDP
 * GSO). Everything the protocol decides stays here and is decided as sendSegment decides it,
 * packet by packet: opcodes, PSNs, AckReq (every min(64, window / 4) packets, on the last and on
 * the one that fills the window), SE, RETH / ImmDt / IETH. Only the run's length is chosen up
 * front: the budget, the window's room, and the WQEs: when a message ends inside the run, the run
 * goes on with the next WQE of the send queue if runRequester's loop would send it next, the same
 * way (a SEND / WRITE, not failed, passing gate() at the PSN the run has reached, its SGL still
 * usable). So a stream of one-packet messages (64 B WRITEs) leaves as runs of up to 64 packets,
 * one addon call and one GSO datagram, instead of a JS ICRC and a tx buffer per message. What the
 * link did not send (a full socket, packets it still holds) is undone as if never built (PSN,
 * AckReq count, bytes sent; a WQE none of whose packets left is not started) and goes the
 * per-packet way. Only runs of at least FAST_MIN_PKTS: one packet gains nothing from a call of its
 * own and would lose the per-turn batching with other QPs' packets (sendmmsg of up to 64).
 * Returns the packets sent, or -1 when the run is not for the fast path.
 */
function sendRunFast(qp: Qp, port: Port, wqe: SendWqe, budget: number): number {
  const run = fastRun;
  run.n = 0;
  const d = wqe.ah ? wqe.ah.dest : qp.dest;
  // (RoCEv1 has no UDP header for the addon to send behind: its frames are built by its link wrapper.)
  if (d.family !== 4 || d.port === ROCEV1_PORT || port.gidGen[d.sgidIndex] !== d.sgidGen) return -1;
  const mtu = qp.pathMtu;
  const rc = qp.type === 'RC';
  let room = Math.min(budget, SEG_MAX_PKTS);
  if (rc) room = Math.min(room, qp.req.window - psnDiff(qp.req.psn, qp.comp.psn));
  // A lone packet (a one-packet message with nothing after it to join) goes the per-packet way.
  if (room < FAST_MIN_PKTS || (wqe.length - wqe.sent <= mtu && qp.req.nextWqe + 1 >= qp.sqTail)) return -1;
  const psn0 = qp.req.psn;
  const since0 = qp.req.sinceAckReq;
  const prefix = qpTransportPrefix(qp.type);
  const cap = qp.cap.maxSendWr;
  let psn = psn0,
    k = 0,
    np = 0,
    nw = 0,
    w = wqe,
    idx = qp.req.nextWqe;
  for (;;) {
    const sent0 = w.sent;
    const left = packetsFor(w.length - sent0, mtu);
    const m = Math.min(left, room - k);
    const bytes = Math.min(w.length - sent0, m * mtu);
    // The WQE's part of the payload: message bytes [sent0, sent0 + bytes) as pieces of its inline
    // copy or of its SGEs' MRs. Too many pieces: the run ends before this WQE.
    const np0 = np;
    let need = bytes;
    if (w.inline !== null) {
      if (need > 0) {
        if (np === FAST_MAX_PIECES) break;
        run.bufs[np] = w.inline;
        run.pieces[2 * np] = sent0;
        run.pieces[2 * np + 1] = need;
        np++;
        need = 0;
      }
    } else {
      let skip = sent0;
      // Indexed: a for-of is an array iterator wherever V8 does not optimise it away (issue 15's
      // heap check; the sampled bytes in this function were the RETH's, see writeRethAt's callers).
      const sg = w.sg;
      for (let i = 0; i < sg.length; i++) {
        const s = sg[i]!;
        if (need === 0) break;
        if (skip >= s.length) {
          skip -= s.length;
          continue;
        }
        if (np === FAST_MAX_PIECES) break;
        const take = Math.min(s.length - skip, need);
        run.bufs[np] = s.mr.buffer;
        run.pieces[2 * np] = s.offset + skip;
        run.pieces[2 * np + 1] = take;
        np++;
        need -= take;
        skip = 0;
      }
    }
    if (need !== 0) {
      np = np0;
      break;
    }
    fastW[nw] = w;
    fastWPkts[nw] = m;
    fastWSent[nw] = sent0;
    nw++;
    const seq = SEQ[w.op]!;
    const write = w.op === WrOp.RDMA_WRITE || w.op === WrOp.RDMA_WRITE_WITH_IMM;
    let at = sent0;
    for (let j = 0; j < m; j++, k++) {
      const remaining = w.length - at;
      const len = remaining < mtu ? remaining : mtu;
      const first = at === 0;
      const last = remaining <= mtu;
      const opc = prefix | (first ? (last ? seq[3] : seq[0]) : last ? seq[2] : seq[1]);
      let ackReq = false;
      // As sendSegment: four AckReqs per window, and on the packet that fills it.
      if (rc && (last || ++qp.req.sinceAckReq >= Math.min(MAX_PKT_PER_ACK, qp.req.window >> 2) || psnDiff(psnAdd(psn, 1), qp.comp.psn) >= qp.req.window)) {
        ackReq = true;
        qp.req.sinceAckReq = 0;
      }
      const se = last && w.solicited && (w.op <= WrOp.SEND_WITH_INV || w.op === WrOp.RDMA_WRITE_WITH_IMM);
      const h = fastHdrs[k]!;
      writeBth(h, opc, se, 0, qp.destQpn, ackReq, psn);
      if (first && write) writeRethAt(h, opc, w.remoteHi | 0, w.remoteLo | 0, 0, w.rkey | 0, w.length);
      if (last && (w.op === WrOp.SEND_WITH_IMM || w.op === WrOp.RDMA_WRITE_WITH_IMM)) h.writeUInt32BE(w.imm, hdrOff(opc, Hdr.IMMDT));
      if (last && w.op === WrOp.SEND_WITH_INV) h.writeUInt32BE(w.invRkey, hdrOff(opc, Hdr.IETH));
      run.meta[2 * k] = payloadOff(opc);
      run.meta[2 * k + 1] = len;
      fastOpc[k] = opc;
      fastSince[k] = qp.req.sinceAckReq;
      at += len;
      psn = psnAdd(psn, 1);
    }
    // The message goes on past the run, or the run is full: it ends here.
    if (m < left || k >= room) break;
    // The next WQE joins only if runRequester's loop would send it next, and the same way.
    if (++idx >= qp.sqTail) break;
    const nx = qp.sq[idx % cap]!;
    if (nx.localErr || SEQ[nx.op] === undefined || nx.ah !== w.ah) break;
    const at0 = qp.req.psn;
    qp.req.psn = psn; // gate() sees the PSN the run has reached (the window, the device's share)
    const g = gate(qp, nx);
    qp.req.psn = at0;
    if (g !== Reason.NONE) break;
    if (nx.inline === null && nx.length > 0 && !sglUsable(nx.sg, qp.pd, false)) break;
    w = nx;
  }
  if (k < FAST_MIN_PKTS) {
    for (let i = 0; i < np; i++) run.bufs[i] = EMPTY;
    fastW.fill(null, 0, nw);
    qp.req.sinceAckReq = since0;
    return -1;
  }
  run.n = k;
  run.nPieces = np;
  run.srcIpNum = port.ipNum;
  run.dstIpNum = d.ipNum;
  run.dstIp = d.ip;
  run.dstPort = d.port;
  run.tos = d.tos;
  run.srcPort = qp.srcPort;
  const r = port.link.sendSegments!(run);
  for (let i = 0; i < np; i++) run.bufs[i] = EMPTY; // hold no MR past the call
  // The packets not sent were never built: the AckReq count goes back to where the last sent one left it.
  if (r < k) qp.req.sinceAckReq = r > 0 ? fastSince[r - 1]! : since0;
  if (r <= 0) {
    fastW.fill(null, 0, nw);
    return 0;
  }
  lastOpcode = fastOpc[r - 1]!;
  port.counters.counts[Ctr.sent_pkts]! += r;
  // Each WQE with a packet out, in order, as the per-packet path leaves it: started (its PSNs
  // assigned from where the run reached), its bytes sent, then afterSend.
  let out = r;
  for (let i = 0; i < nw && out > 0; i++) {
    const w = fastW[i]!;
    const m = Math.min(fastWPkts[i]!, out);
    out -= m;
    const first = qp.req.psn;
    startWqe(qp, w);
    const sent0 = fastWSent[i]!;
    w.sent = sent0 + Math.min(m * mtu, w.length - sent0);
    const fresh = psnDiff(psnAdd(first, m - 1), qp.req.maxPsn) >= 0; // as in sendSegment: a resent SEND is not counted again
    // The run's first packet's PSN first: the round-trip sample times it, as the per-packet path's first armRetransmit does.
    advancePsn(qp, psnAdd(first, 1));
    if (rc && i === 0) armRetransmit(qp);
    advancePsn(qp, psnAdd(first, m));
    // The timers once, after the run's last WQE: they leave as they would after each (the deadline
    // and the probe time from now), without two clock reads per message.
    afterSend(qp, port, w, w.sent === w.length, fresh, out === 0 || i === nw - 1);
  }
  fastW.fill(null, 0, nw); // hold no WQE past the call
  return r;
}

/** Runs shorter than this go the per-packet way (see sendRunFast). */
const FAST_MIN_PKTS = 2;
/** Most SGE pieces in a run (the addon's bound is higher; a WQE has at most its maxSendSge). */
const FAST_MAX_PIECES = 64;
const EMPTY = Buffer.alloc(0);
/** The one run being built (the requester is synchronous), its header views and per-packet notes. */
const { run: fastRun, hdrs: fastHdrs } = newSegmentRun(FAST_MAX_PIECES);
const fastOpc = new Uint8Array(SEG_MAX_PKTS);
const fastSince = new Int32Array(SEG_MAX_PKTS);
/** The run's WQEs in order, the packets of each in it, and the bytes each had sent before it. */
const fastW: (SendWqe | null)[] = new Array<SendWqe | null>(SEG_MAX_PKTS).fill(null);
const fastWPkts = new Uint8Array(SEG_MAX_PKTS);
const fastWSent = new Float64Array(SEG_MAX_PKTS);

/** The path of each WR opcode (WrOp order). */
const SENDERS: readonly Sender[] = (() => {
  const t: Sender[] = [];
  t[WrOp.SEND] = sendSegment;
  t[WrOp.SEND_WITH_IMM] = sendSegment;
  t[WrOp.SEND_WITH_INV] = sendSegment;
  t[WrOp.RDMA_WRITE] = sendSegment;
  t[WrOp.RDMA_WRITE_WITH_IMM] = sendSegment;
  t[WrOp.RDMA_READ] = sendRead;
  t[WrOp.ATOMIC_CMP_AND_SWP] = sendAtomic;
  t[WrOp.ATOMIC_FETCH_AND_ADD] = sendAtomic;
  return t;
})();

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
  const sched = qp.device.sched;
  c.probe.arm(sched, qp, probe, pto, sched.now());
}

function probe(qp: Qp): void {
  if (qp.closed || (qp.state !== 'RTS' && qp.state !== 'SQD') || qp.comp.rnrTimer) return;
  // The oldest unacknowledged packet, once it has been sent (since the last go-back-N rewind).
  if (psnDiff(qp.req.psn, qp.comp.psn) <= 0) return;
  qp.comp.probes++;
  qp.device.ports[qp.port - 1]!.counters.counts[Ctr.tail_probes]!++;
  qp.traceRing.record(Role.REQ, ReqState.PROBE, NO_OPCODE, qp.comp.psn, Reason.NONE);
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
  const port = txPortOf(qp);
  const buf = port.link.allocTx();
  if (!buf) return;
  const saved = { psn: qp.req.psn, nextWqe: qp.req.nextWqe, since: qp.req.sinceAckReq, state: w.state, sent: w.sent };
  qp.req.psn = target;
  qp.req.nextWqe = n;
  qp.req.sinceAckReq = 1 << 30; // this packet asks for an ACK
  w.state = WqeState.PROCESSING;
  w.sent = isRdAtomic(w.op) && w.op !== WrOp.RDMA_READ ? 0 : psnDiff(target, w.firstPsn) * qp.pathMtu;
  sendPacket(qp, port, w, buf);
  qp.req.psn = saved.psn;
  qp.req.nextWqe = saved.nextWqe;
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
  if (wqe.inline) copyBytes(wqe.inline, from, dst, at, n);
  else gatherSgl(wqe.sg, from, dst, at, n);
}
