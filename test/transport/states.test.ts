/**
 * The role state machines, table-driven (issue 11 item 3): for each (state, packet kind) the
 * state the packet ends in (the decision recorded in qp.trace()), and its side effects: what was
 * sent back (opcode, AETH syndrome), which counters moved, which completion was posted, the QP's
 * state. Hand-built packets are injected into a pair on the in-memory network (pair.ts) whose
 * other side is silenced, so what one role does is all there is to see.
 */
import t from 'tap';
import { makePair, settle, type Pair, type PairOptions } from '../verbs/pair.js';
import { Wc } from '../../src/verbs/types.js';
import { buildRoceV2, emitFrame, makeIb } from '../../src/roce/framing.js';
import { aethAck, aethNak, aethRnrNak, NakCode } from '../../src/roce/aeth.js';
import { Hdr, OPCODES, opcodeName } from '../../src/roce/opcode.js';
import { ackTimeoutMs } from '../../src/roce/transport/completer.js';
import { ipv4ToGid } from '../../src/roce/gid.js';
import { TraceRing, formatTrace, TRACE_SIZE, Role } from '../../src/roce/transport/trace.js';
import { RespState, CompState, ReqState, Reason, RESP_STATE_NAME, COMP_STATE_NAME } from '../../src/roce/transport/role-states.js';

type IbInit = Parameters<typeof makeIb>[0];
const A = '10.0.0.1',
  B = '10.0.0.2';
const PSN_A = 0x00fff0; // a's first request PSN, what b's responder expects (pair.ts)
const QKEY = 0x11111111;

function ibBytes(src: string, dst: string, init: IbInit): Buffer {
  const f = buildRoceV2({ src: ipv4ToGid(src).subarray(12), dst: ipv4ToGid(dst).subarray(12), srcPort: 4791 }, makeIb(init));
  return emitFrame(f).subarray(28);
}

/** A packet one side sent: its opcode name, PSN, and AETH syndrome (null without an AETH). */
interface Sent {
  op: string;
  psn: number;
  syn: number | null;
}
function decode(pkt: Buffer): Sent {
  const op = pkt[0]!;
  const aeth = OPCODES[op]?.offset[Hdr.AETH] ?? -1;
  return { op: opcodeName(op), psn: (pkt[9]! << 16) | (pkt[10]! << 8) | pkt[11]!, syn: aeth >= 0 ? pkt[aeth]! : null };
}

const IGNORED = new Set(['rcvd_pkts', 'sent_pkts', 'tail_probes']);

interface Harness {
  p: Pair;
  sentByA: Sent[];
  sentByB: Sent[];
  counters(side: 'a' | 'b'): Record<string, number>;
}
/** A pair where nothing either side sends is delivered (it is recorded): the test plays the peer. */
async function harness(o: PairOptions = {}): Promise<Harness> {
  const p = await makePair(o);
  const sentByA: Sent[] = [],
    sentByB: Sent[] = [];
  p.net!.filter = (pkt, src) => {
    (src === A ? sentByA : sentByB).push(decode(Buffer.from(pkt)));
    return false;
  };
  const base = { a: p.a.dev.counters(), b: p.b.dev.counters() };
  return {
    p,
    sentByA,
    sentByB,
    counters(side) {
      const now = p[side].dev.counters();
      const d: Record<string, number> = {};
      // (Packets in and out are implied by what was injected and sent; tail probes depend on the round-trip estimate.)
      for (const [k, v] of Object.entries(now)) if (v !== base[side][k] && !IGNORED.has(k)) d[k] = v - (base[side][k] ?? 0);
      return d;
    },
  };
}

function wcs(cq: Pair['a']['scq']): Array<[number, string]> {
  const buf = Array.from({ length: 16 }, () => new Wc());
  const n = cq.poll(buf);
  return buf.slice(0, n).map((w) => [w.wrId, w.status]);
}

/** The last decision of `role` in the QP's trace. */
function last(p: Pair, side: 'a' | 'b', role: 'req' | 'comp' | 'resp'): { state: string; reason: string } | undefined {
  const e = p[side].qp
    .trace()
    .filter((x) => x.role === role)
    .at(-1);
  return e && { state: e.state, reason: e.reason };
}

// ------------------------------------------------------------------------------ responder ---

interface RespRow {
  name: string;
  opts?: PairOptions;
  /** receive WQEs b posts first: their lengths */
  recvs?: number[];
  setup?: (h: Harness) => void;
  pkts: (h: Harness) => IbInit[];
  state: keyof typeof RespState;
  reason: string;
  /** what b sent back: [opcode name, syndrome (null: no AETH)] */
  sent: Array<[string, number | null]>;
  counters?: Record<string, number>;
  recv?: Array<[number, string]>;
  qpState?: string;
}

