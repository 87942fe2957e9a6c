/**
 * Issue 9 (items 3, 4): misuse of the public API gets a VerbsError naming the
 * argument, before anything changes; internal state cannot be written from
 * outside; initial PSNs are random and endpoints survive JSON.
 * Everything here runs over the in-memory network (nothing is sent or bound).
 */
import t from 'tap';
import { openDevice, type Device } from '../../src/verbs/device.js';
import { connectQp, remoteOf } from '../../src/verbs/connect.js';
import type { Qp, QpEndpoint, MrEndpoint } from '../../src/verbs/qp.js';
import { VerbsError } from '../../src/verbs/errors.js';
import { Wc, type SendWr, type RecvWr } from '../../src/verbs/types.js';
import { FakeScheduler } from '../../src/roce/sched.js';
import { MemNetwork } from '../../src/roce/link/link.js';
import { makePair, waitWc } from './pair.js';

/** Asserts fn throws a VerbsError with this code and argument (not a TypeError from inside). */
/** The bits of a tap Test the helpers use. */
interface Asserts {
  fail(m: string): unknown;
  match(a: unknown, b: unknown, m: string): unknown;
}

function rejects(t: Asserts, fn: () => unknown, argument: string, code = 'EINVAL', msg = argument): void {
  try {
    fn();
    t.fail(`${msg}: did not throw`);
  } catch (e) {
    if (e instanceof VerbsError) t.match(e, { code, argument }, msg);
    else t.fail(`${msg}: not a VerbsError but ${(e as Error).name}: ${(e as Error).message}`);
  }
}
async function rejectsAsync(t: Asserts, p: () => Promise<unknown>, argument: string, msg = argument): Promise<void> {
  try {
    await p();
    t.fail(`${msg}: did not throw`);
  } catch (e) {
    if (e instanceof VerbsError) t.match(e, { code: 'EINVAL', argument }, msg);
    else t.fail(`${msg}: not a VerbsError but ${(e as Error).name}: ${(e as Error).message}`);
  }
}
// eslint-disable-next-line @typescript-eslint/no-explicit-any
const any = (x: unknown): any => x;

async function freshDevice(ip = '10.9.0.1'): Promise<{ dev: Device; net: MemNetwork; fake: FakeScheduler }> {
  const fake = new FakeScheduler();
  const net = new MemNetwork(fake);
  const dev = await openDevice({ address: ip, scheduler: fake, link: net.attach(ip) });
  return { dev, net, fake };
}

t.test('openDevice checks its options before opening anything', async (t) => {
  const fake = new FakeScheduler();
  const net = new MemNetwork(fake);
  // A link is passed so that even a check that is missing binds nothing real.
  const base = (ip: string) => ({ scheduler: fake, link: net.attach(ip) });
  await rejectsAsync(t, () => openDevice(any({ ...base('10.9.1.1'), address: 123 })), 'address');
  await rejectsAsync(t, () => openDevice(any({ ...base('10.9.1.2'), address: 'not an ip' })), 'address');
  await rejectsAsync(
    t,
    () => openDevice({ ...base('10.9.1.3'), address: '10.9.1.3', udpPort: 70000 }),
    'udpPort',
    'udpPort 70000 (the socket would take it modulo 65536)',
  );
  await rejectsAsync(t, () => openDevice({ ...base('10.9.1.4'), address: '10.9.1.4', udpPort: 0 }), 'udpPort');
  await rejectsAsync(t, () => openDevice(any({ ...base('10.9.1.5'), address: '10.9.1.5', native: 'yes' })), 'native');
  await rejectsAsync(t, () => openDevice(any({ ...base('10.9.1.6'), address: '10.9.1.6', icrcIpv4: 'none' })), 'icrcIpv4');
  await rejectsAsync(t, () => openDevice(any({ ...base('10.9.1.7'), address: '10.9.1.7', faults: { seed: 1, dropPct: '5' } })), 'faults.dropPct');
  await rejectsAsync(t, () => openDevice(any({ ...base('10.9.1.8'), address: '10.9.1.8', faults: { seed: 1, reorderPct: 101 } })), 'faults.reorderPct');
  await rejectsAsync(t, () => openDevice(any({ ...base('10.9.1.9'), address: '10.9.1.9', faults: { seed: 1.5 } })), 'faults.seed');
  await rejectsAsync(t, () => openDevice(any({ ...base('10.9.1.10'), address: '10.9.1.10', faults: { seed: '1' } })), 'faults.seed');
  await rejectsAsync(t, () => openDevice(any(null)), 'options');
  const ok = await openDevice({ ...base('10.9.1.11'), address: '10.9.1.11', faults: { seed: 7, dropPct: 0.5 } });
  t.ok(ok.faults, 'valid fault options still open');
  await ok.close();
});

