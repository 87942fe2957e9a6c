/**
 * Issue 9, items 1, 2 and 6: the transport trusts only the QP's peer, protects
 * memory the way the IBA and rxe do, and never loses a completion silently.
 * Each test here failed on the code before the fix (named in its title).
 */
import t from 'tap';
import { makePair, waitWc, settle, fill } from '../verbs/pair.js';
import { openDevice, type Device } from '../../src/verbs/device.js';
import { connectQp } from '../../src/verbs/connect.js';
import type { Qp } from '../../src/verbs/qp.js';
import { Wc } from '../../src/verbs/types.js';
import { buildRoceV2, emitFrame, makeIb } from '../../src/roce/framing.js';
import { aethAck, aethNak, NakCode } from '../../src/roce/aeth.js';
import { ackTimeoutMs } from '../../src/roce/transport/completer.js';
import { gidFromString, ipv4ToGid } from '../../src/roce/gid.js';

function addrBytes(ip: string): Uint8Array {
  return ip.includes(':') ? gidFromString(ip) : ipv4ToGid(ip).subarray(12);
}
/** Raw IB bytes (BTH … ICRC) from `src` to `dst`, as a socket would carry them. */
function ibBytes(src: string, dst: string, init: Parameters<typeof makeIb>[0]): Buffer {
  const f = buildRoceV2({ src: addrBytes(src), dst: addrBytes(dst), srcPort: 4791 }, makeIb(init));
  return emitFrame(f).subarray(src.includes(':') ? 48 : 28);
}
const A = '10.0.0.1',
  B = '10.0.0.2',
  EVIL = '10.0.0.3';
const PSN_A = 0x00fff0; // a's first request PSN (pair.ts)

t.test('a forged ACK from another address completes nothing (completer check_addr)', async (t) => {
  const p = await makePair();
  const { a } = p;
  p.net!.filter = (_pkt, src) => src !== A; // a's requests never reach b
  a.qp.postSend({ wrId: 1, opcode: 'RDMA_WRITE', sg: [{ mr: a.mr, offset: 0, length: 100 }], remote: { addr: p.b.mr.addr, rkey: p.b.mr.rkey } });
  await settle(p, 0.01);
  p.net!.inject(EVIL, 4791, A, 4791, ibBytes(EVIL, A, { opcode: 0x11, destQp: a.qp.qpn, psn: PSN_A, aeth: { syndrome: aethAck(), msn: 1 } }));
  await settle(p, 0.01);
  t.equal(a.scq.length, 0, 'the WRITE did not complete');
  t.equal(a.dev.counters()['rcvd_bad_addr'], 1, 'counted as from a stranger');
  await p.close();
});

t.test('a forged READ response from another address lands nowhere', async (t) => {
  const p = await makePair();
  const { a } = p;
  p.net!.filter = (_pkt, src) => src !== A;
  a.mem.fill(0x55, 0, 64);
  a.qp.postSend({ wrId: 1, opcode: 'RDMA_READ', sg: [{ mr: a.mr, offset: 0, length: 64 }], remote: { addr: p.b.mr.addr, rkey: p.b.mr.rkey } });
  await settle(p, 0.01);
  p.net!.inject(
    EVIL,
    4791,
    A,
    4791,
    ibBytes(EVIL, A, { opcode: 0x10, destQp: a.qp.qpn, psn: PSN_A, aeth: { syndrome: aethAck(), msn: 1 }, payload: new Uint8Array(64).fill(0xee) }),
  );
  await settle(p, 0.01);
  t.equal(a.scq.length, 0, 'the READ did not complete');
  t.ok(
    a.mem.subarray(0, 64).every((x) => x === 0x55),
    'the local buffer is untouched',
  );
  t.equal(a.dev.counters()['rcvd_bad_addr'], 1);
  await p.close();
});

