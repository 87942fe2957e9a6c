/**
 * Issue 15, RX direct placement of SEND MIDDLEs (native/place-rx.cc with PLACE_SEND_MIDDLE,
 * transport/place.ts armSend / applyPlacedSend): the full-MTU MIDDLE packets of an RC SEND are
 * copied into the receive WQE's memory in C and reported to the responder in runs. It must be
 * invisible: the same SENDs into a receiver with placement on and one with it off
 * (UdpLinkOptions.rxPlacement: false) must leave the same memory, completions, counters and
 * responder trace; and a packet that is not the next expected MIDDLE (a duplicate, one out of
 * order, one from another address), a SEND longer than its receive WQE, an MR deregistered
 * mid-SEND and a QP moved to ERR mid-SEND must be handled exactly as the per-packet path handles
 * them, with nothing of theirs placed. Loopback only, in this file's block 127.0.97.0/24. Without
 * the addon or with the fast path off there is no placement: the cases say so and skip.
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
import type { RxHandler } from '../../src/roce/link/link.js';
import { writeBth } from '../../src/roce/transport/build.js';
import { icrcV2Ipv4Parts, writeIcrc } from '../../src/roce/icrc.js';
import { parseIpv4 } from '../../src/roce/gid.js';
import { COUNTER_NAMES } from '../../src/roce/counters.js';
import { pattern, waitFor, waitN, moved, ctr } from './fast-helpers.js';

const native = loadNative();
const noPlace =
  native?.rxArm === undefined || process.env['SOFTROCE_NO_FASTPATH'] === '1'
    ? 'no RX direct placement here (no addon, or SOFTROCE_NO_FASTPATH=1): nothing to compare'
    : false;
const A = '127.0.97.30',
  B = '127.0.97.31',
  C = '127.0.97.32';
const PSN_A = 0xfffff0; // the SENDs' PSNs wrap
const PSN_B = 0x000100;
const MEM = (1 << 20) + 8192;

interface Side {
  dev: Device;
  link: NativeLink;
  qp: Qp;
  cq: Cq;
  rcq: Cq;
  mem: Buffer;
  mr: Mr;
  mem2: Buffer;
  mr2: Mr;
}

async function side(address: string, placement: boolean, hook?: (h: RxHandler) => RxHandler): Promise<Side> {
  const link = (await UdpLink.open({ address, native: 'on', rxPlacement: placement, socketBufferBytes: 32 << 20 })) as NativeLink;
  if (hook !== undefined) {
    const setRx = link.setReceiver.bind(link);
    link.setReceiver = (h: RxHandler): void => setRx(hook(h));
  }
  const dev = await openDevice({ address, link });
  const pd = dev.allocPd();
  const cq = dev.createCq({ depth: 4096 });
  const rcq = dev.createCq({ depth: 4096 });
  const qp = pd.createQp({
    type: 'RC',
    sendCq: cq,
    recvCq: rcq,
    sigAll: true,
    cap: { maxSendWr: 64, maxRecvWr: 64, maxSendSge: 1, maxRecvSge: 2, maxInline: 0 },
  });
  const mem = Buffer.alloc(MEM);
  const mr = pd.regMr(mem, ['LOCAL_WRITE']);
  const mem2 = Buffer.alloc(MEM);
  const mr2 = pd.regMr(mem2, ['LOCAL_WRITE']);
  return { dev, link, qp, cq, rcq, mem, mr, mem2, mr2 };
}

const local = (psn: number, mtu: Mtu) => ({ psn, pathMtu: mtu, timeout: 18, retryCnt: 7, rnrRetry: 7 });

type Ack = [syndrome: number, psn: number, msn: number];

interface SendsOut {
  mem: Buffer[];
  status: string[];
  recv: string[];
  acks: Ack[][];
  counters: number[];
  trace: string[];
  placed: number;
}

/** A SEND of `n` bytes into one receive SGE, or two (`split`: the first SGE's bytes). */
interface Sd {
  n: number;
  split?: number;
}

