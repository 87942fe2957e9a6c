/**
 * Issue 12 item 1: a UDP source port per flow. Every packet of a QP (requests, and the ACKs,
 * READ responses and atomic ACKs its responder sends) leaves from rxe's `0xC000 + hash_32(qpn, 14)`,
 * or from the AV's flow label mapped as mlx5 / rdma_flow_label_to_udp_sport does, and its ICRC
 * covers that port. Over the in-memory network (every datagram seen with its ports) and over UDP
 * loopback with the pcap recorder and `softroce dump` (both backends: npm test runs this file
 * with and without the addon).
 */
import t from 'tap';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { makePair, waitWc, type Pair } from '../verbs/pair.js';
import { calcFlowLabel, flowLabelToSourcePort, flowSourcePort, hash32, qpSourcePort } from '../../src/roce/flow.js';

/** A connected QP's port once its AV is set (rxe_modify_qp: rdma_get_udp_sport(0, qpn, destQpn)). */
const connPort = (qpn: number, destQpn: number): number => flowSourcePort(qpn, 0, destQpn);
import { icrcV2Ipv4Parts, readIcrc } from '../../src/roce/icrc.js';
import { parseIpv4 } from '../../src/roce/gid.js';
import { Ctr } from '../../src/roce/counters.js';
import { openDevice } from '../../src/verbs/device.js';
import { connectQp } from '../../src/verbs/connect.js';
import { dumpCapture } from '../../src/roce/dump.js';
import { UdpLink } from '../../src/roce/link/udp-link.js';
import { loadNative } from '../../src/native.js';
import { ROOT } from '../helpers.js';
import { Wc } from '../../src/verbs/types.js';

t.test('the formulas: Linux hash_32 (GOLDEN_RATIO_32) and the flow-label mapping', (t) => {
  // hash_32(1, 14) = 0x61C88647 >> 18 = 0x1872: QP1 sends from 0xD872 in every rxe capture.
  t.equal(hash32(1, 14), 0x1872);
  t.equal(qpSourcePort(1), 0xd872);
  // Connected QPs (rxe_modify_qp, rdma_get_udp_sport): rxe's QP 0x11 talking to QP 0x11 was seen
  // sending from 0xC121 in the lab (17 x 17 = 0x121); 48-bit products fold to 20 bits.
  t.equal(calcFlowLabel(0x11, 0x11), 0x121);
  t.equal(flowSourcePort(0x11, 0, 0x11), 0xc121);
  const big = BigInt(0xabcdef) * BigInt(0x123456);
  const fold = big ^ (big >> 20n);
  t.equal(calcFlowLabel(0xabcdef, 0x123456), Number((fold ^ (fold >> 40n)) & 0xfffffn));
  t.equal(flowSourcePort(0x11, 0x12345, 0x11), flowLabelToSourcePort(0x12345), 'an AV flow label wins');
  // Against an exact reference (BigInt product mod 2^32): QPNs up to 2^24 lose no precision.
  const ref = (q: number): number => Number((BigInt(q) * 0x61c88647n) & 0xffffffffn) >>> 18;
  for (const q of [0x11, 0x12, 0x1234, 0xabcdef, 0xfffffe]) {
    t.equal(hash32(q, 14), ref(q), `hash_32(${q.toString(16)}, 14)`);
    t.equal(qpSourcePort(q), 0xc000 + ref(q));
  }
  // ((fl & 0x3fff) ^ (fl >> 14)) | 0xC000
  t.equal(flowLabelToSourcePort(0x12345), 0xc000 | (0x2345 ^ 0x4));
  t.equal(flowLabelToSourcePort(0xfffff), 0xc000 | (0x3fff ^ 0x3f));
  for (let q = 0x11; q < 0x11 + 5000; q++) {
    const p = qpSourcePort(q);
    if (p < 0xc000 || p > 0xffff) t.fail(`qpn ${q}: port ${p}`);
  }
  t.end();
});

interface Seen {
  src: string;
  sport: number;
  dport: number;
  opcode: number;
  destQp: number;
  icrcOk: boolean;
}