const payload = (n: number): Uint8Array => new Uint8Array(n).fill(0xab);
const rc = (h: Harness, op: number, psn: number, more: Partial<IbInit> = {}): IbInit => ({ opcode: op, destQp: h.p.b.qp.qpn, psn, ...more });
const reth = (h: Harness, len: number, off = 0, rkey?: number) => ({ va: h.p.b.mr.addr + BigInt(off), rkey: rkey ?? h.p.b.mr.rkey, dmaLen: len });

const RESP_ROWS: RespRow[] = [
  {
    name: 'RC SEND_ONLY, expected PSN, receive posted, AckReq',
    recvs: [256],
    pkts: (h) => [rc(h, 0x04, PSN_A, { ackReq: true, payload: payload(100) })],
    state: 'ACKNOWLEDGE',
    reason: 'ack_queued',
    sent: [['RC_ACKNOWLEDGE', aethAck()]],
    counters: { rdma_recvs: 1 },
    recv: [[1, 'SUCCESS']],
    qpState: 'RTS',
  },
  {
    name: 'RC SEND_FIRST without AckReq: placed, no ACK yet',
    recvs: [4096],
    pkts: (h) => [rc(h, 0x00, PSN_A, { payload: payload(1024) })],
    state: 'ACKNOWLEDGE',
    reason: 'no_ack_req',
    sent: [],
    counters: {},
    recv: [],
    qpState: 'RTS',
  },
  {
    name: 'RC SEND_ONLY, no receive posted',
    pkts: (h) => [rc(h, 0x04, PSN_A, { ackReq: true, payload: payload(10) })],
    state: 'ERR_NAK_RNR',
    reason: 'no_recv_wqe',
    sent: [['RC_ACKNOWLEDGE', aethRnrNak(1)]],
    counters: { send_rnr_err: 1 },
    recv: [],
    qpState: 'RTS',
  },
  {
    name: 'RC SEND_ONLY past a gap (first of them): held',
    recvs: [256],
    pkts: (h) => [rc(h, 0x04, PSN_A + 2, { ackReq: true, payload: payload(10) })],
    state: 'ERR_NAK_PSN',
    reason: 'psn_gap_held',
    sent: [],
    counters: { out_of_sequence: 1 },
    recv: [],
    qpState: 'RTS',
  },
  {
    name: 'RC SEND_ONLY past a gap (third): sequence NAK for the expected PSN',
    recvs: [256],
    pkts: (h) => [1, 2, 3].map((k) => rc(h, 0x04, PSN_A + k, { ackReq: true, payload: payload(10) })),
    state: 'ERR_NAK_PSN',
    reason: 'psn_gap_naked',
    sent: [['RC_ACKNOWLEDGE', aethNak(NakCode.PSN_SEQ_ERROR)]],
    counters: { out_of_sequence: 3 },
    recv: [],
    qpState: 'RTS',
  },
  {
    name: 'RC duplicate SEND with AckReq: acknowledged, not delivered',
    recvs: [256, 256],
    pkts: (h) => [rc(h, 0x04, PSN_A, { payload: payload(10) }), rc(h, 0x04, PSN_A, { ackReq: true, payload: payload(10) })],
    state: 'DUPLICATE_REQUEST',
    reason: 'dup_acked',
    sent: [['RC_ACKNOWLEDGE', aethAck()]],
    counters: { duplicate_request: 1, rdma_recvs: 1 },
    recv: [[1, 'SUCCESS']],
    qpState: 'RTS',
  },
  {
    name: 'RC duplicate SEND without AckReq: ignored',
    recvs: [256, 256],
    pkts: (h) => [rc(h, 0x04, PSN_A, { payload: payload(10) }), rc(h, 0x04, PSN_A, { payload: payload(10) })],
    state: 'DUPLICATE_REQUEST',
    reason: 'dup_ignored',
    sent: [],
    counters: { duplicate_request: 1, rdma_recvs: 1 },
    recv: [[1, 'SUCCESS']],
    qpState: 'RTS',
  },
  {
    name: 'RC SEND_MIDDLE with no message in progress',
    recvs: [4096],
    pkts: (h) => [rc(h, 0x01, PSN_A, { payload: payload(1024) })],
    state: 'ERR_NAK_INVALID',
    reason: 'bad_op_seq',
    sent: [['RC_ACKNOWLEDGE', aethNak(NakCode.INVALID_REQUEST)]],
    counters: {},
    recv: [[1, 'WR_FLUSH_ERR']],
    qpState: 'ERR',
  },
  {
    name: 'RC WRITE_ONLY on a QP without REMOTE_WRITE',
    opts: { access: ['LOCAL_WRITE'] },
    pkts: (h) => [rc(h, 0x0a, PSN_A, { ackReq: true, reth: reth(h, 8), payload: payload(8) })],
    state: 'ERR_NAK_INVALID',
    reason: 'op_not_permitted',
    sent: [['RC_ACKNOWLEDGE', aethNak(NakCode.INVALID_REQUEST)]],
    counters: {},
    qpState: 'ERR',
  },
  {
    name: 'RC WRITE_ONLY, valid R_Key',
    pkts: (h) => [rc(h, 0x0a, PSN_A, { ackReq: true, reth: reth(h, 16, 64), payload: payload(16) })],
    state: 'ACKNOWLEDGE',
    reason: 'ack_queued',
    sent: [['RC_ACKNOWLEDGE', aethAck()]],
    counters: {},
    qpState: 'RTS',
  },
  {
    name: 'RC WRITE_ONLY, bad R_Key',
    pkts: (h) => [rc(h, 0x0a, PSN_A, { ackReq: true, reth: reth(h, 16, 0, 0x1234), payload: payload(16) })],
    state: 'ERR_NAK_ACCESS',
    reason: 'bad_rkey',
    sent: [['RC_ACKNOWLEDGE', aethNak(NakCode.REMOTE_ACCESS_ERROR)]],
    counters: {},
    qpState: 'ERR',
  },
  {
    name: 'RC WRITE_ONLY, payload longer than its DMA length',
    pkts: (h) => [rc(h, 0x0a, PSN_A, { ackReq: true, reth: reth(h, 8), payload: payload(16) })],
    state: 'ERR_NAK_INVALID',
    reason: 'bad_length',
    sent: [['RC_ACKNOWLEDGE', aethNak(NakCode.INVALID_REQUEST)]],
    counters: {},
    qpState: 'ERR',
  },
  {
    name: 'RC WRITE_ONLY_WITH_IMMEDIATE, no receive posted',
    pkts: (h) => [rc(h, 0x0b, PSN_A, { ackReq: true, reth: reth(h, 8), immDt: 7, payload: payload(8) })],
    state: 'ERR_NAK_RNR',
    reason: 'no_recv_wqe',
    sent: [['RC_ACKNOWLEDGE', aethRnrNak(1)]],
    counters: { send_rnr_err: 1 },
    qpState: 'RTS',
  },
  {
    name: 'RC READ request, valid R_Key',
    pkts: (h) => [rc(h, 0x0c, PSN_A, { ackReq: true, reth: reth(h, 64) })],
    state: 'READ_REPLY',
    reason: 'read_queued',
    sent: [['RC_RDMA_READ_RESPONSE_ONLY', aethAck()]],
    counters: {},
    qpState: 'RTS',
  },
  {
    name: 'RC READ request, bad R_Key',
    pkts: (h) => [rc(h, 0x0c, PSN_A, { ackReq: true, reth: reth(h, 64, 0, 0x1234) })],
    state: 'ERR_NAK_ACCESS',
    reason: 'bad_rkey',
    sent: [['RC_ACKNOWLEDGE', aethNak(NakCode.REMOTE_ACCESS_ERROR)]],
    counters: {},
    qpState: 'ERR',
  },
  {
    name: 'RC FETCH_ADD, aligned',
    pkts: (h) => [rc(h, 0x14, PSN_A, { ackReq: true, atomicEth: { va: h.p.b.mr.addr, rkey: h.p.b.mr.rkey, swapAdd: 1n, compare: 0n } })],
    state: 'ATOMIC_REPLY',
    reason: 'atomic_done',
    sent: [['RC_ATOMIC_ACKNOWLEDGE', aethAck()]],
    counters: {},
    qpState: 'RTS',
  },
  {
    name: 'RC COMPARE_SWAP, misaligned',
    pkts: (h) => [rc(h, 0x13, PSN_A, { ackReq: true, atomicEth: { va: h.p.b.mr.addr + 4n, rkey: h.p.b.mr.rkey, swapAdd: 1n, compare: 0n } })],
    state: 'ERR_NAK_INVALID',
    reason: 'misaligned',
    sent: [['RC_ACKNOWLEDGE', aethNak(NakCode.INVALID_REQUEST)]],
    counters: {},
    qpState: 'ERR',
  },
  {
    name: 'RC SEND_ONLY into a receive WQE too short',
    recvs: [10],
    pkts: (h) => [rc(h, 0x04, PSN_A, { ackReq: true, payload: payload(100) })],
    state: 'ERR_LENGTH',
    reason: 'loc_len',
    sent: [['RC_ACKNOWLEDGE', aethNak(NakCode.INVALID_REQUEST)]],
    counters: {},
    recv: [[1, 'LOC_LEN_ERR']],
    qpState: 'ERR',
  },
  {
    name: 'RC SEND_ONLY to a QP in ERR',
    recvs: [256],
    setup: (h) => h.p.b.qp.modify({ state: 'ERR' }),
    pkts: (h) => [rc(h, 0x04, PSN_A, { ackReq: true, payload: payload(10) })],
    state: 'ERR_STATE',
    reason: 'bad_state',
    sent: [],
    counters: { rcvd_bad_state: 1 },
    recv: [[1, 'WR_FLUSH_ERR']],
    qpState: 'ERR',
  },
  // UC: no ACKs, no NAKs; an error drops the message, the QP stays up.
  {
    name: 'UC SEND_ONLY, receive posted',
    opts: { type: 'UC' },
    recvs: [256],
    pkts: (h) => [rc(h, 0x24, PSN_A, { payload: payload(10) })],
    state: 'ACKNOWLEDGE',
    reason: 'no_ack_req',
    sent: [],
    counters: { rdma_recvs: 1 },
    recv: [[1, 'SUCCESS']],
    qpState: 'RTS',
  },
  {
    name: 'UC SEND_ONLY, no receive posted',
    opts: { type: 'UC' },
    pkts: (h) => [rc(h, 0x24, PSN_A, { payload: payload(10) })],
    state: 'ERR_NAK_RNR',
    reason: 'no_recv_wqe',
    sent: [],
    counters: { rcvd_no_recv_wqe: 1 },
    qpState: 'RTS',
  },
  {
    name: 'UC SEND_MIDDLE after a gap: the message is lost',
    opts: { type: 'UC' },
    recvs: [4096],
    pkts: (h) => [rc(h, 0x21, PSN_A + 2, { payload: payload(1024) })],
    state: 'DROP',
    reason: 'uc_psn_gap',
    sent: [],
    counters: { out_of_sequence: 1 },
    recv: [],
    qpState: 'RTS',
  },
  {
    name: 'UC SEND_LAST of a message being dropped',
    opts: { type: 'UC' },
    recvs: [4096],
    pkts: (h) => [rc(h, 0x21, PSN_A + 2, { payload: payload(1024) }), rc(h, 0x22, PSN_A + 3, { payload: payload(10) })],
    state: 'DROP',
    reason: 'uc_dropping',
    sent: [],
    counters: { out_of_sequence: 1 },
    recv: [],
    qpState: 'RTS',
  },
  {
    name: 'UC SEND_MIDDLE with no message in progress',
    opts: { type: 'UC' },
    recvs: [4096],
    pkts: (h) => [rc(h, 0x21, PSN_A, { payload: payload(1024) })],
    state: 'ERR_NAK_INVALID',
    reason: 'bad_op_seq',
    sent: [],
    counters: {},
    recv: [],
    qpState: 'RTS',
  },
  {
    name: 'UC WRITE_ONLY, bad R_Key',
    opts: { type: 'UC' },
    pkts: (h) => [rc(h, 0x2a, PSN_A, { reth: reth(h, 16, 0, 0x1234), payload: payload(16) })],
    state: 'ERR_NAK_ACCESS',
    reason: 'bad_rkey',
    sent: [],
    counters: {},
    qpState: 'RTS',
  },
  // UD: the Q_Key is checked, no PSN or opcode sequence.
  {
    name: 'UD SEND_ONLY, right Q_Key',
    opts: { type: 'UD' },
    recvs: [256],
    pkts: (h) => [rc(h, 0x64, 7, { deth: { qkey: QKEY, srcQp: h.p.a.qp.qpn }, payload: payload(10) })],
    state: 'ACKNOWLEDGE',
    reason: 'no_ack_req',
    sent: [],
    counters: { rdma_recvs: 1 },
    recv: [[1, 'SUCCESS']],
    qpState: 'RTS',
  },
  {
    name: 'UD SEND_ONLY, wrong Q_Key',
    opts: { type: 'UD' },
    recvs: [256],
    pkts: (h) => [rc(h, 0x64, 7, { deth: { qkey: 0x2222, srcQp: h.p.a.qp.qpn }, payload: payload(10) })],
    state: 'DROP',
    reason: 'bad_qkey',
    sent: [],
    counters: { rcvd_bad_qkey: 1 },
    recv: [],
    qpState: 'RTS',
  },
  {
    name: 'UD SEND_ONLY, no receive posted',
    opts: { type: 'UD' },
    pkts: (h) => [rc(h, 0x64, 7, { deth: { qkey: QKEY, srcQp: h.p.a.qp.qpn }, payload: payload(10) })],
    state: 'ERR_NAK_RNR',
    reason: 'no_recv_wqe',
    sent: [],
    counters: { rcvd_no_recv_wqe: 1 },
    qpState: 'RTS',
  },
];