t.test('device, PD, CQ, SRQ and AH verbs reject wrong types with the argument named', async (t) => {
  const { dev } = await freshDevice('10.9.2.1');
  const pd = dev.allocPd();
  const cq = dev.createCq({ depth: 8 });
  rejects(t, () => dev.queryPort(any('1')), 'port', 'EINVAL', "queryPort('1') (ports['1' - 1] used to answer)");
  rejects(t, () => dev.createCq(any(null)), 'options');
  rejects(t, () => dev.createCq({ depth: 1.5 }), 'depth');
  rejects(t, () => pd.regMr(Buffer.alloc(64), any(7)), 'access', 'EINVAL', 'regMr(buf, 7)');
  rejects(t, () => pd.regMr(Buffer.alloc(64), ['LOCAL_WRITE'], any({ invalidatable: 'yes' })), 'opts.invalidatable');
  rejects(t, () => pd.regMr(any('memory')), 'mem');
  t.equal(pd.mrs.size, 0, 'no MR was registered by the failed calls');
  const plain = pd.regMr(Buffer.alloc(64));
  const inv = pd.regMr(Buffer.alloc(64), ['LOCAL_WRITE', 'REMOTE_WRITE'], { invalidatable: true });
  t.equal(plain.invalidatable, false, 'MRs are not invalidatable by default');
  t.equal(inv.invalidatable, true, 'regMr(..., { invalidatable: true })');
  rejects(
    t,
    () => pd.createQp({ type: 'RC', sendCq: cq, recvCq: cq, srq: any({}), cap: { maxSendWr: 1, maxRecvWr: 1 } }),
    'srq',
    'EINVAL',
    'createQp with srq: {}',
  );
  rejects(t, () => pd.createQp(any(null)), 'options');
  rejects(t, () => pd.createQp(any({ type: 'RC', sendCq: cq, recvCq: cq })), 'cap');
  rejects(t, () => pd.createQp(any({ type: 'RC', sendCq: cq, recvCq: cq, sigAll: 'yes', cap: { maxSendWr: 1, maxRecvWr: 1 } })), 'sigAll');
  t.equal(dev.qps.size, 0, 'no QP was created');
  rejects(t, () => pd.createSrq(any({ maxWr: '4' })), 'maxWr');
  rejects(t, () => pd.createSrq({ maxWr: 4, maxSge: 1.5 }), 'maxSge');
  const srq = pd.createSrq({ maxWr: 4 });
  rejects(t, () => srq.modify(any(null)), 'attrs');
  rejects(t, () => srq.modify(any({ limit: '2' })), 'limit');
  rejects(t, () => pd.createAh({ gid: '10.9.2.2', hopLimit: 300 }), 'hopLimit');
  rejects(t, () => pd.createAh(any({ gid: 5 })), 'gid');
  rejects(t, () => pd.createAh({ gid: '10.9.2.2', udpPort: 65536 }), 'udpPort');
  rejects(t, () => cq.poll(any(null)), 'out');
  rejects(t, () => cq.poll([new Wc()], any('1')), 'max');
  rejects(t, () => cq.reqNotify(any('yes')), 'solicitedOnly');
  await dev.close();
});