/** Records every datagram of the in-memory network with its ports, and checks its ICRC for the port it carries. */
function watch(p: Pair): Seen[] {
  const seen: Seen[] = [];
  p.net!.filter = (pkt, srcIp, dstIp, sport, dport) => {
    const icrc = icrcV2Ipv4Parts(parseIpv4(srcIp), parseIpv4(dstIp), 0, 0x4000, sport, dport, pkt, 0, pkt.length - 4);
    seen.push({
      src: srcIp,
      sport,
      dport,
      opcode: pkt[0]!,
      destQp: (pkt[5]! << 16) | (pkt[6]! << 8) | pkt[7]!,
      icrcOk: icrc === readIcrc(pkt, pkt.length - 4),
    });
    return true;
  };
  return seen;
}

for (const type of ['RC', 'UC'] as const) {
  t.test(`${type}: requests from the requester's flow port, responses from the responder's, ICRCs over the real port`, async (t) => {
    const p = await makePair({ type });
    const seen = watch(p);
    const { a, b } = p;
    b.qp.postRecv({ wrId: 1, sg: [{ mr: b.mr, offset: 0, length: 8192 }] });
    a.qp.postSend({ wrId: 1, opcode: 'SEND', sg: [{ mr: a.mr, offset: 0, length: 3000 }] });
    a.qp.postSend({ wrId: 2, opcode: 'RDMA_WRITE', sg: [{ mr: a.mr, offset: 0, length: 2000 }], remote: { addr: b.mr.addr, rkey: b.mr.rkey } });
    if (type === 'RC') {
      a.qp.postSend({ wrId: 3, opcode: 'RDMA_READ', sg: [{ mr: a.mr, offset: 4096, length: 2500 }], remote: { addr: b.mr.addr, rkey: b.mr.rkey } });
      a.qp.postSend({
        wrId: 4,
        opcode: 'ATOMIC_FETCH_AND_ADD',
        sg: [{ mr: a.mr, offset: 8192, length: 8 }],
        remote: { addr: b.mr.addr + 16384n, rkey: b.mr.rkey },
        compareAdd: 1n,
      });
    }
    const wcs = await waitWc(p, a.scq, type === 'RC' ? 4 : 2);
    t.ok(
      wcs.every((w) => w.status === 'SUCCESS'),
      'all complete',
    );
    const fromA = seen.filter((s) => s.src === '10.0.0.1');
    const fromB = seen.filter((s) => s.src === '10.0.0.2');
    t.ok(fromA.length >= 5, `${fromA.length} packets from A`);
    t.not(a.qp.srcPort, 4791);
    t.equal(a.qp.srcPort, connPort(a.qp.qpn, b.qp.qpn), "A's port: the flow label rxe derives from both QPNs");
    t.equal(b.qp.srcPort, connPort(b.qp.qpn, a.qp.qpn));
    t.same([...new Set(fromA.map((s) => s.sport))], [connPort(a.qp.qpn, b.qp.qpn)], 'every request leaves from A QP port');
    t.ok(
      fromA.every((s) => s.dport === 4791),
      'to 4791',
    );
    if (type === 'RC') {
      t.ok(fromB.length > 0, 'B answered (ACKs, READ responses, atomic ACK)');
      t.same([...new Set(fromB.map((s) => s.sport))], [connPort(b.qp.qpn, a.qp.qpn)], "every response leaves from B's QP port");
    } else t.equal(fromB.length, 0, 'UC: no responses');
    t.ok(
      seen.every((s) => s.icrcOk),
      'every ICRC is computed over the port on the wire',
    );
    t.equal(b.dev.ports[0]!.counters.counts[Ctr.rcvd_icrc_err], 0);
    t.equal(a.dev.ports[0]!.counters.counts[Ctr.rcvd_icrc_err], 0);
    await p.close();
  });
}

