/**
 * The addon's one CRC-32 (native/crc32.cc), shared by the TX and RX fast paths: equal to icrc.ts's
 * CRC-32 at every piece size on both sides of the 512-byte small-piece rule, one benchmark export
 * (crcBench) that names the CRC that really ran for a size, and one switch (SOFTROCE_CRC=slice8) that
 * puts the whole addon (TX's txCrc32, RX's ICRC check with its ID shift) on the portable CRC.
 * No traffic: pure computation (the RX check is fed a datagram built here).
 */
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { crc32, icrcV2Ipv4Parts, writeIcrc } from '../../src/roce/icrc.js';
import { loadNative } from '../../src/native.js';
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

t.test('txCrc32 equals icrc.ts at every size around the small-piece rule, chained across it', { skip }, (t) => {
  const n = native!;
  const r = new Rng(85);
  const b = Buffer.alloc(9000);
  for (let i = 0; i < b.length; i++) b[i] = r.next() & 0xff;
  let bad = 0;
  for (let len = 0; len <= 1100; len++) {
    const off = len % 13;
    if (n.txCrc32!(0x5eed, b, off, len) !== crc32(0x5eed, b, off, off + len)) bad++;
  }
  t.equal(bad, 0, 'lengths 0..1100 (table below 512 B, zlib from 512 B when found)');
  // A chain of a 511-byte (table) piece, a 512-byte (zlib) piece and a 7-byte tail: one CRC.
  const c1 = n.txCrc32!(0, b, 0, 511)!;
  const c2 = n.txCrc32!(c1, b, 511, 512)!;
  t.equal(n.txCrc32!(c2, b, 1023, 7), crc32(0, b, 0, 1030), 'chain 511 + 512 + 7');
  t.equal(n.txCrc32!(0, b, 8990, 11), null, 'out of the buffer: null');
  t.end();
});

t.test('crcBench: the one benchmark, the same CRC both ways, and the implementation that ran', { skip }, (t) => {
  const n = native!;
  for (const bytes of [40, 511, 512, 4096, 65536]) {
    const fast = n.crcBench!(bytes, 50)!;
    const port = n.crcBench!(bytes, 50, true)!;
    t.equal(fast.crc, port.crc, `${bytes} B: zlib-or-table and slice-by-8 agree`);
    t.ok(fast.nsPerCall > 0 && fast.gbps > 0, `${bytes} B: ${fast.gbps.toFixed(2)} GB/s (${fast.impl}), portable ${port.gbps.toFixed(2)} GB/s`);
    t.equal(port.impl, 'slice-by-8', `${bytes} B: the portable run says so`);
    // Under 512 bytes the table runs even when zlib was found: the figure must not claim zlib.
    if (bytes < 512) t.equal(fast.impl, 'slice-by-8', `${bytes} B: the table ran`);
    else t.match(fast.impl, /^(Cr_z_crc32|crc32|slice-by-8)$/, `${bytes} B: ${fast.impl}`);
  }
  t.equal(n.crcBench!(0, 1), null, '0 bytes: null');
  t.same(
    Object.keys(n).filter((k) => /bench/i.test(k)),
    ['crcBench'],
    'exactly one benchmark export',
  );
  t.end();
});

t.test('SOFTROCE_CRC=slice8: the whole addon on the portable CRC, same answers', { skip }, (t) => {
  // A child process: the choice is made once, when the addon loads.
  const big = Buffer.concat(Array.from({ length: 64 }, (_, k) => packet(80, 200 + k, k)));
  const script = `
    const { loadNative } = await import(process.env.T_NATIVE);
    const n = loadNative();
    const b = Buffer.from(process.env.T_DGRAM, 'base64');
    console.log(JSON.stringify({
      big: n.crcBench(65536, 5), small: n.crcBench(40, 5),
      ver: n.icrcVerify(b, 0, b.length, 80, ${SRC}, ${SPORT}, ${DST}, ${DPORT}, -1),
      tx: n.txCrc32(0x1234, b, 3, 4000),
    }));`;
  const run = (force: boolean) => {
    const env: NodeJS.ProcessEnv = { ...process.env, T_NATIVE: new URL('../../src/native.js', import.meta.url).href, T_DGRAM: big.toString('base64') };
    if (force) env['SOFTROCE_CRC'] = 'slice8';
    else delete env['SOFTROCE_CRC'];
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { env, encoding: 'utf8', timeout: 20000 });
    t.equal(r.status, 0, `child ran (force ${force})${r.stderr ? ': ' + r.stderr.slice(0, 300) : ''}`);
    return JSON.parse(r.stdout || 'null') as { big: { impl: string; crc: number }; small: { impl: string }; ver: number[]; tx: number } | null;
  };
  const forced = run(true);
  const normal = run(false);
  t.equal(forced?.big.impl, 'slice-by-8', 'forced: 64 KiB runs the portable CRC');
  t.equal(forced?.small.impl, 'slice-by-8', 'forced: 40 B too');
  t.equal(forced?.big.crc, normal?.big.crc, 'forced and normal: the same CRC');
  t.equal(forced?.tx, crc32(0x1234, big, 3, 4003), 'forced: txCrc32 equals icrc.ts');
  t.same(forced?.ver, [0xffffffff, 0xffffffff], 'forced: RX verifies 64 GSO segments (IDs 0..63, the ID shift)');
  t.same(normal?.ver, [0xffffffff, 0xffffffff], 'normal: the same');
  t.end();
});
