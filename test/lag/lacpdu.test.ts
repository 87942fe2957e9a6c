/**
 * The LACPDU codec (src/lag/lacpdu.ts) against a frame written out by hand from IEEE 802.1AX-2014
 * 6.4.2.3 (Figure 6-7) and teamd's struct lacpdu: emit gives exactly these bytes, parse gives back the
 * fields, a malformed PDU or another slow protocol is refused; where tshark is installed it decodes our
 * frame as LACP with the same fields.
 */
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { emitLacpdu, LACPDU_LEN, parseLacpdu, stateNames, type Lacpdu } from '../../src/lag/lacpdu.js';

const mac = (s: string): Uint8Array => Uint8Array.from(s.split(':').map((h) => parseInt(h, 16)));

// Actor: sys prio 65535, system 02:00:00:00:00:01, key 0, port prio 255, port 1, state 0x3d
// (ACTIVITY | AGGREGATION | SYNCHRONIZATION | COLLECTING | DISTRIBUTING). Partner: sys prio 32768,
// system 02:00:00:00:00:02, key 7, port prio 128, port 2, state 0x3f (the same and TIMEOUT).
const HAND = [
  '0180c2000002', // dst: slow protocols group
  '020000000101', // src: the port's MAC
  '8809', // Ethertype: slow protocols
  '01', // subtype LACP
  '01', // version 1
  '0114', // Actor TLV, length 20
  'ffff',
  '020000000001',
  '0000',
  '00ff',
  '0001',
  '3d', // actor info
  '000000', // reserved
  '0214', // Partner TLV, length 20
  '8000',
  '020000000002',
  '0007',
  '0080',
  '0002',
  '3f', // partner info
  '000000', // reserved
  '0310', // Collector TLV, length 16
  '0000', // collector max delay
  '00'.repeat(12), // reserved
  '0000', // Terminator TLV, length 0
  '00'.repeat(50), // reserved
].join('');

const PDU: Lacpdu = {
  src: mac('02:00:00:00:01:01'),
  actor: { systemPriority: 0xffff, system: mac('02:00:00:00:00:01'), key: 0, portPriority: 255, port: 1, state: 0x3d },
  partner: { systemPriority: 0x8000, system: mac('02:00:00:00:00:02'), key: 7, portPriority: 128, port: 2, state: 0x3f },
  collectorMaxDelay: 0,
};

t.test('emit gives the hand-checked bytes; parse gives the fields back', async (t) => {
  const f = emitLacpdu(PDU);
  t.equal(f.length, LACPDU_LEN);
  t.equal(HAND.length / 2, 124, 'the hand-written frame is 124 bytes');
  t.equal(Buffer.from(f).toString('hex'), HAND);
  const p = parseLacpdu(Buffer.from(HAND, 'hex'));
  t.ok(p);
  t.same(p, PDU);
  t.same(stateNames(0x3d), ['activity', 'aggregation', 'synchronization', 'collecting', 'distributing']);
  // A frame a NIC padded past 124 bytes parses the same.
  t.same(parseLacpdu(Buffer.concat([Buffer.from(HAND, 'hex'), Buffer.alloc(4)])), PDU);
});

t.test('parse refuses what is not a LACPDU, as teamd lacpdu_check does', async (t) => {
  const good = Buffer.from(HAND, 'hex');
  const bad = (off: number, v: number): Buffer => {
    const b = Buffer.from(good);
    b[off] = v;
    return b;
  };
  t.equal(parseLacpdu(good.subarray(0, 123)), null, 'short');
  t.equal(parseLacpdu(bad(13, 0x15)), null, 'another Ethertype');
  t.equal(parseLacpdu(bad(14, 0x02)), null, 'Marker protocol (subtype 2)');
  t.equal(parseLacpdu(bad(14, 0x03)), null, 'OAM (subtype 3)');
  t.equal(parseLacpdu(bad(17, 0x13)), null, 'actor info length 19');
  t.equal(parseLacpdu(bad(37, 0x15)), null, 'partner info length 21');
  t.equal(parseLacpdu(bad(57, 0x0f)), null, 'collector info length 15');
  t.equal(parseLacpdu(bad(73, 0x01)), null, 'terminator length 1');
  // 802.1AX: version, TLV types and reserved bytes are not checked by a receiver.
  t.ok(parseLacpdu(bad(15, 0x02)), 'version 2 is accepted');
  t.ok(parseLacpdu(bad(34, 0xaa)), 'a non-zero reserved byte is accepted');
});

const tshark = spawnSync('tshark', ['-v'], { encoding: 'utf8' });
const noTshark = tshark.error || tshark.status !== 0 ? 'tshark is not installed' : false;
t.test('tshark decodes our LACPDU with the same fields', { skip: noTshark }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'softroce-lacpdu-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const f = Buffer.from(emitLacpdu(PDU));
  // pcap: global header (LINKTYPE_ETHERNET) and one record.
  const g = Buffer.alloc(24);
  g.writeUInt32LE(0xa1b2c3d4, 0);
  g.writeUInt16LE(2, 4);
  g.writeUInt16LE(4, 6);
  g.writeUInt32LE(65535, 16);
  g.writeUInt32LE(1, 20);
  const r = Buffer.alloc(16);
  r.writeUInt32LE(f.length, 8);
  r.writeUInt32LE(f.length, 12);
  const file = join(dir, 'lacpdu.pcap');
  writeFileSync(file, Buffer.concat([g, r, f]));
  const out = spawnSync('tshark', ['-r', file, '-V'], { encoding: 'utf8', timeout: 30_000 });
  t.equal(out.status, 0, out.stderr);
  const v = out.stdout;
  t.match(v, /Link Aggregation Control Protocol/);
  t.match(v, /Actor System Priority: 65535/);
  t.match(v, /Actor System ID: 02:00:00:00:00:01/);
  t.match(v, /Actor Port: 1\b/);
  t.match(v, /Actor State: 0x3d/);
  t.match(v, /Partner System Priority: 32768/);
  t.match(v, /Partner System: 02:00:00:00:00:02/);
  t.match(v, /Partner Key: 7\b/);
  t.match(v, /Synchronization: In Sync/);
  t.match(v, /Terminator \(0x00\)/);
  t.match(v, /Partner Port Priority: 128/);
  t.match(v, /Partner State: 0x3f/);
  t.notMatch(v, /[Mm]alformed|Expert Info \(Warn/, 'no malformed-packet warning');
});