async function runSends(placement: boolean, mtu: Mtu, sends: Sd[]): Promise<SendsOut> {
  const acks: Ack[] = [];
  const tx = await side(A, true, (h) => (buf, len, ip, port, id, g) => {
    if (len >= 20) acks.push([buf[12]!, buf.readUIntBE(9, 3), buf.readUIntBE(13, 3)]);
    h(buf, len, ip, port, id, g);
  });
  const rx = await side(B, placement);
  connectQp(tx.qp, local(PSN_A, mtu), { qpn: rx.qp.qpn, psn: PSN_B, gid: B });
  connectQp(rx.qp, local(PSN_B, mtu), { qpn: tx.qp.qpn, psn: PSN_A, gid: A });
  tx.mem.set(pattern(MEM, 0x5e4d));
  const out: SendsOut = { mem: [], status: [], recv: [], acks: [], counters: [], trace: [], placed: 0 };
  let wr = 0;
  for (const s of sends) {
    rx.mem.fill(0);
    rx.mem2.fill(0);
    acks.length = 0;
    const sg =
      s.split === undefined
        ? [{ mr: rx.mr, offset: 7, length: s.n }]
        : [
            { mr: rx.mr, offset: 7, length: s.split },
            { mr: rx.mr2, offset: 9, length: s.n - s.split },
          ];
    rx.qp.postRecv({ wrId: wr, sg });
    tx.qp.postSend({ wrId: wr++, opcode: 'SEND', signaled: true, sg: [{ mr: tx.mr, offset: 3, length: s.n }] });
    out.status.push(...(await waitN(tx.cq, 1)).map((w) => w.status));
    out.recv.push(...(await waitN(rx.rcq, 1)).map((w) => `${w.status} ${w.byteLen}`));
    out.mem.push(Buffer.concat([rx.mem, rx.mem2]));
    out.acks.push(acks.slice());
  }
  out.counters = [...rx.dev.ports[0]!.counters.counts];
  out.trace = rx.qp
    .trace()
    .filter((e) => e.role === 'resp')
    .map((e) => `${e.seq} ${e.state} ${e.opcode} ${e.psn} ${e.reason} x${e.count}`);
  out.placed = rx.link.batchStats.rxPlaced ?? 0;
  await tx.dev.close();
  await rx.dev.close();
  await tx.link.close();
  await rx.link.close();
  return out;
}

for (const mtu of [1024, 4096] as const) {
  t.test(`SENDs at MTU ${mtu}: placement on and off leave the same memory, completions, ACKs, counters and trace`, { skip: noPlace }, async (t) => {
    const sends: Sd[] = [{ n: 1 << 20 }, { n: 65536 + 100, split: 30_000 }, { n: 65536 }, { n: mtu + 1 }, { n: mtu }, { n: 1 }];
    const dups = (o: SendsOut): number => ctr(o.counters, 'duplicate_request');
    let on = await runSends(true, mtu, sends);
    let off = await runSends(false, mtu, sends);
    for (let i = 0; i < 4 && dups(on) + dups(off) > 0; i++) {
      t.comment(`a retransmission in the pair (duplicate_request on ${dups(on)}, off ${dups(off)}): running it again`);
      on = await runSends(true, mtu, sends);
      off = await runSends(false, mtu, sends);
    }
    t.comment(`on: ${moved(on.counters)}; off: ${moved(off.counters)}`);
    t.same(on.status, Array(sends.length).fill('SUCCESS'), 'every SEND completed (placement on)');
    t.same(off.status, on.status, 'the same send completions');
    t.same(
      on.recv,
      sends.map((s) => `SUCCESS ${s.n}`),
      'every receive completed with its length (placement on)',
    );
    t.same(off.recv, on.recv, 'the same receive completions');
    const src = pattern(MEM, 0x5e4d);
    for (let i = 0; i < sends.length; i++) {
      const s = sends[i]!;
      const want = Buffer.alloc(2 * MEM);
      if (s.split === undefined) src.copy(want, 7, 3, 3 + s.n);
      else {
        src.copy(want, 7, 3, 3 + s.split);
        src.copy(want, MEM + 9, 3 + s.split, 3 + s.n);
      }
      const what = `${s.n} B${s.split !== undefined ? ' into two SGEs' : ''}`;
      t.ok(on.mem[i]!.equals(want), `${what}: the receiver's memory holds exactly the SEND (placement on)`);
      t.ok(off.mem[i]!.equals(want), `${what}: the same off`);
      const last = (a: Ack[]) => a[a.length - 1];
      t.same(last(on.acks[i]!), last(off.acks[i]!), `${what}: the same final ACK`);
    }
    if (dups(on) + dups(off) === 0) {
      t.same(on.counters, off.counters, 'the receiver port counters are equal');
      t.same(on.trace, off.trace, "the responder's trace is the same, decision by decision");
    } else {
      const keep = (c: number[]) => c.filter((_, i) => !['duplicate_request', 'rcvd_pkts', 'sent_pkts'].includes(COUNTER_NAMES[i] ?? ''));
      t.same(keep(on.counters), keep(off.counters), 'the receiver port counters a resend does not move are equal');
      t.comment("NOT COMPARED: the responder's trace (every pair of runs had a resend, which changes it)");
    }
    const middles = 65536 / mtu - 2 + ((1 << 20) / mtu - 2);
    t.ok(on.placed > middles / 2, `placement really happened (${on.placed} of ${middles} MIDDLEs placed)`);
    t.equal(off.placed, 0, 'nothing placed with placement off');
  });
}

