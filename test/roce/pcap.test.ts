/** Capture formats: pcapng, big-endian and nanosecond pcap, Linux cooked and raw-IP link types. */
import t from 'tap';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { readCapture, PcapWriter } from '../../src/roce/pcap.js';
import { dumpCapture } from '../../src/roce/dump.js';
import { LinkType } from '../../src/roce/framing.js';
import { capturesDir } from '../helpers.js';

const golden = (): Buffer => readFileSync(join(capturesDir(), 'rc_pingpong_small.pcap'));
const EXPECT = { packets: 51, roce: 40, icrcOk: 40, icrcBad: 0, malformed: 0, unverifiable: 0 };

function toPcapng(file: Buffer, bigEndian: boolean): Buffer {
  const cap = readCapture(file);
  const blocks: Buffer[] = [];
  const u32 = (b: Buffer, v: number, o: number): void => {
    if (bigEndian) b.writeUInt32BE(v, o);
    else b.writeUInt32LE(v, o);
  };
  const u16 = (b: Buffer, v: number, o: number): void => {
    if (bigEndian) b.writeUInt16BE(v, o);
    else b.writeUInt16LE(v, o);
  };
  const shb = Buffer.alloc(28);
  shb.writeUInt32LE(0x0a0d0d0a, 0);
  u32(shb, 28, 4);
  u32(shb, 0x1a2b3c4d, 8);
  u16(shb, 1, 12);
  shb.fill(0xff, 16, 24);
  u32(shb, 28, 24);
  blocks.push(shb);
  // IDB with an if_tsresol option of 9 (nanoseconds).
  const idb = Buffer.alloc(28);
  u32(idb, 1, 0);
  u32(idb, 28, 4);
  u16(idb, cap.records[0]!.linkType, 8);
  u32(idb, 65535, 12);
  u16(idb, 9, 16);
  u16(idb, 1, 18);
  idb[20] = 9;
  u32(idb, 28, 24);
  blocks.push(idb);
  for (const r of cap.records) {
    const padded = (r.data.length + 3) & ~3;
    const len = 32 + padded;
    const b = Buffer.alloc(len);
    const ns = BigInt(Math.round(r.time * 1e9));
    u32(b, 6, 0);
    u32(b, len, 4);
    u32(b, 0, 8);
    u32(b, Number(ns >> 32n), 12);
    u32(b, Number(ns & 0xffffffffn), 16);
    u32(b, r.data.length, 20);
    u32(b, r.origLen, 24);
    r.data.copy(b, 28);
    u32(b, len, len - 4);
    blocks.push(b);
  }
  return Buffer.concat(blocks);
}

t.test('pcapng, both byte orders', (t) => {
  for (const be of [false, true]) {
    const r = dumpCapture(toPcapng(golden(), be));
    t.equal(r.format, 'pcapng');
    t.equal(r.error, undefined);
    t.same(r.summary, EXPECT, be ? 'big-endian' : 'little-endian');
  }
  t.end();
});

t.test('big-endian classic pcap with nanosecond timestamps', (t) => {
  const src = golden();
  const cap = readCapture(src);
  const out: Buffer[] = [];
  const h = Buffer.alloc(24);
  h.writeUInt32BE(0xa1b23c4d, 0);
  h.writeUInt16BE(2, 4);
  h.writeUInt16BE(4, 6);
  h.writeUInt32BE(65535, 16);
  h.writeUInt32BE(1, 20);
  out.push(h);
  for (const r of cap.records) {
    const rh = Buffer.alloc(16);
    rh.writeUInt32BE(Math.floor(r.time), 0);
    rh.writeUInt32BE(123456789, 4);
    rh.writeUInt32BE(r.data.length, 8);
    rh.writeUInt32BE(r.origLen, 12);
    out.push(rh, r.data);
  }
  const res = dumpCapture(Buffer.concat(out));
  t.same(res.summary, EXPECT);
  t.end();
});

t.test('Linux cooked (v1, v2) and raw IP link types', (t) => {
  const cap = readCapture(golden());
  const variants: Array<[number, (eth: Buffer) => Buffer]> = [
    [LinkType.RAW, (e) => e.subarray(14)],
    [LinkType.IPV4, (e) => e.subarray(14)],
    [
      LinkType.LINUX_SLL,
      (e) => {
        const h = Buffer.alloc(16);
        h.writeUInt16BE(6, 4);
        e.copy(h, 6, 6, 12);
        h.writeUInt16BE(e.readUInt16BE(12), 14);
        return Buffer.concat([h, e.subarray(14)]);
      },
    ],
    [
      LinkType.LINUX_SLL2,
      (e) => {
        const h = Buffer.alloc(20);
        h.writeUInt16BE(e.readUInt16BE(12), 0);
        h.writeUInt32BE(3, 4);
        return Buffer.concat([h, e.subarray(14)]);
      },
    ],
  ];
  for (const [lt, conv] of variants) {
    const w = new PcapWriter(lt);
    for (const r of cap.records) w.write(conv(r.data), r.time);
    const res = dumpCapture(w.toBuffer());
    t.same(res.summary, EXPECT, `link type ${lt}`);
  }
  t.end();
});

t.test('a RoCE frame cut by the snaplen is malformed (truncated)', (t) => {
  const cap = readCapture(golden());
  const w = new PcapWriter(LinkType.ETHERNET);
  const roce = cap.records.filter((r) => r.data.length > 60 && r.data.readUInt16BE(36) === 4791);
  for (const r of roce.slice(0, 5)) w.write(r.data.subarray(0, 60), r.time, r.data.length);
  const res = dumpCapture(w.toBuffer());
  t.same(res.summary, { packets: 5, roce: 5, icrcOk: 0, icrcBad: 0, malformed: 5, unverifiable: 0 });
  t.equal(res.packets[0]!.malformed, 'truncated');
  t.end();
});
