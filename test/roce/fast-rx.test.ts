/**
 * The addon's RX fast path (native/fast-rx.cc, native-link.ts): the ICRC checked in C in the receive
 * loop must accept exactly what recv.ts's JS check accepts (never more; it may leave a packet to JS),
 * a device with it counts every packet as one without it does (SOFTROCE_NO_FASTPATH=1), and GRO
 * segments go up in place, without a copy. Loopback only, in 127.0.82.0/24.
 */
import t from 'tap';
import { closeSync } from 'node:fs';
import { deviceRx } from '../../src/roce/transport/recv.js';
import { Ctr } from '../../src/roce/counters.js';
import { Ipv4IdWindow, checkIcrcV4, icrcV2Ipv4Parts, writeIcrc } from '../../src/roce/icrc.js';
import { RX_ICRC_OK, RX_ID_INFERRED } from '../../src/roce/link/link.js';
import { openDevice, type Device, type Port } from '../../src/verbs/device.js';
import { loadNative } from '../../src/native.js';
import { Rng } from '../helpers.js';
import { makePair, waitWc, fill } from '../verbs/pair.js';

const native = loadNative();
const skip =
  native?.icrcVerify && native.rxIcrcStart && native.udpOpen4 ? false : 'no native addon (SOFTROCE_NO_NATIVE=1 or not built): the RX fast path is in it';

const SRC = 0x7f525201,
  DST = 0x7f525202,
  SPORT = 0xc123,
  DPORT = 4791;

/** An RC SEND_ONLY packet of n bytes (BTH … ICRC) to QP 0x11, ICRC for IPv4 `id` with DF. */
function packet(n: number, seed: number, id: number, src = SRC, dst = DST, sport = SPORT, dport = DPORT): Buffer {
  const p = Buffer.alloc(n);
  const r = new Rng(seed);
  p[0] = 0x04;
  p[2] = 0xff;
  p[3] = 0xff;
  p[7] = 0x11;
  p.writeUIntBE(r.int(0x1000000), 9, 3);
  for (let i = 12; i < n - 4; i++) p[i] = r.next() & 0xff;
  writeIcrc(p, n - 4, icrcV2Ipv4Parts(src, dst, id, 0x4000, sport, dport, p, 0, n - 4));
  return p;
}

/** What recv.ts's JS check says of packet p (a fresh window: its most permissive state), per mode: the ID, or -1. */
function jsCheck(p: Buffer, knownIdDf: number): { infer: number; zero: number } {
  return {
    infer: checkIcrcV4('infer-id', new Ipv4IdWindow(), knownIdDf, SRC, DST, SPORT, DPORT, p, 0, p.length - 4),
    zero: checkIcrcV4('id-zero', null, knownIdDf, SRC, DST, SPORT, DPORT, p, 0, p.length - 4),
  };
}

function bit(ok: [number, number] | null, k: number): boolean {
  if (ok === null) return false;
  return k < 32 ? ((ok[0] >>> k) & 1) === 1 : ((ok[1] >>> (k - 32)) & 1) === 1;
}