/** A hand-made requester on A sending crafted SEND packets to the receiver's QP, one at a time. */
interface Crafted {
  rx: Side;
  sock: NativeLink;
  other: NativeLink;
  acks: Ack[];
}
const MTU: Mtu = 1024;

async function crafted(placement: boolean, recvLen: number): Promise<Crafted> {
  const rx = await side(B, placement);
  const acks: Ack[] = [];
  const sock = (await UdpLink.open({ address: A, native: 'on' })) as NativeLink;
  sock.setReceiver((m, len) => {
    if (len >= 20) acks.push([m[12]!, m.readUIntBE(9, 3), m.readUIntBE(13, 3)]);
  });
  const other = (await UdpLink.open({ address: C, native: 'on' })) as NativeLink;
  other.setReceiver(() => {});
  connectQp(rx.qp, local(PSN_B, MTU), { qpn: 0x77, psn: PSN_A, gid: A });
  rx.qp.postRecv({ wrId: 9, sg: [{ mr: rx.mr, offset: 11, length: recvLen }] });
  return { rx, sock, other, acks };
}

async function closeCrafted(c: Crafted): Promise<void> {
  await c.rx.dev.close();
  await c.rx.link.close();
  await c.sock.close();
  await c.other.close();
}

interface Pkt {
  op: 'FIRST' | 'MIDDLE' | 'LAST';
  psn: number;
  fill: number;
  ack?: boolean;
  from?: 'C';
}

async function sendPkt(c: Crafted, p: Pkt): Promise<void> {
  const op = p.op === 'FIRST' ? 0x00 : p.op === 'MIDDLE' ? 0x01 : 0x02;
  const hdr = 12;
  const pay = p.op === 'LAST' ? 8 : MTU; // 5 bytes + 3 pad
  const link = p.from === 'C' ? c.other : c.sock;
  const b = link.allocTx()!;
  b.fill(0, 0, hdr + pay + 4);
  writeBth(b, op, false, p.op === 'LAST' ? 3 : 0, c.rx.qp.qpn, p.ack ?? false, (PSN_A + p.psn) & 0xffffff);
  b.fill(p.fill, hdr, hdr + (p.op === 'LAST' ? 5 : pay));
  const src = p.from === 'C' ? C : A;
  writeIcrc(b, hdr + pay, icrcV2Ipv4Parts(parseIpv4(src), parseIpv4(B), 0, 0x4000, 4791, 4791, b, 0, hdr + pay));
  const counts = c.rx.dev.ports[0]!.counters.counts;
  const before = counts.reduce((s, v) => s + v, 0);
  link.send(b, hdr + pay + 4, B, 4791);
  link.flush?.();
  await waitFor(() => counts.reduce((s, v) => s + v, 0) > before, 5000);
  await new Promise((r) => setTimeout(r, 2));
}

interface CraftOut {
  mem: Buffer;
  acks: Ack[];
  recv: string[];
  counters: number[];
  state: string;
  trace: string[];
  placed: number;
}

async function runCrafted(placement: boolean, pkts: Pkt[], recvLen: number, at = -1, between?: (c: Crafted) => void): Promise<CraftOut> {
  const c = await crafted(placement, recvLen);
  for (let i = 0; i < pkts.length; i++) {
    await sendPkt(c, pkts[i]!);
    if (i === at) between?.(c);
  }
  await new Promise((r) => setTimeout(r, 20));
  const wcs: string[] = [];
  const buf = [new Wc()];
  while (c.rx.rcq.poll(buf) === 1) wcs.push(`${buf[0]!.status} ${buf[0]!.byteLen}`);
  const out: CraftOut = {
    mem: Buffer.from(c.rx.mem),
    acks: c.acks.slice(),
    recv: wcs,
    counters: [...c.rx.dev.ports[0]!.counters.counts],
    state: c.rx.qp.state,
    trace: c.rx.qp
      .trace()
      .filter((e) => e.role === 'resp')
      .map((e) => `${e.state} ${e.opcode} ${e.psn} ${e.reason} x${e.count}`),
    placed: c.rx.link.batchStats.rxPlaced ?? 0,
  };
  await closeCrafted(c);
  return out;
}