for (const row of RESP_ROWS) {
  t.test(`responder: ${row.name} -> ${row.state} (${row.reason})`, async (t) => {
    const h = await harness(row.opts);
    const { p } = h;
    (row.recvs ?? []).forEach((len, i) => p.b.qp.postRecv({ wrId: i + 1, sg: [{ mr: p.b.mr, offset: 4096 * i, length: len }] }));
    row.setup?.(h);
    for (const init of row.pkts(h)) p.net!.inject(A, 4791, B, 4791, ibBytes(A, B, init));
    await settle(p, 0.01);
    t.same(last(p, 'b', 'resp'), { state: row.state, reason: row.reason }, 'decision (qp.trace())');
    t.same(
      h.sentByB.map((s) => [s.op, s.syn]),
      row.sent,
      'sent back',
    );
    if (row.counters) t.same(h.counters('b'), row.counters, 'counters moved');
    if (row.recv) t.same(wcs(p.b.rcq), row.recv, 'receive completions');
    if (row.qpState) t.equal(p.b.qp.state, row.qpState, 'QP state');
    await p.close();
  });
}

// ------------------------------------------------------------------------------ completer ---

interface CompRow {
  name: string;
  opts?: PairOptions;
  /** what a posts (and sends, undelivered) first */
  post: (h: Harness) => void;
  /** responses b "sends": injected into a */
  pkts?: (h: Harness) => IbInit[];
  /** instead of / after the packets: ms of (fake) time to let pass */
  wait?: number;
  state: keyof typeof CompState;
  reason: string;
  counters?: Record<string, number>;
  send?: Array<[number, string]>;
  qpState?: string;
  /** a resent after the decision (go-back-N): the PSNs */
  resent?: number[];
}

