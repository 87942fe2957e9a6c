/**
 * Issue 15, the TX fast path for READ responses (responder.ts sendReadRunFast over
 * Link.sendSegments): the responses a responder sends from native code must be the packets its
 * per-packet loop (runReads) sends. The same READs are served by a fresh responder device whose
 * link has the fast path, and by one whose link has it off (UdpLinkOptions.fastPath: false, what
 * SOFTROCE_NO_FASTPATH=1 does), to one requester device whose link records every datagram it
 * gets, raw, before the transport. With SOFTROCE_GSO=0 both captures must be byte-identical; with
 * GSO the kernel numbers the segments' IPv4 IDs and the ICRC covers the ID, so there the packets
 * are compared after taking each one's ICRC back to ID 0 (the ID the requester verified it with).
 * Loopback only, in this file's block 127.0.91.0/24. Without the addon there is no fast path:
 * those cases say so and skip.
 */
import t from 'tap';

type Test = Pick<typeof t, 'equal' | 'ok' | 'same'>;
import { UdpLink, type NativeLink } from '../../src/roce/link/udp-link.js';
import { openDevice, type Device } from '../../src/verbs/device.js';
import { connectQp } from '../../src/verbs/connect.js';

import type { Qp } from '../../src/verbs/qp.js';
import type { Mr } from '../../src/verbs/mr.js';
import type { Cq } from '../../src/verbs/cq.js';
import type { Mtu } from '../../src/roce/opcode.js';
import { Ctr } from '../../src/roce/counters.js';
import { loadNative } from '../../src/native.js';
import type { RxHandler } from '../../src/roce/link/link.js';
import { pattern, waitN, idZero, withGso, type Cap } from './fast-helpers.js';

const native = loadNative();
const noFast = native?.txSegments === undefined ? 'no addon (SOFTROCE_NO_NATIVE=1 or not built): there is no TX fast path' : false;
const A = '127.0.91.1', // the responder under test
  B = '127.0.91.2'; // the requester, recording
const PSN_A = 0xffff80; // the responses' PSNs wrap inside a run
const PSN_B = 0xffffc0;

/** The requester: one device for every run, its link recording what arrives. */
interface Rq {
  dev: Device;
  link: NativeLink;
  qp: Qp;
  cq: Cq;
  mem: Buffer;
  mr: Mr;
  cap: Cap[];
}

async function openRq(): Promise<Rq> {
  const link = (await UdpLink.open({ address: B, native: 'on' })) as NativeLink;
  const cap: Cap[] = [];
  const setRx = link.setReceiver.bind(link);
  link.setReceiver = (h: RxHandler): void =>
    setRx((buf, len, ip, port, ipIdDf, group) => {
      cap.push({ bytes: Buffer.from(buf.subarray(0, len)), acc: -1 });
      h(buf, len, ip, port, ipIdDf, group);
    });
  (link as { rxAccepted?: (b: Buffer, l: number, s: string, p: number, id: number) => void }).rxAccepted = (_b, _l, _s, _p, id) => {
    const last = cap[cap.length - 1];
    if (last) last.acc = id;
  };
  const dev = await openDevice({ address: B, link });
  const pd = dev.allocPd();
  const cq = dev.createCq({ depth: 4096 });
  const qp = pd.createQp({
    type: 'RC',
    sendCq: cq,
    recvCq: cq,
    sigAll: true,
    cap: { maxSendWr: 64, maxRecvWr: 4, maxSendSge: 4, maxRecvSge: 1, maxInline: 0 },
  });
  const mem = Buffer.alloc(1 << 20);
  const mr = pd.regMr(mem, ['LOCAL_WRITE']);
  return { dev, link, qp, cq, mem, mr, cap };
}

/** READs as [remote offset, length, local SGEs as [offset, length]]: sizes round an MTU and past a 64-packet run. */
type Read = [number, number, [number, number][]];
const READS: Read[] = [
  [3, 0, [[0, 0]]],
  [5, 1, [[0, 1]]],
  [7, 1024, [[0, 1024]]],
  [9, 1025, [[0, 1025]]],
  [11, 4095, [[0, 4095]]],
  [13, 4096, [[0, 4096]]],
  [15, 4097, [[0, 4097]]],
  [17, 65536 + 13, [[0, 65549]]],
  [
    19,
    300_001,
    [
      [0, 1000],
      [200_001, 299_001],
    ],
  ],
];

interface RunOut {
  cap: Cap[];
  got: Buffer[];
  want: Buffer[];
  status: string[];
  rspCounters: number[];
  rqCounters: number[];
  fastPackets: number;
}

