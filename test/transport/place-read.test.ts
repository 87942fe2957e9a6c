/**
 * Issue 15, RX direct placement of READ responses (native/place-rx.cc with PLACE_READ_MIDDLE,
 * transport/place.ts armAfterResponse / applyPlacedRead): the full-MTU MIDDLE responses of a READ
 * whose responses came in order so far are copied into the READ's local buffer in C and reported
 * to the completer in runs. It must be invisible: the same READs by a requester with placement on
 * and one with it off (UdpLinkOptions.rxPlacement: false) must leave the same memory, completions,
 * counters and completer trace; and a response that is not the next expected MIDDLE (a duplicate,
 * one ahead of a missing one, one from another address), a local MR deregistered mid-READ and a
 * QP moved to ERR mid-READ must be handled exactly as the per-packet path handles them, with
 * nothing of theirs placed. Loopback only, in this file's block 127.0.96.0/24. Without the addon
 * (SOFTROCE_NO_NATIVE=1) or with the fast path off there is no placement: the cases say so and skip.
 */
import t from 'tap';

type Tap = typeof t;
import { UdpLink, type NativeLink } from '../../src/roce/link/udp-link.js';
import { openDevice, type Device } from '../../src/verbs/device.js';
import { connectQp } from '../../src/verbs/connect.js';
import { Wc } from '../../src/verbs/types.js';
import type { Qp } from '../../src/verbs/qp.js';
import type { Mr } from '../../src/verbs/mr.js';
import type { Cq } from '../../src/verbs/cq.js';
import type { Mtu } from '../../src/roce/opcode.js';
import { loadNative } from '../../src/native.js';
import { writeAeth, writeBth } from '../../src/roce/transport/build.js';
import { icrcV2Ipv4Parts, writeIcrc } from '../../src/roce/icrc.js';
import { parseIpv4 } from '../../src/roce/gid.js';
import { COUNTER_NAMES } from '../../src/roce/counters.js';
import { pattern, waitFor, waitN, moved, ctr } from './fast-helpers.js';

const native = loadNative();
const noPlace =
  native?.rxArm === undefined || process.env['SOFTROCE_NO_FASTPATH'] === '1'
    ? 'no RX direct placement here (no addon, or SOFTROCE_NO_FASTPATH=1): nothing to compare'
    : false;
const A = '127.0.96.30',
  B = '127.0.96.31',
  C = '127.0.96.32';
const PSN_A = 0xfffff0; // the READs' PSNs wrap
const PSN_B = 0x000100;
const MEM = (1 << 20) + 8192;

interface Side {
  dev: Device;
  link: NativeLink;
  qp: Qp;
  cq: Cq;
  mem: Buffer;
  mr: Mr;
  /** a second MR, for READs scattered over two */
  mem2: Buffer;
  mr2: Mr;
}

async function side(address: string, placement: boolean): Promise<Side> {
  // A big receive buffer: a 1 MiB READ's responses arrive in one burst; a drop would mean a retry.
  const link = (await UdpLink.open({ address, native: 'on', rxPlacement: placement, socketBufferBytes: 32 << 20 })) as NativeLink;
  const dev = await openDevice({ address, link });
  const pd = dev.allocPd();
  const cq = dev.createCq({ depth: 4096 });
  const qp = pd.createQp({
    type: 'RC',
    sendCq: cq,
    recvCq: cq,
    sigAll: true,
    cap: { maxSendWr: 64, maxRecvWr: 64, maxSendSge: 2, maxRecvSge: 1, maxInline: 0 },
  });
  const mem = Buffer.alloc(MEM);
  const mr = pd.regMr(mem, ['LOCAL_WRITE', 'REMOTE_READ']);
  const mem2 = Buffer.alloc(MEM);
  const mr2 = pd.regMr(mem2, ['LOCAL_WRITE', 'REMOTE_READ']);
  return { dev, link, qp, cq, mem, mr, mem2, mr2 };
}