const ack = (h: Harness, psn: number, syn: number, msn = 1): IbInit => ({ opcode: 0x11, destQp: h.p.a.qp.qpn, psn, aeth: { syndrome: syn, msn } });
const write = (h: Harness, id: number, len: number) =>
  h.p.a.qp.postSend({ wrId: id, opcode: 'RDMA_WRITE', sg: [{ mr: h.p.a.mr, offset: 0, length: len }], remote: { addr: h.p.b.mr.addr, rkey: h.p.b.mr.rkey } });
const read = (h: Harness, id: number, len: number) =>
  h.p.a.qp.postSend({ wrId: id, opcode: 'RDMA_READ', sg: [{ mr: h.p.a.mr, offset: 0, length: len }], remote: { addr: h.p.b.mr.addr, rkey: h.p.b.mr.rkey } });

const COMP_ROWS: CompRow[] = [
  {
    name: 'ACK for the last PSN of a WRITE',
    post: (h) => write(h, 1, 3000),
    pkts: (h) => [ack(h, PSN_A + 2, aethAck())],
    state: 'COMP_ACK',
    reason: 'acked',
    counters: {},
    send: [[1, 'SUCCESS']],
    qpState: 'RTS',
  },
  {
    name: 'ACK for a PSN never sent',
    post: (h) => write(h, 1, 3000),
    pkts: (h) => [ack(h, PSN_A + 5, aethAck())],
    state: 'DROP',
    reason: 'bad_psn',
    counters: { rcvd_bad_psn: 1 },
    send: [],
    qpState: 'RTS',
  },
  {
    name: 'ACK with nothing outstanding',
    post: () => {},
    pkts: (h) => [ack(h, PSN_A, aethAck())],
    state: 'DROP',
    reason: 'bad_psn',
    counters: { rcvd_bad_psn: 1 },
    send: [],
    qpState: 'RTS',
  },
  {
    name: 'ACK older than the oldest outstanding PSN',
    post: (h) => {
      write(h, 1, 3000);
      write(h, 2, 3000);
    },
    pkts: (h) => [ack(h, PSN_A + 2, aethAck()), ack(h, PSN_A + 1, aethAck())],
    state: 'DROP',
    reason: 'stale',
    counters: { rcvd_stale_resp: 1 },
    send: [[1, 'SUCCESS']],
    qpState: 'RTS',
  },
  {
    name: 'remote access NAK',
    post: (h) => write(h, 1, 100),
    pkts: (h) => [ack(h, PSN_A, aethNak(NakCode.REMOTE_ACCESS_ERROR))],
    state: 'ERROR',
    reason: 'nak_access',
    counters: {},
    send: [[1, 'REM_ACCESS_ERR']],
    qpState: 'ERR',
  },
  {
    name: 'invalid request NAK',
    post: (h) => write(h, 1, 100),
    pkts: (h) => [ack(h, PSN_A, aethNak(NakCode.INVALID_REQUEST))],
    state: 'ERROR',
    reason: 'nak_invalid',
    counters: {},
    send: [[1, 'REM_INV_REQ_ERR']],
    qpState: 'ERR',
  },
  {
    name: 'remote operational error NAK',
    post: (h) => write(h, 1, 100),
    pkts: (h) => [ack(h, PSN_A, aethNak(NakCode.REMOTE_OPERATIONAL_ERROR))],
    state: 'ERROR',
    reason: 'nak_operational',
    counters: {},
    send: [[1, 'REM_OP_ERR']],
    qpState: 'ERR',
  },
  {
    name: 'NAK with an undefined code',
    post: (h) => write(h, 1, 100),
    pkts: (h) => [ack(h, PSN_A, aethNak(9))],
    state: 'ERROR',
    reason: 'bad_response',
    counters: {},
    send: [[1, 'BAD_RESP_ERR']],
    qpState: 'ERR',
  },
  {
    name: 'sequence NAK inside a WRITE: go back to its PSN',
    post: (h) => write(h, 1, 3000),
    pkts: (h) => [ack(h, PSN_A + 1, aethNak(NakCode.PSN_SEQ_ERROR))],
    state: 'ERROR_RETRY',
    reason: 'seq_nak',
    counters: { rcvd_seq_err: 1, completer_retry_err: 1 },
    send: [],
    qpState: 'RTS',
    resent: [PSN_A + 1, PSN_A + 2],
  },
  {
    name: 'the same sequence NAK again before anything was resent: stale',
    post: (h) => write(h, 1, 3000),
    pkts: (h) => [ack(h, PSN_A + 1, aethNak(NakCode.PSN_SEQ_ERROR)), ack(h, PSN_A + 1, aethNak(NakCode.PSN_SEQ_ERROR))],
    state: 'DONE',
    reason: 'seq_nak_stale',
    counters: { rcvd_seq_err: 2, completer_retry_err: 1 },
    send: [],
    qpState: 'RTS',
  },
  {
    name: 'RNR NAK: wait, then resend',
    post: (h) => write(h, 1, 100),
    pkts: (h) => [ack(h, PSN_A, aethRnrNak(1))],
    state: 'RNR_RETRY',
    reason: 'rnr_nak',
    counters: { rcvd_rnr_err: 1 },
    send: [],
    qpState: 'RTS',
    resent: [PSN_A],
  },
  {
    name: 'RNR NAK with rnr_retry 0',
    opts: { rnrRetry: 0 },
    post: (h) => write(h, 1, 100),
    pkts: (h) => [ack(h, PSN_A, aethRnrNak(1))],
    state: 'RNR_RETRY',
    reason: 'rnr_exceeded',
    counters: { rcvd_rnr_err: 1, retry_rnr_exceeded_err: 1 },
    send: [[1, 'RNR_RETRY_EXC_ERR']],
    qpState: 'ERR',
  },
  {
    name: 'ACK past a READ (its response is missing): implicit NAK',
    post: (h) => read(h, 1, 64),
    pkts: (h) => [ack(h, PSN_A, aethAck())],
    state: 'ERROR_RETRY',
    reason: 'implicit_nak',
    counters: { completer_retry_err: 1 },
    send: [],
    qpState: 'RTS',
    resent: [PSN_A],
  },
  {
    name: 'READ response ONLY',
    post: (h) => read(h, 1, 64),
    pkts: (h) => [{ opcode: 0x10, destQp: h.p.a.qp.qpn, psn: PSN_A, aeth: { syndrome: aethAck(), msn: 1 }, payload: payload(64) }],
    state: 'READ',
    reason: 'read_data',
    counters: {},
    send: [[1, 'SUCCESS']],
    qpState: 'RTS',
  },
  {
    name: 'READ response LAST ahead of the missing FIRST: kept, the hole asked for',
    post: (h) => read(h, 1, 2048),
    pkts: (h) => [{ opcode: 0x0f, destQp: h.p.a.qp.qpn, psn: PSN_A + 1, aeth: { syndrome: aethAck(), msn: 1 }, payload: payload(1024) }],
    state: 'READ',
    reason: 'read_hole',
    counters: { read_hole_requests: 1 },
    send: [],
    qpState: 'RTS',
    resent: [PSN_A],
  },
  {
    name: 'atomic ACK',
    post: (h) =>
      h.p.a.qp.postSend({
        wrId: 1,
        opcode: 'ATOMIC_FETCH_AND_ADD',
        sg: [{ mr: h.p.a.mr, offset: 0, length: 8 }],
        remote: { addr: h.p.b.mr.addr, rkey: h.p.b.mr.rkey },
        compareAdd: 1n,
      }),
    pkts: (h) => [{ opcode: 0x12, destQp: h.p.a.qp.qpn, psn: PSN_A, aeth: { syndrome: aethAck(), msn: 1 }, atomicAck: { origData: 41n } }],
    state: 'ATOMIC',
    reason: 'atomic_done',
    counters: {},
    send: [[1, 'SUCCESS']],
    qpState: 'RTS',
  },
  {
    name: 'a response to a QP in ERR',
    post: (h) => {
      write(h, 1, 100);
      h.p.a.qp.modify({ state: 'ERR' });
    },
    pkts: (h) => [ack(h, PSN_A, aethAck())],
    state: 'DROP',
    reason: 'bad_state',
    counters: { rcvd_bad_state: 1 },
    send: [[1, 'WR_FLUSH_ERR']],
    qpState: 'ERR',
  },
  {
    name: 'no response before the ACK timer: go back',
    opts: { timeout: 8 },
    post: (h) => write(h, 1, 100),
    wait: ackTimeoutMs(8) * 1.5,
    state: 'ERROR_RETRY',
    reason: 'timeout',
    counters: { timeouts: 1, completer_retry_err: 1 },
    send: [],
    qpState: 'RTS',
    resent: [PSN_A],
  },
  {
    name: 'no response and retry_cnt 0: the WQE fails',
    opts: { timeout: 8, retryCnt: 0 },
    post: (h) => write(h, 1, 100),
    wait: ackTimeoutMs(8) * 1.5,
    state: 'ERROR',
    reason: 'retry_exceeded',
    counters: { timeouts: 1, retry_exceeded_err: 1 },
    send: [[1, 'RETRY_EXC_ERR']],
    qpState: 'ERR',
  },
];