t.test('C verdict: never a packet the JS check rejects, and the ID-0 / GSO senders verified', { skip }, (t) => {
  const n = native!;
  const rng = new Rng(0xf1c);
  let verified = 0,
    mismatches = 0,
    missed = 0;
  const sizes = [16, 20, 64, 260, 1040, 1840, 4124];
  for (let round = 0; round < 400; round++) {
    const size = sizes[round % sizes.length]!;
    const segs = 1 + (round % 5);
    const known = round % 3 === 0 ? (rng.int(0x10000) | (rng.int(2) << 16)) >>> 0 : -1;
    // What the sender put in each segment's ICRC: the right ID (k, or known + k), or a wrong one.
    const parts: Buffer[] = [];
    const want: boolean[] = [];
    for (let k = 0; k < segs; k++) {
      const rightId = known >= 0 ? (known + k) & 0xffff : k;
      const kind = rng.int(6); // 0-2 right, 3 another ID, 4 a flipped bit, 5 the right ID but DF-less (known: DF as the header)
      let id = rightId;
      if (kind === 3) id = (rightId + 1 + rng.int(0xfffe)) & 0xffff;
      const p = packet(size, round * 64 + k, id);
      if (kind === 4) p[rng.int(size)]! ^= 1 << rng.int(8);
      if (known >= 0 && (known & 0x10000) === 0) writeIcrc(p, size - 4, icrcV2Ipv4Parts(SRC, DST, id, 0, SPORT, DPORT, p, 0, size - 4));
      parts.push(p);
      want.push(kind <= 2);
    }
    const all = Buffer.concat(parts);
    const ok = n.icrcVerify!(all, 0, all.length, segs > 1 ? size : 0, SRC, SPORT, DST, DPORT, known);
    for (let k = 0; k < segs; k++) {
      const kid = known >= 0 ? ((known + k) & 0xffff) | (known & 0x10000) : -1;
      const js = jsCheck(parts[k]!, kid);
      if (bit(ok, k)) {
        verified++;
        const id = known >= 0 ? kid : k | 0x10000;
        // Same ID as the JS check finds, accepted in both modes.
        if (js.infer !== id || js.zero !== id) mismatches++;
      } else if (want[k] && js.infer >= 0) missed++;
    }
  }
  t.ok(verified > 500, `${verified} segments verified in C`);
  t.equal(mismatches, 0, 'each with the ID and verdict of the JS check, in both modes');
  t.equal(missed, 0, 'every packet of an ID-0 sender (ID k for GRO segment k) or with its real ID known is verified in C');
  // A later GRO segment at ID 0 (not what Linux sends) and a lone packet at ID 5: JS infers them; C says nothing.
  const two = Buffer.concat([packet(64, 1, 0), packet(64, 2, 0)]);
  t.same(n.icrcVerify!(two, 0, 128, 64, SRC, SPORT, DST, DPORT, -1), [1, 0], 'segment 1 at ID 0: left to JS');
  t.same(n.icrcVerify!(packet(64, 3, 5), 0, 64, 0, SRC, SPORT, DST, DPORT, -1), [0, 0], 'a lone packet at ID 5: left to JS');
  t.same(n.icrcVerify!(packet(64, 3, 0), 0, 64, 0, SRC, SPORT, DST + 1, DPORT, -1), [0, 0], 'to another address: not verified');
  t.same(n.icrcVerify!(packet(64, 3, 0), 0, 62, 0, SRC, SPORT, DST, DPORT, -1), [0, 0], 'a cut packet (62 B): not verified');
  // 64 segments of a GSO send (IDs 0..63): all of them.
  const big = Buffer.concat(Array.from({ length: 64 }, (_, k) => packet(80, 100 + k, k)));
  t.same(n.icrcVerify!(big, 0, big.length, 80, SRC, SPORT, DST, DPORT, -1), [0xffffffff, 0xffffffff], '64 GSO segments, IDs 0..63');
  const b = n.crcBench!(4096, 2000);
  t.ok(b !== null && b.nsPerCall > 0, `C CRC-32 (${b?.impl}): ${b ? (4096 / b.nsPerCall).toFixed(2) : '?'} GB/s on 4 KiB`);
  t.end();
});

t.test('recv.ts with a C verdict: the same window bookkeeping as its own check', (t) => {
  // Two receivers, one fed link-verified packets, one checking them itself; then the same
  // out-of-window counter-peer packets must get the same verdicts from both.
  const make = () => {
    const counts = new Float64Array(64);
    const dev = { closed: false, icrcIpv4: 'infer-id', qps: new Map(), gsi: null } as unknown as Device;
    const port = {
      num: 1,
      counters: { counts },
      link: { family: 4, localPort: DPORT },
      ipNum: DST,
      addrBytes: new Uint8Array([127, 82, 82, 2]),
    } as unknown as Port;
    return { counts, rx: (p: Buffer, id?: number) => deviceRx(dev, port, p, p.length, '127.82.82.1', SPORT, id) };
  };
  const fast = make(),
    slow = make();
  const seq: Array<[Buffer, number]> = [];
  for (let i = 0; i < 5; i++) seq.push([packet(64, i, i), i | 0x10000 | RX_ICRC_OK | RX_ID_INFERRED]);
  // A counter peer at the same address: near the last accepted ID (4), then far from it, then in order.
  for (const id of [60, 0x3000, 0x3001, 0x3002, 10, 0x9000]) seq.push([packet(64, 1000 + id, id), -1]);
  for (const [p, id] of seq) {
    fast.rx(p, id);
    slow.rx(p, -1);
  }
  // A raw-known ID: the window's reference moves to it (win.known) on both.
  fast.rx(packet(64, 7, 0x7000), 0x17000 | RX_ICRC_OK);
  slow.rx(packet(64, 7, 0x7000), 0x17000);
  fast.rx(packet(64, 8, 0x7001), -1);
  slow.rx(packet(64, 8, 0x7001), -1);
  t.same(Array.from(fast.counts), Array.from(slow.counts), 'same counters');
  t.ok(slow.counts[Ctr.rcvd_icrc_err]! > 0 && slow.counts[Ctr.rcvd_unknown_qp]! > 0, 'with drops and accepts both (the sequence tests something)');
  t.end();
});

