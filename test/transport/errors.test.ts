/**
 * Every work-completion error the transport produces, the timers (ACK timeout
 * with retry_cnt, RNR with rnr_retry) on the fake clock, protection against
 * bad R_Keys and addresses, duplicate handling, and garbage on the wire.
 */
import t from 'tap';
import { makePair, waitWc, settle, fill, type Pair } from '../verbs/pair.js';
import { connectQp } from '../../src/verbs/connect.js';
import { buildRoceV2, emitFrame, makeIb } from '../../src/roce/framing.js';
import { aethNak, NakCode, aethAck } from '../../src/roce/aeth.js';
import { ackTimeoutMs, onResponse, rewind } from '../../src/roce/transport/completer.js';
import { PktInfo, parseIb } from '../../src/roce/packet.js';
import { Rng } from '../helpers.js';

/** Raw IB bytes (BTH … ICRC) from `src` to `dst`, as a socket would carry them. */
function ibBytes(src: string, dst: string, init: Parameters<typeof makeIb>[0]): Buffer {
  const f = buildRoceV2({ src: new Uint8Array(src.split('.').map(Number)), dst: new Uint8Array(dst.split('.').map(Number)), srcPort: 4791 }, makeIb(init));
  return emitFrame(f).subarray(28);
}

async function reconnect(p: Pair): Promise<void> {
  for (const s of [p.a, p.b]) s.qp.modify({ state: 'RESET' });
  const local = { pathMtu: 1024 as const, timeout: 10, retryCnt: 7, rnrRetry: 7, minRnrTimer: 1, maxRdAtomic: 16, maxDestRdAtomic: 16 };
  connectQp(p.a.qp, { ...local, psn: 1 }, { qpn: p.b.qp.qpn, psn: 2, gid: '10.0.0.2' });
  connectQp(p.b.qp, { ...local, psn: 2 }, { qpn: p.a.qp.qpn, psn: 1, gid: '10.0.0.1' });
}

/** One remote access of `op` at addr/rkey from a's memory: 8 bytes for the atomic, 100 for WRITE and READ. */
function remoteWr(p: Pair, wrId: number, op: 'RDMA_WRITE' | 'RDMA_READ' | 'ATOMIC_FETCH_AND_ADD', addr: bigint, rkey: number) {
  const a = p.a;
  return op === 'ATOMIC_FETCH_AND_ADD'
    ? ({ wrId, opcode: op, compareAdd: 1n, sg: [{ mr: a.mr, offset: 0, length: 8 }], remote: { addr, rkey } } as const)
    : ({ wrId, opcode: op, sg: [{ mr: a.mr, offset: 0, length: 100 }], remote: { addr, rkey } } as const);
}

t.test('a peer that stops answering: RETRY_EXC_ERR after retry_cnt retries, then the rest flushes', async (t) => {
  const p = await makePair({ retryCnt: 3, timeout: 10 });
  const { a } = p;
  p.net!.filter = () => false; // the peer is gone
  a.qp.postSend([
    { wrId: 1, opcode: 'SEND', sg: [{ mr: a.mr, offset: 0, length: 10 }] },
    { wrId: 2, opcode: 'SEND', sg: [] },
  ]);
  const per = ackTimeoutMs(10);
  await settle(p, per * 3.5);
  t.equal(a.scq.length, 0, 'still retrying after 3 timeouts');
  const w = await waitWc(p, a.scq, 2);
  t.same(
    w.map((x) => [x.wrId, x.status]),
    [
      [1, 'RETRY_EXC_ERR'],
      [2, 'WR_FLUSH_ERR'],
    ],
  );
  const c = a.dev.counters();
  t.equal(c['timeouts'], 4, 'one timeout plus 3 retries');
  t.equal(c['retry_exceeded_err'], 1);
  t.equal(a.qp.state, 'ERR');
  t.throws(() => a.qp.modify({ state: 'RTS' }), { code: 'EINVAL', from: 'ERR', to: 'RTS' });
  await p.close();
});