// Timeout 18 (~1 s): a loaded machine's pause must not look like a loss (a retry changes counters and trace).
const local = (psn: number, mtu: Mtu) => ({ psn, pathMtu: mtu, timeout: 18, retryCnt: 7, rnrRetry: 7, maxRdAtomic: 16, maxDestRdAtomic: 16 });

interface ReadsOut {
  mem: Buffer[];
  status: string[];
  counters: number[];
  trace: string[];
  placed: number;
}

/** A READ of `n` bytes: into one SGE, or split over the two MRs (`split`: the first SGE's bytes). */
interface Rd {
  n: number;
  split?: number;
}

/** READs of `reads`, one at a time, by a fresh requester with placement on or off from a fresh responder. */
async function runReads(placement: boolean, mtu: Mtu, reads: Rd[]): Promise<ReadsOut> {
  const rq = await side(A, placement);
  const rs = await side(B, true);
  connectQp(rq.qp, local(PSN_A, mtu), { qpn: rs.qp.qpn, psn: PSN_B, gid: B });
  connectQp(rs.qp, local(PSN_B, mtu), { qpn: rq.qp.qpn, psn: PSN_A, gid: A });
  rs.mem.set(pattern(MEM, 0x4ead));
  const out: ReadsOut = { mem: [], status: [], counters: [], trace: [], placed: 0 };
  let wr = 0;
  for (const r of reads) {
    rq.mem.fill(0);
    rq.mem2.fill(0);
    const sg =
      r.split === undefined
        ? [{ mr: rq.mr, offset: 3, length: r.n }]
        : [
            { mr: rq.mr, offset: 3, length: r.split },
            { mr: rq.mr2, offset: 5, length: r.n - r.split },
          ];
    rq.qp.postSend({ wrId: wr++, opcode: 'RDMA_READ', signaled: true, sg, remote: { addr: rs.mr.addr + 7n, rkey: rs.mr.rkey } });
    out.status.push(...(await waitN(rq.cq, 1)).map((w) => w.status));
    out.mem.push(Buffer.concat([rq.mem, rq.mem2]));
  }
  out.counters = [...rq.dev.ports[0]!.counters.counts];
  out.trace = rq.qp
    .trace()
    .filter((e) => e.role === 'comp')
    .map((e) => `${e.seq} ${e.state} ${e.opcode} ${e.psn} ${e.reason} x${e.count}`);
  out.placed = rq.link.batchStats.rxPlaced ?? 0;
  await rq.dev.close();
  await rs.dev.close();
  await rq.link.close();
  await rs.link.close();
  return out;
}