t.test('a ghost ACK (a PSN never sent) from the peer completes nothing', async (t) => {
  const p = await makePair();
  const { a } = p;
  p.net!.filter = (_pkt, src) => src !== A;
  a.qp.postSend({ wrId: 1, opcode: 'RDMA_WRITE', sg: [{ mr: a.mr, offset: 0, length: 3000 }], remote: { addr: p.b.mr.addr, rkey: p.b.mr.rkey } });
  await settle(p, 0.01);
  // Three packets went out (PSN_A .. PSN_A+2); an ACK for PSN_A+5 names packets never sent.
  p.net!.inject(B, 4791, A, 4791, ibBytes(B, A, { opcode: 0x11, destQp: a.qp.qpn, psn: PSN_A + 5, aeth: { syndrome: aethAck(), msn: 1 } }));
  await settle(p, 0.01);
  t.equal(a.scq.length, 0, 'the WRITE did not complete');
  t.equal(a.dev.counters()['rcvd_bad_psn'], 1, 'counted');
  await p.close();
});

t.test('a NAK with nothing outstanding completes no slot', async (t) => {
  const p = await makePair();
  const { a } = p;
  for (const syn of [aethNak(NakCode.REMOTE_ACCESS_ERROR), aethNak(NakCode.INVALID_REQUEST), aethNak(NakCode.PSN_SEQ_ERROR)]) {
    p.net!.inject(B, 4791, A, 4791, ibBytes(B, A, { opcode: 0x11, destQp: a.qp.qpn, psn: PSN_A, aeth: { syndrome: syn, msn: 0 } }));
  }
  await settle(p, 0.01);
  t.equal(a.scq.length, 0, 'no completion');
  t.equal(a.qp.state, 'RTS', 'the QP is unharmed');
  t.equal(a.dev.counters()['rcvd_bad_psn'], 3);
  p.b.qp.postRecv({ wrId: 1, sg: [{ mr: p.b.mr, offset: 0, length: 10 }] });
  a.qp.postSend({ wrId: 7, opcode: 'SEND', sg: [{ mr: a.mr, offset: 0, length: 10 }] });
  const w = await waitWc(p, a.scq, 1);
  t.same(
    w.map((x) => [x.wrId, x.status]),
    [[7, 'SUCCESS']],
    'the next real WR completes as itself',
  );
  await p.close();
});

t.test('an ACK that arrives while the requester is going back completes the WQEs it covers (judged by their PSNs, not the resend pointer)', async (t) => {
  const p = await makePair({ timeout: 8 });
  const { a } = p;
  p.net!.filter = (_pkt, src) => src !== A; // a fake peer: b never sees anything
  const wr = (id: number) => ({
    wrId: id,
    opcode: 'RDMA_WRITE' as const,
    sg: [{ mr: a.mr, offset: 0, length: 3000 }],
    remote: { addr: p.b.mr.addr, rkey: p.b.mr.rkey },
  });
  a.qp.postSend([wr(1), wr(2)]); // PSN_A..PSN_A+2 and PSN_A+3..PSN_A+5
  await settle(p, 0.01);
  // Hold the send queue (SQD: no message starts) so that after the timeout's go-back-N both WRITEs
  // wait to be resent: the resend pointer is back at PSN_A.
  a.qp.modify({ state: 'SQD' });
  await settle(p, ackTimeoutMs(8) * 1.5);
  t.ok(a.dev.counters()['timeouts']! >= 1, 'went back after a timeout');
  t.equal(a.qp.query().sqPsn, PSN_A, 'the requester will resend from PSN_A');
  // The peer's ACK for the last PSN of the second WRITE (sent before the timeout) arrives now.
  p.net!.inject(B, 4791, A, 4791, ibBytes(B, A, { opcode: 0x11, destQp: a.qp.qpn, psn: PSN_A + 5, aeth: { syndrome: aethAck(), msn: 2 } }));
  const w = await waitWc(p, a.scq, 2, 5);
  t.same(
    w.map((x) => [x.wrId, x.status]),
    [
      [1, 'SUCCESS'],
      [2, 'SUCCESS'],
    ],
    'both WRITEs complete',
  );
  await p.close();
});