t.test('retryCnt 7 retries forever, as rxe does', async (t) => {
  const p = await makePair({ retryCnt: 7, timeout: 10 });
  const { a, b } = p;
  p.net!.filter = () => false;
  b.qp.postRecv({ wrId: 1, sg: [{ mr: b.mr, offset: 0, length: 10 }] });
  a.qp.postSend({ wrId: 1, opcode: 'SEND', sg: [{ mr: a.mr, offset: 0, length: 10 }] });
  await settle(p, ackTimeoutMs(10) * 20.5);
  t.equal(a.dev.counters()['timeouts'], 20, '20 timeouts and still retrying');
  t.equal(a.scq.length, 0, 'no RETRY_EXC_ERR');
  p.net!.filter = null; // the peer is back
  t.equal((await waitWc(p, a.scq, 1))[0]!.status, 'SUCCESS');
  await p.close();
});

t.test('no receive posted: RNR NAKs, then success once a receive is posted', async (t) => {
  const p = await makePair({ minRnrTimer: 4, rnrRetry: 7 });
  const { a, b } = p;
  a.qp.postSend({ wrId: 1, opcode: 'SEND', sg: [{ mr: a.mr, offset: 0, length: 100 }] });
  await settle(p, 2);
  t.ok(b.dev.counters()['send_rnr_err']! >= 1, 'the responder sent RNR NAKs');
  t.ok(a.dev.counters()['rcvd_rnr_err']! >= 1, 'the requester got them');
  t.equal(a.scq.length, 0);
  b.qp.postRecv({ wrId: 9, sg: [{ mr: b.mr, offset: 0, length: 100 }] });
  const w = await waitWc(p, a.scq, 1);
  t.equal(w[0]!.status, 'SUCCESS', 'delivered after the receive was posted');
  t.equal((await waitWc(p, b.rcq, 1))[0]!.byteLen, 100);
  await p.close();
});

t.test('RNR_RETRY_EXC_ERR after rnr_retry RNR NAKs', async (t) => {
  const p = await makePair({ minRnrTimer: 1, rnrRetry: 2 });
  const { a, b } = p;
  a.qp.postSend({ wrId: 1, opcode: 'SEND', sg: [] });
  const w = await waitWc(p, a.scq, 1);
  t.equal(w[0]!.status, 'RNR_RETRY_EXC_ERR');
  t.equal(b.dev.counters()['send_rnr_err'], 3, 'first try plus 2 retries');
  t.equal(a.dev.counters()['retry_rnr_exceeded_err'], 1);
  await p.close();
});

t.test("the responder's R_Key cache: alternating MRs, a key without the access, a deregistered key", async (t) => {
  // The responder remembers the MR the last R_Key resolved to; a different key, or the same key of
  // an MR that no longer allows the access, must go by the device's table every time.
  const p = await makePair({ memSize: 1 << 16 });
  const { a, b } = p;
  fill(a.mem, 5);
  const m1 = b.pd.regMr(Buffer.alloc(8192), ['LOCAL_WRITE', 'REMOTE_WRITE', 'REMOTE_READ']);
  const m2 = b.pd.regMr(Buffer.alloc(8192), ['LOCAL_WRITE', 'REMOTE_WRITE', 'REMOTE_READ']);
  const ro = b.pd.regMr(Buffer.alloc(8192), ['REMOTE_READ']);
  const write = async (mr: typeof m1, at: number, n: number): Promise<string | undefined> => {
    a.qp.postSend({ wrId: at, opcode: 'RDMA_WRITE', sg: [{ mr: a.mr, offset: at, length: n }], remote: { addr: mr.addr + BigInt(at), rkey: mr.rkey } });
    return (await waitWc(p, a.scq, 1))[0]?.status;
  };
  await reconnect(p);
  const got: Array<string | undefined> = [];
  for (let i = 0; i < 6; i++) got.push(await write(i % 2 === 0 ? m1 : m2, i * 100, 3000));
  t.same(got, Array(6).fill('SUCCESS'), 'writes alternating between two MRs all land');
  t.ok(m1.buffer.subarray(400, 3400).equals(a.mem.subarray(400, 3400)), 'in the first MR');
  t.ok(m2.buffer.subarray(500, 3500).equals(a.mem.subarray(500, 3500)), 'and in the second');
  t.equal(await write(ro, 0, 100), 'REM_ACCESS_ERR', 'a key without REMOTE_WRITE, right after a cached one that had it');
  await reconnect(p);
  t.equal(await write(m2, 0, 100), 'SUCCESS');
  const before = Buffer.from(m2.buffer);
  m2.close();
  t.equal(await write(m2, 0, 100), 'REM_ACCESS_ERR', 'the key just deregistered, the one the cache held');
  t.ok(m2.buffer.equals(before), 'no byte written after the deregistration');
  await reconnect(p);
  t.equal(await write(m1, 0, 100), 'SUCCESS', 'the other MR still works');
  m1.close();
  ro.close();
  await p.close();
});

