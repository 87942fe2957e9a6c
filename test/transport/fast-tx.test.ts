/**
 * Issue 15, the TX fast path (native/fast-tx.cc, Link.sendSegments, requester.ts sendRunFast):
 * a SEND / WRITE stream's packets built, ICRC'd and sent in C must be the packets the per-packet
 * path sends. The same workload runs from a sender whose link has the fast path and from one whose
 * link has it off (UdpLinkOptions.fastPath: false, what SOFTROCE_NO_FASTPATH=1 does), to one
 * receiving device whose link records every datagram it gets, raw, before the transport. With
 * SOFTROCE_GSO=0 both captures must be byte-identical; with GSO the kernel numbers the segments'
 * IPv4 IDs and the ICRC covers the ID, so there the packets are compared after taking each one's
 * ICRC back to ID 0 (the ID the receiver verified it with: all packets must have been accepted).
 * Loopback only, in this file's block 127.0.81.0/24. Without the addon (SOFTROCE_NO_NATIVE=1) there
 * is no fast path: those cases say so and skip; the last one checks the link then has none.
 */
import t from 'tap';

type Test = Pick<typeof t, 'equal' | 'ok' | 'same'>;
import { UdpLink, type NativeLink } from '../../src/roce/link/udp-link.js';
import { openDevice, type Device } from '../../src/verbs/device.js';
import { connectQp } from '../../src/verbs/connect.js';
import { Wc, type SendWr } from '../../src/verbs/types.js';
import type { Qp } from '../../src/verbs/qp.js';
import type { Mr } from '../../src/verbs/mr.js';
import type { Cq } from '../../src/verbs/cq.js';
import type { Mtu } from '../../src/roce/opcode.js';
import { Ctr } from '../../src/roce/counters.js';
import { loadNative, type NativeAddon } from '../../src/native.js';
import type { RxHandler } from '../../src/roce/link/link.js';
import { pattern, waitN, idZero, withGso, type Cap } from './fast-helpers.js';

const native = loadNative();
const noFast = native?.txSegments === undefined ? 'no addon (SOFTROCE_NO_NATIVE=1 or not built): there is no TX fast path' : false;
const A = '127.0.81.1',
  B = '127.0.81.2';
const PSN_A = 0xfffff0; // wraps inside the run
const PSN_B = 0x000100;

/** The receiving side: one device for every run (its MR's R_Key and its QPN stay the same), its link recording what arrives. */
interface Rx {
  dev: Device;
  link: NativeLink;
  qp: Qp;
  cq: Cq;
  mem: Buffer;
  mr: Mr;
  cap: Cap[];
  /** tests: return true to lose this datagram (after it is recorded, before the transport) */
  drop: ((b: Buffer) => boolean) | null;
}

async function openRx(type: 'RC' | 'UC'): Promise<Rx> {
  const link = (await UdpLink.open({ address: B, native: 'on' })) as NativeLink;
  const cap: Cap[] = [];
  let self: Rx | null = null;
  const setRx = link.setReceiver.bind(link);
  link.setReceiver = (h: RxHandler): void =>
    setRx((buf, len, ip, port, ipIdDf, group) => {
      cap.push({ bytes: Buffer.from(buf.subarray(0, len)), acc: -1 });
      if (self?.drop?.(buf.subarray(0, len))) return;
      h(buf, len, ip, port, ipIdDf, group);
    });
  (link as { rxAccepted?: (b: Buffer, l: number, s: string, p: number, id: number) => void }).rxAccepted = (_b, _l, _s, _p, id) => {
    const last = cap[cap.length - 1];
    if (last) last.acc = id;
  };
  const dev = await openDevice({ address: B, link });
  const pd = dev.allocPd();
  const cq = dev.createCq({ depth: 4096 });
  const qp = pd.createQp({ type, sendCq: cq, recvCq: cq, sigAll: true, cap: { maxSendWr: 64, maxRecvWr: 256, maxSendSge: 4, maxRecvSge: 4, maxInline: 0 } });
  const mem = Buffer.alloc(1 << 20);
  const mr = pd.regMr(mem, ['LOCAL_WRITE', 'REMOTE_WRITE', 'REMOTE_READ']);
  self = { dev, link, qp, cq, mem, mr, cap, drop: null };
  return self;
}

/** One message of the workload: its op, and its SGEs as [offset, length] in the sender's memory. */
interface Msg {
  op: 'SEND' | 'SEND_WITH_IMM' | 'RDMA_WRITE' | 'RDMA_WRITE_WITH_IMM';
  sg: [number, number][];
}