/** Two devices on ::1 (UDP 4791 and 4792) with a connected RC QP each. */
async function ipv6Pair(): Promise<{
  devs: Device[];
  qps: Qp[];
  mems: Buffer[];
  mrs: ReturnType<Device['allocPd']>['regMr'] extends (...a: never[]) => infer R ? R[] : never;
  cqs: ReturnType<Device['createCq']>[];
}> {
  const devs = [await openDevice({ address: '::1', udpPort: 4791 }), await openDevice({ address: '::1', udpPort: 4792 })];
  const pds = devs.map((d) => d.allocPd());
  const cqs = devs.map((d) => d.createCq({ depth: 256 }));
  const qps = devs.map((d, i) => pds[i]!.createQp({ type: 'RC', sendCq: cqs[i]!, recvCq: cqs[i]!, sigAll: true, cap: { maxSendWr: 64, maxRecvWr: 64 } }));
  const mems = [Buffer.alloc(2 << 20), Buffer.alloc(2 << 20)];
  const mrs = mems.map((m, i) => pds[i]!.regMr(m, ['LOCAL_WRITE', 'REMOTE_WRITE', 'REMOTE_READ', 'REMOTE_ATOMIC']));
  const psn = [0x123456, 0xabcdef];
  for (const i of [0, 1]) {
    const j = 1 - i;
    connectQp(qps[i]!, { psn: psn[i]!, pathMtu: 1024, timeout: 12 }, { qpn: qps[j]!.qpn, psn: psn[j]!, gid: '::1', udpPort: 4791 + j });
  }
  return { devs, qps, mems, mrs, cqs };
}

async function pollN(cq: { poll(o: Wc[]): number }, n: number, ms: number): Promise<Wc[]> {
  const out: Wc[] = [];
  const one = [new Wc()];
  const end = performance.now() + ms;
  while (out.length < n && performance.now() < end) {
    if (cq.poll(one) === 1) out.push(Object.assign(new Wc(), one[0]!));
    else await new Promise((r) => setTimeout(r, 1));
  }
  return out;
}

t.test('RC over RoCEv2/IPv6 (::1) between two softroce devices: every opcode', async (t) => {
  const { devs, qps, mems, mrs, cqs } = await ipv6Pair();
  try {
    fill(mems[0]!, 9);
    const [a, b] = [qps[0]!, qps[1]!];
    const [ma, mb] = [mrs[0]!, mrs[1]!];
    b.postRecv({ wrId: 1, sg: [{ mr: mb, offset: 0, length: 8192 }] });
    mems[1]!.writeBigUInt64LE(5n, 2_000_000);
    a.postSend([
      { wrId: 1, opcode: 'RDMA_WRITE', sg: [{ mr: ma, offset: 0, length: 1 << 20 }], remote: { addr: mb.addr + 65536n, rkey: mb.rkey } },
      { wrId: 2, opcode: 'SEND', sg: [{ mr: ma, offset: 0, length: 5000 }] },
      { wrId: 3, opcode: 'RDMA_READ', sg: [{ mr: ma, offset: 1_500_000, length: 100_000 }], remote: { addr: mb.addr + 65536n, rkey: mb.rkey } },
      {
        wrId: 4,
        opcode: 'ATOMIC_FETCH_AND_ADD',
        compareAdd: 3n,
        sg: [{ mr: ma, offset: 1_900_000, length: 8 }],
        remote: { addr: mb.addr + 2_000_000n, rkey: mb.rkey },
      },
    ]);
    const w = await pollN(cqs[0]!, 4, 20_000);
    t.same(
      w.map((x) => [x.wrId, x.status]),
      [
        [1, 'SUCCESS'],
        [2, 'SUCCESS'],
        [3, 'SUCCESS'],
        [4, 'SUCCESS'],
      ],
    );
    t.ok(mems[1]!.subarray(65536, 65536 + (1 << 20)).equals(mems[0]!.subarray(0, 1 << 20)), 'WRITE landed byte for byte');
    t.ok(mems[1]!.subarray(0, 5000).equals(mems[0]!.subarray(0, 5000)), 'SEND landed');
    t.ok(mems[0]!.subarray(1_500_000, 1_600_000).equals(mems[0]!.subarray(0, 100_000)), 'READ brought back what the WRITE put there');
    t.equal(mems[0]!.readBigUInt64LE(1_900_000), 5n, 'FETCH_ADD returned the old value');
    t.equal(mems[1]!.readBigUInt64LE(2_000_000), 8n);
    for (const d of devs) t.equal(d.counters()['rcvd_bad_addr'], 0, 'nothing dropped as a stranger');
  } finally {
    for (const d of devs) await d.close();
  }
});