t.test('UD: datagrams from the QP flow port', async (t) => {
  const p = await makePair({ type: 'UD' });
  const seen = watch(p);
  const { a, b } = p;
  b.qp.postRecv({ wrId: 1, sg: [{ mr: b.mr, offset: 0, length: 8192 }] });
  const ah = a.pd.createAh({ gid: '10.0.0.2', flowLabel: 0x12345 });
  a.qp.postSend({ wrId: 1, opcode: 'SEND', sg: [{ mr: a.mr, offset: 0, length: 500 }], ud: { ah, remoteQpn: b.qp.qpn, remoteQkey: 0x11111111 } });
  const rw = await waitWc(p, b.rcq, 1);
  t.equal(rw[0]?.status, 'SUCCESS');
  t.equal(seen.length, 1);
  // rxe sends UD from the QP's port (the AH's flow label does not change it: rxe_modify_qp only)
  t.equal(seen[0]?.sport, qpSourcePort(a.qp.qpn));
  t.ok(seen[0]?.icrcOk);
  await p.close();
});

t.test('an AV flow label picks the port (mlx5 mapping), for requests and responses', async (t) => {
  const p = await makePair({ type: 'RC' });
  const seen = watch(p);
  const { a, b } = p;
  // The AV is set at RESET/INIT -> RTR (ibv_modify_qp with IB_QP_AV): reconnect both with a flow label.
  const reconnect = (q: typeof a.qp, peer: typeof a.qp, gid: string, fl: number): void => {
    q.modify({ state: 'RESET' });
    q.toInit({ accessFlags: ['LOCAL_WRITE', 'REMOTE_WRITE', 'REMOTE_READ'] });
    q.modify({ state: 'RTR', av: { dgid: gid, flowLabel: fl }, pathMtu: 1024, destQpn: peer.qpn, rqPsn: 500, maxDestRdAtomic: 1, minRnrTimer: 1 });
    q.toRts({ sqPsn: 500 });
  };
  t.equal(a.qp.srcPort, connPort(a.qp.qpn, b.qp.qpn));
  reconnect(a.qp, b.qp, '10.0.0.2', 0x12345);
  reconnect(b.qp, a.qp, '10.0.0.1', 0xabcde);
  t.equal(a.qp.srcPort, 0xc000 | (0x2345 ^ 0x4));
  t.equal(b.qp.srcPort, flowLabelToSourcePort(0xabcde));
  a.qp.postSend({ wrId: 1, opcode: 'RDMA_WRITE', sg: [{ mr: a.mr, offset: 0, length: 3000 }], remote: { addr: b.mr.addr, rkey: b.mr.rkey } });
  const wcs = await waitWc(p, a.scq, 1);
  t.equal(wcs[0]?.status, 'SUCCESS');
  t.same([...new Set(seen.filter((s) => s.src === '10.0.0.1').map((s) => s.sport))], [a.qp.srcPort]);
  t.same([...new Set(seen.filter((s) => s.src === '10.0.0.2').map((s) => s.sport))], [b.qp.srcPort]);
  t.ok(seen.every((s) => s.icrcOk));
  await p.close();
});

const backend = loadNative() ? 'native' : 'dgram';

