/**
 * The addon's one CRC-32 (native/crc32.cc), shared by the TX and RX fast paths: every implementation
 * this machine has (the PCLMULQDQ and VPCLMULQDQ folds, ARMv8 CRC32, zlib's, the slicing-by-8 table)
 * equal to icrc.ts's CRC-32 and to the table at every length 0..1100 and a set up to 70,000 bytes, at
 * each alignment 0..63, chained in random splits (also across implementations); the small-piece rule;
 * one benchmark export (crcBench) that names the CRC that really ran for a size; and the switch
 * (SOFTROCE_CRC=vpclmul|pclmul|armv8|zlib|slice8) that puts the whole addon (TX's txCrc32, RX's ICRC
 * check with its ID shift) on one implementation, an absent one falling down the order and saying so.
 * No traffic: pure computation (the RX check is fed a datagram built here).
 */
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { crc32, icrcV2Ipv4Parts, writeIcrc } from '../../src/roce/icrc.js';
import { loadNative, type CrcImplName } from '../../src/native.js';
import { Rng } from '../helpers.js';

const native = loadNative();
const skip = native?.txCrc32 && native.crcBench && native.icrcVerify ? false : 'no native addon (SOFTROCE_NO_NATIVE=1 or not built): the CRC is in it';

const SRC = 0x7f555501,
  DST = 0x7f555502,
  SPORT = 0xc321,
  DPORT = 4791;

/** An RC SEND_ONLY packet of n bytes (BTH … ICRC), ICRC for IPv4 `id` with DF. */
function packet(n: number, seed: number, id: number): Buffer {
  const p = Buffer.alloc(n);
  const r = new Rng(seed);
  p[0] = 0x04;
  p[2] = 0xff;
  p[3] = 0xff;
  p[7] = 0x11;
  for (let i = 12; i < n - 4; i++) p[i] = r.next() & 0xff;
  writeIcrc(p, n - 4, icrcV2Ipv4Parts(SRC, DST, id, 0x4000, SPORT, DPORT, p, 0, n - 4));
  return p;
}

/** SOFTROCE_CRC's names in native/crc32.cc's order of preference, and what crcBench calls each. */
const ORDER: CrcImplName[] = ['vpclmul', 'pclmul', 'armv8', 'zlib', 'slice8'];
const NAME: Record<CrcImplName, RegExp> = {
  vpclmul: /^vpclmul$/,
  pclmul: /^pclmul$/,
  armv8: /^armv8-crc32$/,
  zlib: /^(Cr_z_crc32|crc32)$/,
  slice8: /^slice-by-8$/,
};

/** What Crc32 (the dispatch) runs for a piece of `bytes` when `impl` (crcInfo().impl) is the chosen one. */
function ranFor(impl: string, bytes: number): string {
  if (impl === 'vpclmul') return bytes < 32 ? 'slice-by-8' : bytes < 256 ? 'pclmul' : 'vpclmul';
  if (impl === 'pclmul') return bytes < 32 ? 'slice-by-8' : 'pclmul';
  if (/^(Cr_z_crc32|crc32)$/.test(impl)) return bytes < 512 ? 'slice-by-8' : impl;
  return impl; // armv8-crc32 and slice-by-8 run at every size
}

function randomBytes(n: number, seed: number): Buffer {
  const r = new Rng(seed);
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = r.next() & 0xff;
  return b;
}