const SIZES = [1, 4095, 4096, 4097, 65536 + 13];
function workload(type: 'RC' | 'UC'): Msg[] {
  const out: Msg[] = [];
  const ops = type === 'RC' ? (['RDMA_WRITE', 'SEND', 'RDMA_WRITE_WITH_IMM', 'SEND_WITH_IMM'] as const) : (['RDMA_WRITE', 'SEND'] as const);
  for (const op of ops) for (const n of SIZES) out.push({ op, sg: [[7, n]] });
  // Several SGEs, cut anywhere in a packet (and a zero-length one).
  out.push({
    op: 'RDMA_WRITE',
    sg: [
      [3, 1000],
      [200_001, 3001],
      [300_000, 0],
      [400_003, 70_001],
    ],
  });
  out.push({
    op: 'SEND',
    sg: [
      [11, 5],
      [100_000, 9000],
      [600_000, 2],
    ],
  });
  return out;
}

interface RunOut {
  cap: Cap[];
  /** what arrived in the receiver's memory for each message */
  got: Buffer[];
  want: Buffer[];
  status: string[];
  txCounters: number[];
  rxCounters: number[];
  fastPackets: number;
}

/**
 * The workload from a fresh sender device (QPN 0x11 every time, its link on A:4791) with the fast
 * path `fast`, one message at a time (so the captures do not depend on ACK timing), into rx.
 */
async function run(rx: Rx, fast: boolean, type: 'RC' | 'UC', mtu: Mtu, msgs: Msg[]): Promise<RunOut> {
  const link = (await UdpLink.open({ address: A, native: 'on', fastPath: fast })) as NativeLink;
  const dev = await openDevice({ address: A, link });
  const pd = dev.allocPd();
  const cq = dev.createCq({ depth: 4096 });
  const qp = pd.createQp({ type, sendCq: cq, recvCq: cq, sigAll: true, cap: { maxSendWr: 64, maxRecvWr: 4, maxSendSge: 4, maxRecvSge: 4, maxInline: 0 } });
  const mem = pattern(1 << 20, 0xfa57);
  const mr = pd.regMr(mem, ['LOCAL_WRITE']);
  rx.qp.modify({ state: 'RESET' });
  rx.mem.fill(0);
  rx.cap.length = 0;
  for (const c of rx.dev.ports[0]!.counters.counts.keys()) rx.dev.ports[0]!.counters.counts[c] = 0;
  const local = (psn: number) => ({ psn, pathMtu: mtu, timeout: 14, retryCnt: 7, rnrRetry: 7 });
  connectQp(qp, local(PSN_A), { qpn: rx.qp.qpn, psn: PSN_B, gid: B });
  connectQp(rx.qp, local(PSN_B), { qpn: qp.qpn, psn: PSN_A, gid: A });
  const out: RunOut = { cap: rx.cap, got: [], want: [], status: [], txCounters: [], rxCounters: [], fastPackets: 0 };
  let wr = 0;
  for (const m of msgs) {
    const len = m.sg.reduce((s, [, l]) => s + l, 0);
    const want = Buffer.concat(m.sg.map(([o, l]) => mem.subarray(o, o + l)));
    const send = m.op === 'SEND' || m.op === 'SEND_WITH_IMM';
    if (send || m.op === 'RDMA_WRITE_WITH_IMM') rx.qp.postRecv({ wrId: wr, sg: [{ mr: rx.mr, offset: 0, length: 1 << 20 }] });
    const base = { wrId: wr++, signaled: true, sg: m.sg.map(([offset, length]) => ({ mr, offset, length })) };
    const remote = { addr: rx.mr.addr + 5n, rkey: rx.mr.rkey };
    const w: SendWr =
      m.op === 'SEND'
        ? { ...base, opcode: 'SEND' }
        : m.op === 'SEND_WITH_IMM'
          ? { ...base, opcode: 'SEND_WITH_IMM', imm: 0x1234567 }
          : m.op === 'RDMA_WRITE'
            ? { ...base, opcode: 'RDMA_WRITE', remote }
            : { ...base, opcode: 'RDMA_WRITE_WITH_IMM', imm: 0x7654321, remote };
    rx.mem.fill(0);
    qp.postSend(w);
    const wcs = [...(await waitN(cq, 1)), ...(send || m.op === 'RDMA_WRITE_WITH_IMM' ? await waitN(rx.cq, 1) : [])];
    if (type === 'UC' && !send) {
      // UC WRITE: nothing completes at the receiver; wait for the bytes.
      for (const end = performance.now() + 5000; performance.now() < end && !rx.mem.subarray(5, 5 + len).equals(want);)
        await new Promise((r) => setTimeout(r, 2));
    }
    out.status.push(...wcs.map((c) => c.status));
    out.got.push(Buffer.from(rx.mem.subarray(send ? 0 : 5, (send ? 0 : 5) + len)));
    out.want.push(want);
  }
  out.txCounters = [...dev.ports[0]!.counters.counts];
  out.rxCounters = [...rx.dev.ports[0]!.counters.counts];
  out.fastPackets = link.batchStats.fastTxPackets ?? 0;
  out.cap = rx.cap.map((c) => ({ bytes: c.bytes, acc: c.acc }));
  await dev.close();
  await link.close();
  return out;
}

