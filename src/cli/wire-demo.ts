/**
 * `softroce wire-demo`: the wire layer on its own, no sockets.
 * For now it exercises the wire layer end to end: it builds one packet of
 * each kind (RC SEND/WRITE/READ/atomics/ACK, UD with a CM MAD, a CNP) as
 * RoCEv2 over IPv4 and IPv6 and as RoCEv1, writes them to an in-memory
 * capture, decodes that capture the way `softroce dump` does, and shows that
 * a one-bit corruption is caught by the ICRC.
 */
import { buildRoceV1, buildRoceV2, emitFrame, makeIb, LinkType, type IbInit } from '../roce/framing.js';
import { opcodeByName } from '../roce/opcode.js';
import { PcapWriter } from '../roce/pcap.js';
import { dumpCapture, formatPacket, formatSummary } from '../roce/dump.js';
import { gidFromString, ipv4ToGid } from '../roce/gid.js';
import { aethAck } from '../roce/aeth.js';

const op = (n: string): number => opcodeByName(n)!;

export function demoPackets(): IbInit[] {
  const payload = new Uint8Array(Buffer.from('hello, RDMA over Converged Ethernet!'));
  return [
    { opcode: op('RC_SEND_ONLY'), destQp: 0x11, psn: 0x1000, ackReq: true, payload },
    { opcode: op('RC_ACKNOWLEDGE'), destQp: 0x12, psn: 0x1000, aeth: { syndrome: aethAck(), msn: 1 } },
    {
      opcode: op('RC_RDMA_WRITE_ONLY_WITH_IMMEDIATE'),
      destQp: 0x11,
      psn: 0x1001,
      ackReq: true,
      reth: { va: 0x7f0000001000n, rkey: 0x1234, dmaLen: payload.length },
      immDt: 0xcafef00d,
      payload,
    },
    { opcode: op('RC_RDMA_READ_REQUEST'), destQp: 0x11, psn: 0x1002, ackReq: true, reth: { va: 0x7f0000002000n, rkey: 0x1234, dmaLen: 64 } },
    { opcode: op('RC_RDMA_READ_RESPONSE_ONLY'), destQp: 0x12, psn: 0x1002, aeth: { syndrome: aethAck(), msn: 3 }, payload: new Uint8Array(64) },
    { opcode: op('RC_FETCH_ADD'), destQp: 0x11, psn: 0x1003, ackReq: true, atomicEth: { va: 0x7f0000003000n, rkey: 0x1234, swapAdd: 1n, compare: 0n } },
    { opcode: op('RC_ATOMIC_ACKNOWLEDGE'), destQp: 0x12, psn: 0x1003, aeth: { syndrome: aethAck(), msn: 4 }, atomicAck: { origData: 41n } },
    { opcode: op('UD_SEND_ONLY'), destQp: 0x1, psn: 0, deth: { qkey: 0x80010000, srcQp: 1 }, payload: cmReqMad() },
    { opcode: op('CNP'), destQp: 0x11, psn: 0, becn: true },
  ];
}

function cmReqMad(): Uint8Array {
  const m = new Uint8Array(256);
  m[0] = 1;
  m[1] = 0x07;
  m[2] = 2;
  m[3] = 0x03; // BaseVersion, CM class, version 2, Send
  m[17] = 0x10; // AttributeID REQ
  return m;
}

export function runWireDemo(): number {
  const w = new PcapWriter(LinkType.ETHERNET);
  const mac1 = new Uint8Array([0x02, 0, 0, 0, 0, 1]);
  const mac2 = new Uint8Array([0x02, 0, 0, 0, 0, 2]);
  const eth = { src: mac1, dst: mac2 };
  const v4 = { src: new Uint8Array([127, 0, 0, 1]), dst: new Uint8Array([127, 0, 0, 2]), srcPort: 0xd872, hopLimit: 64, eth };
  const v6 = { src: gidFromString('fd00::1'), dst: gidFromString('fd00::2'), srcPort: 0xc011, hopLimit: 64, eth };
  const v1 = { sgid: ipv4ToGid('127.0.0.1'), dgid: ipv4ToGid('127.0.0.2'), eth };
  let t = 1_700_000_000;
  let n = 0;
  for (const p of demoPackets()) {
    w.write(emitFrame(buildRoceV2(v4, makeIb(p))), (t += 0.00001));
    w.write(emitFrame(buildRoceV2(v6, makeIb(p))), (t += 0.00001));
    w.write(emitFrame(buildRoceV1(v1, makeIb(p))), (t += 0.00001));
    n += 3;
  }
  // One more copy of the first packet with a single flipped payload bit.
  const bad = emitFrame(buildRoceV2(v4, makeIb(demoPackets()[0]!)));
  bad[bad.length - 10]! ^= 0x01;
  w.write(bad, t + 0.00001);
  n++;
  console.log(`softroce demo: built ${n} RoCE frames (RoCEv2/IPv4, RoCEv2/IPv6, RoCEv1), one with a flipped bit\n`);
  const res = dumpCapture(w.toBuffer(), (p) => console.log(formatPacket(p)));
  console.log('\n' + formatSummary(res.summary));
  const ok = res.summary.icrcOk === n - 1 && res.summary.icrcBad === 1 && res.summary.malformed === 0;
  console.log(ok ? 'demo: every ICRC verified and the corrupted packet was caught' : 'demo: UNEXPECTED RESULT');
  return ok ? 0 : 1;
}
