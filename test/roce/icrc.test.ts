/** ICRC: published vectors, the JS CRC against zlib, and the IPv4 ID recovery. */
import t from 'tap';
import * as zlib from 'node:zlib';
import {
  ICRC_SEED,
  crc32,
  crc32Js,
  icrcV1,
  icrcV2Ipv4,
  icrcV2Ipv4Parts,
  icrcV2Ipv4PartsS,
  icrcV2Ipv6,
  icrcV2Ipv6Parts,
  inferIpv4Id,
  icrcIdDelta,
  readIcrc,
  readIcrcS,
  writeIcrc,
} from '../../src/roce/icrc.js';
import { decodeFrame, LinkType } from '../../src/roce/framing.js';
import { gidFromString } from '../../src/roce/gid.js';
import { ipv4HeaderChecksum, udpChecksum } from '../../src/roce/wire/net.js';
import { Rng } from '../helpers.js';

const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ''), 'hex');

t.test("the masked-LRH seed is rxe's 0xDEBB20E3 state", (t) => {
  t.equal(~ICRC_SEED >>> 0, 0xdebb20e3);
  t.end();
});

t.test('ConnectX-4 Lx CNP (scapy roce.uts): wire ICRC 82 fd 00 2a', (t) => {
  const pkt = hex(`45c2003c718c4000401191610a0011010a001201 000012b700280000 8100ffff40000118 00000000
    00000000000000000000000000000000 82fd002a`);
  t.equal(icrcV2Ipv4(pkt, 0, 28, pkt.length - 4), 0x2a00fd82);
  const d = decodeFrame(pkt, LinkType.RAW);
  t.equal(d.icrc, 'ok');
  t.equal(d.frame?.ib.bth.opcode, 0x81, 'CNP');
  t.equal(d.frame?.ib.bth.becn, 1);
  t.end();
});

t.test('scapy UC SEND_ONLY packet: IPv4 and UDP checksums, ICRC round trip', (t) => {
  // scapy roce.uts: 192.168.0.7 -> 192.168.0.7, tos 1, id 1144, DF, ttl 64; UDP 49152 -> 4791;
  // UC_SEND_ONLY, M=1, PadCnt 2, DestQP 211, PSN 13571856; 18 payload bytes + 2 pad.
  // roce-wire.md d.3 quotes ICRC 0xF353F378 and UDP checksum 0xACA2 for it. Rebuilt from the
  // published fields, neither reproduces (an independent Python zlib computation agrees with
  // this code, and both agree on the ConnectX-4 vector and every rxe capture): scapy's built
  // bytes evidently differ from its constructor arguments. So only the IPv4 checksum is taken
  // from it; our UDP checksum is checked against a hand computation below.
  const payload = hex('4630818be28935d90e9a95505401be885e500000');
  const ip = hex('45010040047840004011b4d5c0a80007c0a80007');
  const udp = hex('c00012b7002c0000');
  const bth = hex('2460ffff000000d300cf1610');
  const pkt = Buffer.concat([ip, udp, bth, payload, Buffer.alloc(4)]);
  t.equal(ipv4HeaderChecksum(pkt, 0), 0xb4d5, 'IPv4 header checksum');
  t.equal(udpChecksum(ip.subarray(12, 16), ip.subarray(16, 20), pkt, 20, 44), 0x7a89, 'UDP checksum with a zero ICRC placeholder (RFC 768)');
  const c = icrcV2Ipv4(pkt, 0, 28, pkt.length - 4);
  writeIcrc(pkt, pkt.length - 4, c);
  t.equal(readIcrc(pkt, pkt.length - 4), c, 'written little-endian, read back');
  t.equal(decodeFrame(pkt, LinkType.RAW).icrc, 'ok');
  t.equal(icrcV2Ipv4Parts(0xc0a80007, 0xc0a80007, 1144, 0x4000, 49152, 4791, pkt, 28, pkt.length - 4), c, 'from parts = from the frame');
  t.end();
});

t.test('RoCEv2/IPv6 and RoCEv1 vectors (roce-wire.md d.4)', (t) => {
  const bthPay = hex('0400ffff00000011 80123456 70696e67');
  const v6 = Buffer.concat([hex('60012345 001c 11 40'), gidFromString('fd00::1'), gidFromString('fd00::2'), hex('d87212b7001c0000'), bthPay, Buffer.alloc(4)]);
  t.equal(icrcV2Ipv6(v6, 0, 48, v6.length - 4), 0xbdc8cbf5);
  t.equal(icrcV2Ipv6Parts(gidFromString('fd00::1'), gidFromString('fd00::2'), 0xd872, 4791, v6, 48, v6.length - 4), 0xbdc8cbf5, 'from parts');
  const grh = Buffer.concat([hex('60012345 0014 1b 40'), gidFromString('fd00::1'), gidFromString('fd00::2')]);
  const v1 = Buffer.concat([grh, bthPay, Buffer.alloc(4)]);
  t.equal(icrcV1(v1, 0, v1.length - 4), 0xf8a34245);
  t.end();
});