t.test(`UDP loopback (${backend}): a capture through the pcap recorder, checked by softroce dump`, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'softroce-flows-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const [ipA, ipB] = backend === 'native' ? ['127.0.12.1', '127.0.12.2'] : ['127.0.12.3', '127.0.12.4'];
  const da = await openDevice({ address: ipA, pcap: join(dir, 'a.pcap') });
  const db = await openDevice({ address: ipB });
  const side = (dev: typeof da) => {
    const pd = dev.allocPd();
    const cq = dev.createCq({ depth: 256 });
    const mem = Buffer.alloc(1 << 16);
    const mr = pd.regMr(mem, ['LOCAL_WRITE', 'REMOTE_WRITE', 'REMOTE_READ', 'REMOTE_ATOMIC']);
    const qps = [0, 1, 2].map(() => pd.createQp({ type: 'RC', sendCq: cq, recvCq: cq, cap: { maxSendWr: 64, maxRecvWr: 64 } }));
    return { dev, pd, cq, mem, mr, qps };
  };
  const A = side(da),
    B = side(db);
  const opts = { pathMtu: 1024 as const, accessFlags: ['LOCAL_WRITE', 'REMOTE_WRITE', 'REMOTE_READ', 'REMOTE_ATOMIC'] as const };
  for (let i = 0; i < 3; i++) {
    connectQp(A.qps[i]!, { ...opts, psn: 100 }, { qpn: B.qps[i]!.qpn, psn: 200, gid: ipB });
    connectQp(B.qps[i]!, { ...opts, psn: 200 }, { qpn: A.qps[i]!.qpn, psn: 100, gid: ipA });
    A.qps[i]!.postSend({
      wrId: i,
      signaled: true,
      opcode: 'RDMA_WRITE',
      sg: [{ mr: A.mr, offset: 0, length: 5000 }],
      remote: { addr: B.mr.addr, rkey: B.mr.rkey },
    });
    A.qps[i]!.postSend({
      wrId: 10 + i,
      signaled: true,
      opcode: 'RDMA_READ',
      sg: [{ mr: A.mr, offset: 8192, length: 3000 }],
      remote: { addr: B.mr.addr, rkey: B.mr.rkey },
    });
  }
  const got: number[] = [];
  const wc = Array.from({ length: 16 }, () => new Wc());
  for (const end = performance.now() + 10_000; got.length < 6 && performance.now() < end;) {
    const k = A.cq.poll(wc);
    for (let i = 0; i < k; i++) got.push(wc[i]!.status === 'SUCCESS' ? 1 : 0);
    if (got.length < 6) await new Promise((r) => setTimeout(r, 2));
  }
  t.same(got, [1, 1, 1, 1, 1, 1], 'six WRs completed successfully');
  const aLink = da.ports[0]!.link;
  t.equal(aLink.caps.flowSrcPort, true, 'the backend declares per-flow source ports');
  await da.close();
  await db.close();
  const file = join(dir, 'a.pcap');
  const res = dumpCapture(readFileSync(file));
  t.ok(res.packets.length > 12, `${res.packets.length} packets captured`);
  t.equal(res.summary.icrcBad, 0, 'no bad ICRC');
  t.equal(res.summary.icrcOk, res.summary.roce, 'every ICRC verifies with the source port it was sent from');
  for (let i = 0; i < 3; i++) {
    const aq = A.qps[i]!,
      bq = B.qps[i]!;
    const out = res.packets.filter((p) => p.src === ipA && p.destQp === bq.qpn);
    const back = res.packets.filter((p) => p.src === ipB && p.destQp === aq.qpn);
    t.ok(out.length > 0 && back.length > 0, `QP ${i}: both directions captured`);
    t.same(
      [...new Set(out.map((p) => p.srcPort))],
      [connPort(aq.qpn, bq.qpn)],
      `QP ${i}: requests from the port of the flow label derived from QPNs ${aq.qpn} and ${bq.qpn}`,
    );
    t.same([...new Set(back.map((p) => p.srcPort))], [connPort(bq.qpn, aq.qpn)], `QP ${i}: ACKs and READ responses from the responder's QP port`);
  }
  // The same file through the command a user runs.
  const r = spawnSync(process.execPath, [join(ROOT, 'bin', 'softroce.js'), 'dump', file], { encoding: 'utf8' });
  t.equal(r.status, 0);
  const last = r.stdout.trimEnd().split('\n').at(-1)!;
  t.match(last, new RegExp(`^packets=${res.summary.packets} roce=${res.summary.roce} icrc_ok=${res.summary.roce} icrc_bad=0 malformed=0`));
  t.match(r.stdout, new RegExp(`${ipA.replace(/\./g, '\\.')}:${connPort(A.qps[0]!.qpn, B.qps[0]!.qpn)} > ${ipB.replace(/\./g, '\\.')}`));
});

const fdCount = (): number => readdirSync('/proc/self/fd').length;

/** One 16-byte datagram from tx to rx out of the port tx's pool grants flow port `want`; resolves to that port after 1 ms. */
async function sendFromFlowPort(tx: UdpLink, rx: UdpLink, want: number): Promise<number> {
  const sp = tx.sourcePort(want);
  const b = tx.allocTx()!;
  b.fill(0, 0, 16);
  tx.send(b, 16, '127.0.12.9', rx.localPort, 0, sp);
  await new Promise((r) => setTimeout(r, 1));
  return sp;
}