/** The READs one at a time (so the captures do not depend on timing), served by a fresh responder with the fast path `fast`. */
async function run(rq: Rq, fast: boolean, mtu: Mtu, reads: Read[]): Promise<RunOut> {
  const link = (await UdpLink.open({ address: A, native: 'on', fastPath: fast })) as NativeLink;
  const dev = await openDevice({ address: A, link });
  const pd = dev.allocPd();
  const cq = dev.createCq({ depth: 64 });
  const qp = pd.createQp({ type: 'RC', sendCq: cq, recvCq: cq, cap: { maxSendWr: 4, maxRecvWr: 4, maxSendSge: 1, maxRecvSge: 1, maxInline: 0 } });
  const mem = pattern(1 << 20, 0x5ead);
  const mr = pd.regMr(mem, ['LOCAL_WRITE', 'REMOTE_READ']);
  rq.qp.modify({ state: 'RESET' });
  rq.cap.length = 0;
  for (const c of rq.dev.ports[0]!.counters.counts.keys()) rq.dev.ports[0]!.counters.counts[c] = 0;
  const local = (psn: number) => ({ psn, pathMtu: mtu, timeout: 14, retryCnt: 7, rnrRetry: 7, maxRdAtomic: 1, maxDestRdAtomic: 1 });
  connectQp(qp, local(PSN_A), { qpn: rq.qp.qpn, psn: PSN_B, gid: B });
  connectQp(rq.qp, local(PSN_B), { qpn: qp.qpn, psn: PSN_A, gid: A });
  const out: RunOut = { cap: rq.cap, got: [], want: [], status: [], rspCounters: [], rqCounters: [], fastPackets: 0 };
  let wr = 0;
  for (const [roff, len, sg] of READS.filter((r) => reads.includes(r))) {
    rq.mem.fill(0);
    rq.qp.postSend({
      wrId: wr++,
      opcode: 'RDMA_READ',
      signaled: true,
      sg: sg.map(([offset, length]) => ({ mr: rq.mr, offset, length })),
      remote: { addr: mr.addr + BigInt(roff), rkey: mr.rkey },
    });
    const wcs = await waitN(rq.cq, 1);
    out.status.push(...wcs.map((c) => c.status));
    out.got.push(Buffer.concat(sg.map(([o, l]) => rq.mem.subarray(o, o + l))));
    out.want.push(Buffer.from(mem.subarray(roff, roff + len)));
  }
  // A tail-loss probe may have had a READ answered twice (legal, on either path): let the late
  // copies arrive now rather than in the next run's capture.
  for (let seen = -1, end = performance.now() + 2000; seen !== rq.cap.length && performance.now() < end;) {
    seen = rq.cap.length;
    await new Promise((r) => setTimeout(r, 50));
  }
  out.rspCounters = [...dev.ports[0]!.counters.counts];
  out.rqCounters = [...rq.dev.ports[0]!.counters.counts];
  out.fastPackets = link.batchStats.fastTxPackets ?? 0;
  out.cap = rq.cap.map((c) => ({ bytes: c.bytes, acc: c.acc }));
  await dev.close();
  await link.close();
  return out;
}

/** The first copy of each PSN (a duplicate READ request after a probe is answered again, on either path). */
function firsts(r: RunOut): Cap[] {
  const seen = new Set<number>();
  return r.cap.filter((c) => {
    const psn = c.bytes.readUIntBE(9, 3);
    if (seen.has(psn)) return false;
    seen.add(psn);
    return true;
  });
}

function compare(t: Test, slow: RunOut, fast: RunOut, strict: boolean, what: string): void {
  t.ok(fast.fastPackets > 0, `${what}: the fast path sent ${fast.fastPackets} response packets`);
  t.equal(slow.fastPackets, 0, `${what}: fastPath: false sends none that way`);
  t.ok(slow.status.length === slow.want.length && slow.status.every((s) => s === 'SUCCESS'), `${what}: per-packet path completes every READ with SUCCESS`);
  t.same(fast.status, slow.status, `${what}: the same completions`);
  const bad = fast.want.map((w, i) => (fast.got[i]!.equals(w) && slow.got[i]!.equals(slow.want[i]!) ? -1 : i)).filter((i) => i >= 0);
  t.same(bad, [], `${what}: all ${fast.want.length} READs brought the right bytes on both paths`);
  t.ok(
    fast.cap.every((c) => c.acc >= 0),
    `${what}: the requester accepted every response (ICRC good)`,
  );
  const f = firsts(fast),
    s = firsts(slow);
  t.equal(f.length, s.length, `${what}: as many packets (${f.length})`);
  const norm = (c: Cap): Buffer => (strict ? c.bytes : idZero(c));
  let diff = -1;
  for (let i = 0; i < Math.min(f.length, s.length) && diff < 0; i++) if (!norm(f[i]!).equals(norm(s[i]!))) diff = i;
  t.equal(
    diff,
    -1,
    `${what}: every response ${strict ? 'byte-identical' : 'identical (ICRC taken to IPv4 ID 0)'}${diff >= 0 ? `; first difference at ${diff}: ${f[diff]!.bytes.subarray(0, 32).toString('hex')} vs ${s[diff]!.bytes.subarray(0, 32).toString('hex')}` : ''}`,
  );
  const named = (r: RunOut, firstCopies: Cap[]): Record<string, number> => ({
    sent_pkts: r.rspCounters[Ctr.sent_pkts]! - (r.cap.length - firstCopies.length),
    rcvd_pkts: r.rqCounters[Ctr.rcvd_pkts]! - (r.cap.length - firstCopies.length),
  });
  const nf = named(fast, f);
  t.same(nf, named(slow, s), `${what}: counters equal`);
  t.equal(nf.sent_pkts, f.length, `${what}: sent_pkts counts each fast-path response`);
}