for (const mtu of [1024, 4096] as const) {
  t.test(`READs at MTU ${mtu}: placement on and off leave the same memory, completions, counters and completer trace`, { skip: noPlace }, async (t) => {
    // Biggest first: before a round trip has been measured the requester sends no tail probe, and
    // after the 1 MiB READ its measure is long enough for the rest. Smallest first, the probe timed
    // from 1-byte READs fired in the middle of the 1 MiB one's stream (placement on and off alike).
    const reads: Rd[] = [{ n: 1 << 20 }, { n: 65536 + 100, split: 30_000 }, { n: 65536 }, { n: mtu + 1 }, { n: mtu }, { n: 1 }];
    // A retry (an ACK timer that fired on a loaded machine) changes counters and trace: such a
    // pair is run again (up to 4 times), and said so.
    const retried = (o: ReadsOut): number => ctr(o.counters, 'timeouts') + ctr(o.counters, 'tail_probes') + ctr(o.counters, 'rcvd_stale_resp');
    let on = await runReads(true, mtu, reads);
    let off = await runReads(false, mtu, reads);
    for (let i = 0; i < 4 && retried(on) + retried(off) > 0; i++) {
      t.comment(`a retry in the pair (on: ${moved(on.counters)}; off: ${moved(off.counters)}): running it again`);
      on = await runReads(true, mtu, reads);
      off = await runReads(false, mtu, reads);
    }
    t.comment(`on: ${moved(on.counters)}; off: ${moved(off.counters)}`);
    t.same(on.status, Array(reads.length).fill('SUCCESS'), 'every READ completed (placement on)');
    t.same(off.status, on.status, 'the same completions');
    const src = pattern(MEM, 0x4ead);
    for (let i = 0; i < reads.length; i++) {
      const r = reads[i]!;
      const want = Buffer.alloc(2 * MEM);
      if (r.split === undefined) src.copy(want, 3, 7, 7 + r.n);
      else {
        src.copy(want, 3, 7, 7 + r.split);
        src.copy(want, MEM + 5, 7 + r.split, 7 + r.n);
      }
      const what = `${r.n} B${r.split !== undefined ? ` over two SGEs` : ''}`;
      t.ok(on.mem[i]!.equals(want), `${what}: the requester's memory holds exactly the READ (placement on)`);
      t.ok(off.mem[i]!.equals(want), `${what}: the same off`);
    }
    if (retried(on) + retried(off) === 0) {
      t.same(on.counters, off.counters, 'the requester port counters are equal');
      t.same(on.trace, off.trace, "the completer's trace is the same, decision by decision");
    } else {
      const keep = (c: number[]) =>
        c.filter((_, i) => !['timeouts', 'tail_probes', 'rcvd_stale_resp', 'rcvd_pkts', 'sent_pkts', 'duplicate_request'].includes(COUNTER_NAMES[i] ?? ''));
      t.same(keep(on.counters), keep(off.counters), 'the requester port counters a retry does not move are equal');
      t.comment("NOT COMPARED: the completer's trace (every pair of runs had a retry, which changes it)");
    }
    // Placement really ran: most MIDDLEs of the 64 KiB and 1 MiB READs are placed.
    const middles = 65536 / mtu - 2 + ((1 << 20) / mtu - 2);
    t.ok(on.placed > middles / 2, `placement really happened (${on.placed} of ${middles} MIDDLEs placed)`);
    t.equal(off.placed, 0, 'nothing placed with placement off');
  });
}

/**
 * A hand-made responder: a bare native link on B:4791 (the requester's QP has B as its peer) that
 * takes the requester's READ requests and sends crafted READ responses one at a time, each handled
 * before the next; another link on C for a response from the wrong address.
 */
interface Crafted {
  rq: Side;
  sock: NativeLink;
  other: NativeLink;
  /** PSNs of the READ requests the requester sent (first, and any re-request) */
  reqs: number[];
}

const MTU: Mtu = 1024;
const TOTAL = 5 * MTU + 5; // FIRST, 4 MIDDLEs, LAST (5 bytes)

async function crafted(placement: boolean): Promise<Crafted> {
  const rq = await side(A, placement);
  const reqs: number[] = [];
  const sock = (await UdpLink.open({ address: B, native: 'on' })) as NativeLink;
  sock.setReceiver((m, len) => {
    if (len >= 12 && m[0] === 0x0c) reqs.push(m.readUIntBE(9, 3)); // RC RDMA READ REQUEST
  });
  const other = (await UdpLink.open({ address: C, native: 'on' })) as NativeLink;
  other.setReceiver(() => {});
  connectQp(rq.qp, local(PSN_A, MTU), { qpn: 0x77, psn: PSN_B, gid: B });
  return { rq, sock, other, reqs };
}

async function closeCrafted(c: Crafted): Promise<void> {
  await c.rq.dev.close();
  await c.rq.link.close();
  await c.sock.close();
  await c.other.close();
}

/** One crafted READ response: which (FIRST, MIDDLE, LAST), its index in the READ, payload byte `fill`. */
interface Resp {
  op: 'FIRST' | 'MIDDLE' | 'LAST';
  idx: number;
  fill: number;
  from?: 'C';
}