t.test(`UDP (${backend}): send sockets bounded by the cap; past it the least recently used idle one is closed`, async (t) => {
  const rx = await UdpLink.open({ address: '127.0.12.9', port: 0 });
  const got: number[] = [];
  rx.setReceiver((_b, _l, _ip, sport) => got.push(sport));
  // txSocketIdleMs 0: plain LRU (the default keeps a socket chosen in the last second; below)
  const tx = await UdpLink.open({ address: '127.0.12.8', port: 0, txSockets: 8, txSocketIdleMs: 0 });
  const base = fdCount();
  const send = (want: number): Promise<number> => sendFromFlowPort(tx, rx, want);
  const ports = Array.from({ length: 20 }, (_, i) => 0xc100 + i);
  for (const p of ports) t.equal(await send(p), p, `port ${p.toString(16)} granted`);
  t.ok(tx.txSocketCount <= 8, `${tx.txSocketCount} send sockets open (cap 8)`);
  t.ok(fdCount() - base <= 8, `fd growth ${fdCount() - base} <= 8`);
  t.equal(tx.txStats.opened, 20);
  t.equal(tx.txStats.evicted, 12, 'each port past the cap closed the least recently used socket');
  for (const end = performance.now() + 3000; got.length < 20 && performance.now() < end;) await new Promise((r) => setTimeout(r, 5));
  t.same(got, ports, 'each datagram arrived from the port it asked for');
  // Past the cap with every open socket busy in this same turn: the datagram leaves from localPort.
  const turn = Array.from({ length: 9 }, (_, i) => tx.sourcePort(0xc200 + i));
  t.same(
    turn.slice(0, 8),
    Array.from({ length: 8 }, (_, i) => 0xc200 + i),
  );
  if (tx.caps.batchSend) {
    // (batched sends wait in the queue until the turn ends: a socket chosen in this turn is busy)
    t.equal(turn[8], tx.localPort, 'ninth port in one turn, all eight busy: localPort');
    t.equal(tx.txStats.fallbacks, 1);
  } else t.equal(turn[8], 0xc208, 'unbatched: nothing waits, the LRU socket is closed at once');
  t.equal(tx.sourcePort(tx.localPort), tx.localPort);
  await tx.close();
  await rx.close();
  t.equal(tx.txSocketCount, 0, 'close() closes the pool');
});

t.test(`UDP (${backend}): past the cap, a socket chosen within txSocketIdleMs stays; the new port leaves from localPort`, async (t) => {
  const rx = await UdpLink.open({ address: '127.0.12.9', port: 0 });
  const got: number[] = [];
  rx.setReceiver((_b, _l, _ip, sport) => got.push(sport));
  const tx = await UdpLink.open({ address: '127.0.12.8', port: 0, txSockets: 2, txSocketIdleMs: 300 });
  const send = (want: number): Promise<number> => sendFromFlowPort(tx, rx, want);
  t.equal(await send(0xc300), 0xc300);
  t.equal(await send(0xc301), 0xc301);
  // Both sockets were chosen just now: a third flow port does not close one (1,000 busy flows
  // over 256 sockets closed and opened a socket per message under plain LRU).
  for (let i = 0; i < 5; i++) t.equal(await send(0xc302 + i), tx.localPort, `port ${(0xc302 + i).toString(16)}: localPort`);
  t.equal(tx.txStats.evicted, 0, 'no socket closed');
  t.equal(tx.txStats.fallbacks, 5);
  t.equal(tx.txSocketCount, 2);
  // 0xc300 stays busy; 0xc301 goes unchosen for longer than txSocketIdleMs and is the one closed.
  for (const end = performance.now() + 400; performance.now() < end;) await send(0xc300);
  t.equal(await send(0xc310), 0xc310, 'an idle socket is closed for the new port');
  t.equal(tx.txStats.evicted, 1);
  t.equal(await send(0xc300), 0xc300, 'the busy one stayed');
  t.equal(tx.txStats.opened, 3);
  for (const end = performance.now() + 3000; got.length < 4 && performance.now() < end;) await new Promise((r) => setTimeout(r, 5));
  t.ok(got.includes(tx.localPort) && got.includes(0xc310), 'datagrams arrived from localPort and from the new port');
  await tx.close();
  await rx.close();
});

