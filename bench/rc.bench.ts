/**
 * RC over UDP loopback, in one process (two devices on 127.0.30.1/2): WRITE
 * and SEND bandwidth for 64 KiB messages at path MTU 4096, and SEND ping-pong
 * latency for 2-byte messages, next to a raw Node dgram ping-pong measured in
 * the same run. (The two-process perftest comparison is `npm run bench` once
 * the perftest tools land.)
 */
import * as dgram from 'node:dgram';
import { openDevice } from '../src/verbs/device.js';
import { connectQp } from '../src/verbs/connect.js';
import { Wc } from '../src/verbs/types.js';
import type { Cq } from '../src/verbs/cq.js';

const wcs = Array.from({ length: 64 }, () => new Wc());
function drain(cq: Cq): number {
  return cq.poll(wcs);
}
const tick = (): Promise<void> => new Promise((r) => setImmediate(r));

async function dgramPingPong(iters: number): Promise<number> {
  const a = dgram.createSocket('udp4');
  const b = dgram.createSocket('udp4');
  await new Promise<void>((r) => a.bind(0, '127.0.30.3', () => r()));
  await new Promise<void>((r) => b.bind(0, '127.0.30.4', () => r()));
  const msg = Buffer.alloc(2);
  b.on('message', (m, ri) => b.send(m, ri.port, ri.address));
  let n = 0;
  const t0 = performance.now();
  await new Promise<void>((done) => {
    a.on('message', () => {
      if (++n === iters) done();
      else a.send(msg, b.address().port, '127.0.30.4');
    });
    a.send(msg, b.address().port, '127.0.30.4');
  });
  const us = ((performance.now() - t0) * 1000) / iters;
  a.close();
  b.close();
  return us;
}

async function main(): Promise<void> {
  const da = await openDevice({ address: '127.0.30.1' });
  const db = await openDevice({ address: '127.0.30.2' });
  const size = 64 * 1024;
  const mk = (d: typeof da) => {
    const pd = d.allocPd();
    const cq = d.createCq({ depth: 1024 });
    const qp = pd.createQp({ type: 'RC', sendCq: cq, recvCq: cq, sigAll: true, cap: { maxSendWr: 256, maxRecvWr: 512 } });
    const mem = Buffer.alloc(size * 64);
    return { pd, cq, qp, mem, mr: pd.regMr(mem, ['LOCAL_WRITE', 'REMOTE_WRITE', 'REMOTE_READ']) };
  };
  const A = mk(da),
    B = mk(db);
  connectQp(A.qp, { psn: 1, pathMtu: 4096 }, { qpn: B.qp.qpn, psn: 2, gid: '127.0.30.2' });
  connectQp(B.qp, { psn: 2, pathMtu: 4096 }, { qpn: A.qp.qpn, psn: 1, gid: '127.0.30.1' });
  console.log(`backend ${da.queryPort().backend}`);

  // WRITE bandwidth: keep 16 messages in flight for ~2 s.
  for (const op of ['RDMA_WRITE', 'SEND'] as const) {
    const inflight = 16;
    let posted = 0,
      done = 0;
    const t0 = performance.now();
    const until = t0 + 2000;
    if (op === 'SEND') for (let i = 0; i < 512; i++) B.qp.postRecv({ wrId: i, sg: [{ mr: B.mr, offset: (i % 64) * size, length: size }] });
    let recvDone = 0;
    while (performance.now() < until || done < posted) {
      while (posted - done < inflight && performance.now() < until) {
        const sg = [{ mr: A.mr, offset: (posted % 64) * size, length: size }];
        if (op === 'RDMA_WRITE') A.qp.postSend({ wrId: posted, opcode: op, sg, remote: { addr: B.mr.addr + BigInt((posted % 64) * size), rkey: B.mr.rkey } });
        else A.qp.postSend({ wrId: posted, opcode: op, sg });
        posted++;
      }
      await tick();
      done += drain(A.cq);
      if (op === 'SEND') {
        const r = drain(B.cq);
        for (let i = 0; i < r; i++) B.qp.postRecv({ wrId: recvDone + i, sg: [{ mr: B.mr, offset: ((recvDone + i) % 64) * size, length: size }] });
        recvDone += r;
      }
    }
    const s = (performance.now() - t0) / 1000;
    console.log(`RC ${op.padEnd(10)} 64 KiB x ${done}: ${((done * size) / s / 1e6).toFixed(1)} MB/s, ${(done / s).toFixed(0)} msg/s`);
  }

  // SEND ping-pong latency, 2 bytes, on a fresh pair of QPs.
  const iters = 5000;
  const L1 = mk(da),
    L2 = mk(db);
  connectQp(L1.qp, { psn: 10, pathMtu: 4096 }, { qpn: L2.qp.qpn, psn: 20, gid: '127.0.30.2' });
  connectQp(L2.qp, { psn: 20, pathMtu: 4096 }, { qpn: L1.qp.qpn, psn: 10, gid: '127.0.30.1' });
  Object.assign(A, L1);
  Object.assign(B, L2);
  for (let i = 0; i < 16; i++) {
    A.qp.postRecv({ wrId: i, sg: [{ mr: A.mr, offset: 0, length: 64 }] });
    B.qp.postRecv({ wrId: i, sg: [{ mr: B.mr, offset: 0, length: 64 }] });
  }
  const w = [new Wc()];
  const t0 = performance.now();
  for (let i = 0; i < iters; i++) {
    A.qp.postSend({ wrId: i, opcode: 'SEND', signaled: false, sg: [{ mr: A.mr, offset: 0, length: 2 }] });
    for (;;) {
      // B receives, answers
      if (B.cq.poll(w) && w[0]!.opcode === 'RECV') break;
      await tick();
    }
    B.qp.postRecv({ wrId: i, sg: [{ mr: B.mr, offset: 0, length: 64 }] });
    B.qp.postSend({ wrId: i, opcode: 'SEND', signaled: false, sg: [{ mr: B.mr, offset: 0, length: 2 }] });
    for (;;) {
      if (A.cq.poll(w) && w[0]!.opcode === 'RECV') break;
      await tick();
    }
    A.qp.postRecv({ wrId: i, sg: [{ mr: A.mr, offset: 0, length: 64 }] });
  }
  const rtt = ((performance.now() - t0) * 1000) / iters;
  const base = await dgramPingPong(iters);
  console.log(
    `RC SEND ping-pong 2 B: ${(rtt / 2).toFixed(1)} us one-way (RTT ${rtt.toFixed(1)} us); raw dgram ping-pong RTT ${base.toFixed(1)} us, half ${(base / 2).toFixed(1)} us; ratio ${(rtt / base).toFixed(2)}`,
  );
  await da.close();
  await db.close();
}

main().then(
  () => process.exit(0),
  (e: unknown) => {
    console.error(e);
    process.exit(1);
  },
);