function compare(t: Test, slow: RunOut, fast: RunOut, strict: boolean, what: string, fastSent = true): void {
  if (fastSent) t.ok(fast.fastPackets > 0, `${what}: the fast path sent ${fast.fastPackets} packets`);
  t.equal(slow.fastPackets, 0, `${what}: fastPath: false sends none that way`);
  t.ok(
    slow.status.every((s) => s === 'SUCCESS'),
    `${what}: per-packet path completes every WR with SUCCESS`,
  );
  t.same(fast.status, slow.status, `${what}: the same completions`);
  const bad = fast.want.map((w, i) => (fast.got[i]!.equals(w) && slow.got[i]!.equals(slow.want[i]!) ? -1 : i)).filter((i) => i >= 0);
  t.same(bad, [], `${what}: all ${fast.want.length} messages arrived intact on both paths`);
  t.ok(
    fast.cap.every((c) => c.acc >= 0),
    `${what}: the receiver accepted every fast-path datagram (ICRC good)`,
  );
  // A tail-loss probe (requester.ts armProbe) resends an unacknowledged packet a few round trips
  // after the last one left: whether one fires depends on timing, on either path. The stream is
  // compared as the first copy of each PSN.
  const firsts = (r: RunOut): Cap[] => {
    const seen = new Set<number>();
    return r.cap.filter((c) => {
      const psn = c.bytes.readUIntBE(9, 3);
      if (seen.has(psn)) return false;
      seen.add(psn);
      return true;
    });
  };
  const f = firsts(fast),
    s = firsts(slow);
  t.equal(f.length, s.length, `${what}: as many packets (${f.length}; resent: ${fast.cap.length - f.length} fast, ${slow.cap.length - s.length} per-packet)`);
  const norm = (c: Cap): Buffer => (strict ? c.bytes : idZero(c));
  let diff = -1;
  for (let i = 0; i < Math.min(f.length, s.length) && diff < 0; i++) if (!norm(f[i]!).equals(norm(s[i]!))) diff = i;
  t.equal(
    diff,
    -1,
    `${what}: every packet ${strict ? 'byte-identical' : 'identical (ICRC taken to IPv4 ID 0)'}${diff >= 0 ? `; first difference at ${diff}: ${f[diff]!.bytes.subarray(0, 32).toString('hex')} vs ${s[diff]!.bytes.subarray(0, 32).toString('hex')}` : ''}`,
  );
  // Counters, less what the probes resent: sent_pkts counts a probe and the receiver counts its copy;
  // rdma_sends counts each SEND once, however often its last packet leaves.
  const named = (r: RunOut, firstCopies: Cap[]): Record<string, number> => {
    const resent = r.cap.filter((c) => !firstCopies.includes(c));
    return {
      sent_pkts: r.txCounters[Ctr.sent_pkts]! - r.txCounters[Ctr.tail_probes]!,
      rcvd_pkts: r.rxCounters[Ctr.rcvd_pkts]! - resent.length,
      rdma_sends: r.txCounters[Ctr.rdma_sends]!,
      rdma_recvs: r.rxCounters[Ctr.rdma_recvs]!,
    };
  };
  const nf = named(fast, f);
  t.same(nf, named(slow, s), `${what}: counters equal`);
  t.equal(nf.sent_pkts, f.length, `${what}: sent_pkts counts each fast-path packet`);
}

for (const type of ['RC', 'UC'] as const) {
  for (const mtu of [1024, 4096] as const) {
    t.test(`${type} MTU ${mtu}: fast path and per-packet path put the same packets on the wire`, { skip: noFast }, async (t) => {
      const rx = await openRx(type);
      t.teardown(async () => {
        await rx.dev.close();
        await rx.link.close();
      });
      const msgs = workload(type);
      // GSO off: every datagram has IPv4 ID 0 on both paths, so the bytes must be the same.
      const [slow0, fast0] = await withGso(false, async () => [await run(rx, false, type, mtu, msgs), await run(rx, true, type, mtu, msgs)]);
      compare(t, slow0, fast0, true, 'no GSO');
      // GSO on (the default): the same up to the segment's IPv4 ID in the ICRC.
      const [slow1, fast1] = await withGso(true, async () => [await run(rx, false, type, mtu, msgs), await run(rx, true, type, mtu, msgs)]);
      compare(t, slow1, fast1, false, 'GSO');
    });
  }
}