t.test('an MR deregistered while a 16 MiB WRITE lands: no byte after dereg, REM_ACCESS_ERR', async (t) => {
  const p = await makePair({ memSize: 16 << 20, mtu: 4096 });
  const { a, b } = p;
  fill(a.mem, 4);
  a.qp.postSend({ wrId: 1, opcode: 'RDMA_WRITE', sg: [{ mr: a.mr, offset: 0, length: 16 << 20 }], remote: { addr: b.mr.addr, rkey: b.mr.rkey } });
  // Let the first 300 packets (1.2 MB) land, lose the rest until the MR is gone.
  let n = 0;
  p.net!.filter = (_pkt, src) => src !== A || ++n <= 300;
  p.fake!.advance(0.01);
  t.ok(b.mem.readUInt32LE((1 << 20) - 4) !== 0, 'the first MiB landed');
  b.mr.close();
  p.net!.filter = null;
  const atDereg = Buffer.from(b.mem);
  const w = await waitWc(p, a.scq, 1);
  t.same(
    w.map((x) => x.status),
    ['REM_ACCESS_ERR'],
    'the sender learns it',
  );
  t.ok(b.mem.equals(atDereg), 'no byte landed after dereg');
  t.equal(b.qp.state, 'ERR');
  await p.close();
});

t.test('a READ whose remote MR is deregistered mid-stream serves nothing written after dereg', async (t) => {
  const p = await makePair({ memSize: 16 << 20, mtu: 4096 });
  const { a, b } = p;
  b.mem.fill(0x11);
  a.qp.postSend({ wrId: 1, opcode: 'RDMA_READ', sg: [{ mr: a.mr, offset: 0, length: 16 << 20 }], remote: { addr: b.mr.addr, rkey: b.mr.rkey } });
  let n = 0;
  p.net!.filter = (_pkt, src) => src !== B || ++n <= 300;
  p.fake!.advance(0.01);
  t.equal(a.mem[(1 << 20) - 1], 0x11, 'the first MiB arrived');
  b.mr.close();
  p.net!.filter = null;
  b.mem.fill(0x99); // the memory is reused for something else
  const w = await waitWc(p, a.scq, 1);
  t.same(
    w.map((x) => x.status),
    ['REM_ACCESS_ERR'],
  );
  t.equal(a.mem.indexOf(0x99), -1, 'no byte written after dereg was served');
  await p.close();
});

t.test('a receive whose MR was closed after the post: LOC_PROT_ERR, nothing lands', async (t) => {
  const p = await makePair();
  const { a, b } = p;
  const mem = Buffer.alloc(4096, 0x33);
  const mr = b.pd.regMr(mem, ['LOCAL_WRITE']);
  b.qp.postRecv({ wrId: 5, sg: [{ mr, offset: 0, length: 4096 }] });
  mr.close();
  fill(a.mem, 2);
  a.qp.postSend({ wrId: 1, opcode: 'SEND', sg: [{ mr: a.mr, offset: 0, length: 2000 }] });
  const rw = await waitWc(p, b.rcq, 1);
  t.same(
    rw.map((x) => [x.wrId, x.status]),
    [[5, 'LOC_PROT_ERR']],
  );
  t.ok(
    mem.every((x) => x === 0x33),
    'nothing landed in the closed MR',
  );
  t.same(
    (await waitWc(p, a.scq, 1)).map((x) => x.status),
    ['REM_OP_ERR'],
    'the sender is told (remote operational error)',
  );
  await p.close();
});