t.test("addresses whose 32-bit halves differ from the region's are refused, whatever the low half", async (t) => {
  // The responder's bounds check works on the VA's two 32-bit halves (no bigint per packet): an
  // address a multiple of 2^32 away from the region, or below it, or far above, must not alias into it.
  const p = await makePair({ memSize: 1 << 16 });
  const { a, b } = p;
  fill(a.mem, 9);
  const snapshot = Buffer.from(b.mem);
  const deltas = [-4096n, -1n, 1n << 32n, -(1n << 32n), (1n << 32n) + 64n, 1n << 52n, 1n << 53n, 1n << 63n, -(1n << 63n)];
  let n = 0;
  let i = 0;
  for (const d of deltas) {
    for (const op of ['RDMA_WRITE', 'RDMA_READ', 'ATOMIC_FETCH_AND_ADD'] as const) {
      await reconnect(p);
      const addr = BigInt.asUintN(64, b.mr.addr + d) & ~7n;
      const rkey = b.mr.rkey;
      a.qp.postSend(remoteWr(p, i, op, addr, rkey));
      const w = await waitWc(p, a.scq, 1);
      if (w[0]?.status === 'REM_ACCESS_ERR') n++;
      else t.fail(`${op} at region ${d >= 0n ? '+' : ''}${d}: ${w[0]?.status}`);
      i++;
    }
  }
  t.equal(n, deltas.length * 3, 'every access outside the region completed with REM_ACCESS_ERR');
  t.ok(b.mem.equals(snapshot), 'the region is unchanged');
  // and the halves of an address inside still find the right bytes
  await reconnect(p);
  a.qp.postSend({ wrId: 99, opcode: 'RDMA_WRITE', sg: [{ mr: a.mr, offset: 0, length: 100 }], remote: { addr: b.mr.addr + 1000n, rkey: b.mr.rkey } });
  const w = await waitWc(p, a.scq, 1);
  t.equal(w[0]?.status, 'SUCCESS');
  t.ok(b.mem.subarray(1000, 1100).equals(a.mem.subarray(0, 100)), 'written at offset 1000');
  await p.close();
});

