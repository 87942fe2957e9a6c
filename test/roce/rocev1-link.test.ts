/**
 * The RoCEv1 link (src/roce/link/rocev1-link.ts) with a fake addon standing in for the AF_PACKET socket: the
 * frames it builds (Ethernet 0x8915, GRH fields, v1 ICRC, MACs from the neighbour table or the EUI-64), what it
 * does with an unresolved destination, and what its receive side accepts and refuses. Runs on both backends
 * (no socket is opened; the only datagram is the ARP trigger to a loopback address).
 */
import t from 'tap';
import type { NativeAddon } from '../../src/native.js';
import { FakeScheduler } from '../../src/roce/sched.js';
import { MemNetwork, ROCEV1_PORT, RX_ICRC_VERIFIED } from '../../src/roce/link/link.js';
import { RoceV1Link, macFromLinkLocal, parseArp } from '../../src/roce/link/rocev1-link.js';
import { buildRoceV1, decodeFrame, emitFrame, LinkType, makeIb } from '../../src/roce/framing.js';
import { writeIbRepr, ibReprLength } from '../../src/roce/packet.js';
import { gidFromString, ipv4ToGid, macToDefaultGid } from '../../src/roce/gid.js';
import { makePair } from '../verbs/pair.js';
import { VerbsError } from '../../src/verbs/errors.js';

const MAC = Uint8Array.of(0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0x01);
const PEER_MAC = Uint8Array.of(0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0x02);
const ARP = `IP address       HW type     Flags       HW address            Mask     Device
127.0.0.2        0x1         0x2         02:aa:bb:cc:dd:02     *        v1a
127.0.0.3        0x1         0x0         00:00:00:00:00:00     *        v1a
`;

interface Fake {
  addon: NativeAddon;
  sent: Buffer[];
  deliver(frames: Uint8Array[]): void;
  opened: number;
}

function fakeAddon(openResult = 7): Fake {
  let data: Buffer | null = null,
    meta: Uint32Array | null = null,
    slotSize = 0,
    cb: ((n: number) => void) | null = null;
  const f: Fake = {
    sent: [],
    opened: 0,
    deliver(frames) {
      frames.forEach((fr, i) => {
        data!.set(fr, i * slotSize);
        meta![i * 4] = fr.length;
      });
      cb!(frames.length);
    },
    addon: {
      setIntSockopt: () => 0,
      bindToDevice: () => 0,
      sendPackets: () => 0,
      constants: {},
      packetOpen: () => {
        f.opened++;
        return openResult;
      },
      packetSend: (_fd, frame, len) => {
        f.sent.push(Buffer.from(frame.subarray(0, len)));
        return len;
      },
      rxStart: (_fd, d, m, _slots, size, c) => {
        data = d;
        meta = m;
        slotSize = size;
        cb = c;
        return {};
      },
      rxStop: (_h, done) => done?.(),
    },
  };
  return f;
}

function setup(openResult = 7): { link: RoceV1Link; fake: Fake; arpReads: () => number } {
  const net = new MemNetwork(new FakeScheduler());
  const fake = fakeAddon(openResult);
  let reads = 0;
  const link = new RoceV1Link(net.attach('127.0.0.1'), {
    addon: fake.addon,
    netdev: 'v1a',
    mac: MAC,
    readArp: () => {
      reads++;
      return ARP;
    },
    macOf: (n) => (n === 'v1x' ? Uint8Array.of(0x02, 0, 0, 0, 0, 0x0e) : null),
  });
  return { link, fake, arpReads: () => reads };
}

/** An RC SEND_ONLY packet (BTH … ICRC, ICRC not yet v1) in one of the link's tx buffers. */
function ibPacket(link: RoceV1Link): { buf: Buffer; len: number; payload: Uint8Array } {
  const payload = Uint8Array.from({ length: 100 }, (_, i) => i);
  const ib = makeIb({ opcode: 0x04, destQp: 0x11, psn: 5, payload });
  const buf = link.allocTx()!;
  writeIbRepr(ib, buf, 0);
  return { buf, len: ibReprLength(ib), payload };
}

t.test('helpers: the MAC in a link-local GID, complete neighbour entries only', (t) => {
  t.same(macFromLinkLocal(gidFromString('fe80::211:22ff:fe33:4455')), Uint8Array.of(0x00, 0x11, 0x22, 0x33, 0x44, 0x55));
  t.same(macFromLinkLocal(macToDefaultGid(MAC)), MAC, 'the inverse of the default GID');
  t.equal(macFromLinkLocal(ipv4ToGid('10.0.0.1')), null);
  t.equal(macFromLinkLocal(gidFromString('2001:db8::211:22ff:fe33:4455')), null, 'not link-local');
  const m = parseArp(ARP);
  t.same([...m.keys()], ['127.0.0.2'], 'an incomplete entry (flags 0x0) is no MAC');
  t.same(m.get('127.0.0.2'), PEER_MAC);
  t.end();
});