t.test('a send whose MR was closed after the post: LOC_PROT_ERR, no byte leaves', async (t) => {
  const p = await makePair();
  const { a, b } = p;
  const mem = Buffer.alloc(4096, 0x44);
  const mr = a.pd.regMr(mem, ['LOCAL_WRITE']);
  b.qp.postRecv({ wrId: 1, sg: [{ mr: b.mr, offset: 0, length: 4096 }] });
  p.net!.filter = () => false; // hold the first WR back so the second is still queued
  a.qp.postSend({ wrId: 1, opcode: 'SEND', sg: [{ mr: a.mr, offset: 0, length: 10 }] });
  a.qp.postSend({ wrId: 2, opcode: 'SEND', sg: [{ mr, offset: 0, length: 4096 }] });
  mr.close();
  p.net!.filter = null;
  const w = await waitWc(p, a.scq, 2);
  t.same(
    w.map((x) => [x.wrId, x.status]),
    [
      [1, 'SUCCESS'],
      [2, 'LOC_PROT_ERR'],
    ],
  );
  t.equal(b.mem.indexOf(0x44), -1);
  await p.close();
});

t.test('an atomic result is scattered over a two-SGE local buffer; SGEs end at MR ends', async (t) => {
  const p = await makePair();
  const { a, b } = p;
  // Two 4-byte SGEs, each the last 4 bytes of its own MR, with guard bytes beyond in the same buffer.
  const big = Buffer.alloc(64, 0xaa);
  const m1 = a.pd.regMr(big.subarray(0, 16), ['LOCAL_WRITE']);
  const m2 = a.pd.regMr(big.subarray(32, 48), ['LOCAL_WRITE']);
  b.mem.writeBigUInt64LE(0x1122334455667788n, 64);
  a.qp.postSend({
    wrId: 1,
    opcode: 'ATOMIC_FETCH_AND_ADD',
    compareAdd: 1n,
    sg: [
      { mr: m1, offset: 12, length: 4 },
      { mr: m2, offset: 12, length: 4 },
    ],
    remote: { addr: b.mr.addr + 64n, rkey: b.mr.rkey },
  });
  const w = await waitWc(p, a.scq, 1);
  t.same(
    w.map((x) => x.status),
    ['SUCCESS'],
  );
  const got = Buffer.concat([big.subarray(12, 16), big.subarray(44, 48)]).readBigUInt64LE(0);
  t.equal(got, 0x1122334455667788n, 'the original value, spread over both SGEs');
  t.ok(
    big.subarray(0, 12).every((x) => x === 0xaa) && big.subarray(16, 44).every((x) => x === 0xaa) && big.subarray(48).every((x) => x === 0xaa),
    'nothing outside the SGEs changed',
  );
  t.equal(a.dev.counters()['rcvd_internal_err'], 0);
  await p.close();
});

