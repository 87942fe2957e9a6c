/**
 * Fuzz: 100,000+ random and mutated frames through the decoder. Malformed
 * input is counted, never thrown, and the summary always adds up.
 */
import t from 'tap';
import { readFileSync } from 'node:fs';
import { readCapture } from '../../src/roce/pcap.js';
import { decodeFrame, LinkType } from '../../src/roce/framing.js';
import { dumpCapture } from '../../src/roce/dump.js';
import { PcapWriter } from '../../src/roce/pcap.js';
import { goldenFiles, Rng } from '../helpers.js';

const LINKS = [LinkType.ETHERNET, LinkType.RAW, LinkType.LINUX_SLL, LinkType.LINUX_SLL2, LinkType.NULL, LinkType.IPV4, LinkType.IPV6, 12, 14, 999];

t.test('100,000 random and mutated frames: no exception escapes', (t) => {
  const rng = new Rng(0xf00d);
  const seeds: Buffer[] = [];
  for (const f of goldenFiles()) for (const r of readCapture(readFileSync(f)).records) seeds.push(Buffer.from(r.data));
  t.ok(seeds.length > 1000, 'seed corpus from the golden captures');
  let thrown = 0;
  let roce = 0;
  let malformed = 0;
  let ok = 0;
  let bad = 0;
  const N = 100_000;
  for (let i = 0; i < N; i++) {
    let frame: Buffer;
    const mode = rng.int(4);
    if (mode === 0) {
      frame = Buffer.from(rng.bytes(rng.int(200)));
    } else {
      frame = Buffer.from(seeds[rng.int(seeds.length)]!);
      const flips = 1 + rng.int(mode === 3 ? 16 : 3);
      for (let k = 0; k < flips && frame.length; k++) frame[rng.int(frame.length)] = rng.int(256);
      if (mode === 2) frame = frame.subarray(0, rng.int(frame.length + 1)); // truncate
      if (mode === 3 && rng.int(2)) frame = Buffer.concat([frame, Buffer.from(rng.bytes(rng.int(64)))]);
    }
    const link = mode === 0 ? LINKS[rng.int(LINKS.length)]! : LinkType.ETHERNET;
    try {
      const d = decodeFrame(frame, link);
      if (d.roce) {
        roce++;
        if (d.malformed) malformed++;
        else if (d.icrc === 'ok') ok++;
        else bad++;
      }
    } catch (e) {
      thrown++;
      if (thrown < 5) t.fail(`threw on frame ${frame.toString('hex')}: ${(e as Error).message}`);
    }
  }
  t.equal(thrown, 0, 'no exception');
  t.equal(roce, malformed + ok + bad, 'every RoCE frame is classified');
  t.ok(malformed > 1000 && bad > 1000, `malformed=${malformed} bad=${bad} ok=${ok} of roce=${roce}`);
  t.end();
});

t.test('damaged capture files end with an error, not an exception', (t) => {
  const rng = new Rng(31);
  const w = new PcapWriter(LinkType.ETHERNET);
  for (let i = 0; i < 20; i++) w.write(rng.bytes(100));
  const file = w.toBuffer();
  for (let cut = 0; cut < file.length; cut += 7) {
    const r = dumpCapture(file.subarray(0, cut));
    t.ok(r.summary.packets <= 20);
    if (cut > 24 && cut < file.length && (cut - 24) % 116 !== 0) t.ok(r.error, `cut at ${cut} reported`);
  }
  const junk = dumpCapture(Buffer.from(rng.bytes(1000)));
  t.ok(junk.error, 'random bytes are not a capture');
  t.equal(junk.summary.packets, 0);
  t.end();
});