t.test('a v1 send is one Ethernet 0x8915 frame with a GRH and a good v1 ICRC; the tx buffer comes back', (t) => {
  const { link, fake } = setup();
  t.equal(link.enable(), 0);
  t.equal(link.enable(), 0, 'idempotent');
  t.equal(fake.opened, 1);
  const { buf, len, payload } = ibPacket(link);
  link.send(buf, len, '127.0.0.2', ROCEV1_PORT, 0x28, 0xc123);
  t.equal(fake.sent.length, 1);
  const d = decodeFrame(fake.sent[0]!, LinkType.ETHERNET);
  t.equal(d.encap, 'rocev1');
  t.equal(d.icrc, 'ok', 'the ICRC is the v1 one, over the masked GRH');
  const f = d.frame!;
  t.same(f.eth!.dst, PEER_MAC, 'destination MAC from the neighbour table');
  t.same(f.eth!.src, MAC);
  t.equal(f.eth!.ethertype, 0x8915);
  t.same(f.grh!.sgid, ipv4ToGid('127.0.0.1'), 'SGID: the port address, IPv4-mapped');
  t.same(f.grh!.dgid, ipv4ToGid('127.0.0.2'));
  t.equal(f.grh!.tclass, 0x28, 'the AV traffic class');
  t.equal(f.grh!.nxtHdr, 0x1b);
  t.equal(f.grh!.payLen, len);
  t.same(f.ib.payload, payload);
  t.equal(link.v1Stats.txFrames, 1);
  t.equal(link.allocTx(), buf, 'the tx buffer went back to the pool at once (the frame is a copy)');
  t.end();
});

t.test('a link-local destination takes its MAC from the EUI-64 and the link-local SGID', (t) => {
  const { link, fake, arpReads } = setup();
  link.enable();
  const { buf, len } = ibPacket(link);
  link.send(buf, len, 'fe80::211:22ff:fe33:4455', ROCEV1_PORT, 0, 0);
  const f = decodeFrame(fake.sent[0]!, LinkType.ETHERNET).frame!;
  t.same(f.eth!.dst, Uint8Array.of(0x00, 0x11, 0x22, 0x33, 0x44, 0x55));
  t.same(f.grh!.sgid, macToDefaultGid(MAC));
  t.equal(arpReads(), 0, 'no neighbour table needed');
  t.end();
});

t.test("with the addon's neighbour lookup (RTM_GETNEIGH), IPv6 GIDs resolve too (ND), on the bound netdev", (t) => {
  const { link, fake, arpReads } = setup();
  const asked: string[] = [];
  fake.addon.neighLookup = (family, addr, ifname) => {
    asked.push(`${family} ${Buffer.from(addr).toString('hex')} ${ifname}`);
    return family === 6 ? Buffer.from(PEER_MAC) : null;
  };
  link.enable();
  const { buf, len } = ibPacket(link);
  link.send(buf, len, '2001:db8::2', ROCEV1_PORT, 0, 0);
  const f = decodeFrame(fake.sent[0]!, LinkType.ETHERNET).frame!;
  t.same(f.eth!.dst, PEER_MAC);
  t.same(f.grh!.dgid, gidFromString('2001:db8::2'));
  t.same(asked, ['6 20010db8000000000000000000000002 v1a']);
  t.equal(arpReads(), 0, '/proc/net/arp is the fallback only');
  const p2 = ibPacket(link);
  link.send(p2.buf, p2.len, '2001:db8::2', ROCEV1_PORT, 0, 0);
  t.equal(asked.length, 1, 'cached');
  t.end();
});

t.test('an unresolved destination drops the packet (counted), triggers resolution, rate-limited', (t) => {
  const { link, fake, arpReads } = setup();
  link.enable();
  for (let i = 0; i < 3; i++) {
    const { buf, len } = ibPacket(link);
    link.send(buf, len, '127.0.0.3', ROCEV1_PORT, 0, 0);
  }
  t.equal(fake.sent.length, 0);
  t.equal(link.v1Stats.txNoNeigh, 3);
  t.equal(arpReads(), 1, 'the table is read once per 100 ms per destination, not per packet');
  t.end();
  void link.close();
});

t.test('v2 packets pass through to the UDP link untouched', (t) => {
  const { link, fake } = setup();
  link.enable();
  const { buf, len } = ibPacket(link);
  link.send(buf, len, '127.0.0.2', 4791, 0, 0xc000);
  t.equal(fake.sent.length, 0, 'not a v1 frame');
  t.end();
});