async function sendResp(c: Crafted, p: Resp): Promise<void> {
  const op = p.op === 'FIRST' ? 0x0d : p.op === 'MIDDLE' ? 0x0e : 0x0f;
  const hdr = op === 0x0e ? 12 : 16;
  const pay = p.op === 'LAST' ? 8 : MTU; // 5 bytes + 3 pad
  const link = p.from === 'C' ? c.other : c.sock;
  const b = link.allocTx()!;
  b.fill(0, 0, hdr + pay + 4);
  writeBth(b, op, false, p.op === 'LAST' ? 3 : 0, c.rq.qp.qpn, false, (PSN_A + p.idx) & 0xffffff);
  if (op !== 0x0e) writeAeth(b, op, 0x1f, 1);
  b.fill(p.fill, hdr, hdr + (p.op === 'LAST' ? 5 : pay));
  const src = p.from === 'C' ? C : B;
  writeIcrc(b, hdr + pay, icrcV2Ipv4Parts(parseIpv4(src), parseIpv4(A), 0, 0x4000, 4791, 4791, b, 0, hdr + pay));
  const counts = c.rq.dev.ports[0]!.counters.counts;
  const before = counts.reduce((s, v) => s + v, 0);
  link.send(b, hdr + pay + 4, A, 4791);
  link.flush?.();
  // Each response is received (a counter moves: rcvd_pkts at least) before the next is sent.
  await waitFor(() => counts.reduce((s, v) => s + v, 0) > before, 5000);
  await new Promise((r) => setTimeout(r, 2));
}

interface CraftOut {
  mem: Buffer;
  status: string[];
  counters: number[];
  state: string;
  trace: string[];
  placed: number;
  reqs: number[];
}

/** The requester posts one READ of TOTAL bytes; `resps` answer it (with `between` after index `at`). */
async function runCrafted(placement: boolean, resps: Resp[], at = -1, between?: (c: Crafted) => void): Promise<CraftOut> {
  const c = await crafted(placement);
  c.rq.qp.postSend({ wrId: 1, opcode: 'RDMA_READ', signaled: true, sg: [{ mr: c.rq.mr, offset: 11, length: TOTAL }], remote: { addr: 0x1000n, rkey: 0x1234 } });
  await waitFor(() => c.reqs.length > 0, 5000);
  for (let i = 0; i < resps.length; i++) {
    await sendResp(c, resps[i]!);
    if (i === at) between?.(c);
  }
  await new Promise((r) => setTimeout(r, 20));
  const wcs: Wc[] = [];
  const buf = [new Wc()];
  while (c.rq.cq.poll(buf) === 1) wcs.push(Object.assign(new Wc(), buf[0]!));
  const out: CraftOut = {
    mem: Buffer.from(c.rq.mem),
    status: wcs.map((w) => w.status),
    counters: [...c.rq.dev.ports[0]!.counters.counts],
    state: c.rq.qp.state,
    trace: c.rq.qp
      .trace()
      .filter((e) => e.role === 'comp')
      .map((e) => `${e.state} ${e.opcode} ${e.psn} ${e.reason} x${e.count}`),
    placed: c.rq.link.batchStats.rxPlaced ?? 0,
    reqs: c.reqs.map((p) => (p - PSN_A) & 0xffffff),
  };
  await closeCrafted(c);
  return out;
}

const good = (): Resp[] => [
  { op: 'FIRST', idx: 0, fill: 0x20 },
  { op: 'MIDDLE', idx: 1, fill: 0x21 },
  { op: 'MIDDLE', idx: 2, fill: 0x22 },
  { op: 'MIDDLE', idx: 3, fill: 0x23 },
  { op: 'MIDDLE', idx: 4, fill: 0x24 },
  { op: 'LAST', idx: 5, fill: 0x25 },
];
const FILLS = [0x20, 0x21, 0x22, 0x23, 0x24, 0x25];