t.test('zero-byte WRITE, WRITE_WITH_IMM and READ need no valid R_Key (IBA C9-88)', async (t) => {
  const p = await makePair();
  const { a, b } = p;
  b.qp.postRecv({ wrId: 9, sg: [] });
  a.qp.postSend([
    { wrId: 1, opcode: 'RDMA_WRITE', sg: [], remote: { addr: 0n, rkey: 0 } },
    { wrId: 2, opcode: 'RDMA_WRITE_WITH_IMM', imm: 0x0d00b311, sg: [], remote: { addr: 0n, rkey: 0 } },
    { wrId: 3, opcode: 'RDMA_READ', sg: [], remote: { addr: 0n, rkey: 0 } },
  ]);
  t.same(
    (await waitWc(p, a.scq, 3)).map((x) => [x.wrId, x.status]),
    [
      [1, 'SUCCESS'],
      [2, 'SUCCESS'],
      [3, 'SUCCESS'],
    ],
  );
  const rw = await waitWc(p, b.rcq, 1);
  t.same(
    rw.map((x) => [x.wrId, x.status, x.opcode, x.imm, x.byteLen]),
    [[9, 'SUCCESS', 'RECV_RDMA_WITH_IMM', 0x0d00b311, 0]],
    'the doorbell rang',
  );
  t.equal(a.qp.state, 'RTS');
  t.equal(b.qp.state, 'RTS');
  await p.close();
});

t.test('SEND_WITH_INV: an ordinary MR cannot be invalidated (REM_INV_REQ_ERR); an invalidatable one stops working everywhere', async (t) => {
  {
    const p = await makePair();
    const { a, b } = p;
    b.qp.postRecv({ wrId: 1, sg: [{ mr: b.mr, offset: 0, length: 64 }] });
    const plain = b.pd.regMr(Buffer.alloc(64), ['LOCAL_WRITE']);
    a.qp.postSend({ wrId: 1, opcode: 'SEND_WITH_INV', invalidateRkey: plain.rkey, sg: [] });
    t.same(
      (await waitWc(p, a.scq, 1)).map((x) => x.status),
      ['REM_INV_REQ_ERR'],
    );
    t.equal(plain.valid, true, 'the ordinary MR is untouched');
    await p.close();
  }
  {
    const p = await makePair();
    const { a, b } = p;
    const mem = Buffer.alloc(64, 0x21);
    const inv = b.pd.regMr(mem, ['LOCAL_WRITE', 'REMOTE_WRITE'], { invalidatable: true });
    b.qp.postRecv({ wrId: 1, sg: [{ mr: b.mr, offset: 0, length: 64 }] });
    a.qp.postSend({ wrId: 1, opcode: 'SEND_WITH_INV', invalidateRkey: inv.rkey, sg: [] });
    t.same(
      (await waitWc(p, a.scq, 1)).map((x) => x.status),
      ['SUCCESS'],
    );
    t.equal(inv.valid, false);
    // Local use of the invalidated MR: LOC_PROT_ERR, nothing leaves.
    b.qp.postSend({ wrId: 2, opcode: 'SEND', sg: [{ mr: inv, offset: 0, length: 64 }] });
    t.same(
      (await waitWc(p, b.scq, 1)).map((x) => x.status),
      ['LOC_PROT_ERR'],
    );
    await p.close();
  }
});

t.test('CQ overflow: CQ_ERR, the QP goes to ERR with QP_FATAL, nothing vanishes silently', async (t) => {
  const p = await makePair({ cqDepth: 2 });
  const { a } = p;
  const events: string[] = [];
  a.dev.on('async', (e: { type: string }) => events.push(e.type));
  for (let i = 0; i < 10; i++)
    a.qp.postSend({ wrId: i, opcode: 'RDMA_WRITE', sg: [{ mr: a.mr, offset: 0, length: 8 }], remote: { addr: p.b.mr.addr, rkey: p.b.mr.rkey } });
  await settle(p, 1);
  t.same(events.slice(0, 2), ['CQ_ERR', 'QP_FATAL']);
  t.equal(a.qp.state, 'ERR', 'the QP whose completion was lost is in ERR');
  t.ok(a.dev.counters()['cq_overflow']! >= 1, 'counted');
  await p.close();
});

