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
 * A request runs rxe_resp.c's states (role-states.ts RespState; the steps are in
 * responder-steps.ts, what they send and post in responder-answers.ts), one step function each, from GET_REQ
 * until DONE: CHK_PSN → CHK_OP_SEQ → CHK_OP_VALID → (CHK_RKEY, CHK_RESOURCE, CHK_LENGTH as the
 * operation needs) → EXECUTE → COMPLETE → ACKNOWLEDGE, or READ_REPLY / ATOMIC_REPLY, or one of
 * DUPLICATE_REQUEST, ERR_NAK_PSN, ERR_NAK_INVALID, ERR_NAK_ACCESS, ERR_NAK_RNR, ERR_LENGTH,
 * ERR_MALFORMED_WQE, DROP. What differs between RC, UC and UD is one row per type (TypeRow). The
 * state a request ends in and why is recorded in the QP's trace ring (trace.ts).
 */
import { copyBytes } from '../wire/copy.js';
import type { TransportQp as Qp } from './types.js';
import { ACCESS } from './types.js';
import { aethAck, NakCode } from '../aeth.js';
import { Hdr, OPCODE_MASK, Op } from '../opcode.js';
import { packetsFor, psnAdd, psnDiff } from '../psn.js';
import { PktInfo, parseIb } from '../packet.js';
import { Ctr } from '../counters.js';
import { finishAndSend, payloadOff, txPortOf, writeAeth, writeBth } from './build.js';
import { READ_RESPONSE_OPCODE, hdrBit } from '../opcode.js';
import { BthView } from '../wire/bth.js';
import { Reason, RespState } from './role-states.js';
import { Role } from './trace.js';
import { fatalNak, flushAck, port } from './responder-answers.js';
import { NO_SRC, STASH_MAX, runRequestSteps } from './responder-steps.js';
import { ROCEV1_PORT, SEG_MAX_PKTS, newSegmentRun } from '../link/link.js';
import type { PortLike } from './types.js';
import { READ_BUDGET_MAX, type PendingRead } from './state.js';

export { flushAck, sendAck } from './responder-answers.js';

const BACKLOG_MAX = 4096;
/** Requests handled per run from the backlog that waited behind READ responses. */
const BACKLOG_BUDGET = 64;
/** Runs of a READ stream without a duplicate READ before its budget grows by one (RespInfo.readBudget). */
const READ_CLEAN_RUNS = 8;

/** For a look at a packet's BTH before it is processed (bound and read at once, nothing in between). */
const peekBth = new BthView();

/** Entry from the receive path. While READ responses are going out, later requests wait in order. */
export function onRequest(qp: Qp, p: PktInfo, srcIp: string, srcPort: number, ipId: number, srcBytes: Uint8Array): void {
  const st = qp.state;
  if (st !== 'RTR' && st !== 'RTS' && st !== 'SQD' && st !== 'SQE') {
    port(qp).counters.counts[Ctr.rcvd_bad_state]!++;
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
      qp.resp.backlog.push({
        buf: Buffer.from(p.buf.subarray(p.bthOff, p.bthOff + p.len)),
        len: p.len,
        srcIp,
        srcPort,
        ipId,
        srcBytes: Uint8Array.from(srcBytes),
      });
    }
    return;
  }
  processRequest(qp, p, ipId, srcBytes);
  if (qp.resp.stash.size > 0) drainStash(qp);
}

