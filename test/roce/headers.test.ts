/** Header specs and views: bit coverage, deconstruct/construct, truncation. */
import t from 'tap';
import { readRepr, writeRepr, type HeaderSpec, type Repr } from '../../src/roce/wire/field.js';
import { BTH_SPEC, BthView } from '../../src/roce/wire/bth.js';
import {
  AETH_SPEC,
  ATMACK_SPEC,
  ATMETH_SPEC,
  AethView,
  AtomicEthView,
  DETH_SPEC,
  DethView,
  FETH_SPEC,
  IETH_SPEC,
  IMMDT_SPEC,
  RDETH_SPEC,
  RETH_SPEC,
  RethView,
} from '../../src/roce/wire/exth.js';
import { GRH_SPEC } from '../../src/roce/wire/grh.js';
import { ETH_SPEC, IPV4_SPEC, IPV6_SPEC, UDP_SPEC, ipv4HeaderChecksum } from '../../src/roce/wire/net.js';
import { Malformed, PktInfo, parseIb } from '../../src/roce/packet.js';
import { Rng } from '../helpers.js';

const SPECS: HeaderSpec[] = [
  BTH_SPEC,
  RDETH_SPEC,
  DETH_SPEC,
  RETH_SPEC,
  AETH_SPEC,
  ATMETH_SPEC,
  ATMACK_SPEC,
  IMMDT_SPEC,
  IETH_SPEC,
  FETH_SPEC,
  GRH_SPEC,
  ETH_SPEC,
  IPV4_SPEC,
  IPV6_SPEC,
  UDP_SPEC,
];

t.test('every bit of every header belongs to exactly one field', (t) => {
  for (const s of SPECS) {
    const owner = new Array<number>(s.length * 8).fill(0);
    for (const f of s.fields) {
      if (f[2] === 'bytes') {
        for (let b = f[1] * 8; b < (f[1] + f[3]) * 8; b++) owner[b]!++;
        continue;
      }
      const width = f[3];
      const nbytes = Math.ceil((f[2] + width) / 8);
      // bit index counted from the MSB of the word at f[1]
      for (let k = 0; k < width; k++) {
        const fromMsb = nbytes * 8 - 1 - (f[2] + k);
        owner[f[1] * 8 + fromMsb]!++;
      }
    }
    t.ok(
      owner.every((c) => c === 1),
      `${s.name}: ${s.length * 8} bits covered once`,
    );
  }
  t.end();
});

t.test('random headers: read(write(r)) = r and write(read(b)) = b', (t) => {
  const rng = new Rng(5);
  for (const s of SPECS) {
    for (let i = 0; i < 50; i++) {
      const b = Buffer.from(rng.bytes(s.length));
      const r = readRepr<Repr>(s, b, 0);
      const out = Buffer.alloc(s.length + 4, 0xa5);
      t.equal(writeRepr(s, r, out, 2), s.length);
      if (!out.subarray(2, 2 + s.length).equals(b)) t.fail(`${s.name}: re-emit differs`);
      t.equal(out[0], 0xa5, 'nothing written before');
      t.equal(out[s.length + 2], 0xa5, 'nothing written after');
      t.same(readRepr(s, out, 2), r);
    }
  }
  t.end();
});

t.test('BTH view: deconstruct a known header and construct it in place', (t) => {
  // rc_pingpong.pcap: RC SEND_FIRST, dest QP 0x13, PSN 0xa26e7f
  const b = Buffer.from('0000ffff00000013 00a26e7f'.replace(/ /g, ''), 'hex');
  const v = new BthView().bind(b, 0);
  t.equal(v.opcode, 0);
  t.equal(v.pkey, 0xffff);
  t.equal(v.destQp, 0x13);
  t.equal(v.psn, 0xa26e7f);
  t.equal(v.ackReq, false);
  const out = Buffer.alloc(16, 0xa5);
  const w = new BthView(out, 2);
  w.opcode = 0x0a;
  w.se = true;
  w.migReq = false;
  w.padCnt = 3;
  w.tver = 0;
  w.pkey = 0x8001;
  w.fecn = false;
  w.becn = true;
  w.destQp = 0xabcdef;
  w.ackReq = true;
  w.psn = 0xfffffe;
  // byte 4 low bits and byte 8 low bits keep the 0xa5 fill: setters touch only their bits.
  t.equal(out.subarray(2, 14).toString('hex'), '0ab08001' + '65' + 'abcdef' + 'a5' + 'fffffe');
  t.equal(out[0], 0xa5);
  t.equal(out[14], 0xa5);
  t.equal(w.padCnt, 3);
  t.equal(w.se, true);
  t.equal(w.becn, true);
  t.equal(w.fecn, false);
  t.end();
});