t.test(`UDP (${backend}): 1,000 QPs on one device, descriptors bounded by the default cap`, async (t) => {
  const before = fdCount();
  const a = await openDevice({ address: '127.0.12.5' });
  const b = await openDevice({ address: '127.0.12.6' });
  const pdA = a.allocPd(),
    pdB = b.allocPd();
  const cqA = a.createCq({ depth: 4096 }),
    cqB = b.createCq({ depth: 4096 });
  const mem = Buffer.alloc(4096);
  const mrB = pdB.regMr(Buffer.alloc(4096), ['LOCAL_WRITE', 'REMOTE_WRITE']);
  const mrA = pdA.regMr(mem, ['LOCAL_WRITE']);
  const n = 1000;
  const ports = new Set<number>();
  const qa = [],
    qb = [];
  for (let i = 0; i < n; i++) {
    const x = pdA.createQp({ type: 'RC', sendCq: cqA, recvCq: cqA, cap: { maxSendWr: 4, maxRecvWr: 4 } });
    const y = pdB.createQp({ type: 'RC', sendCq: cqB, recvCq: cqB, cap: { maxSendWr: 4, maxRecvWr: 4 } });
    connectQp(x, { psn: 1, accessFlags: ['LOCAL_WRITE', 'REMOTE_WRITE'] }, { qpn: y.qpn, psn: 2, gid: '127.0.12.6' });
    connectQp(y, { psn: 2, accessFlags: ['LOCAL_WRITE', 'REMOTE_WRITE'] }, { qpn: x.qpn, psn: 1, gid: '127.0.12.5' });
    ports.add(x.srcPort);
    qa.push(x);
    qb.push(y);
  }
  let done = 0;
  const wc = Array.from({ length: 64 }, () => new Wc());
  for (let i = 0; i < n; i++) {
    qa[i]!.postSend({ wrId: i, signaled: true, opcode: 'RDMA_WRITE', sg: [{ mr: mrA, offset: 0, length: 64 }], remote: { addr: mrB.addr, rkey: mrB.rkey } });
    if (i % 50 === 49) await new Promise((r) => setImmediate(r));
    done += cqA.poll(wc);
  }
  for (const end = performance.now() + 15_000; done < n && performance.now() < end;) {
    done += cqA.poll(wc);
    if (done < n) await new Promise((r) => setTimeout(r, 2));
  }
  t.equal(done, n, 'every QP completed its WRITE');
  const during = fdCount() - before;
  const la = a.ports[0]!.v1!.udp as unknown as { txSocketCount: number };
  const lb = b.ports[0]!.v1!.udp as unknown as { txSocketCount: number };
  t.comment(
    `1,000 QPs per device, ${ports.size} distinct flow ports: ${la.txSocketCount} + ${lb.txSocketCount} send sockets, ${during} fds for both devices (cap 256 each)`,
  );
  t.ok(la.txSocketCount <= 256 && lb.txSocketCount <= 256);
  t.ok(during <= 2 * 256 + 16, `fd growth ${during}`);
  await a.close();
  await b.close();
  t.ok(fdCount() - before <= 2, 'closed devices leave no send socket open');
});

t.test('UDP over IPv6 (Node sockets in the pool): the datagram arrives from the flow port', async (t) => {
  const rx = await UdpLink.open({ address: '::1', port: 0 });
  const got: number[] = [];
  rx.setReceiver((_b, _l, _ip, sport) => got.push(sport));
  const tx = await UdpLink.open({ address: '::1', port: 0 });
  t.equal(tx.caps.flowSrcPort, true);
  const want = 0xc000 + 0x2a5; // a port no other test here uses
  const sp = tx.sourcePort(want);
  t.equal(sp, want);
  const b = tx.allocTx()!;
  b.fill(0, 0, 16);
  tx.send(b, 16, '::1', rx.localPort, 0, sp);
  for (const end = performance.now() + 3000; got.length < 1 && performance.now() < end;) await new Promise((r) => setTimeout(r, 5));
  t.same(got, [want]);
  t.equal(tx.txSocketCount, 1);
  await tx.close();
  await rx.close();
});