t.test('bad R_Keys and out-of-bounds addresses never touch memory; the requester gets REM_ACCESS_ERR', async (t) => {
  const p = await makePair({ memSize: 1 << 16 });
  const { a, b } = p;
  const guard = b.pd.regMr(Buffer.alloc(4096), ['LOCAL_WRITE']);
  fill(a.mem, 9);
  const rng = new Rng(77);
  const events: string[] = [];
  b.dev.on('async', (e: { type: string }) => events.push(e.type));
  const snapshot = Buffer.from(b.mem);
  let n = 0;
  for (let i = 0; i < 60; i++) {
    await reconnect(p);
    const kind = i % 4;
    const rkey = kind === 0 ? rng.next() >>> 0 : kind === 3 ? guard.rkey : b.mr.rkey;
    // kind 1: start beyond the end; kind 2: starts inside, runs past the end; kind 3: no REMOTE_WRITE on that MR
    const op = i % 3 === 0 ? 'RDMA_WRITE' : i % 3 === 1 ? 'RDMA_READ' : 'ATOMIC_FETCH_AND_ADD';
    // An atomic's target must be 8-byte aligned at post (EINVAL, as rdma-core's rxe provider): its kind 2 is the first aligned address past the end.
    const tail = op === 'ATOMIC_FETCH_AND_ADD' ? 0 : 4;
    const addr = kind === 1 ? b.mr.addr + BigInt(b.mr.length + rng.int(1 << 17) * 8) : kind === 2 ? b.mr.addr + BigInt(b.mr.length - tail) : b.mr.addr;
    a.qp.postSend(remoteWr(p, i, op, addr, rkey));
    const w = await waitWc(p, a.scq, 1);
    if (w[0]?.status === 'REM_ACCESS_ERR') n++;
    else t.fail(`case ${i} (${op}, kind ${kind}): ${w[0]?.status}`);
  }
  t.equal(n, 60, 'every bad access completed with REM_ACCESS_ERR');
  t.ok(b.mem.equals(snapshot), 'the target region is unchanged');
  t.ok(guard.buffer.equals(Buffer.alloc(4096)), 'the region without remote access is unchanged');
  t.ok(events.includes('QP_ACCESS_ERR'), 'the responder raised QP_ACCESS_ERR');
  await reconnect(p);
  const misaligned = {
    wrId: 99,
    opcode: 'ATOMIC_FETCH_AND_ADD',
    compareAdd: 1n,
    sg: [{ mr: a.mr, offset: 0, length: 8 }],
    remote: { addr: b.mr.addr + 4n, rkey: b.mr.rkey },
  } as const;
  t.throws(() => a.qp.postSend(misaligned), { code: 'EINVAL', argument: 'remote' }, 'a misaligned atomic is refused at post');
  // A requester without that check (another stack) still sends one: post an aligned one and misalign the
  // queued WQE before the requester runs (the fake clock runs it on the next advance).
  a.qp.postSend({ ...misaligned, remote: { addr: b.mr.addr, rkey: b.mr.rkey } });
  a.qp.sq[(a.qp.sqTail - 1) % a.qp.cap.maxSendWr]!.remoteAddr = b.mr.addr + 4n;
  t.equal((await waitWc(p, a.scq, 1))[0]!.status, 'REM_INV_REQ_ERR', 'a misaligned atomic is an invalid request (IBA 9.4.5)');
  t.ok(b.mem.equals(snapshot), 'and changes nothing');
  await p.close();
});

t.test('REM_INV_REQ_ERR (no remote write permission), LOC_LEN_ERR at the receiver, LOC_PROT_ERR, WR_FLUSH_ERR', async (t) => {
  const p = await makePair({ access: ['LOCAL_WRITE', 'REMOTE_READ'] });
  const { a, b } = p;
  a.qp.postSend({ wrId: 1, opcode: 'RDMA_WRITE', sg: [{ mr: a.mr, offset: 0, length: 10 }], remote: { addr: b.mr.addr, rkey: b.mr.rkey } });
  t.equal((await waitWc(p, a.scq, 1))[0]!.status, 'REM_INV_REQ_ERR', 'the QP does not allow remote writes');
  t.equal(b.qp.state, 'ERR');

  await reconnect(p);
  b.qp.postRecv([
    { wrId: 5, sg: [{ mr: b.mr, offset: 0, length: 10 }] },
    { wrId: 6, sg: [{ mr: b.mr, offset: 0, length: 10 }] },
  ]);
  a.qp.postSend({ wrId: 2, opcode: 'SEND', sg: [{ mr: a.mr, offset: 0, length: 100 }] });
  t.equal((await waitWc(p, a.scq, 1))[0]!.status, 'REM_INV_REQ_ERR', 'message longer than the receive buffer');
  const rw = await waitWc(p, b.rcq, 2);
  t.same(
    rw.map((w) => [w.wrId, w.status]),
    [
      [5, 'LOC_LEN_ERR'],
      [6, 'WR_FLUSH_ERR'],
    ],
    'receiver: length error, then the rest flushed',
  );

  await reconnect(p);
  a.qp.postSend([
    { wrId: 3, opcode: 'SEND', sg: [{ mr: a.mr, offset: a.mr.length - 4, length: 8 }] },
    { wrId: 4, opcode: 'SEND', sg: [] },
  ]);
  const w = await waitWc(p, a.scq, 2);
  t.same(
    w.map((x) => [x.wrId, x.status]),
    [
      [3, 'LOC_PROT_ERR'],
      [4, 'WR_FLUSH_ERR'],
    ],
    'SGE outside its MR',
  );
  await p.close();
});