t.test('the implementations this CPU has are found', { skip }, (t) => {
  const info = native!.crcInfo!();
  t.ok(info.available.includes('slice8'), `available: ${info.available.join(', ')}`);
  let flags = '';
  try {
    flags = (readFileSync('/proc/cpuinfo', 'utf8').match(/^flags\s*:(.*)$/m)?.[1] ?? '').trim();
  } catch {
    // not Linux: nothing to compare with
  }
  const has = (f: string) => flags.split(/\s+/).includes(f);
  if (process.arch === 'x64' && flags !== '') {
    t.equal(info.available.includes('pclmul'), has('pclmulqdq') && has('sse4_1'), 'pclmul iff the CPU has pclmulqdq and sse4.1');
    // The kernel lists avx512f only when it enables the ZMM state, so the flags and the addon's XGETBV check agree.
    t.equal(info.available.includes('vpclmul'), has('vpclmulqdq') && has('avx512f') && has('pclmulqdq'), 'vpclmul iff vpclmulqdq and avx512f');
  }
  // No SOFTROCE_CRC: the first one in the order of preference.
  if (!process.env['SOFTROCE_CRC']) {
    const best = ORDER.find((k) => info.available.includes(k))!;
    t.match(info.impl, NAME[best], `chosen: ${info.impl}, the best available`);
    t.equal(info.requested, null, 'nothing requested');
  }
  t.end();
});

t.test('each implementation equals icrc.ts and the table: lengths 0..1100 and up to 70,000, alignments 0..63', { skip }, (t) => {
  const n = native!;
  const impls = n.crcInfo!().available;
  const SEED = 0x5eed1234;
  const src = randomBytes(70_000, 85);
  // The same bytes at each offset 0..63 of one buffer: whatever the buffer's own address, the
  // pieces start at every residue mod 64 (the widest load is 64 bytes).
  const w = Buffer.alloc(70_000 + 64);
  const ref: number[] = [SEED];
  for (let len = 1; len <= 1100; len++) ref.push(crc32(ref[len - 1]!, src, len - 1, len));
  const bad = new Map<string, string[]>(impls.map((k) => [k, []]));
  for (let a = 0; a < 64; a++) {
    src.copy(w, a, 0, 1100);
    for (let len = 0; len <= 1100; len++) for (const k of impls) if (n.txCrc32!(SEED, w, a, len, k) !== ref[len]) bad.get(k)!.push(`${len}@${a}`);
  }
  const long = [1101, 1536, 2047, 4096, 4097, 4159, 8192, 9001, 16401, 32768, 65535, 65536, 69999, 70000];
  const refLong = long.map((len) => crc32(SEED, src, 0, len));
  const badTable: string[] = [];
  for (let a = 0; a < 64; a++) {
    src.copy(w, a, 0, 70_000);
    long.forEach((len, j) => {
      const table = n.txCrc32!(SEED, w, a, len, 'slice8');
      if (table !== refLong[j]) badTable.push(`${len}@${a}`);
      for (const k of impls) if (n.txCrc32!(SEED, w, a, len, k) !== table) bad.get(k)!.push(`${len}@${a} (table)`);
    });
  }
  for (const k of impls) t.same(bad.get(k)!.slice(0, 5), [], `${k}: ${64 * (1101 + long.length)} pieces`);
  t.same(badTable.slice(0, 5), [], 'the table equals icrc.ts on the long set');
  t.equal(n.txCrc32!(0, w, 0, 1, 'nonesuch' as CrcImplName), null, 'an unknown implementation: null');
  const absent = ORDER.find((k) => !impls.includes(k));
  if (absent) t.equal(n.txCrc32!(0, w, 0, 100, absent), null, `${absent} (absent here): null`);
  t.end();
});

