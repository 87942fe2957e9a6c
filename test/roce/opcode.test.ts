/** The opcode table's invariants and a parse ⇄ emit round trip for every opcode. */
import t from 'tap';
import { HDR_LEN, Hdr, NUM_HDR, OPCODES, OPCODE_LEN, OPCODE_MASK, Op, Payload, hdrBit, opcodeName, opcodeByName } from '../../src/roce/opcode.js';
import { buildRoceV1, buildRoceV2, decodeFrame, emitFrame, makeIb, type IbInit } from '../../src/roce/framing.js';
import { gidFromString, ipv4ToGid } from '../../src/roce/gid.js';
import { Rng } from '../helpers.js';

const defined = OPCODES.filter((o) => o !== undefined);

t.test('table invariants', (t) => {
  // RC 25, UC 12, RD 24, UD 2, CNP 1.
  t.equal(defined.length, 25 + 12 + 24 + 2 + 1, 'opcode count');
  for (const e of defined) {
    let sum = 0;
    for (const h of e.headers) sum += HDR_LEN[h]!;
    t.equal(e.length, sum, `${e.name}: length = sum of header sizes`);
    t.equal(e.offset[Hdr.PAYLOAD], e.length, `${e.name}: payload offset = length`);
    t.equal(OPCODE_LEN[e.opcode], e.length);
    t.equal(OPCODE_MASK[e.opcode], e.mask >>> 0);
    for (let h = 0; h < NUM_HDR - 1; h++) {
      t.equal((e.mask & hdrBit(h as never)) !== 0, e.offset[h]! >= 0, `${e.name}: mask and offsets agree on header ${h}`);
    }
    t.equal(opcodeByName(e.name), e.opcode);
    t.ok(((e.mask & Op.REQ) !== 0) !== ((e.mask & Op.RESP) !== 0) || e.transport === 'CNP', `${e.name}: request xor response`);
    if (e.mask & Op.IMM) t.ok(e.offset[Hdr.IMMDT]! > 0, `${e.name}: IMM carries ImmDt`);
    if (e.transport === 'UD') t.equal(e.offset[Hdr.DETH], 12, 'UD: DETH right after BTH');
  }
  t.equal(opcodeName(0x18), 'UNKNOWN(0x18)', 'undefined opcodes have a name, not an exception');
  t.equal(opcodeName(0x64), 'UD_SEND_ONLY');
  t.equal(opcodeName(0x81), 'CNP');
  t.equal(OPCODE_MASK[0x18], 0);
  t.end();
});

function randomInit(rng: Rng, opcode: number): IbInit {
  const e = OPCODES[opcode]!;
  const i: IbInit = { opcode, destQp: rng.int(0x1000000), psn: rng.int(0x1000000), pkey: rng.int(0x10000), ackReq: rng.int(2) === 1, se: rng.int(2) === 1 };
  const has = (h: number): boolean => e.offset[h]! >= 0;
  if (has(Hdr.DETH)) i.deth = { qkey: rng.next(), srcQp: rng.int(0x1000000) };
  if (has(Hdr.RDETH)) i.rdeth = rng.int(0x1000000);
  if (has(Hdr.RETH)) i.reth = { va: rng.big64(), rkey: rng.next(), dmaLen: rng.next() };
  if (has(Hdr.AETH)) i.aeth = { syndrome: rng.int(256) & 0x7f, msn: rng.int(0x1000000) };
  if (has(Hdr.ATMETH)) i.atomicEth = { va: rng.big64(), rkey: rng.next(), swapAdd: rng.big64(), compare: rng.big64() };
  if (has(Hdr.ATMACK)) i.atomicAck = { origData: rng.big64() };
  if (has(Hdr.IMMDT)) i.immDt = rng.next();
  if (has(Hdr.IETH)) i.ieth = rng.next();
  if (has(Hdr.FETH)) i.feth = { selectivity: rng.int(4), placement: rng.int(16) };
  const mtu = [256, 512, 1024, 2048, 4096][rng.int(5)]!;
  const len =
    e.payload === Payload.MTU
      ? mtu
      : e.payload === Payload.LAST
        ? 1 + rng.int(mtu)
        : e.payload === Payload.ONLY
          ? rng.int(mtu + 1)
          : e.payload === Payload.FIXED8
            ? 8
            : e.payload === Payload.CNP16
              ? 16
              : 0;
  i.payload = rng.bytes(len);
  return i;
}

t.test('every opcode round-trips over RoCEv2/IPv4, RoCEv2/IPv6 and RoCEv1', (t) => {
  const rng = new Rng(2024);
  const eth = { src: new Uint8Array([2, 0, 0, 0, 0, 1]), dst: new Uint8Array([2, 0, 0, 0, 0, 2]) };
  const nets = [
    (ib: ReturnType<typeof makeIb>) =>
      buildRoceV2(
        { src: new Uint8Array([10, 0, 0, 1]), dst: new Uint8Array([10, 0, 0, 2]), srcPort: 0xc123, ipId: rng.int(0x10000), tclass: rng.int(256), eth },
        ib,
      ),
    (ib: ReturnType<typeof makeIb>) =>
      buildRoceV2({ src: gidFromString('fd00::1'), dst: gidFromString('fd00::2'), srcPort: 0xd872, flowLabel: rng.int(0x100000), udpChecksum: 'compute' }, ib),
    (ib: ReturnType<typeof makeIb>) => buildRoceV1({ sgid: ipv4ToGid('10.0.0.1'), dgid: ipv4ToGid('10.0.0.2'), eth: { ...eth, vlan: 5 } }, ib),
  ];
  let n = 0;
  for (const e of defined) {
    for (const net of nets) {
      for (let k = 0; k < 3; k++) {
        const init = randomInit(rng, e.opcode);
        const f = net(makeIb(init));
        const bytes = emitFrame(f);
        const d = decodeFrame(bytes, f.linkType);
        n++;
        if (d.malformed || d.icrc !== 'ok' || !d.frame) {
          t.fail(`${e.name} ${f.encap}: malformed=${d.malformed} icrc=${d.icrc}`);
          continue;
        }
        t.same(d.frame, f, `${e.name} ${f.encap}: parse(emit(repr)) = repr`);
        t.ok(emitFrame(d.frame).equals(bytes), `${e.name} ${f.encap}: emit(parse(bytes)) = bytes`);
      }
    }
  }
  t.equal(n, defined.length * 9);
  t.end();
});
