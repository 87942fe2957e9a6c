/**
 * Golden vectors: real RoCEv2 packets made by the Linux rdma_rxe driver and
 * rdma-core / perftest (../shared/lab/captures). Every RoCE packet must parse,
 * its ICRC must verify, and emitting it again from its parsed form must give
 * the same bytes. The probes/ files are negative vectors.
 */
import t from 'tap';
import { readFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { readCapture } from '../../src/roce/pcap.js';
import { decodeFrame, emitFrame, ibOffset } from '../../src/roce/framing.js';
import { dumpCapture } from '../../src/roce/dump.js';
import { inferIpv4Id } from '../../src/roce/icrc.js';
import { capturesDir, goldenFiles, Rng } from '../helpers.js';

/** RoCE packets per file as tshark counts them (`tshark -r F -Y infiniband | wc -l`). */
const TSHARK_ROCE: Record<string, number> = {
  'ib_atomic_bw.pcap': 20,
  'ib_atomic_bw_rdma_cm.pcap': 94,
  'ib_read_bw.pcap': 50,
  'ib_read_bw_rdma_cm.pcap': 124,
  'ib_send_lat.pcap': 40,
  'ib_send_lat_rdma_cm.pcap': 94,
  'ib_write_bw.pcap': 50,
  'ib_write_bw_rdma_cm.pcap': 125,
  'rc_pingpong.pcap': 100,
  'rc_pingpong_small.pcap': 40,
  'rping.pcap': 125,
  'rxe_to_host_udp.pcap': 116,
  'ucmatose.pcap': 45,
  'ud_pingpong.pcap': 20,
  'udaddy.pcap': 22,
};

const files = goldenFiles();
t.ok(files.length >= 15, `found ${files.length} golden captures`);

for (const path of files) {
  const name = basename(path);
  t.test(name, (t) => {
    const file = readFileSync(path);
    const cap = readCapture(file);
    t.equal(cap.error, undefined, 'capture reads to the end');
    let roce = 0;
    let bad = 0;
    for (const r of cap.records) {
      const d = decodeFrame(r.data, r.linkType);
      if (!d.roce) continue;
      roce++;
      if (d.malformed || d.icrc !== 'ok' || !d.frame) {
        bad++;
        t.fail(`frame #${r.index}: malformed=${d.malformed} icrc=${d.icrc}`);
        continue;
      }
      const again = emitFrame(d.frame);
      if (!again.equals(r.data)) {
        bad++;
        t.fail(`frame #${r.index}: re-emit differs`);
      }
    }
    t.equal(bad, 0, 'every packet parses, verifies and re-emits byte for byte');
    if (TSHARK_ROCE[name] !== undefined) t.equal(roce, TSHARK_ROCE[name], 'same RoCE packet count as tshark');
    const s = dumpCapture(file).summary;
    t.same(s, { packets: cap.records.length, roce, icrcOk: roce, icrcBad: 0, malformed: 0, unverifiable: 0 }, 'dump summary');
    t.end();
  });
}

t.test('IPv4 ID and DF are recovered from the ICRC of every golden IPv4 packet', (t) => {
  let n = 0;
  let wrong = 0;
  for (const path of files) {
    for (const r of readCapture(readFileSync(path)).records) {
      const d = decodeFrame(r.data, r.linkType);
      if (!d.frame?.ipv4 || !d.frame.udp) continue;
      const ip = d.frame.ipv4;
      const ib = Buffer.from(r.data.subarray(ibOffset(d.frame), ibOffset(d.frame) + d.frame.udp.length - 8));
      const got = inferIpv4Id(
        Buffer.from(ip.src).readUInt32BE(0),
        Buffer.from(ip.dst).readUInt32BE(0),
        d.frame.udp.srcPort,
        d.frame.udp.dstPort,
        ib,
        0,
        ib.length - 4,
      );
      n++;
      const df = (ip.flags >> 1) & 1;
      if (got !== (ip.id | (df << 16))) wrong++;
    }
  }
  t.ok(n > 1000, `${n} packets`);
  t.equal(wrong, 0, 'the recovered ID equals the ID on the wire');
  t.end();
});

t.test('corrupted copies are reported as bad ICRC, masked fields are not', (t) => {
  const path = join(capturesDir(), 'rping.pcap');
  const file = readFileSync(path);
  const cap = readCapture(file);
  const rng = new Rng(1234);
  const roceIdx = cap.records.filter((r) => decodeFrame(r.data, r.linkType).roce).map((r) => r.index);
  // Flip one random bit inside the UDP payload (BTH … ICRC) of 17 distinct packets.
  const chosen = new Set<number>();
  while (chosen.size < 17) chosen.add(roceIdx[rng.int(roceIdx.length)]!);
  const copy = Buffer.from(file);
  for (const r of cap.records) {
    if (!chosen.has(r.index)) continue;
    const start = r.data.byteOffset - file.byteOffset + 14 + 20 + 8; // Ethernet + IPv4 + UDP
    const end = r.data.byteOffset - file.byteOffset + r.data.length;
    const at = start + rng.int(end - start);
    copy[at]! ^= 1 << rng.int(8);
  }
  const s = dumpCapture(copy).summary;
  // A bit flip in the BTH can also make a packet malformed; both are "not delivered".
  t.equal(s.icrcBad + s.malformed, 17, `17 corrupted packets detected (bad=${s.icrcBad} malformed=${s.malformed})`);
  t.equal(s.icrcOk, roceIdx.length - 17, 'the others still verify');

  // Covered and masked IPv4 fields, on the first RoCE frame.
  const first = cap.records.find((r) => decodeFrame(r.data, r.linkType).roce)!;
  const at = (off: number): Buffer => {
    const b = Buffer.from(first.data);
    b[14 + off]! ^= 0x01;
    return b;
  };
  t.equal(decodeFrame(at(4), 1).icrc, 'bad', 'IPv4 Identification is covered by the ICRC');
  t.equal(decodeFrame(at(8), 1).icrc, 'ok', 'IPv4 TTL is masked');
  t.equal(decodeFrame(at(1), 1).icrc, 'ok', 'IPv4 TOS is masked');
  t.equal(decodeFrame(at(10), 1).icrc, 'ok', 'IPv4 header checksum is masked');
  t.equal(decodeFrame(at(20 + 6), 1).icrc, 'ok', 'UDP checksum is masked');
  t.equal(decodeFrame(at(20 + 8 + 4), 1).icrc, 'ok', 'BTH byte 4 (FECN/BECN/resv6a) is masked');
  t.equal(decodeFrame(at(20 + 0), 1).icrc, 'bad', 'UDP source port is covered');
  t.end();
});

t.test('negative vectors in probes/ are reported, not thrown', (t) => {
  const d = join(capturesDir(), 'probes');
  const g = dumpCapture(readFileSync(join(d, 'guest_to_host_udp.pcap')));
  t.same(g.summary, { packets: 2, roce: 2, icrcOk: 0, icrcBad: 0, malformed: 2, unverifiable: 0 }, 'plain text datagrams to 4791 are malformed');
  t.match(g.packets[0]!.malformed, /opcode/, 'named reason');

  const z = dumpCapture(readFileSync(join(d, 'host_udp_ipid.pcap')));
  // 32 zero bytes read as RC SEND_FIRST with a 16-byte payload, which is not a path MTU.
  t.same(z.summary, { packets: 21, roce: 21, icrcOk: 0, icrcBad: 0, malformed: 21, unverifiable: 0 }, '32 zero bytes are malformed');

  const p = dumpCapture(readFileSync(join(d, 'host_rc_peer.pcap')));
  t.same(p.summary, { packets: 17, roce: 5, icrcOk: 4, icrcBad: 1, malformed: 0, unverifiable: 0 }, 'host_rc_peer: one bad ICRC');
  const badOne = p.packets.find((x) => x.icrc === 'bad')!;
  t.equal(badOne.index, 9, 'frame #9 is the packet sent with a kernel-chosen IPv4 ID');
  t.equal(badOne.icrcWire, 0xd3b24884);
  t.equal(badOne.icrcComputed, 0x0faf9af6, 'same computed value as the lab checker');
  t.end();
});