for (const row of COMP_ROWS) {
  t.test(`completer: ${row.name} -> ${row.state} (${row.reason})`, async (t) => {
    const h = await harness({ timeout: 14, ...row.opts });
    const { p } = h;
    row.post(h);
    await settle(p, 0.01);
    const before = h.sentByA.length;
    if (row.pkts) for (const init of row.pkts(h)) p.net!.inject(B, 4791, A, 4791, ibBytes(B, A, init));
    await settle(p, row.wait ?? 0.01);
    const rows = p.a.qp.trace().filter((x) => x.role === 'comp');
    const e = row.state === 'DONE' ? rows.at(-1) : rows.filter((x) => x.state === row.state).at(-1);
    if (row.state === 'DONE') t.equal(e?.reason, row.reason, 'decision (qp.trace())');
    else t.same(e && { state: e.state, reason: e.reason }, { state: row.state, reason: row.reason }, 'decision (qp.trace())');
    if (row.counters) t.same(h.counters('a'), row.counters, 'counters moved');
    if (row.send) t.same(wcs(p.a.scq), row.send, 'send completions');
    if (row.qpState) t.equal(p.a.qp.state, row.qpState, 'QP state');
    if (row.resent) {
      await settle(p, 50); // an RNR wait is 10 µs here; a retry resends at once
      const again = h.sentByA.slice(before).map((s) => s.psn);
      for (const psn of row.resent) t.ok(again.includes(psn), `PSN 0x${psn.toString(16)} sent again`);
    }
    await p.close();
  });
}