t.test('receive: a good frame goes up as the IB packet; bad ICRC, foreign DGID and bad GRH are counted and dropped', (t) => {
  const { link, fake } = setup();
  link.enable();
  const got: { bytes: Buffer; srcIp: string; srcPort: number; ipIdDf: number | undefined }[] = [];
  link.setReceiver((buf, len, srcIp, srcPort, ipIdDf) => got.push({ bytes: Buffer.from(buf.subarray(0, len)), srcIp, srcPort, ipIdDf }));
  const payload = Uint8Array.from({ length: 64 }, (_, i) => 255 - i);
  const mk = (dgid: Uint8Array): Buffer =>
    emitFrame(buildRoceV1({ sgid: ipv4ToGid('127.0.0.2'), dgid, eth: { src: PEER_MAC, dst: MAC } }, makeIb({ opcode: 0x04, destQp: 0x11, psn: 9, payload })));
  const good = mk(ipv4ToGid('127.0.0.1'));
  const bad = Buffer.from(good);
  bad[bad.length - 10]! ^= 0x01;
  const foreign = mk(ipv4ToGid('127.0.0.9'));
  const badGrh = Buffer.from(good);
  badGrh[14 + 6] = 0x11; // NxtHdr UDP
  const ll = mk(macToDefaultGid(MAC));
  fake.deliver([good, bad, foreign, badGrh, ll]);
  t.equal(got.length, 2, 'the good frame and the one to our link-local GID');
  t.same(got[0]!.bytes, good.subarray(14 + 40), 'the IB packet, BTH to ICRC');
  t.equal(got[0]!.srcIp, '127.0.0.2', 'the source GID as an address');
  t.equal(got[0]!.srcPort, ROCEV1_PORT);
  t.equal(got[0]!.ipIdDf, RX_ICRC_VERIFIED, 'the receive path is told the ICRC was checked');
  t.same(link.v1Stats, { txFrames: 0, txNoNeigh: 0, txErrors: 0, rxFrames: 5, rxIcrcErr: 1, rxDropped: 2 });
  t.end();
});

t.test('a QP on a port without a RoCEv1 path refuses a RoCE v1 source GID, typed, changing nothing', async (t) => {
  const p = await makePair();
  const port = p.a.dev.ports[0]!;
  const v1 = port.gids.indexOf(ipv4ToGid('10.0.0.1'), 'RoCE v1');
  t.ok(v1 >= 2, 'the address has a RoCE v1 entry');
  const qp = p.a.pd.createQp({ type: 'RC', sendCq: p.a.scq, recvCq: p.a.rcq, cap: { maxSendWr: 4, maxRecvWr: 4 } });
  qp.toInit({ accessFlags: ['LOCAL_WRITE'] });
  let err: unknown = null;
  try {
    qp.toRtr({ remote: { qpn: p.b.qp.qpn, psn: 0, gid: '::ffff:10.0.0.2' }, pathMtu: 1024, rqPsn: 0, sgidIndex: v1 });
  } catch (e) {
    err = e;
  }
  t.ok(err instanceof VerbsError, 'a VerbsError');
  t.match(err, { code: 'EOPNOTSUPP', argument: 'av.sgidIndex', message: /RoCE v1 is not available on this port/ });
  t.equal(qp.state, 'INIT');
  qp.close();
  await p.close();
});

t.test("the socket binds to the RoCE v1 entry's netdev and takes its MAC; one netdev per port", (t) => {
  const { link, fake } = setup();
  t.equal(link.enable('v1x'), 0);
  t.equal(link.netdev, 'v1x');
  t.same(link.mac, Uint8Array.of(0x02, 0, 0, 0, 0, 0x0e), "the netdev's own MAC, not the one guessed at open");
  t.equal(link.enable('v1x'), 0);
  t.equal(link.enable('v1y'), -18, 'EXDEV: already bound to another netdev');
  t.equal(fake.opened, 1);
  const { buf, len } = ibPacket(link);
  link.send(buf, len, 'fe80::211:22ff:fe33:4455', ROCEV1_PORT, 0, 0);
  const f = decodeFrame(fake.sent[0]!, LinkType.ETHERNET).frame!;
  t.same(f.eth!.src, link.mac);
  t.same(f.grh!.sgid, macToDefaultGid(link.mac), "the link-local SGID follows the netdev's MAC");
  t.end();
});

t.test('an AH or AV without sgidIndex takes the RoCE v2 GID of the address, never index 0 (the default GID as RoCE v1)', async (t) => {
  const p = await makePair({ type: 'UD' });
  const dev = p.a.dev;
  const v2 = dev.defaultSgidIndex(1);
  t.equal(dev.ports[0]!.gids.get(0)!.type, 'RoCE v1', 'index 0 is v1');
  const ah = p.a.pd.createAh({ gid: '10.0.0.2' });
  t.equal(ah.sgidIndex, v2);
  t.equal(dev.ports[0]!.gids.get(ah.sgidIndex)!.type, 'RoCE v2');
  t.equal(ah.dest.port, 4791, 'RoCEv2: a UDP destination port');
  ah.close();
  await p.close();
});

t.test('without CAP_NET_RAW (the addon says EPERM) enable() reports it and opens nothing', (t) => {
  const { link } = setup(-1);
  t.equal(link.enable(), -1);
  t.equal(link.v1Open, false);
  t.end();
});