t.test('chained in random splits, each implementation and mixed, equal to one CRC of the whole', { skip }, (t) => {
  const n = native!;
  const impls = n.crcInfo!().available;
  const r = new Rng(4711);
  const buf = randomBytes(70_000 + 64, 99);
  // Piece sizes from every regime: under 16 (table inside the folds), under 64 (one lane), under
  // 256 (the 128-bit fold under the 512-bit one's start), and long ones.
  const piece = () => {
    const c = r.next() % 4;
    return c === 0 ? r.next() % 16 : c === 1 ? r.next() % 64 : c === 2 ? r.next() % 300 : r.next() % 20_000;
  };
  const bad: string[] = [];
  for (let trial = 0; trial < 60; trial++) {
    const total = trial % 3 === 0 ? r.next() % 2000 : r.next() % 70_001;
    const off = r.next() % 64;
    const seed = r.next() >>> 0;
    const want = crc32(seed, buf, off, off + total);
    for (const mode of [...impls, 'mixed']) {
      let c = seed;
      let at = 0;
      while (at < total) {
        const len = Math.min(piece(), total - at);
        const k = mode === 'mixed' ? impls[r.next() % impls.length]! : (mode as CrcImplName);
        c = n.txCrc32!(c, buf, off + at, len, k)!;
        at += len;
      }
      if (c !== want) bad.push(`${mode}: ${total} B at ${off}`);
    }
    // And the dispatch (Crc32 as the fast paths call it, small-piece rule included).
    let c = seed;
    for (let at = 0; at < total;) {
      const len = Math.min(piece(), total - at);
      c = n.txCrc32!(c, buf, off + at, len)!;
      at += len;
    }
    if (c !== want) bad.push(`dispatch: ${total} B at ${off}`);
  }
  t.same(bad.slice(0, 5), [], `60 buffers, ${impls.length} implementations, mixed chains and the dispatch`);
  t.end();
});

t.test('txCrc32 equals icrc.ts at every size around the small-piece rule, chained across it', { skip }, (t) => {
  const n = native!;
  const b = randomBytes(9000, 85);
  let bad = 0;
  for (let len = 0; len <= 1100; len++) {
    const off = len % 13;
    if (n.txCrc32!(0x5eed, b, off, len) !== crc32(0x5eed, b, off, off + len)) bad++;
  }
  t.equal(bad, 0, `lengths 0..1100 (${n.crcInfo!().impl}, the table below its small-piece size)`);
  // Chains across each rule's edges: the table (31), the folds (32, 255, 256), zlib's (511, 512).
  let c = 0;
  let at = 0;
  for (const len of [31, 32, 255, 256, 511, 512, 7]) {
    c = n.txCrc32!(c, b, at, len)!;
    at += len;
  }
  t.equal(c, crc32(0, b, 0, at), 'chain 31 + 32 + 255 + 256 + 511 + 512 + 7');
  t.equal(n.txCrc32!(0, b, 8990, 11), null, 'out of the buffer: null');
  t.end();
});

t.test('crcBench: the one benchmark, the same CRC every way, and the implementation that ran', { skip }, (t) => {
  const n = native!;
  const info = n.crcInfo!();
  for (const bytes of [16, 40, 255, 256, 511, 512, 4096, 65536]) {
    const fast = n.crcBench!(bytes, 50)!;
    const port = n.crcBench!(bytes, 50, true)!;
    t.equal(fast.crc, port.crc, `${bytes} B: the dispatch and slice-by-8 agree`);
    t.ok(fast.nsPerCall > 0 && fast.gbps > 0, `${bytes} B: ${fast.gbps.toFixed(2)} GB/s (${fast.impl}), portable ${port.gbps.toFixed(2)} GB/s`);
    t.equal(port.impl, 'slice-by-8', `${bytes} B: the portable run says so`);
    // The figure must name what ran: under an implementation's small-piece size, the table.
    t.equal(fast.impl, ranFor(info.impl, bytes), `${bytes} B with ${info.impl} chosen: ${fast.impl} ran`);
    for (const k of info.available) {
      const one = n.crcBench!(bytes, 50, k)!;
      t.equal(one.crc, port.crc, `${bytes} B: ${k} (${one.impl}) agrees`);
    }
  }
  // Each implementation timed alone names itself at 64 KiB (its own function, no small-piece rule).
  for (const k of info.available) t.match(n.crcBench!(65536, 5, k)!.impl, NAME[k], `${k} alone at 64 KiB`);
  t.equal(n.crcBench!(0, 1), null, '0 bytes: null');
  t.equal(n.crcBench!(64, 1, 'nonesuch' as CrcImplName), null, 'an unknown implementation: null');
  t.same(
    Object.keys(n).filter((k) => /bench/i.test(k)),
    ['crcBench'],
    'exactly one benchmark export',
  );
  t.end();
});