t.test('REM_OP_ERR and BAD_RESP_ERR from a misbehaving responder', async (t) => {
  const p = await makePair();
  const { a, b } = p;
  let psn = -1;
  p.net!.filter = (pkt, src) => {
    if (src === '10.0.0.1') psn = (pkt[9]! << 16) | (pkt[10]! << 8) | pkt[11]!;
    return false;
  };
  a.qp.postSend({ wrId: 1, opcode: 'SEND', sg: [] });
  await settle(p, 0.5);
  p.net!.inject(
    '10.0.0.2',
    4791,
    '10.0.0.1',
    4791,
    ibBytes('10.0.0.2', '10.0.0.1', { opcode: 0x11, destQp: a.qp.qpn, psn, aeth: { syndrome: aethNak(NakCode.REMOTE_OPERATIONAL_ERROR), msn: 0 } }),
  );
  t.equal((await waitWc(p, a.scq, 1))[0]!.status, 'REM_OP_ERR');

  await reconnect(p);
  a.qp.postSend({ wrId: 2, opcode: 'RDMA_READ', sg: [{ mr: a.mr, offset: 0, length: 100 }], remote: { addr: b.mr.addr, rkey: b.mr.rkey } });
  await settle(p, 0.5);
  // A READ response longer than what was asked.
  p.net!.inject(
    '10.0.0.2',
    4791,
    '10.0.0.1',
    4791,
    ibBytes('10.0.0.2', '10.0.0.1', { opcode: 0x10, destQp: a.qp.qpn, psn, aeth: { syndrome: aethAck(), msn: 1 }, payload: new Uint8Array(200) }),
  );
  t.equal((await waitWc(p, a.scq, 1))[0]!.status, 'BAD_RESP_ERR');
  await p.close();
});

t.test('duplicates: a SEND is not delivered twice, an ATOMIC never runs twice, a READ is answered again', async (t) => {
  const p = await makePair();
  const { a, b } = p;
  const seen: Buffer[] = [];
  p.net!.filter = (pkt, src) => {
    if (src === '10.0.0.1') seen.push(Buffer.from(pkt));
    return true;
  };
  b.qp.postRecv([
    { wrId: 1, sg: [{ mr: b.mr, offset: 0, length: 100 }] },
    { wrId: 2, sg: [{ mr: b.mr, offset: 0, length: 100 }] },
  ]);
  b.mem.writeBigUInt64LE(1000n, 512);
  a.qp.postSend([
    { wrId: 1, opcode: 'SEND', sg: [{ mr: a.mr, offset: 0, length: 50 }] },
    {
      wrId: 2,
      opcode: 'ATOMIC_FETCH_AND_ADD',
      compareAdd: 1n,
      sg: [{ mr: a.mr, offset: 512, length: 8 }],
      remote: { addr: b.mr.addr + 512n, rkey: b.mr.rkey },
    },
    { wrId: 3, opcode: 'RDMA_READ', sg: [{ mr: a.mr, offset: 1024, length: 3000 }], remote: { addr: b.mr.addr, rkey: b.mr.rkey } },
  ]);
  t.equal((await waitWc(p, a.scq, 3)).filter((w) => w.status === 'SUCCESS').length, 3);
  t.equal((await waitWc(p, b.rcq, 1)).length, 1);
  const sentBefore = b.dev.counters()['sent_pkts']!;
  for (const pkt of seen) p.net!.inject('10.0.0.1', a.qp.srcPort, '10.0.0.2', 4791, pkt); // replayed from the QP's flow port (the ICRC covers it)
  await settle(p, 5);
  t.equal(b.rcq.length, 0, 'the duplicate SEND was acknowledged, not delivered');
  t.equal(b.mem.readBigUInt64LE(512), 1001n, 'the duplicate FETCH_ADD did not add again');
  t.equal(b.dev.counters()['duplicate_request'], seen.length, 'every replayed request counted as a duplicate');
  t.ok(b.dev.counters()['sent_pkts']! - sentBefore >= 1 + 1 + 3, 'ACK, saved atomic ACK and READ responses were sent again');
  t.equal(a.mem.readBigUInt64LE(512), 1000n, 'requester saw the original value once');
  await p.close();
});