const TOTAL = 5 * MTU + 5; // FIRST, 4 MIDDLEs, LAST (5 bytes)
const good = (): Pkt[] => [
  { op: 'FIRST', psn: 0, fill: 0x30 },
  { op: 'MIDDLE', psn: 1, fill: 0x31 },
  { op: 'MIDDLE', psn: 2, fill: 0x32 },
  { op: 'MIDDLE', psn: 3, fill: 0x33, ack: true },
  { op: 'MIDDLE', psn: 4, fill: 0x34 },
  { op: 'LAST', psn: 5, fill: 0x35, ack: true },
];
const FILLS = [0x30, 0x31, 0x32, 0x33, 0x34, 0x35];
function wantMem(upTo = FILLS.length): Buffer {
  const m = Buffer.alloc(MEM);
  for (let i = 0; i < upTo; i++) m.fill(FILLS[i]!, 11 + i * MTU, 11 + i * MTU + (i === 5 ? 5 : MTU));
  return m;
}

async function same(
  t: Pick<Tap, 'ok' | 'same' | 'equal' | 'comment'>,
  name: string,
  pkts: Pkt[],
  o: { placedAtLeast: number; recvLen?: number; at?: number; between?: (c: Crafted) => void },
): Promise<CraftOut> {
  const on = await runCrafted(true, pkts, o.recvLen ?? TOTAL, o.at, o.between);
  const off = await runCrafted(false, pkts, o.recvLen ?? TOTAL, o.at, o.between);
  t.comment(`${name}: on: ${moved(on.counters)}; off: ${moved(off.counters)}`);
  t.ok(on.mem.equals(off.mem), `${name}: the same memory`);
  t.same(on.acks, off.acks, `${name}: the same ACK / NAK stream`);
  t.same(on.recv, off.recv, `${name}: the same receive completions`);
  t.same(on.counters, off.counters, `${name}: the same counters`);
  t.equal(on.state, off.state, `${name}: the same QP state`);
  t.same(on.trace, off.trace, `${name}: the same responder trace`);
  t.ok(on.placed >= o.placedAtLeast, `${name}: ${on.placed} packets placed (at least ${o.placedAtLeast})`);
  t.equal(off.placed, 0, `${name}: none placed with placement off`);
  return on;
}

t.test('crafted SENDs: a stray MIDDLE during an armed SEND is handled as without placement, nothing of it placed', { skip: noPlace }, async (t) => {
  let on = await same(t, 'in order', good(), { placedAtLeast: 3 });
  t.ok(on.mem.equals(wantMem()), 'in order: the SEND landed');
  t.same(on.recv, [`SUCCESS ${TOTAL}`], 'in order: the receive completed');

  const dup = good();
  dup.splice(3, 0, { op: 'MIDDLE', psn: 1, fill: 0xee, ack: true });
  on = await same(t, 'duplicate', dup, { placedAtLeast: 2 });
  t.ok(on.mem.equals(wantMem()), 'duplicate: its bytes did not land');

  const ooo = good();
  [ooo[2], ooo[3]] = [ooo[3]!, ooo[2]!];
  on = await same(t, 'out of order', ooo, { placedAtLeast: 1 });
  t.ok(on.mem.equals(wantMem()), 'out of order: the SEND landed in the end');

  const src = good();
  src.splice(2, 0, { op: 'MIDDLE', psn: 2, fill: 0xee, from: 'C' });
  on = await same(t, 'wrong source', src, { placedAtLeast: 3 });
  t.ok(on.mem.equals(wantMem()), 'wrong source: its bytes did not land');
});

t.test('crafted SENDs: longer than the receive WQE, MR deregistered, QP to ERR: the same outcome as without placement', { skip: noPlace }, async (t) => {
  // A WQE of 2.5 MTUs: MIDDLE 2 no longer fits (a length error), nothing past the WQE is written.
  let on = await same(t, 'too long', good(), { placedAtLeast: 0, recvLen: 2 * MTU + 512 });
  t.same(on.recv, [`LOC_LEN_ERR ${2 * MTU}`], 'too long: the receive failed with a length error');
  t.ok(
    on.mem.subarray(11 + 2 * MTU).every((b) => b === 0),
    'too long: no byte past the first two MTUs landed',
  );
  on = await same(t, 'MR deregistered', good(), { placedAtLeast: 0, at: 1, between: (c) => c.rx.mr.close() });
  t.ok(on.mem.equals(wantMem(2)), 'MR deregistered: nothing after MIDDLE 1 landed');
  on = await same(t, 'QP to ERR', good(), { placedAtLeast: 0, at: 1, between: (c) => c.rx.qp.modify({ state: 'ERR' }) });
  t.ok(on.mem.equals(wantMem(2)), 'QP to ERR: nothing after MIDDLE 1 landed');
});