function wantMem(upTo = FILLS.length): Buffer {
  const m = Buffer.alloc(MEM);
  for (let i = 0; i < upTo; i++) m.fill(FILLS[i]!, 11 + i * MTU, 11 + i * MTU + (i === 5 ? 5 : MTU));
  return m;
}

async function same(
  t: Pick<Tap, 'ok' | 'same' | 'equal' | 'comment'>,
  name: string,
  resps: Resp[],
  o: { placedAtLeast: number; at?: number; between?: (c: Crafted) => void },
): Promise<CraftOut> {
  const on = await runCrafted(true, resps, o.at, o.between);
  const off = await runCrafted(false, resps, o.at, o.between);
  t.comment(`${name}: on: ${moved(on.counters)}; off: ${moved(off.counters)}`);
  t.ok(on.mem.equals(off.mem), `${name}: the same memory`);
  t.same(on.status, off.status, `${name}: the same completions`);
  t.same(on.counters, off.counters, `${name}: the same counters`);
  t.equal(on.state, off.state, `${name}: the same QP state`);
  t.same(on.trace, off.trace, `${name}: the same completer trace`);
  t.same(on.reqs, off.reqs, `${name}: the same READ requests sent`);
  t.ok(on.placed >= o.placedAtLeast, `${name}: ${on.placed} responses placed (at least ${o.placedAtLeast})`);
  t.equal(off.placed, 0, `${name}: none placed with placement off`);
  return on;
}

t.test('crafted READ responses: a stray response during an armed READ is handled as without placement, nothing of it placed', { skip: noPlace }, async (t) => {
  let on = await same(t, 'in order', good(), { placedAtLeast: 3 });
  t.ok(on.mem.equals(wantMem()), 'in order: the READ landed');
  t.same(on.status, ['SUCCESS'], 'in order: the READ completed');

  // A duplicate of MIDDLE 1 (other bytes) after MIDDLE 2: stale, not placed.
  const dup = good();
  dup.splice(3, 0, { op: 'MIDDLE', idx: 1, fill: 0xee });
  on = await same(t, 'duplicate', dup, { placedAtLeast: 2 });
  t.ok(on.mem.equals(wantMem()), 'duplicate: its bytes did not land');

  // MIDDLE 3 before MIDDLE 2: kept ahead of the missing one, then the missing one.
  const ooo = good();
  [ooo[2], ooo[3]] = [ooo[3]!, ooo[2]!];
  on = await same(t, 'out of order', ooo, { placedAtLeast: 1 });
  t.ok(on.mem.equals(wantMem()), 'out of order: the READ landed in the end');

  // MIDDLE 2 from another address first (rcvd_bad_addr), then the real one.
  const src = good();
  src.splice(2, 0, { op: 'MIDDLE', idx: 2, fill: 0xee, from: 'C' });
  on = await same(t, 'wrong source', src, { placedAtLeast: 3 });
  t.ok(on.mem.equals(wantMem()), 'wrong source: its bytes did not land');
});

t.test(
  'crafted READ responses: local MR deregistered, QP to ERR mid-READ: no byte lands after, the same outcome as without placement',
  { skip: noPlace },
  async (t) => {
    // After MIDDLE 1 the QP is armed for MIDDLE 2..4.
    let on = await same(t, 'MR deregistered', good(), { placedAtLeast: 0, at: 1, between: (c) => c.rq.mr.close() });
    t.ok(on.mem.equals(wantMem(2)), 'MR deregistered: nothing after MIDDLE 1 landed');
    t.same(on.status, ['LOC_PROT_ERR'], 'MR deregistered: the READ failed with a local protection error');
    on = await same(t, 'QP to ERR', good(), { placedAtLeast: 0, at: 1, between: (c) => c.rq.qp.modify({ state: 'ERR' }) });
    t.ok(on.mem.equals(wantMem(2)), 'QP to ERR: nothing after MIDDLE 1 landed');
    t.equal(on.state, 'ERR');
  },
);