// ------------------------------------------------------------------------------ requester ---

t.test('requester: a second READ waits for max_rd_atomic -> WAIT (rd_atomic_limit)', async (t) => {
  const h = await harness({ maxRdAtomic: 1 });
  read(h, 1, 64);
  read(h, 2, 64);
  await settle(h.p, 0.01);
  t.same(
    h.sentByA.map((s) => s.op),
    ['RC_RDMA_READ_REQUEST'],
    'one READ out',
  );
  t.same(last(h.p, 'a', 'req'), { state: 'WAIT', reason: 'rd_atomic_limit' });
  await h.p.close();
});

t.test('requester: a full window -> WAIT (window_full); the sends before it -> SEND (sent)', async (t) => {
  const h = await harness({ timeout: 14 });
  write(h, 1, 200 * 1024); // 200 packets: more than the 128-PSN window
  await settle(h.p, 0.01);
  t.equal(h.sentByA.length, 128, 'a window of packets out');
  const req = h.p.a.qp.trace().filter((x) => x.role === 'req');
  t.ok(
    req.some((x) => x.state === 'SEND' && (x.reason === 'sent' || x.reason === 'budget_used')),
    'sent',
  );
  t.same(last(h.p, 'a', 'req'), { state: 'WAIT', reason: 'window_full' });
  await h.p.close();
});