t.test('EAGAIN mid-run: the packets the link did not send go the per-packet way, the stream is the same', { skip: noFast }, async (t) => {
  const rx = await openRx('RC');
  t.teardown(async () => {
    await rx.dev.close();
    await rx.link.close();
  });
  const msgs = workload('RC');
  const slow = await withGso(false, () => run(rx, false, 'RC', 1024, msgs));
  // The addon sends at most 3 packets of a run, and every third call none (EAGAIN): what a
  // socket that fills mid-run does.
  const nat = native as NativeAddon;
  const real = nat.txSegments!.bind(nat);
  let calls = 0,
    cut = 0;
  nat.txSegments = (fd, dIp, dPort, tos, sIp, sPort, gso, hdr, meta, n, bufs, pieces, np) => {
    if (++calls % 3 === 0) {
      cut++;
      return -11; // EAGAIN
    }
    if (n > 3) cut++;
    const k = Math.min(n, 3);
    // The first k packets' payload is a prefix of the run's: trim the pieces to it.
    let bytes = 0;
    for (let i = 0; i < k; i++) bytes += meta[2 * i + 1]!;
    const p2 = new Uint32Array(pieces.length);
    let m = 0;
    for (let i = 0; i < np && bytes > 0; i++, m++) {
      const l = Math.min(pieces[2 * i + 1]!, bytes);
      p2[2 * i] = pieces[2 * i]!;
      p2[2 * i + 1] = l;
      bytes -= l;
    }
    return real(fd, dIp, dPort, tos, sIp, sPort, gso, hdr, meta, k, bufs, p2, m);
  };
  let fast: RunOut;
  try {
    fast = await withGso(false, () => run(rx, true, 'RC', 1024, msgs));
  } finally {
    nat.txSegments = real;
  }
  t.ok(cut > 5, `${cut} runs cut short`);
  compare(t, slow, fast, true, 'cut runs');
});

t.test('a socket that says EAGAIN: the link holds the packets and sends them, in order, once it is writable', { skip: noFast, timeout: 30_000 }, async (t) => {
  const rx = await openRx('RC');
  t.teardown(async () => {
    await rx.dev.close();
    await rx.link.close();
  });
  const msgs = workload('RC');
  const slow = await withGso(false, () => run(rx, false, 'RC', 1024, msgs));
  // The first sends of the per-packet path find the socket full: the link keeps them (hold), asks
  // the addon for a writable event (rxWantWrite) and sends them from its callback (cb(-1)).
  const nat = native as NativeAddon;
  const real = nat.sendPackets.bind(nat);
  let refused = 0;
  nat.sendPackets = (...a: Parameters<NativeAddon['sendPackets']>) => {
    if (refused < 3) {
      refused++;
      return -11; // EAGAIN
    }
    return real(...a);
  };
  let held: RunOut;
  try {
    held = await withGso(false, () => run(rx, false, 'RC', 1024, msgs));
  } finally {
    nat.sendPackets = real;
  }
  t.equal(refused, 3, 'three sends refused');
  t.same(held.status, slow.status, 'every WR completed as without the refusals');
  t.ok(
    held.got.every((g, i) => g.equals(held.want[i]!)),
    'every message arrived intact',
  );
  const psns = (r: RunOut): number[] => r.cap.map((c) => c.bytes.readUIntBE(9, 3));
  t.same([...new Set(psns(held))], [...new Set(psns(slow))], 'the same PSNs, in the same order');
});