t.test('modify and the helpers check values before changing the QP', async (t) => {
  const { dev } = await freshDevice('10.9.3.1');
  const pd = dev.allocPd();
  const cq = dev.createCq({ depth: 8 });
  const qp = pd.createQp({ type: 'RC', sendCq: cq, recvCq: cq, cap: { maxSendWr: 4, maxRecvWr: 4 } });
  rejects(t, () => qp.modify(any(null)), 'attrs', 'EINVAL', 'modify(null)');
  rejects(t, () => qp.modify(any({ state: 'READY' })), 'state');
  qp.toInit({ accessFlags: ['LOCAL_WRITE'] });
  const rtr = { state: 'RTR' as const, av: { dgid: '10.9.3.2' }, pathMtu: 1024 as const, destQpn: 0x12, rqPsn: 5, maxDestRdAtomic: 1, minRnrTimer: 12 };
  rejects(t, () => qp.modify(any({ ...rtr, minRnrTimer: 1.5 })), 'minRnrTimer');
  rejects(t, () => qp.modify(any({ ...rtr, av: { dgid: '10.9.3.2', udpPort: 70000 } })), 'av');
  rejects(t, () => qp.modify(any({ ...rtr, destQpn: '18' })), 'destQpn');
  rejects(t, () => qp.modify(any({ ...rtr, pathMtu: '1024' })), 'pathMtu');
  t.equal(qp.state, 'INIT', 'still INIT after the rejected modifies');
  qp.modify(rtr);
  const rts = { state: 'RTS' as const, sqPsn: 1, timeout: 14, retryCnt: 7, rnrRetry: 7, maxRdAtomic: 1 };
  rejects(t, () => qp.modify(any({ ...rts, timeout: 1.5 })), 'timeout', 'EINVAL', 'timeout: 1.5');
  rejects(t, () => qp.modify(any({ ...rts, timeout: 32 })), 'timeout');
  rejects(t, () => qp.modify(any({ ...rts, retryCnt: '3' })), 'retryCnt', 'EINVAL', "retryCnt: '3'");
  rejects(t, () => qp.modify(any({ ...rts, rnrRetry: 8 })), 'rnrRetry');
  rejects(t, () => qp.modify(any({ ...rts, sqPsn: 0x1000000 })), 'sqPsn');
  rejects(t, () => qp.toRts(any({ timeout: 'long' })), 'timeout');
  t.equal(qp.state, 'RTR', 'still RTR');
  t.equal(qp.timeout, 0, 'timeout untouched');
  qp.modify(rts);
  t.equal(qp.state, 'RTS');
  await dev.close();
});

t.test('connectQp checks everything while the QP is still in RESET', async (t) => {
  const { dev } = await freshDevice('10.9.4.1');
  const pd = dev.allocPd();
  const cq = dev.createCq({ depth: 8 });
  const qp = pd.createQp({ type: 'RC', sendCq: cq, recvCq: cq, cap: { maxSendWr: 4, maxRecvWr: 4 } });
  const remote = { qpn: 0x20, psn: 7, gid: '10.9.4.2' };
  rejects(t, () => connectQp(qp, { timeout: 99 }, remote), 'timeout', 'EINVAL', 'an RTS attribute is checked before INIT');
  rejects(t, () => connectQp(qp, any({ retryCnt: '3' }), remote), 'retryCnt');
  rejects(t, () => connectQp(qp, { psn: -1 }, remote), 'psn');
  rejects(t, () => connectQp(qp, {}, any({ qpn: 0x20, gid: '10.9.4.2' })), 'remote', 'EINVAL', 'remote.psn is required');
  rejects(t, () => connectQp(qp, {}, any({ ...remote, gid: 'nonsense' })), 'remote');
  rejects(t, () => connectQp(qp, {}, any({ ...remote, udpPort: 70000 })), 'remote');
  rejects(t, () => connectQp(qp, any(null), remote), 'local');
  t.equal(qp.state, 'RESET', 'the QP never left RESET');
  // toRtr has no silent receive PSN.
  qp.toInit();
  rejects(t, () => qp.toRtr({ remote: { qpn: 0x20, gid: '10.9.4.2' } }), 'rqPsn', 'EINVAL', 'toRtr without rqPsn or remote.psn');
  t.equal(qp.state, 'INIT');
  await dev.close();
});