t.test('garbage on the wire is counted and dropped; the QP keeps working', async (t) => {
  const p = await makePair();
  const { a, b } = p;
  const rng = new Rng(5);
  const good = ibBytes('10.0.0.1', '10.0.0.2', { opcode: 0x04, destQp: b.qp.qpn, psn: 0, payload: new Uint8Array(8) });
  for (let i = 0; i < 200; i++) p.net!.inject('10.0.0.1', 4791, '10.0.0.2', 4791, rng.bytes(rng.int(80)));
  const badIcrc = Buffer.from(good);
  badIcrc[20]! ^= 1;
  p.net!.inject('10.0.0.1', 4791, '10.0.0.2', 4791, badIcrc);
  p.net!.inject('10.0.0.1', 4791, '10.0.0.2', 4791, ibBytes('10.0.0.1', '10.0.0.2', { opcode: 0x04, destQp: 0x7777, psn: 0 }));
  p.net!.inject('10.0.0.1', 4791, '10.0.0.2', 4791, ibBytes('10.0.0.1', '10.0.0.2', { opcode: 0x04, destQp: b.qp.qpn, psn: 0, pkey: 0x1234 }));
  p.net!.inject('10.0.0.1', 4791, '10.0.0.2', 4791, ibBytes('10.0.0.1', '10.0.0.2', { opcode: 0x24, destQp: b.qp.qpn, psn: 0 }));
  p.net!.inject('10.0.0.9', 4791, '10.0.0.2', 4791, ibBytes('10.0.0.9', '10.0.0.2', { opcode: 0x04, destQp: b.qp.qpn, psn: 0 }));
  await settle(p, 1);
  const c = b.dev.counters();
  t.equal(c['rcvd_malformed']! + c['rcvd_icrc_err']!, 201, 'random bytes and the flipped bit');
  t.equal(c['rcvd_unknown_qp'], 1);
  t.equal(c['rcvd_bad_pkey'], 1);
  t.equal(c['rcvd_bad_opcode'], 1, 'a UC opcode for an RC QP');
  t.equal(c['rcvd_bad_addr'], 1, 'from an address that is not the peer');
  b.qp.postRecv({ wrId: 1, sg: [{ mr: b.mr, offset: 0, length: 10 }] });
  a.qp.postSend({ wrId: 1, opcode: 'SEND', sg: [{ mr: a.mr, offset: 0, length: 10 }] });
  t.equal((await waitWc(p, a.scq, 1))[0]!.status, 'SUCCESS', 'traffic still flows');
  await p.close();
});

t.test('UC: a PSN gap drops the message in progress', async (t) => {
  const p = await makePair({ type: 'UC' });
  const { a, b } = p;
  fill(a.mem, 3);
  let k = 0;
  p.net!.filter = (_pkt, src) => !(src === '10.0.0.1' && ++k === 2); // lose the 2nd packet
  b.qp.postRecv([
    { wrId: 1, sg: [{ mr: b.mr, offset: 0, length: 5000 }] },
    { wrId: 2, sg: [{ mr: b.mr, offset: 8000, length: 5000 }] },
  ]);
  a.qp.postSend([
    { wrId: 1, opcode: 'SEND', sg: [{ mr: a.mr, offset: 0, length: 3000 }] },
    { wrId: 2, opcode: 'SEND', sg: [{ mr: a.mr, offset: 100, length: 2000 }] },
  ]);
  t.equal((await waitWc(p, a.scq, 2)).length, 2, 'UC sends complete without ACKs');
  const rw = await waitWc(p, b.rcq, 1);
  await settle(p, 5);
  t.equal(rw.length, 1, 'only the second message arrived');
  t.equal(rw[0]!.byteLen, 2000);
  t.equal(rw[0]!.wrId, 1, 'into the receive WQE the dropped message had started');
  t.ok(b.mem.subarray(0, 2000).equals(a.mem.subarray(100, 2100)));
  await p.close();
});