const stashInfo = new PktInfo();
/** Handles stashed requests that are now in sequence (stashAhead, responder-steps.ts). */
function drainStash(qp: Qp): void {
  const r = qp.resp;
  const st = r.stash;
  let budget = STASH_MAX;
  while (st.size > 0 && budget-- > 0 && r.reads.length === 0 && r.backlog.length === 0) {
    if (qp.state !== 'RTR' && qp.state !== 'RTS' && qp.state !== 'SQD') {
      st.clear();
      return;
    }
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
  if (runRequestSteps(qp, p, ipId, srcBytes)) runReads(qp);
}

/** Sends READ responses (bounded per turn), then handles requests that waited behind them. */
export function runReads(qp: Qp): void {
  const r = qp.resp;
  if (r.ackPending && r.reads.length > 0) flushAck(qp);
  const pt = txPortOf(qp);
  const mtu = qp.pathMtu;
  // Congestion control of the READ streams (AIMD, as TCP's window): nothing acknowledges READ
  // responses, so the only sign that they overrun the requester (its socket buffer) is the
  // requester asking again (a duplicate READ: responder-steps.ts duplicate halves the budget).
  // Without it a 16 MiB READ over a link slower to read than to write (IPv6 on Node's dgram)
  // sent 40x its packets: each re-ask replayed a stream that overran the buffer again.
  if (++r.readCleanRuns >= READ_CLEAN_RUNS && r.readBudget < READ_BUDGET_MAX) {
    r.readBudget++;
    r.readCleanRuns = 0;
  }
  let budget = r.readBudget;
  while (r.reads.length > 0 && budget > 0) {
    if (qp.state === 'ERR' || qp.state === 'RESET') {
      r.reads.length = 0;
      break;
    }
    const rd = r.reads[0]!;
    // Deregistered or invalidated since the request: no byte of it is served after that; the
    // requester gets a remote access NAK for the response it would have had (rxe checks the MR
    // state per response packet).
    if (rd.mr !== null && !rd.mr.allows(ACCESS.REMOTE_READ)) {
      fatalNak(qp, NakCode.REMOTE_ACCESS_ERROR, rd.sentPsn);
      return;
    }
    const fast = sendReadRunFast(qp, pt, rd, budget);
    if (fast > 0) {
      budget -= fast;
      continue;
    }
    const b = pt.link.allocTx();
    if (!b) {
      r.waitingDrain = true;
      return;
    }
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
    if (n > 0) copyBytes(rd.mr!.buffer, rd.off + off, b, p, n);
    finishAndSend(pt, b, p + n, n, qp.dest, qp.srcPort);
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

/**
 * The TX fast path (issue 15) for READ responses: the next packets of a response as one run the
 * link sends in native code (Link.sendSegments: pad, ICRC, the payload gathered from the MR
 * without a copy, UDP GSO), as the requester's sendRunFast does for SENDs and WRITEs. The headers
 * are the ones the per-packet loop in runReads writes, packet by packet: FIRST / MIDDLE / LAST /
 * ONLY by position, an AETH (ACK syndrome, the MSN) on FIRST, LAST and ONLY (IBA 9.3.5), no
 * AckReq. Only runs of 2 or more packets, over IPv4 RoCEv2 with the path's source GID still
 * there; what the link did not send goes the per-packet way. Returns the packets sent, 0 when
 * the link sent none, -1 when this response is not for the fast path.
 */
function sendReadRunFast(qp: Qp, pt: PortLike, rd: PendingRead, budget: number): number {
  const link = pt.link;
  const d = qp.dest;
  if (link.sendSegments === undefined || rd.mr === null) return -1;
  if (d.family !== 4 || d.port === ROCEV1_PORT || pt.gidGen[d.sgidIndex] !== d.sgidGen) return -1;
  const mtu = qp.pathMtu;
  const off = psnDiff(rd.sentPsn, rd.psn) * mtu;
  const rest = rd.len - off;
  const n = Math.min(packetsFor(rest, mtu), budget, SEG_MAX_PKTS);
  if (n < 2 || rest <= mtu) return -1;
  const run = readRun;
  run.bufs[0] = rd.mr.buffer;
  run.pieces[0] = rd.off + off;
  run.pieces[1] = Math.min(rest, n * mtu);
  run.nPieces = 1;
  const msn = qp.resp.msn;
  let psn = rd.sentPsn,
    at = off;
  for (let k = 0; k < n; k++) {
    const remaining = rd.len - at;
    const len = remaining < mtu ? remaining : mtu;
    const opc = READ_RESPONSE_OPCODE[(at === 0 ? 2 : 0) + (remaining <= mtu ? 1 : 0)]!;
    const h = readHdrs[k]!;
    writeBth(h, opc, false, 0, qp.destQpn, false, psn);
    run.meta[2 * k] = OPCODE_MASK[opc]! & hdrBit(Hdr.AETH) ? writeAeth(h, opc, aethAck(), msn) : payloadOff(opc);
    run.meta[2 * k + 1] = len;
    at += len;
    psn = psnAdd(psn, 1);
  }
  run.n = n;
  run.srcIpNum = pt.ipNum;
  run.dstIpNum = d.ipNum;
  run.dstIp = d.ip;
  run.dstPort = d.port;
  run.tos = d.tos;
  run.srcPort = qp.srcPort;
  const sent = link.sendSegments(run);
  run.bufs[0] = EMPTY; // hold no MR past the call
  if (sent <= 0) return 0;
  pt.counters.counts[Ctr.sent_pkts]! += sent;
  rd.sentPsn = psnAdd(rd.sentPsn, sent);
  if (psnDiff(rd.sentPsn, rd.psn) * mtu >= rd.len) qp.resp.reads.shift(); // its LAST left
  return sent;
}

const EMPTY = Buffer.alloc(0);
/** The one READ response run being built (runReads is synchronous; one piece: the MR) and its per-packet header views. */
const { run: readRun, hdrs: readHdrs } = newSegmentRun(1);

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
  let budget = BACKLOG_BUDGET;
  while (r.backlog.length > 0 && r.reads.length === 0 && budget-- > 0) {
    const e = r.backlog.shift()!;
    if (parseIb(backlogInfo, e.buf, 0, e.len) !== 0) continue;
    processRequest(qp, backlogInfo, e.ipId, e.srcBytes);
  }
  if (r.backlog.length > 0 && r.reads.length === 0) scheduleReads(qp);
  if (r.backlog.length === 0 && r.reads.length === 0 && r.stash.size > 0) drainStash(qp);
}