t.test('JS CRC-32 matches zlib on random data, chained at random cuts', (t) => {
  const rng = new Rng(7);
  const z = (zlib as unknown as { crc32?: (d: Uint8Array, v?: number) => number }).crc32;
  for (let i = 0; i < 200; i++) {
    const b = rng.bytes(rng.int(5000));
    const cut = rng.int(b.length + 1);
    const whole = crc32Js(0, b, 0, b.length);
    t.equal(crc32Js(crc32Js(0, b, 0, cut), b, cut, b.length), whole);
    t.equal(crc32(crc32(0, b, 0, cut), b, cut, b.length), whole);
    if (z) t.equal(z(b), whole);
  }
  t.end();
});

t.test('UDP GSO correction: the ICRC for ID k is the ICRC for ID 0 XOR icrcIdDelta(len + 20, k)', (t) => {
  const rng = new Rng(7);
  for (let i = 0; i < 200; i++) {
    const len = 12 + 4 * rng.int(1100) + 4;
    const pkt = Buffer.from(rng.bytes(len));
    const k = i < 64 ? i : rng.int(0x10000);
    const c0 = icrcV2Ipv4Parts(0x7f000001, 0x7f000002, 0, 0x4000, 4791, 4791, pkt, 0, len - 4);
    const ck = icrcV2Ipv4Parts(0x7f000001, 0x7f000002, k, 0x4000, 4791, 4791, pkt, 0, len - 4);
    t.equal((c0 ^ icrcIdDelta(len + 20, k)) >>> 0, ck, `len ${len}, ID ${k}`);
    // What a receiver sees: the corrected packet explains itself with ID k.
    writeIcrc(pkt, len - 4, (c0 ^ icrcIdDelta(len + 20, k)) >>> 0);
    t.equal(inferIpv4Id(0x7f000001, 0x7f000002, 4791, 4791, pkt, 0, len - 4), k | (1 << 16));
  }
  t.end();
});

t.test('IPv4 ID recovery: finds the ID and DF, rejects corruption', (t) => {
  const rng = new Rng(99);
  let rejected = 0;
  const trials = 300;
  for (let i = 0; i < trials; i++) {
    const len = 12 + 4 * rng.int(300) + 4;
    const pkt = Buffer.from(rng.bytes(len));
    const id = rng.int(0x10000);
    const df = rng.int(2);
    const c = icrcV2Ipv4Parts(0x7f000001, 0x7f000002, id, df ? 0x4000 : 0, 0xc000 + i, 4791, pkt, 0, len - 4);
    writeIcrc(pkt, len - 4, c);
    t.equal(inferIpv4Id(0x7f000001, 0x7f000002, 0xc000 + i, 4791, pkt, 0, len - 4), id | (df << 16));
    const bad = Buffer.from(pkt);
    let at = rng.int(len);
    if (at === 4) at = 5; // BTH byte 4 is masked out of the ICRC: flipping it is not corruption the ICRC sees
    bad[at]! ^= 1 << rng.int(8);
    if (inferIpv4Id(0x7f000001, 0x7f000002, 0xc000 + i, 4791, bad, 0, len - 4) === -1) rejected++;
  }
  // A flip near the ICRC can collide with ID bits with probability 2^-15; none expected here.
  t.equal(rejected, trials, 'every single-bit corruption is rejected');
  t.equal(readIcrc(Buffer.from([0x78, 0xf3, 0x53, 0xf3]), 0), 0xf353f378);
  t.end();
});

t.test('the signed ICRC forms are the unsigned ones modulo 2^32', async (t) => {
  const pkt = new Uint8Array(64);
  let high = 0;
  for (let k = 0; k < 64; k++) {
    for (let i = 0; i < pkt.length; i++) pkt[i] = (i * 31 + k * 7) & 0xff;
    const u = icrcV2Ipv4Parts(0x7f000001, 0x7f000002, k, 0x4000, 4791, 4791, pkt, 0, pkt.length - 4);
    const s = icrcV2Ipv4PartsS(0x7f000001, 0x7f000002, k, 0x4000, 4791, 4791, pkt, 0, pkt.length - 4);
    if (u >= 0x80000000) high++;
    t.equal(s >>> 0, u);
    t.equal(s | 0, s, 'signed 32-bit');
    writeIcrc(pkt, pkt.length - 4, s);
    t.equal(readIcrc(pkt, pkt.length - 4), u, 'writeIcrc takes the signed form');
    t.equal(readIcrcS(pkt, pkt.length - 4), s);
  }
  t.ok(high > 0 && high < 64, `both halves of the range seen (${high} of 64 at or above 2^31)`);
});