for (const mtu of [1024, 4096] as const) {
  t.test(`MTU ${mtu}: READ responses from the fast path and from the per-packet loop are the same packets`, { skip: noFast }, async (t) => {
    const rq = await openRq();
    t.teardown(async () => {
      await rq.dev.close();
      await rq.link.close();
    });
    const [slow0, fast0] = await withGso(false, async () => [await run(rq, false, mtu, READS), await run(rq, true, mtu, READS)]);
    compare(t, slow0, fast0, true, 'no GSO');
    const [slow1, fast1] = await withGso(true, async () => [await run(rq, false, mtu, READS), await run(rq, true, mtu, READS)]);
    compare(t, slow1, fast1, false, 'GSO');
  });
}

t.test('a link that sends only part of a run: the rest of the response goes the per-packet way, the stream is the same', { skip: noFast }, async (t) => {
  const rq = await openRq();
  t.teardown(async () => {
    await rq.dev.close();
    await rq.link.close();
  });
  const big = READS.slice(-2);
  const slow = await withGso(false, () => run(rq, false, 1024, big));
  // The addon sends at most 5 packets of a run, and every third call none (EAGAIN).
  const nat = native!;
  const real = nat.txSegments!.bind(nat);
  let calls = 0,
    cut = 0;
  nat.txSegments = (fd, dIp, dPort, tos, sIp, sPort, gso, hdr, meta, n, bufs, pieces, np) => {
    if (++calls % 3 === 0) {
      cut++;
      return -11; // EAGAIN
    }
    const k = Math.min(n, 5);
    if (k < n) cut++;
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
    fast = await withGso(false, () => run(rq, true, 1024, big));
  } finally {
    nat.txSegments = real;
  }
  t.ok(cut > 5, `${cut} runs cut short`);
  compare(t, slow, fast, true, 'cut runs');
});

t.test(
  'an MR deregistered while its READ is answered on the fast path: no byte of it after, the requester gets REM_ACCESS_ERR',
  { skip: noFast },
  async (t) => {
    const rq = await openRq();
    t.teardown(async () => {
      await rq.dev.close();
      await rq.link.close();
    });
    const link = (await UdpLink.open({ address: A, native: 'on', fastPath: true })) as NativeLink;
    const dev = await openDevice({ address: A, link });
    t.teardown(async () => {
      await dev.close();
      await link.close();
    });
    const pd = dev.allocPd();
    const cq = dev.createCq({ depth: 16 });
    const qp = pd.createQp({ type: 'RC', sendCq: cq, recvCq: cq, cap: { maxSendWr: 4, maxRecvWr: 4, maxSendSge: 1, maxRecvSge: 1, maxInline: 0 } });
    const mem = pattern(1 << 20, 9);
    const mr = pd.regMr(mem, ['LOCAL_WRITE', 'REMOTE_READ']);
    rq.qp.modify({ state: 'RESET' });
    rq.cap.length = 0;
    const local = (psn: number) => ({ psn, pathMtu: 1024 as const, timeout: 14, retryCnt: 7, rnrRetry: 7, maxRdAtomic: 1, maxDestRdAtomic: 1 });
    connectQp(qp, local(PSN_A), { qpn: rq.qp.qpn, psn: PSN_B, gid: B });
    connectQp(rq.qp, local(PSN_B), { qpn: qp.qpn, psn: PSN_A, gid: A });
    // 1 MiB = 1024 responses: the responder's first run (64) leaves at once; the MR goes after it.
    rq.qp.postSend({ wrId: 1, opcode: 'RDMA_READ', signaled: true, sg: [{ mr: rq.mr, offset: 0, length: 1 << 20 }], remote: { addr: mr.addr, rkey: mr.rkey } });
    for (const end = performance.now() + 5000; (link.batchStats.fastTxPackets ?? 0) === 0 && performance.now() < end;)
      await new Promise((r) => setImmediate(r));
    const sentBefore = link.batchStats.fastTxPackets ?? 0;
    mr.close();
    const wcs = await waitN(rq.cq, 1);
    t.equal(wcs.length, 1);
    t.equal(wcs[0]?.status, 'REM_ACCESS_ERR');
    t.ok(sentBefore > 0 && sentBefore < 1024, `${sentBefore} responses left by the fast path before the MR went`);
    await new Promise((r) => setTimeout(r, 50));
    const data = rq.cap.filter((c) => c.bytes[0] !== 0x11); // every response but the NAK (RC ACKNOWLEDGE)
    const psns = new Set(data.map((c) => c.bytes.readUIntBE(9, 3)));
    t.ok(psns.size <= sentBefore, `${psns.size} distinct response PSNs reached the requester, none after the deregistration`);
  },
);