/** A device on 127.0.82.<host>, with the fast path or not; its counters; a sender socket on 127.0.82.<host - 1>. */
async function rig(host: number, fast: boolean, raw: boolean) {
  const restore = withFastPath(fast);
  if (!raw) process.env['SOFTROCE_RAW_RX'] = '0';
  try {
    const dev = await openDevice({ address: `127.0.82.${host}` });
    const n = native!;
    const src = 0x7f005200 + host - 1,
      dst = 0x7f005200 + host;
    const fd = n.udpOpen4!(src, 0, 1 << 20, '');
    if (fd < 0) throw new Error(`sender socket: errno ${-fd}`);
    const sport = n.localPort!(fd);
    return { dev, fd, sport, src, dst, n };
  } finally {
    restore();
    delete process.env['SOFTROCE_RAW_RX'];
  }
}

/** Sets SOFTROCE_NO_FASTPATH for the next device open (whatever the suite runs with); returns the undo. */
function withFastPath(fast: boolean): () => void {
  const was = process.env['SOFTROCE_NO_FASTPATH'];
  if (fast) delete process.env['SOFTROCE_NO_FASTPATH'];
  else process.env['SOFTROCE_NO_FASTPATH'] = '1';
  return () => {
    if (was === undefined) delete process.env['SOFTROCE_NO_FASTPATH'];
    else process.env['SOFTROCE_NO_FASTPATH'] = was;
  };
}

const KEYS = ['rcvd_pkts', 'rcvd_icrc_err', 'rcvd_unknown_qp', 'rcvd_malformed'] as const;

