/**
 * `npm start` / `softroce demo`: two softroce devices on loopback (127.0.0.1
 * and 127.0.0.2, UDP 4791), an RC QP on each, connected as ibv_rc_pingpong
 * would after its exchange; then SEND/RECV, RDMA WRITE, RDMA READ, both
 * atomics, the per-port counters, and the run's packets recorded to a pcap
 * that `softroce dump` decodes with every ICRC verified. No root, no setup.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openDevice, getDeviceList, type Device } from '../verbs/device.js';
import { connectQp } from '../verbs/connect.js';
import { Wc } from '../verbs/types.js';
import type { Cq } from '../verbs/cq.js';
import { gidToString } from '../roce/gid.js';
import { dumpCapture, formatSummary } from '../roce/dump.js';

async function next(cq: Cq, ms = 5000): Promise<Wc> {
  const w = [new Wc()];
  const end = Date.now() + ms;
  while (cq.poll(w) === 0) {
    if (Date.now() > end) throw new Error('timed out waiting for a completion');
    await new Promise((r) => setTimeout(r, 1));
  }
  return w[0]!;
}

export async function runDemo(o: { a?: string; b?: string } = {}): Promise<number> {
  const dir = mkdtempSync(join(tmpdir(), 'softroce-demo-'));
  const pcap = join(dir, 'demo.pcap');
  // The first two devices of the device list (default: 127.0.0.1 and 127.0.0.2; SOFTROCE_DEVICES moves them).
  const list = getDeviceList();
  const ipA = o.a ?? list[0]?.address ?? '127.0.0.1';
  const ipB = o.b ?? list[1]?.address ?? '127.0.0.2';
  let a: Device | undefined, b: Device | undefined;
  try {
    a = await openDevice({ name: 'softroce0', address: ipA, pcap });
    b = await openDevice({ name: 'softroce1', address: ipB });
    for (const d of [a, b]) {
      const p = d.queryPort();
      const g = d.queryGid(d.defaultSgidIndex())!;
      console.log(`${d.name}: ${p.address} on ${p.netdev}, active_mtu ${p.activeMtu}, GID[${g.index}] ${gidToString(g.gid)} (${g.type}), backend ${p.backend}`);
    }
    const side = (d: Device) => {
      const pd = d.allocPd();
      const cq = d.createCq({ depth: 16 });
      const qp = pd.createQp({ type: 'RC', sendCq: cq, recvCq: cq, sigAll: true, cap: { maxSendWr: 16, maxRecvWr: 16 } });
      const mem = Buffer.alloc(64 * 1024);
      const mr = pd.regMr(mem, ['LOCAL_WRITE', 'REMOTE_WRITE', 'REMOTE_READ', 'REMOTE_ATOMIC']);
      return { pd, cq, qp, mem, mr };
    };
    const A = side(a),
      B = side(b);
    // Each QP picked a random initial PSN at creation (a fixed one could be guessed by a local
    // process and used to inject into the connection); the endpoints carry it to the peer.
    const epA = A.qp.endpoint(),
      epB = B.qp.endpoint();
    const psnA = epA.psn,
      psnB = epB.psn;
    connectQp(A.qp, { pathMtu: 1024 }, epB);
    connectQp(B.qp, { pathMtu: 1024 }, epA);
    const hex = (n: number, w: number): string => '0x' + n.toString(16).padStart(w, '0');
    console.log(`  QP ${hex(A.qp.qpn, 6)} (PSN ${hex(psnA, 6)}) <-> QP ${hex(B.qp.qpn, 6)} (PSN ${hex(psnB, 6)}), RC, path MTU 1024, both RTS\n`);

    // SEND / RECV
    const text = 'hello over RoCEv2 from softroce0';
    A.mem.write(text, 0);
    B.qp.postRecv({ wrId: 1, sg: [{ mr: B.mr, offset: 0, length: 1024 }] });
    A.qp.postSend({ wrId: 1, opcode: 'SEND', sg: [{ mr: A.mr, offset: 0, length: text.length }] });
    let w = await next(B.cq);
    await next(A.cq);
    console.log(`SEND/RECV        ${w.status}: softroce1 received ${w.byteLen} bytes: "${B.mem.toString('utf8', 0, w.byteLen)}"`);

    // RDMA WRITE of 5000 bytes (5 packets)
    for (let i = 0; i < 5000; i++) A.mem[8192 + i] = i & 0xff;
    A.qp.postSend({ wrId: 2, opcode: 'RDMA_WRITE', sg: [{ mr: A.mr, offset: 8192, length: 5000 }], remote: { addr: B.mr.addr + 16384n, rkey: B.mr.rkey } });
    w = await next(A.cq);
    console.log(
      `RDMA WRITE       ${w.status}: 5000 bytes to va ${hex(Number(B.mr.addr + 16384n), 12)} rkey ${hex(B.mr.rkey, 8)}; remote copy ${B.mem.subarray(16384, 21384).equals(A.mem.subarray(8192, 13192)) ? 'matches' : 'DIFFERS'}`,
    );

    // RDMA READ it back elsewhere
    A.qp.postSend({ wrId: 3, opcode: 'RDMA_READ', sg: [{ mr: A.mr, offset: 32768, length: 5000 }], remote: { addr: B.mr.addr + 16384n, rkey: B.mr.rkey } });
    w = await next(A.cq);
    console.log(
      `RDMA READ        ${w.status}: ${w.byteLen} bytes back; ${A.mem.subarray(32768, 37768).equals(A.mem.subarray(8192, 13192)) ? 'identical' : 'DIFFERENT'}`,
    );

    // Atomics on a 64-bit counter in softroce1's memory
    B.mem.writeBigUInt64LE(41n, 60000);
    A.qp.postSend({
      wrId: 4,
      opcode: 'ATOMIC_FETCH_AND_ADD',
      compareAdd: 1n,
      sg: [{ mr: A.mr, offset: 60000, length: 8 }],
      remote: { addr: B.mr.addr + 60000n, rkey: B.mr.rkey },
    });
    w = await next(A.cq);
    console.log(`FETCH_AND_ADD    ${w.status}: returned ${A.mem.readBigUInt64LE(60000)}, remote now ${B.mem.readBigUInt64LE(60000)}`);
    A.qp.postSend({
      wrId: 5,
      opcode: 'ATOMIC_CMP_AND_SWP',
      compareAdd: 42n,
      swap: 1000n,
      sg: [{ mr: A.mr, offset: 60008, length: 8 }],
      remote: { addr: B.mr.addr + 60000n, rkey: B.mr.rkey },
    });
    w = await next(A.cq);
    console.log(`CMP_AND_SWP      ${w.status}: compare 42 swap 1000 returned ${A.mem.readBigUInt64LE(60008)}, remote now ${B.mem.readBigUInt64LE(60000)}`);

    const show = (d: Device): string =>
      Object.entries(d.counters())
        .filter(([, v]) => v > 0)
        .map(([k, v]) => `${k}=${v}`)
        .join(' ');
    console.log(`\ncounters ${a.name}: ${show(a)}`);
    console.log(`counters ${b.name}: ${show(b)}`);
    await a.close();
    a = undefined;
    const res = dumpCapture(readFileSync(pcap));
    console.log(`\nsoftroce0 recorded what it sent and received (${pcap}); softroce dump of it:\n${formatSummary(res.summary)}`);
    const ok = res.summary.roce > 0 && res.summary.icrcOk === res.summary.roce;
    console.log(ok ? 'demo: OK' : 'demo: UNEXPECTED RESULT');
    return ok ? 0 : 1;
  } finally {
    await a?.close();
    await b?.close();
    rmSync(dir, { recursive: true, force: true });
  }
}