t.test('a late ACK from before a go-back-N rewind keeps PSNs consistent (regression)', async (t) => {
  // Found by the chaos test: after a rewind the requester had resent one packet when an ACK
  // from the earlier flight completed the whole first message; the next message then reused
  // PSNs the responder had already seen, and it NAKed an opcode out of sequence.
  const p = await makePair({ timeout: 10, mtu: 1024 });
  const { a, b } = p;
  fill(a.mem, 8);
  let pass = false;
  p.net!.filter = (_pkt, src) => pass || src !== '10.0.0.2'; // responses held back for now
  b.qp.postRecv([
    { wrId: 1, sg: [{ mr: b.mr, offset: 0, length: 8192 }] },
    { wrId: 2, sg: [{ mr: b.mr, offset: 8192, length: 8192 }] },
  ]);
  const P = a.qp.req.psn;
  a.qp.postSend([
    { wrId: 1, opcode: 'SEND', sg: [{ mr: a.mr, offset: 0, length: 5000 }] }, // 5 packets: P .. P+4
    { wrId: 2, opcode: 'SEND', sg: [{ mr: a.mr, offset: 5000, length: 3000 }] }, // 3 packets: P+5 .. P+7
  ]);
  await settle(p, 0.1);
  t.equal(a.qp.req.psn, (P + 8) & 0xffffff, 'all 8 packets out');
  // Go back to P (as a timeout would) and let exactly one packet out again.
  rewind(a.qp);
  a.qp.req.window = 1;
  a.dev.kick(a.qp);
  await settle(p, 0.1);
  t.equal(a.qp.req.psn, (P + 1) & 0xffffff, 'resent one packet');
  // The ACK the responder sent for the first flight's P+4 arrives only now.
  const info = new PktInfo();
  const ack = ibBytes('10.0.0.2', '10.0.0.1', { opcode: 0x11, destQp: a.qp.qpn, psn: (P + 4) & 0xffffff, aeth: { syndrome: aethAck(), msn: 1 } });
  parseIb(info, ack, 0, ack.length);
  onResponse(a.qp, info);
  t.equal(a.qp.comp.psn, (P + 5) & 0xffffff, 'message 1 acknowledged');
  t.equal(a.qp.req.psn, (P + 5) & 0xffffff, 'the requester resumes after it, not at P+1');
  a.qp.req.window = 128;
  pass = true;
  a.dev.kick(a.qp);
  const sw = await waitWc(p, a.scq, 2);
  const rw = await waitWc(p, b.rcq, 2);
  t.same(
    sw.map((w) => w.status),
    ['SUCCESS', 'SUCCESS'],
  );
  t.same(
    rw.map((w) => [w.wrId, w.status, w.byteLen]),
    [
      [1, 'SUCCESS', 5000],
      [2, 'SUCCESS', 3000],
    ],
  );
  t.ok(b.mem.subarray(8192, 11192).equals(a.mem.subarray(5000, 8000)), 'message 2 intact');
  t.equal(b.qp.state, 'RTS', 'no sequence error at the responder');
  await p.close();
});

t.test(
  'a responder that closes its QP right after its last receive completion still acknowledges it (coalesced ACK flushed on close; regression)',
  async (t) => {
    const p = await makePair({ mode: 'udp', addrs: ['127.0.10.5', '127.0.10.6'], retryCnt: 1, timeout: 14 });
    const { a, b } = p;
    b.qp.postRecv({ wrId: 1, sg: [{ mr: b.mr, offset: 0, length: 64 }] });
    // Close from inside the completion notification: before the event loop's next turn, where a coalesced ACK would go out.
    b.rcq.once('notify', () => b.qp.close());
    b.rcq.reqNotify();
    a.qp.postSend({ wrId: 7, opcode: 'SEND', signaled: true, sg: [{ mr: a.mr, offset: 0, length: 64 }] });
    const [w] = await waitWc(p, a.scq, 1, 5000);
    t.equal(w?.status, 'SUCCESS', 'the sender got its ACK (no RETRY_EXC_ERR)');
    await p.close();
  },
);