t.test('every completion path with SGEs exactly at MR boundaries: data right, guards intact, nothing thrown', async (t) => {
  const p = await makePair({ mtu: 256 });
  const { a, b } = p;
  const G = 64;
  /** An MR of `len` bytes inside a buffer with G guard bytes on each side. */
  const guarded = (side: typeof a, len: number, access: Parameters<typeof a.pd.regMr>[1]) => {
    const buf = Buffer.alloc(len + 2 * G, 0xc7);
    const mem = buf.subarray(G, G + len);
    mem.fill(0);
    return { buf, mem, mr: side.pd.regMr(mem, access) };
  };
  const all = ['LOCAL_WRITE', 'REMOTE_WRITE', 'REMOTE_READ', 'REMOTE_ATOMIC'] as const;
  const srcs = [guarded(a, 300, all), guarded(a, 257, all), guarded(a, 5, all)];
  for (const [i, s] of srcs.entries()) fill(s.mem, 10 + i);
  const dsts = [guarded(b, 111, all), guarded(b, 300, all), guarded(b, 151, all)];
  const rtarget = guarded(b, 562, all);
  const rdst = [guarded(a, 100, all), guarded(a, 462, all)];
  const atom = guarded(b, 8, all);
  atom.mem.writeBigUInt64LE(41n, 0);
  const ares = [guarded(a, 4, all), guarded(a, 4, all)];
  fill(rtarget.mem, 77);
  const sg = srcs.map((s) => ({ mr: s.mr, offset: 0, length: s.mem.length })); // 562 bytes, 3 SGEs
  b.qp.postRecv({ wrId: 1, sg: dsts.map((d) => ({ mr: d.mr, offset: 0, length: d.mem.length })) });
  b.qp.postRecv({ wrId: 2, sg: [] });
  a.qp.postSend([
    { wrId: 1, opcode: 'SEND', sg },
    { wrId: 2, opcode: 'RDMA_WRITE_WITH_IMM', imm: 5, sg, remote: { addr: rtarget.mr.addr, rkey: rtarget.mr.rkey } },
    {
      wrId: 3,
      opcode: 'RDMA_READ',
      sg: rdst.map((d) => ({ mr: d.mr, offset: 0, length: d.mem.length })),
      remote: { addr: rtarget.mr.addr, rkey: rtarget.mr.rkey },
    },
    {
      wrId: 4,
      opcode: 'ATOMIC_CMP_AND_SWP',
      compareAdd: 41n,
      swap: 42n,
      sg: ares.map((d) => ({ mr: d.mr, offset: 0, length: 4 })),
      remote: { addr: atom.mr.addr, rkey: atom.mr.rkey },
    },
  ]);
  t.same(
    (await waitWc(p, a.scq, 4)).map((x) => x.status),
    ['SUCCESS', 'SUCCESS', 'SUCCESS', 'SUCCESS'],
  );
  t.same(
    (await waitWc(p, b.rcq, 2)).map((x) => [x.status, x.byteLen]),
    [
      ['SUCCESS', 562],
      ['SUCCESS', 562],
    ],
  );
  const msg = Buffer.concat(srcs.map((s) => s.mem));
  t.ok(Buffer.concat(dsts.map((d) => d.mem)).equals(msg), 'SEND scattered over three SGEs');
  t.ok(rtarget.mem.equals(msg), 'WRITE landed');
  t.ok(Buffer.concat(rdst.map((d) => d.mem)).equals(msg), 'READ scattered over two SGEs');
  t.equal(Buffer.concat(ares.map((d) => d.mem)).readBigUInt64LE(0), 41n);
  t.equal(atom.mem.readBigUInt64LE(0), 42n);
  for (const g of [...srcs, ...dsts, rtarget, ...rdst, atom, ...ares]) {
    t.ok(g.buf.subarray(0, G).every((x) => x === 0xc7) && g.buf.subarray(G + g.mem.length).every((x) => x === 0xc7), 'guards intact');
  }
  t.equal(a.dev.counters()['rcvd_internal_err']! + b.dev.counters()['rcvd_internal_err']!, 0, 'nothing thrown on the receive path');
  await p.close();
});
