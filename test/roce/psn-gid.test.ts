/** 24-bit PSN arithmetic and GID formats. */
import t from 'tap';
import { PSN_MASK, packetsFor, padFor, psnAdd, psnCompare, psnDiff, psnInRange } from '../../src/roce/psn.js';
import { gidFromHex, gidFromString, gidToHex, gidToString, ipv4ToGid, macToDefaultGid } from '../../src/roce/gid.js';

t.test('PSN wraps at 2^24', (t) => {
  t.equal(psnAdd(PSN_MASK, 1), 0);
  t.equal(psnAdd(0xfffffe, 5), 3);
  t.equal(psnDiff(2, 0xfffffe), 4, 'after the wrap');
  t.equal(psnDiff(0xfffffe, 2), -4, 'before the wrap');
  t.ok(psnCompare(0, 0xffffff) > 0);
  t.ok(psnCompare(0x7fffff, 0) > 0);
  t.ok(psnCompare(0x800000, 0) < 0, 'half the space away counts as before');
  t.ok(psnInRange(1, 0xfffffe, 4));
  t.notOk(psnInRange(2, 0xfffffe, 4));
  t.equal(packetsFor(0, 1024), 1, 'a zero-length message still uses one PSN');
  t.equal(packetsFor(4096, 1024), 4);
  t.equal(packetsFor(4097, 1024), 5);
  t.same([0, 1, 2, 3, 4, 5].map(padFor), [0, 3, 2, 1, 0, 3]);
  t.end();
});

t.test('GIDs print as inet_ntop does', (t) => {
  t.equal(gidToString(ipv4ToGid('198.18.0.11')), '::ffff:198.18.0.11');
  t.equal(gidToString(macToDefaultGid(new Uint8Array([0x52, 0x54, 0x00, 0xc6, 0x12, 0x0b]))), 'fe80::5054:ff:fec6:120b', 'as ibv_devinfo shows the lab guest');
  t.equal(gidToString(new Uint8Array(16)), '::');
  t.equal(gidToString(gidFromString('::1')), '::1');
  t.equal(gidToString(gidFromString('fd00:0:0:1::2')), 'fd00:0:0:1::2');
  t.equal(gidToString(gidFromString('1:0:0:2:0:0:0:3')), '1:0:0:2::3');
  t.same(gidFromString('10.0.0.1'), ipv4ToGid('10.0.0.1'), 'a bare IPv4 address is mapped');
  t.equal(gidToHex(ipv4ToGid('198.18.0.12')), '00000000000000000000ffffc612000c', 'the pingpong exchange form');
  t.same(gidFromHex('00000000000000000000ffffc612000c'), ipv4ToGid('198.18.0.12'));
  t.throws(() => gidFromString('1::2::3'), RangeError);
  t.throws(() => gidFromHex('xyz'), RangeError);
  t.end();
});
