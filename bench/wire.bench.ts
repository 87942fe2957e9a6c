/**
 * Wire micro-benchmark: parse + ICRC verify of one RoCEv2/IPv4 packet at 64 B,
 * 1 KiB and 4 KiB payloads, next to the raw CRC-32 speed over the same bytes
 * in the same run (the ceiling: the ICRC is one CRC-32 pass plus masking).
 *
 *   npm run bench            (after npm install)
 */
import { createRequire } from 'node:module';
import * as zlib from 'node:zlib';
import { buildRoceV2, emitFrame, makeIb, decodeFrame, LinkType } from '../src/roce/framing.js';
import { PktInfo, parseIb } from '../src/roce/packet.js';
import { crc32Js, icrcV2Ipv4, inferIpv4Id, readIcrc } from '../src/roce/icrc.js';

interface BenchTarget {
  name: string;
  hz: number;
  stats: { rme: number };
}
interface Suite {
  add(name: string, fn: () => void): Suite;
  on(ev: 'cycle', fn: (e: { target: BenchTarget }) => void): Suite;
  run(o: { async: boolean }): void;
}
const Benchmark = createRequire(import.meta.url)('benchmark') as { Suite: new () => Suite };

const zcrc = (zlib as unknown as { crc32?: (d: Uint8Array, v?: number) => number }).crc32;
let sink = 0;

function frameFor(payloadLen: number): Buffer {
  const payload = new Uint8Array(payloadLen);
  for (let i = 0; i < payloadLen; i++) payload[i] = (i * 31) & 0xff;
  const ib = makeIb({ opcode: 0x04, destQp: 0x11, psn: 0x123456, ackReq: true, payload });
  return emitFrame(buildRoceV2({ src: new Uint8Array([127, 0, 0, 1]), dst: new Uint8Array([127, 0, 0, 2]), srcPort: 0xd872 }, ib));
}

const rows: string[] = [];
const fmt = (t: BenchTarget, bytes: number, ceil?: number): string => {
  const gbs = (t.hz * bytes) / 1e9;
  const ratio = ceil ? `  ${((gbs / ceil) * 100).toFixed(0).padStart(4)}% of raw zlib CRC-32` : '';
  return `${t.name.padEnd(44)} ${(t.hz / 1e6).toFixed(3).padStart(8)} Mpkt/s ${gbs.toFixed(2).padStart(7)} GB/s  ±${t.stats.rme.toFixed(1)}%${ratio}`;
};

for (const size of [64, 1024, 4096]) {
  const frame = frameFor(size);
  const ibLen = frame.length - 28;
  const info = new PktInfo();
  const results: BenchTarget[] = [];
  const suite = new Benchmark.Suite();
  if (zcrc)
    suite.add(`${size} B: raw CRC-32 (zlib) over the packet`, () => {
      sink ^= zcrc(frame);
    });
  suite
    .add(`${size} B: raw CRC-32 (JS slicing-by-8)`, () => {
      sink ^= crc32Js(0, frame, 0, frame.length);
    })
    .add(`${size} B: parse + ICRC verify (hot path)`, () => {
      if (parseIb(info, frame, 28, ibLen) === 0) sink ^= icrcV2Ipv4(frame, 0, 28, info.icrcOff) === readIcrc(frame, info.icrcOff) ? 1 : 2;
    })
    .add(`${size} B: parse + ICRC verify, IPv4 ID recovered`, () => {
      if (parseIb(info, frame, 28, ibLen) === 0) sink ^= inferIpv4Id(0x7f000001, 0x7f000002, 0xd872, 4791, frame, 28, info.icrcOff);
    })
    .add(`${size} B: decodeFrame to a Repr (control path)`, () => {
      sink ^= decodeFrame(frame, LinkType.RAW).icrc === 'ok' ? 1 : 0;
    })
    .on('cycle', (e) => {
      results.push(e.target);
    })
    .run({ async: false });
  const ceil = zcrc ? (results[0]!.hz * frame.length) / 1e9 : undefined;
  rows.push(`-- payload ${size} B (frame ${frame.length} B) --`);
  for (const r of results) rows.push(fmt(r, frame.length, ceil));
}
console.log(rows.join('\n'));
console.log(`(sink ${sink & 1})`);