t.test('requester: SQ drain holds a new message -> WAIT (sq_draining)', async (t) => {
  const h = await harness();
  h.p.a.qp.modify({ state: 'SQD' });
  write(h, 1, 100);
  h.p.a.dev.kick(h.p.a.qp);
  await settle(h.p, 0.01);
  t.same(h.sentByA, [], 'nothing out');
  t.same(last(h.p, 'a', 'req'), { state: 'WAIT', reason: 'sq_draining' });
  await h.p.close();
});

t.test('requester: the tail-loss probe -> PROBE', async (t) => {
  const h = await harness({ timeout: 14 });
  // A round trip measured first (the probe waits a few of them), then a WRITE whose ACK never comes.
  write(h, 1, 100);
  await settle(h.p, 0.2);
  h.p.net!.inject(B, 4791, A, 4791, ibBytes(B, A, ack(h, PSN_A, aethAck())));
  write(h, 2, 100);
  await settle(h.p, 20);
  t.ok(
    h.p.a.qp.trace().some((x) => x.role === 'req' && x.state === 'PROBE'),
    'probed',
  );
  t.ok(h.p.a.dev.counters()['tail_probes']! >= 1, 'counted');
  await h.p.close();
});

// ------------------------------------------------------------------------------ the ring ---

t.test('trace ring: fixed size, oldest first, identical decisions folded', (t) => {
  const r = new TraceRing();
  r.record(Role.RESP, RespState.ACKNOWLEDGE, 0x04, 1, Reason.ACK_QUEUED);
  r.record(Role.RESP, RespState.ACKNOWLEDGE, 0x04, 2, Reason.ACK_QUEUED);
  r.record(Role.COMP, CompState.COMP_ACK, 0x11, 2, Reason.ACKED);
  t.same(
    r.entries().map((e) => [e.seq, e.role, e.state, e.opcode, e.psn, e.reason, e.count]),
    [
      [0, 'resp', 'ACKNOWLEDGE', 'RC_SEND_ONLY', 2, 'ack_queued', 2],
      [1, 'comp', 'COMP_ACK', 'RC_ACKNOWLEDGE', 2, 'acked', 1],
    ],
  );
  for (let i = 0; i < 3 * TRACE_SIZE; i++) r.record(Role.REQ, ReqState.SEND, 0x04, i, i % 2 ? Reason.SENT : Reason.BUDGET_USED);
  const e = r.entries();
  t.equal(e.length, TRACE_SIZE, 'the last TRACE_SIZE kept');
  t.equal(e.at(-1)!.psn, 3 * TRACE_SIZE - 1, 'newest last');
  t.equal(e[0]!.seq, 2 + 3 * TRACE_SIZE - TRACE_SIZE, 'oldest first, numbered by history');
  t.match(formatTrace(e.slice(-1))[0]!, /^#\d+ req SEND RC_SEND_ONLY psn 0x0000bf sent$/);
  for (let i = 0; i < 300; i++) r.record(Role.COMP, CompState.ERROR_RETRY, 0xff, i, Reason.TIMEOUT);
  t.equal(r.entries().at(-1)!.count, 256, 'the repeat count saturates');
  t.equal(r.entries().at(-1)!.opcode, '-', 'no opcode');
  t.end();
});

t.test('every state has a name; the step tables cover them', (t) => {
  t.equal(RESP_STATE_NAME.length, Object.keys(RespState).length);
  t.equal(COMP_STATE_NAME.length, Object.keys(CompState).length);
  t.ok(RESP_STATE_NAME.every((n) => typeof n === 'string'));
  t.ok(COMP_STATE_NAME.every((n) => typeof n === 'string'));
  t.end();
});

// The ring records per packet with no allocation: a long run of traffic leaves it bounded.
t.test('a stream of packets keeps the ring at its size', async (t) => {
  const p = await makePair();
  for (let i = 0; i < 200; i++) p.b.qp.postRecv({ wrId: i, sg: [{ mr: p.b.mr, offset: 0, length: 64 }] });
  for (let i = 0; i < 200; i++) p.a.qp.postSend({ wrId: i, opcode: 'SEND', sg: [{ mr: p.a.mr, offset: 0, length: 64 }] });
  await settle(p, 50);
  t.equal(wcs(p.b.rcq).length, 16, 'receives arrived (16 polled)');
  t.ok(p.b.qp.trace().length <= TRACE_SIZE);
  t.ok(p.b.qp.trace().some((e) => e.role === 'resp' && e.state === 'ACKNOWLEDGE'));
  await p.close();
});