t.test('posts: every WR checked completely before any is queued', async (t) => {
  const p = await makePair({ addrs: ['10.9.5.1', '10.9.5.2'] });
  const { a, b } = p;
  const sg = [{ mr: a.mr, offset: 0, length: 8 }];
  const remote = { addr: b.mr.addr, rkey: b.mr.rkey };
  const send = (w: unknown): void => a.qp.postSend(any(w));
  rejects(t, () => send({ wrId: 1, opcode: 'SEND', sg: null }), 'sg', 'EINVAL', 'sg: null');
  rejects(t, () => send({ wrId: 1, opcode: 'SEND', sg: [null] }), 'sg');
  rejects(t, () => send(null), 'wr');
  rejects(t, () => send({ wrId: '1', opcode: 'SEND', sg }), 'wrId');
  rejects(t, () => send({ wrId: 1, opcode: 'toString', sg }), 'opcode');
  rejects(t, () => send({ wrId: 1, opcode: 'SEND', sg, signaled: 1 }), 'signaled');
  rejects(t, () => send({ wrId: 1, opcode: 'RDMA_WRITE', sg }), 'remote', 'EINVAL', 'RDMA_WRITE without remote (went out with rkey 0)');
  rejects(t, () => send({ wrId: 1, opcode: 'RDMA_READ', sg, remote: { addr: 5, rkey: 1 } }), 'remote', 'EINVAL', 'remote.addr a number');
  rejects(t, () => send({ wrId: 1, opcode: 'RDMA_WRITE_WITH_IMM', sg, remote, imm: 2 ** 32 }), 'imm');
  rejects(t, () => send({ wrId: 1, opcode: 'RDMA_WRITE', sg, remote: { addr: 1n, rkey: -1 } }), 'remote');
  rejects(t, () => send({ wrId: 1, opcode: 'SEND_WITH_IMM', sg, imm: '5' }), 'imm');
  rejects(t, () => send({ wrId: 1, opcode: 'SEND_WITH_INV', sg, invalidateRkey: -1 }), 'invalidateRkey');
  rejects(t, () => send({ wrId: 1, opcode: 'ATOMIC_FETCH_AND_ADD', sg, remote, compareAdd: 1 }), 'compareAdd');
  rejects(t, () => send({ wrId: 1, opcode: 'ATOMIC_CMP_AND_SWP', sg, remote, compareAdd: 1n }), 'swap');
  rejects(
    t,
    () => send({ wrId: 1, opcode: 'ATOMIC_FETCH_AND_ADD', sg, remote: { addr: b.mr.addr + 4n, rkey: b.mr.rkey }, compareAdd: 1n }),
    'remote',
    'EINVAL',
    'atomic target not 8-byte aligned',
  );
  rejects(
    t,
    () => send({ wrId: 1, opcode: 'ATOMIC_FETCH_AND_ADD', sg: [{ mr: a.mr, offset: 0, length: 4 }], remote, compareAdd: 1n }),
    'sg',
    'EINVAL',
    'atomic local buffer not 8 bytes',
  );
  t.equal(a.qp.outstanding, 0, 'nothing queued by the rejected posts');
  // A list whose second WR is bad queues nothing (it used to queue the first, then throw a TypeError).
  const good: SendWr = { wrId: 10, opcode: 'ATOMIC_FETCH_AND_ADD', sg, remote, compareAdd: 1n };
  rejects(t, () => a.qp.postSend([good, any({ ...good, wrId: 11, compareAdd: 1 })]), 'compareAdd', 'EINVAL', 'bad second WR of a list');
  t.equal(a.qp.outstanding, 0, 'all-or-nothing: the first WR was not queued');
  await p.close();
});

t.test("receive posts check each SGE against the QP's PD and LOCAL_WRITE", async (t) => {
  const p = await makePair({ addrs: ['10.9.6.1', '10.9.6.2'] });
  const { a, b } = p;
  const ro = a.pd.regMr(Buffer.alloc(64), []);
  const other = b.mr; // another device's PD
  const closed = a.pd.regMr(Buffer.alloc(64));
  closed.close();
  const recv = (w: unknown): void => a.qp.postRecv(any(w));
  rejects(t, () => recv({ wrId: 1, sg: [{ mr: ro, offset: 0, length: 8 }] }), 'sg', 'EINVAL', 'MR without LOCAL_WRITE');
  rejects(t, () => recv({ wrId: 1, sg: [{ mr: other, offset: 0, length: 8 }] }), 'sg', 'EINVAL', 'MR of another PD');
  rejects(t, () => recv({ wrId: 1, sg: [{ mr: closed, offset: 0, length: 8 }] }), 'sg', 'EINVAL', 'closed MR');
  rejects(t, () => recv({ wrId: 1, sg: [{ mr: a.mr, offset: a.mr.length - 4, length: 8 }] }), 'sg', 'EINVAL', 'SGE past the end of the MR');
  rejects(t, () => recv({ wrId: 1, sg: null }), 'sg');
  rejects(t, () => recv({ wrId: null, sg: [] }), 'wrId');
  const ok: RecvWr = { wrId: 1, sg: [{ mr: a.mr, offset: 0, length: 8 }] };
  rejects(t, () => a.qp.postRecv([ok, any({ wrId: 2, sg: [{ mr: ro, offset: 0, length: 8 }] })]), 'sg', 'EINVAL', 'bad second receive WR');
  t.equal(a.qp.rqCount, 0, 'nothing queued');
  // The same on an SRQ.
  const srq = a.pd.createSrq({ maxWr: 4 });
  rejects(t, () => srq.postRecv({ wrId: 1, sg: [{ mr: ro, offset: 0, length: 8 }] }), 'sg', 'EINVAL', 'SRQ: MR without LOCAL_WRITE');
  rejects(t, () => srq.postRecv({ wrId: 1, sg: [{ mr: other, offset: 0, length: 8 }] }), 'sg', 'EINVAL', 'SRQ: MR of another PD');
  rejects(t, () => srq.postRecv([ok, any({ wrId: 2, sg: [{ mr: a.mr, offset: 0, length: 1 << 30 }] })]), 'sg', 'EINVAL', 'SRQ: SGE past the end');
  t.equal(srq.count, 0, 'nothing queued on the SRQ');
  srq.postRecv(ok);
  t.equal(srq.count, 1, 'a good WR is queued');
  await p.close();
});