for (const raw of [false, true]) {
  t.test(`a device with and without the C check counts the same (raw receive ${raw ? 'on when allowed' : 'off'})`, { skip }, async (t) => {
    const out: Array<Record<string, number>> = [];
    const stats: Array<number | undefined> = [];
    for (const fast of [true, false]) {
      const host = 10 + (raw ? 20 : 0) + (fast ? 0 : 10);
      const { dev, fd, sport, src, dst, n } = await rig(host, fast, raw);
      const mk = (size: number, seed: number, id: number) => packet(size, seed, id, src, dst, sport, DPORT);
      const sends: Array<[Buffer[], number]> = [];
      for (let i = 0; i < 40; i++) {
        const kind = i % 8;
        if (kind === 0) sends.push([[mk(1040, i, 0)], 0]); // good
        if (kind === 1) {
          const p = mk(1040, i, 0);
          p[100]! ^= 4; // corrupt payload
          sends.push([[p], 0]);
        }
        if (kind === 2) {
          const p = mk(1040, i, 0);
          p[1036]! ^= 0x80; // corrupt ICRC
          sends.push([[p], 0]);
        }
        if (kind === 3) sends.push([[mk(1040, i, 0).subarray(0, 1036)], 0]); // cut: wrong length
        if (kind === 4) sends.push([[mk(1040, i, 0).subarray(0, 8)], 0]); // shorter than a BTH
        if (kind === 5) {
          // a GRO-sized burst: one GSO send of 16 segments, IDs 0..15, one of them corrupted
          const segs = Array.from({ length: 16 }, (_, k) => mk(1040, 1000 * i + k, k));
          segs[7]![500]! ^= 1;
          sends.push([segs, 1040]);
        }
        if (kind === 6) sends.push([Array.from({ length: 8 }, (_, k) => mk(2048, 2000 * i + k, 0)), 2048]); // GSO segments all at ID 0
        if (kind === 7) sends.push([[mk(1040, i, 0x4321)], 0]); // a counter peer's ID: JS's window decides
      }
      let sendErr = 0;
      for (const [bufs, gso] of sends) {
        const r = n.sendPackets(
          fd,
          bufs,
          bufs.map((b) => b.length),
          bufs.length,
          dst,
          DPORT,
          gso,
        );
        if (r < 0) sendErr++;
        await new Promise((r) => setTimeout(r, 2)); // paced: no socket overflow
      }
      t.equal(sendErr, 0, 'every send went out');
      const total = sends.reduce((a, [b]) => a + b.length, 0);
      for (let i = 0; i < 300 && dev.counters()['rcvd_pkts']! < total; i++) await new Promise((r) => setTimeout(r, 10));
      const c = dev.counters();
      out.push(Object.fromEntries(KEYS.map((k) => [k, c[k]!])));
      stats.push(dev.ports[0]!.link.batchStats?.rxIcrcVerified);
      closeSync(fd);
      await dev.close();
    }
    t.same(out[0], out[1], `same counters with the C check and without: ${JSON.stringify(out[1])}`);
    t.equal(out[0]!['rcvd_pkts'], 5 + 5 + 5 + 5 + 5 + 80 + 40 + 5, 'every packet arrived');
    t.ok(out[0]!['rcvd_icrc_err']! >= 15, 'the corrupted ones dropped as ICRC errors');
    t.ok((stats[0] ?? 0) >= 5 + 75, `fast path: ${stats[0]} packets verified in C`);
    t.equal(stats[1], undefined, 'SOFTROCE_NO_FASTPATH=1: no C check');
  });
}

const udpSkip = native?.udpOpen4 ? false : 'no native addon: the dgram backend has no GRO and no C check';
t.test('an RC stream over loopback with GRO: right bytes, segments handed up in place, ICRCs checked in C', { skip: udpSkip }, async (t) => {
  for (const fast of [true, false]) {
    const restore = withFastPath(fast);
    const p = await makePair({ mode: 'udp', addrs: fast ? ['127.0.82.101', '127.0.82.102'] : ['127.0.82.111', '127.0.82.112'], mtu: 4096, memSize: 4 << 20 });
    restore();
    const port = p.b.dev.ports[0]!;
    const link = (port.v1?.udp ?? port.link) as unknown as { rx: (b: Buffer, l: number, ip: string, port: number, id?: number) => void; rxData: Buffer | null };
    const inner = link.rx;
    let inPlace = 0,
      copied = 0;
    link.rx = (b, l, ip, port, id) => {
      if (b.buffer === link.rxData?.buffer) inPlace++;
      else copied++;
      inner(b, l, ip, port, id);
    };
    fill(p.a.mem, 0x51);
    for (let i = 0; i < 4; i++) {
      p.a.qp.postSend({
        wrId: i,
        opcode: 'RDMA_WRITE',
        sg: [{ mr: p.a.mr, offset: i << 20, length: 1 << 20 }],
        remote: { addr: p.b.mr.addr + BigInt(i << 20), rkey: p.b.mr.rkey },
      });
    }
    const wcs = await waitWc(p, p.a.scq, 4);
    t.ok(
      wcs.every((w) => w.status === 'SUCCESS'),
      `${fast ? 'fast' : 'no fast'} path: 4 x 1 MiB WRITEs complete`,
    );
    t.ok(p.a.mem.equals(p.b.mem), 'the bytes arrived');
    const st = p.b.dev.ports[0]!.link.batchStats!;
    t.equal(copied, 0, `no copy on the way up: ${inPlace} packets in place (${st.rxGroSegments} of them GRO segments)`);
    if (fast) t.ok(st.rxIcrcVerified! >= 1024, `${st.rxIcrcVerified} of the 1024+ packets' ICRCs verified in C`);
    else t.equal(st.rxIcrcVerified, undefined, 'none in C with SOFTROCE_NO_FASTPATH=1');
    t.equal(p.b.dev.counters()['rcvd_icrc_err'], 0, 'no ICRC error');
    await p.close();
  }
});