t.test('go-back-N: a lost packet is resent from its PSN by the fast path too', { skip: noFast }, async (t) => {
  const rx = await openRx('RC');
  t.teardown(async () => {
    await rx.dev.close();
    await rx.link.close();
  });
  // The 10th packet of the 65549-byte WRITE is lost once: the responder NAKs the next one
  // (PSN sequence error) and the requester goes back to it.
  let lost = -1;
  rx.drop = (b) => {
    const psn = b.readUIntBE(9, 3);
    if (lost < 0 && psn === ((PSN_A + 9) & 0xffffff)) {
      lost = psn;
      return true;
    }
    return false;
  };
  const msgs: Msg[] = [{ op: 'RDMA_WRITE', sg: [[7, 65536 + 13]] }];
  const out = await run(rx, true, 'RC', 1024, msgs);
  rx.drop = null;
  t.equal(lost, (PSN_A + 9) & 0xffffff, 'one packet lost');
  t.same(out.status, ['SUCCESS']);
  t.ok(out.got[0]!.equals(out.want[0]!), 'the message arrived intact');
  const resent = out.cap.length - new Set(out.cap.map((c) => c.bytes.readUIntBE(9, 3))).size;
  t.ok(resent > 0, `${resent} packets resent`);
  // 65 packets, then from the lost PSN on again: more than 65 left through the fast path.
  t.ok(out.fastPackets > 65, `${out.fastPackets} packets through the fast path (65 in the message): the resend took it`);
});

t.test('an MR deregistered while its message is on the fast path: LOC_PROT_ERR, no byte of it after', { skip: noFast }, async (t) => {
  const rx = await openRx('RC');
  t.teardown(async () => {
    await rx.dev.close();
    await rx.link.close();
  });
  const link = (await UdpLink.open({ address: A, native: 'on', fastPath: true })) as NativeLink;
  const dev = await openDevice({ address: A, link });
  t.teardown(async () => {
    await dev.close();
    await link.close();
  });
  const pd = dev.allocPd();
  const cq = dev.createCq({ depth: 64 });
  const qp = pd.createQp({
    type: 'RC',
    sendCq: cq,
    recvCq: cq,
    sigAll: true,
    cap: { maxSendWr: 16, maxRecvWr: 4, maxSendSge: 1, maxRecvSge: 1, maxInline: 0 },
  });
  const mem = pattern(1 << 20, 7);
  const mr = pd.regMr(mem, ['LOCAL_WRITE']);
  rx.qp.modify({ state: 'RESET' });
  rx.cap.length = 0;
  const local = (psn: number) => ({ psn, pathMtu: 1024 as const, timeout: 14, retryCnt: 7, rnrRetry: 7 });
  connectQp(qp, local(PSN_A), { qpn: rx.qp.qpn, psn: PSN_B, gid: B });
  connectQp(rx.qp, local(PSN_B), { qpn: qp.qpn, psn: PSN_A, gid: A });
  // 1 MiB = 1024 packets: the requester's first run (64 packets) goes at once; the MR goes after it.
  qp.postSend({ wrId: 1, opcode: 'RDMA_WRITE', signaled: true, sg: [{ mr, offset: 0, length: 1 << 20 }], remote: { addr: rx.mr.addr, rkey: rx.mr.rkey } });
  for (const end = performance.now() + 5000; (link.batchStats.fastTxPackets ?? 0) === 0 && performance.now() < end;) await new Promise((r) => setImmediate(r));
  const sentBefore = link.batchStats.fastTxPackets ?? 0;
  mr.close();
  const wcs = await waitN(cq, 1);
  t.equal(wcs.length, 1);
  t.equal(wcs[0]?.status, 'LOC_PROT_ERR');
  t.ok(sentBefore > 0 && sentBefore < 1024, `${sentBefore} packets left by the fast path before the MR went`);
  await new Promise((r) => setTimeout(r, 50));
  const psns = new Set(rx.cap.map((c) => c.bytes.readUIntBE(9, 3)));
  t.ok(psns.size <= sentBefore, `${psns.size} distinct PSNs reached the receiver, none after the deregistration`);
});

t.test('the fast path exists only on a plain native link with the switch on', async (t) => {
  const on = await UdpLink.open({ address: '127.0.81.3' });
  const off = await UdpLink.open({ address: '127.0.81.4', fastPath: false });
  t.teardown(async () => {
    await on.close();
    await off.close();
  });
  t.equal(off.sendSegments, undefined, 'fastPath: false: none');
  const envOff = process.env['SOFTROCE_NO_FASTPATH'] === '1';
  if (noFast) t.equal(on.sendSegments, undefined, 'no addon: none');
  else {
    if (envOff) t.equal(on.sendSegments, undefined, 'SOFTROCE_NO_FASTPATH=1: none by default');
    else t.equal(typeof on.sendSegments, 'function', 'native link with the addon: present');
    // The C CRC is zlib's: the same chained value as icrc.ts's.
    const b = pattern(5000, 3);
    const { crc32 } = await import('../../src/roce/icrc.js');
    t.equal(native!.txCrc32!(0x1234, b, 17, 4000), crc32(0x1234, b, 17, 4017), 'zlib-sized piece');
    t.equal(native!.txCrc32!(0x1234, b, 5, 40), crc32(0x1234, b, 5, 45), 'small piece (the table CRC)');
    t.equal(native!.txCrc32!(native!.txCrc32!(7, b, 0, 40)!, b, 40, 3000), crc32(7, b, 0, 3040), 'a chain mixing both');
    const bench = native!.crcBench!(65536, 2000);
    const port = native!.crcBench!(65536, 500, true);
    t.ok(
      bench !== null && bench.gbps > 0 && port !== null && port.gbps > 0,
      `CRC-32 in C over 64 KiB: ${bench?.gbps.toFixed(2)} GB/s (${bench?.impl}), portable ${port?.gbps.toFixed(2)} GB/s`,
    );
  }
});