t.test('UD sends check ud', async (t) => {
  const p = await makePair({ type: 'UD', addrs: ['10.9.7.1', '10.9.7.2'] });
  const { a } = p;
  const ah = a.pd.createAh({ gid: '10.9.7.2' });
  const sg = [{ mr: a.mr, offset: 0, length: 8 }];
  rejects(t, () => a.qp.postSend(any({ wrId: 1, opcode: 'SEND', sg, ud: { ah: {}, remoteQpn: 1, remoteQkey: 1 } })), 'ud', 'EINVAL', 'ud.ah not an AH');
  rejects(t, () => a.qp.postSend(any({ wrId: 1, opcode: 'SEND', sg, ud: { ah, remoteQpn: 1, remoteQkey: '1' } })), 'ud');
  rejects(t, () => a.qp.postSend(any({ wrId: 1, opcode: 'SEND', sg, ud: { ah, remoteQpn: 2 ** 24, remoteQkey: 1 } })), 'ud');
  t.equal(a.qp.outstanding, 0);
  await p.close();
});

t.test('internal state is read-only from outside', async (t) => {
  const { dev } = await freshDevice('10.9.8.1');
  const pd = dev.allocPd();
  const cq = dev.createCq({ depth: 8 });
  const qp = pd.createQp({ type: 'RC', sendCq: cq, recvCq: cq, cap: { maxSendWr: 4, maxRecvWr: 4 } });
  const mr = pd.regMr(Buffer.alloc(64));
  t.throws(
    () => {
      // @ts-expect-error Qp.state has no public setter
      qp.state = 'RTS';
    },
    TypeError,
    'assigning qp.state throws (getter only)',
  );
  t.equal(qp.state, 'RESET', 'and changes nothing');
  rejects(t, () => qp.postSend({ wrId: 1, opcode: 'SEND', sg: [] }), 'qp', 'EINVAL', 'a RESET QP still cannot post');
  const writes: Array<[string, () => void]> = [
    // [what, the write]
    [
      'qp.closed',
      () => {
        any(qp).closed = true;
      },
    ],
    [
      'qp.timeout',
      () => {
        any(qp).timeout = 5;
      },
    ],
    [
      'qp.sqPsn',
      () => {
        any(qp).sqPsn = 5;
      },
    ],
    [
      'mr.valid',
      () => {
        any(mr).valid = false;
      },
    ],
    [
      'pd.closed',
      () => {
        any(pd).closed = true;
      },
    ],
    [
      'cq.users',
      () => {
        any(cq).users = 0;
      },
    ],
  ];
  // Getter-only properties throw in strict code; whatever a write does, the value must not change.
  for (const [, w] of writes) {
    try {
      w();
    } catch {
      /* a getter-only property throws in strict code: fine */
    }
  }
  t.equal(qp.closed, false, 'qp.closed unchanged');
  t.equal(qp.timeout, 0, 'qp.timeout unchanged');
  t.not(qp.sqPsn, 5, 'qp.sqPsn unchanged');
  t.equal(mr.valid, true, 'mr.valid unchanged');
  t.equal(pd.closed, false, 'pd.closed unchanged');
  t.equal(cq.users, 2, 'cq.users unchanged (the QP uses the CQ twice)');
  t.throws(() => cq.close(), { code: 'EBUSY' }, 'the CQ is still in use');
  await dev.close();
});