t.test('extended header views', (t) => {
  const b = Buffer.alloc(40);
  const r = new RethView().bind(b, 0);
  r.setVa(0x00007f12, 0x3456789a);
  r.rkey = 0xdeadbeef;
  r.dmaLen = 65536;
  t.equal(r.va, 0x00007f123456789an);
  t.equal(r.vaHi, 0x7f12);
  t.equal(r.vaLo, 0x3456789a);
  t.equal(r.rkey, 0xdeadbeef);
  t.equal(r.dmaLen, 65536);
  t.same(readRepr(RETH_SPEC, b, 0), { va: 0x00007f123456789an, rkey: 0xdeadbeef, dmaLen: 65536 });
  const a = new AethView().bind(b, 0);
  a.syndrome = 0x60;
  a.msn = 0x123456;
  t.same(readRepr(AETH_SPEC, b, 0), { syndrome: 0x60, msn: 0x123456 });
  const d = new DethView().bind(b, 0);
  d.qkey = 0x80010000;
  d.srcQp = 1;
  t.same(readRepr(DETH_SPEC, b, 0), { qkey: 0x80010000, resv: 0, srcQp: 1 });
  const at = new AtomicEthView().bind(b, 0);
  at.va = 0x1000n;
  at.rkey = 7;
  at.swapAdd = 0xffffffffffffffffn;
  at.compare = 2n;
  t.same(readRepr(ATMETH_SPEC, b, 0), { va: 0x1000n, rkey: 7, swapAdd: 0xffffffffffffffffn, compare: 2n });
  t.end();
});

t.test('parseIb: truncation and bad fields are reported, never thrown', (t) => {
  const info = new PktInfo();
  const b = Buffer.from('0a00ffff000000110000000100000000000000000000000000000000' + '00000000' + '00000000', 'hex');
  // RC_RDMA_WRITE_ONLY needs BTH+RETH = 28 bytes + ICRC.
  t.equal(parseIb(info, b, 0, 32), Malformed.NONE, 'write-only with 0 bytes payload');
  for (let len = 0; len < 32; len++) {
    const r = parseIb(info, b, 0, len);
    t.not(r, Malformed.NONE, `length ${len} rejected`);
  }
  const tver = Buffer.from(b);
  tver[1] = 1;
  t.equal(parseIb(info, tver, 0, 32), Malformed.BAD_TVER);
  const op = Buffer.from(b);
  op[0] = 0x18;
  t.equal(parseIb(info, op, 0, 32), Malformed.BAD_OPCODE);
  const pad = Buffer.from(b);
  pad[1] = 0x30;
  t.equal(parseIb(info, pad, 0, 32), Malformed.BAD_PAD, 'pad count larger than the payload');
  const ack = Buffer.from('11000000000000110000000100000000' + '00000000', 'hex');
  t.equal(parseIb(info, ack, 0, 20), Malformed.NONE, 'ACK');
  t.equal(parseIb(info, Buffer.concat([ack.subarray(0, 16), Buffer.alloc(8)]), 0, 24), Malformed.BAD_LENGTH, 'ACK with payload');
  t.end();
});

t.test('IPv4 header checksum (RFC 791)', (t) => {
  const h = Buffer.from('45010040047840004011b4d5c0a80007c0a80007', 'hex');
  t.equal(ipv4HeaderChecksum(h, 0), 0xb4d5);
  t.end();
});