/** One WR of a batch posted at once (multi-WQE runs): the Msg, and how it is posted. */
interface BMsg extends Msg {
  /** inline: the bytes are copied at post */
  inline?: boolean;
  signaled?: boolean;
  /** 'post': its SGE's MR is closed before the post (a bad L_Key: the WQE fails at post, localErr); 'after': closed right after it */
  badMr?: 'post' | 'after';
}

/** Each message's room in the receiver's memory (a WRITE's target, a SEND's receive buffer). */
const RGN = 8192;

/**
 * The batch `msgs` from a fresh sender (QPN 0x11, sigAll off) posted in ONE postSend, so the
 * requester meets them all queued at once: one-packet messages follow each other and the fast path
 * may send packets of several WQEs in one run. Fewer than 128 packets in all, so no AckReq depends
 * on when ACKs come back (the window never fills). Completions are collected until quiet.
 */
async function runBatch(rx: Rx, fast: boolean, type: 'RC' | 'UC', mtu: Mtu, msgs: BMsg[]): Promise<RunOut & { wcs: string[] }> {
  const link = (await UdpLink.open({ address: A, native: 'on', fastPath: fast })) as NativeLink;
  const dev = await openDevice({ address: A, link });
  const pd = dev.allocPd();
  const cq = dev.createCq({ depth: 4096 });
  const qp = pd.createQp({ type, sendCq: cq, recvCq: cq, sigAll: false, cap: { maxSendWr: 128, maxRecvWr: 4, maxSendSge: 4, maxRecvSge: 4, maxInline: 256 } });
  const mem = pattern(1 << 20, 0xba7c);
  const mr = pd.regMr(mem, ['LOCAL_WRITE']);
  const bad = pd.regMr(Buffer.from(mem), ['LOCAL_WRITE']);
  rx.qp.modify({ state: 'RESET' });
  rx.mem.fill(0);
  rx.cap.length = 0;
  for (const c of rx.dev.ports[0]!.counters.counts.keys()) rx.dev.ports[0]!.counters.counts[c] = 0;
  const local = (psn: number) => ({ psn, pathMtu: mtu, timeout: 14, retryCnt: 7, rnrRetry: 7 });
  connectQp(qp, local(PSN_A), { qpn: rx.qp.qpn, psn: PSN_B, gid: B });
  connectQp(rx.qp, local(PSN_B), { qpn: qp.qpn, psn: PSN_A, gid: A });
  const out: RunOut & { wcs: string[] } = { cap: rx.cap, got: [], want: [], status: [], txCounters: [], rxCounters: [], fastPackets: 0, wcs: [] };
  const wrs: SendWr[] = [];
  msgs.forEach((m, i) => {
    const send = m.op === 'SEND' || m.op === 'SEND_WITH_IMM';
    if (send || m.op === 'RDMA_WRITE_WITH_IMM') {
      // Receives in message order: the i-th SEND lands in the region of its message.
      rx.qp.postRecv({ wrId: i, sg: [{ mr: rx.mr, offset: send ? i * RGN : 0, length: send ? RGN : 0 }] });
    }
    const base = {
      wrId: i,
      signaled: m.signaled !== false,
      ...(m.inline ? { inline: true } : {}),
      sg: m.sg.map(([offset, length]) => ({ mr: m.badMr ? bad : mr, offset, length })),
    };
    const remote = { addr: rx.mr.addr + BigInt(i * RGN), rkey: rx.mr.rkey };
    wrs.push(
      m.op === 'SEND'
        ? { ...base, opcode: 'SEND' }
        : m.op === 'SEND_WITH_IMM'
          ? { ...base, opcode: 'SEND_WITH_IMM', imm: 0x1234567 + i }
          : m.op === 'RDMA_WRITE'
            ? { ...base, opcode: 'RDMA_WRITE', remote }
            : { ...base, opcode: 'RDMA_WRITE_WITH_IMM', imm: 0x7654321 + i, remote },
    );
  });
  const badAt = msgs.findIndex((m) => m.badMr !== undefined);
  if (badAt >= 0 && msgs[badAt]!.badMr === 'post') bad.close();
  qp.postSend(wrs);
  // The requester runs once this stack unwinds (Engine.kick soon): the MR goes first.
  if (badAt >= 0 && msgs[badAt]!.badMr === 'after') bad.close();
  const wcs: Wc[] = [];
  const buf = Array.from({ length: 64 }, () => new Wc());
  let quietSince = performance.now();
  for (const end = performance.now() + 10_000; performance.now() < end && performance.now() - quietSince < 300;) {
    for (const c of [cq, rx.cq]) {
      const k = c.poll(buf);
      for (let i = 0; i < k; i++) wcs.push(Object.assign(new Wc(), buf[i]!));
      if (k > 0) quietSince = performance.now();
    }
    await new Promise((r) => setTimeout(r, 2));
  }
  out.wcs = wcs.map((c) => `${c.qpn === qp.qpn ? 'tx' : 'rx'} ${c.wrId} ${c.status} ${c.opcode}`).sort();
  out.status = out.wcs.map((s) => s.split(' ')[2]!);
  msgs.forEach((m, i) => {
    const len = m.sg.reduce((s, [, l]) => s + l, 0);
    const want = badAt >= 0 && i >= badAt ? Buffer.alloc(len) : Buffer.concat(m.sg.map(([o, l]) => mem.subarray(o, o + l)));
    out.want.push(want);
    out.got.push(Buffer.from(rx.mem.subarray(i * RGN, i * RGN + len)));
  });
  out.txCounters = [...dev.ports[0]!.counters.counts];
  out.rxCounters = [...rx.dev.ports[0]!.counters.counts];
  out.fastPackets = link.batchStats.fastTxPackets ?? 0;
  out.cap = rx.cap.map((c) => ({ bytes: c.bytes, acc: c.acc }));
  await dev.close();
  await link.close();
  return out;
}