t.test('initial PSNs are random; endpoints are JSON and connect', async (t) => {
  const fake = new FakeScheduler();
  const net = new MemNetwork(fake);
  const da = await openDevice({ address: '10.9.9.1', scheduler: fake, link: net.attach('10.9.9.1') });
  const db = await openDevice({ address: '10.9.9.2', scheduler: fake, link: net.attach('10.9.9.2') });
  const side = (dev: Device) => {
    const pd = dev.allocPd();
    const cq = dev.createCq({ depth: 16 });
    const qp = pd.createQp({ type: 'RC', sendCq: cq, recvCq: cq, cap: { maxSendWr: 8, maxRecvWr: 8 } });
    const mem = Buffer.alloc(4096);
    const mr = pd.regMr(mem, ['LOCAL_WRITE', 'REMOTE_WRITE']);
    return { pd, cq, qp, mem, mr };
  };
  // 16 QPs: with 24-bit random PSNs, all zero or all equal would be a 2^-360 event.
  const extra: Qp[] = [];
  const pd = da.allocPd();
  const cq = da.createCq({ depth: 4 });
  for (let i = 0; i < 16; i++) extra.push(pd.createQp({ type: 'UC', sendCq: cq, recvCq: cq, cap: { maxSendWr: 1, maxRecvWr: 1 } }));
  const psns = extra.map((q) => q.endpoint().psn);
  t.ok(
    psns.every((x) => Number.isInteger(x) && x >= 0 && x < 2 ** 24),
    'PSNs are 24-bit',
  );
  t.ok(new Set(psns).size > 8, `initial PSNs differ (${psns.map((x) => x.toString(16)).join(' ')})`);
  t.ok(
    psns.some((x) => x !== 0),
    'not the old fixed 0',
  );
  for (const q of extra) q.close();

  const A = side(da),
    B = side(db);
  const epA = JSON.parse(JSON.stringify(A.qp.endpoint())) as QpEndpoint;
  const epB = JSON.parse(JSON.stringify(B.qp.endpoint({ mr: B.mr }))) as QpEndpoint & MrEndpoint;
  t.same(Object.keys(epB).sort(), ['addr', 'gid', 'psn', 'qpn', 'rkey'], 'endpoint({ mr }) fields');
  t.equal(typeof epA.gid, 'string', 'the GID travels as text');
  t.equal(BigInt(epB.addr), B.mr.addr, 'BigInt(ep.addr) is the region address');
  t.equal(epB.rkey, B.mr.rkey);
  t.same(remoteOf(epB, 16), { addr: B.mr.addr + 16n, rkey: B.mr.rkey }, 'remoteOf(ep, offset)');
  rejects(t, () => remoteOf(any({ addr: 'nowhere', rkey: 1 })), 'remote');
  rejects(t, () => A.qp.endpoint(any({ mr: {} })), 'mr');
  const psnA = A.qp.endpoint().psn;
  connectQp(A.qp, {}, epB);
  connectQp(B.qp, {}, epA);
  t.equal(A.qp.query().sqPsn, psnA, 'connectQp sends from the endpoint PSN by default');
  t.equal(B.qp.query().rqPsn, psnA, 'and the peer expects it');
  t.equal(A.qp.query().rqPsn, epB.psn);

  B.qp.postRecv({ wrId: 1, sg: [{ mr: B.mr, offset: 0, length: 64 }] });
  A.mem.write('ping', 0);
  A.qp.postSend({ wrId: 2, opcode: 'SEND', signaled: true, sg: [{ mr: A.mr, offset: 0, length: 4 }] });
  A.mem.fill(7, 100, 200);
  A.qp.postSend({ wrId: 3, opcode: 'RDMA_WRITE', signaled: true, sg: [{ mr: A.mr, offset: 100, length: 100 }], remote: remoteOf(epB, 1000) });
  const pair = { fake, a: null, b: null, sched: fake, net, close: async () => {} } as unknown as Parameters<typeof waitWc>[0];
  const wa = await waitWc(pair, A.cq, 2, 1000);
  const wb = await waitWc(pair, B.cq, 1, 10);
  t.same(
    wa.map((w) => w.status),
    ['SUCCESS', 'SUCCESS'],
    'SEND and WRITE completed',
  );
  t.equal(wb[0]?.status, 'SUCCESS');
  t.equal(B.mem.toString('utf8', 0, 4), 'ping');
  t.ok(
    B.mem.subarray(1000, 1100).every((x) => x === 7),
    'WRITE landed where remoteOf(ep, 1000) points',
  );
  await da.close();
  await db.close();
});