t.test('SOFTROCE_CRC=<each>: the whole addon on that CRC, same answers; an absent one falls down the order', { skip }, (t) => {
  // A child process per choice: the choice is made once, when the addon loads.
  const available = native!.crcInfo!().available;
  const big = Buffer.concat(Array.from({ length: 64 }, (_, k) => packet(80, 200 + k, k)));
  const script = `
    const { loadNative } = await import(process.env.T_NATIVE);
    const n = loadNative();
    const b = Buffer.from(process.env.T_DGRAM, 'base64');
    console.log(JSON.stringify({
      info: n.crcInfo(), big: n.crcBench(65536, 5), small: n.crcBench(40, 5),
      ver: n.icrcVerify(b, 0, b.length, 80, ${SRC}, ${SPORT}, ${DST}, ${DPORT}, -1),
      tx: n.txCrc32(0x1234, b, 3, 4000), txSmall: n.txCrc32(0x1234, b, 5, 40),
    }));`;
  type Out = {
    info: { impl: string; requested: string | null };
    big: { impl: string; crc: number };
    small: { impl: string };
    ver: number[];
    tx: number;
    txSmall: number;
  };
  const run = (force: string | null) => {
    const env: NodeJS.ProcessEnv = { ...process.env, T_NATIVE: new URL('../../src/native.js', import.meta.url).href, T_DGRAM: big.toString('base64') };
    if (force !== null) env['SOFTROCE_CRC'] = force;
    else delete env['SOFTROCE_CRC'];
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { env, encoding: 'utf8', timeout: 20000 });
    t.equal(r.status, 0, `child ran (SOFTROCE_CRC=${force})${r.status !== 0 && r.stderr ? ': ' + r.stderr.slice(0, 300) : ''}`);
    return { out: JSON.parse(r.stdout || 'null') as Out | null, stderr: r.stderr };
  };
  const normal = run(null).out;
  t.equal(normal?.info.requested, null, 'no SOFTROCE_CRC: nothing requested');
  t.same(normal?.ver, [0xffffffff, 0xffffffff], 'normal: RX verifies 64 GSO segments (IDs 0..63, the ID shift)');
  const absent = ORDER.find((k) => !available.includes(k));
  for (const force of [...available, ...(absent ? [absent] : []), 'nonesuch']) {
    const { out, stderr } = run(force);
    const k = ORDER.indexOf(force as CrcImplName);
    // What must run: the choice if present; if absent, the next present one down the order; unknown: the default.
    const expect = k < 0 ? ORDER.find((x) => available.includes(x))! : ORDER.slice(k).find((x) => available.includes(x))!;
    t.equal(out?.info.requested, force, `${force}: requested`);
    t.match(out?.info.impl, NAME[expect], `${force}: ${out?.info.impl} runs`);
    t.equal(out?.big.impl, ranFor(out?.info.impl ?? '', 65536), `${force}: crcBench at 64 KiB names it`);
    t.equal(out?.small.impl, ranFor(out?.info.impl ?? '', 40), `${force}: at 40 B, ${out?.small.impl}`);
    t.equal(out?.big.crc, normal?.big.crc, `${force}: the same CRC as the default`);
    t.equal(out?.tx, crc32(0x1234, big, 3, 4003), `${force}: txCrc32 equals icrc.ts`);
    t.equal(out?.txSmall, crc32(0x1234, big, 5, 45), `${force}: a small piece too`);
    t.same(out?.ver, [0xffffffff, 0xffffffff], `${force}: RX verifies the 64 GSO segments`);
    if (force === absent) t.match(stderr, new RegExp(`SOFTROCE_CRC=${force} is not supported here; the CRC is ${out?.info.impl}`), `${force}: says which ran`);
    else if (force === 'nonesuch') t.match(stderr, /SOFTROCE_CRC=nonesuch is not one of/, 'unknown: says so');
    else t.equal(stderr, '', `${force}: nothing on stderr`);
  }
  t.end();
});