/**
 * A stream of small messages, one packet each mostly (what ib_write_bw -s 64 posts), mixed:
 * WRITE, SEND, with immediate, inline, zero-length, unsignaled, several SGEs, a 5-packet message
 * in the middle (MTU 1024), and SE on none. Under 128 packets in all.
 */
function smallBatch(type: 'RC' | 'UC'): BMsg[] {
  const ops = type === 'RC' ? (['RDMA_WRITE', 'SEND', 'RDMA_WRITE_WITH_IMM', 'SEND_WITH_IMM'] as const) : (['RDMA_WRITE', 'SEND'] as const);
  const out: BMsg[] = [];
  for (let i = 0; i < 60; i++) {
    const op = i % 5 === 4 ? ops[Math.floor(i / 5) % ops.length]! : 'RDMA_WRITE';
    const len = [64, 64, 1, 0, 200, 64, 63][i % 7]!;
    const m: BMsg = {
      op,
      sg:
        i % 11 === 5
          ? [
              [i * 97, 30],
              [500_000 + i, len],
            ]
          : [[i * 131, len]],
    };
    if (i % 6 === 2 && len > 0) m.inline = true;
    if (i % 3 !== 0) m.signaled = false;
    out.push(m);
    if (i === 30) out.push({ op: 'RDMA_WRITE', sg: [[77, 4097]] });
  }
  out[out.length - 1]!.signaled = true; // the last one completes: everything before it did
  return out;
}

for (const type of ['RC', 'UC'] as const) {
  t.test(`${type}: one-packet messages posted together leave as multi-WQE fast-path runs, with the per-packet path's bytes`, { skip: noFast }, async (t) => {
    const rx = await openRx(type);
    t.teardown(async () => {
      await rx.dev.close();
      await rx.link.close();
    });
    const msgs = smallBatch(type);
    const pkts = msgs.reduce((s, m) => s + Math.max(1, Math.ceil(m.sg.reduce((a, [, l]) => a + l, 0) / 1024)), 0);
    t.ok(pkts < 128, `${msgs.length} messages, ${pkts} packets`);
    for (const gso of [false, true]) {
      const [slow, fast] = await withGso(gso, async () => [await runBatch(rx, false, type, 1024, msgs), await runBatch(rx, true, type, 1024, msgs)]);
      compare(t, slow, fast, !gso, `${gso ? 'GSO' : 'no GSO'}`);
      // The old fast path took only messages of 2 packets or more (here: 5 of them).
      t.ok(fast.fastPackets >= pkts - 1, `${gso ? 'GSO' : 'no GSO'}: ${fast.fastPackets} of ${pkts} packets went the fast path (one-packet messages included)`);
      if (type === 'RC') t.ok(slow.status.length > 20 && slow.status.every((s) => s.includes('SUCCESS')), `${slow.status.length} completions, all SUCCESS`);
    }
  });
}

for (const when of ['post', 'after'] as const) {
  t.test(
    `a WQE whose MR is gone (${when === 'post' ? 'bad L_Key at post' : 'closed after the post'}) in the middle of a run: it fails exactly as on the per-packet path`,
    { skip: noFast },
    async (t) => {
      const rx = await openRx('RC');
      t.teardown(async () => {
        await rx.dev.close();
        await rx.link.close();
      });
      const msgs = smallBatch('RC');
      msgs[20]!.badMr = when;
      msgs[20]!.signaled = false; // an error completes even unsignaled
      msgs[20]!.inline = false;
      msgs[20]!.op = 'RDMA_WRITE';
      const [slow, fast] = await withGso(false, async () => [await runBatch(rx, false, 'RC', 1024, msgs), await runBatch(rx, true, 'RC', 1024, msgs)]);
      t.same(fast.wcs, slow.wcs, 'the same completions');
      t.ok(
        slow.wcs.includes('tx 20 LOC_PROT_ERR RDMA_WRITE'),
        `the WQE fails with LOC_PROT_ERR: ${slow.wcs
          .filter((s) => !s.includes('SUCCESS'))
          .slice(0, 3)
          .join(', ')}`,
      );
      t.ok(fast.wcs.filter((s) => s.startsWith('tx') && s.includes('WR_FLUSH_ERR')).length > 0, 'the WQEs after it are flushed');
      const psns = (r: RunOut): string[] => r.cap.map((c) => c.bytes.toString('hex'));
      t.same([...new Set(psns(fast))], [...new Set(psns(slow))], 'the same packets, byte for byte, none of the failed WQE or after it');
      t.ok(fast.fastPackets > 2, `${fast.fastPackets} packets before it went the fast path`);
      t.same(
        fast.got.map((g, i) => g.equals(fast.want[i]!)),
        slow.got.map((g, i) => g.equals(slow.want[i]!)),
        'the same messages arrived',
      );
    },
  );
}

for (const limit of [0, 1, 5, 33]) {
  t.test(
    `a multi-WQE run the socket takes only ${limit} packets of: the rest goes the per-packet way, WQEs not reached stay unstarted`,
    { skip: noFast },
    async (t) => {
      const rx = await openRx('RC');
      t.teardown(async () => {
        await rx.dev.close();
        await rx.link.close();
      });
      const msgs = smallBatch('RC');
      const slow = await withGso(false, () => runBatch(rx, false, 'RC', 1024, msgs));
      // The first run (64 packets of many WQEs) is cut after `limit` packets (0: EAGAIN), the rest as they come.
      const nat = native as NativeAddon;
      const real = nat.txSegments!.bind(nat);
      let first = -1;
      nat.txSegments = (fd, dIp, dPort, tos, sIp, sPort, gso, hdr, meta, n, bufs, pieces, np) => {
        if (first >= 0) return real(fd, dIp, dPort, tos, sIp, sPort, gso, hdr, meta, n, bufs, pieces, np);
        first = n;
        if (limit === 0) return -11; // EAGAIN
        let bytes = 0;
        for (let i = 0; i < limit; i++) bytes += meta[2 * i + 1]!;
        // The first `limit` packets' payload is a prefix of the run's: trim the pieces to it.
        const p2 = new Uint32Array(pieces.length);
        let m = 0;
        for (let i = 0; i < np && bytes > 0; i++, m++) {
          const l = Math.min(pieces[2 * i + 1]!, bytes);
          p2[2 * i] = pieces[2 * i]!;
          p2[2 * i + 1] = l;
          bytes -= l;
        }
        return real(fd, dIp, dPort, tos, sIp, sPort, gso, hdr, meta, limit, bufs, p2, m);
      };
      let fast: RunOut;
      try {
        fast = await withGso(false, () => runBatch(rx, true, 'RC', 1024, msgs));
      } finally {
        nat.txSegments = real;
      }
      t.equal(first, 64, 'the first run was 64 packets (one budget) of many WQEs');
      // (Cut to 0, the rest of that turn and so the whole batch goes the per-packet way.)
      compare(t, slow, fast, true, `cut to ${limit}`, limit > 0);
    },
  );
}
