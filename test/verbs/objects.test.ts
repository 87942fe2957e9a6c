/** The verbs object model: attributes, GID table, ownership and teardown, typed errors, QP transitions. */
import t from 'tap';
import { openDevice, getDeviceList, buildGidTable, activeMtuFor } from '../../src/verbs/device.js';
import { QP_STATES, QP_TRANSITIONS, type QpState } from '../../src/verbs/qp-state.js';
import { Wc } from '../../src/verbs/types.js';
import { gidToString } from '../../src/roce/gid.js';
import { FakeScheduler } from '../../src/roce/sched.js';
import { MemNetwork } from '../../src/roce/link/link.js';
import type { Qp, QpAttrs } from '../../src/verbs/qp.js';
import type { Device } from '../../src/verbs/device.js';

async function memDevice(ip = '10.1.0.1', net?: MemNetwork): Promise<{ dev: Device; net: MemNetwork; sched: FakeScheduler }> {
  const sched = new FakeScheduler();
  const n = net ?? new MemNetwork(sched);
  const dev = await openDevice({ address: ip, scheduler: net ? (n.sched as FakeScheduler) : sched, link: n.attach(ip) });
  return { dev, net: n, sched: net ? (n.sched as FakeScheduler) : sched };
}

t.test('device and port attributes, as ibv_query_device / ibv_query_port report them', async (t) => {
  const dev = await openDevice({ address: '127.0.20.1' });
  const a = dev.query();
  t.equal(a.maxQpWr, 0x4000);
  t.equal(a.maxSge, 32);
  t.equal(a.maxQpRdAtom, 128);
  t.equal(a.atomicCap, 'HCA');
  t.equal(a.physPortCnt, 1);
  const p = dev.queryPort(1);
  t.equal(p.state, 'ACTIVE');
  t.equal(p.linkLayer, 'Ethernet');
  t.equal(p.maxMtu, 4096);
  t.equal(p.activeMtu, 4096, 'loopback (MTU 65536): the largest IB MTU');
  t.equal(p.netdev, 'lo');
  t.match(p.backend, /^(dgram|native)$/);
  t.throws(() => dev.queryPort(2), { code: 'EINVAL', argument: 'port' });
  const gids = dev.gidTable();
  t.equal(gids[0]!.type, 'RoCE v1', 'default GID, RoCE v1 first');
  t.equal(gids[1]!.type, 'RoCE v2');
  t.match(gidToString(gids[0]!.gid), /^fe80::/);
  const v2 = gids[dev.defaultSgidIndex()]!;
  t.equal(gidToString(v2.gid), '::ffff:127.0.20.1', 'the bound address, IPv4-mapped');
  t.equal(v2.type, 'RoCE v2');
  t.equal(activeMtuFor(1500), 1024, 'an Ethernet MTU of 1500 gives 1024, as rxe');
  t.equal(activeMtuFor(9000), 4096);
  const tbl = buildGidTable('lo', new Uint8Array(6), '127.0.0.1');
  t.ok(
    tbl.every((e, i) => e.index === i && e.netdev === 'lo'),
    'indices and netdev',
  );
  t.ok(tbl.filter((e) => e.type === 'RoCE v1').length === tbl.filter((e) => e.type === 'RoCE v2').length, 'one entry per RoCE type');
  await dev.close();
  t.throws(() => dev.query(), { code: 'EBADF' }, 'closed device');
  await dev.close(); // idempotent
});

t.test('device list from SOFTROCE_DEVICES, defaults without configuration', (t) => {
  t.same(getDeviceList({ SOFTROCE_DEVICES: 'rxe0=eth0:10.0.0.1,rxe1=lo:127.0.0.1', SOFTROCE_CONFIG: '/nonexistent' }), [
    { name: 'rxe0', netdev: 'eth0', address: '10.0.0.1' },
    { name: 'rxe1', netdev: 'lo', address: '127.0.0.1' },
  ]);
  t.same(
    getDeviceList({ SOFTROCE_CONFIG: '/nonexistent' }, {}).map((d) => d.address),
    ['127.0.0.1', '127.0.0.2'],
  );
  t.throws(() => getDeviceList({ SOFTROCE_DEVICES: 'nonsense' }), { code: 'EINVAL', argument: 'SOFTROCE_DEVICES' });
  t.end();
});

t.test('ownership: EBUSY while children live, EBADF after close, cascade from the device', async (t) => {
  const { dev } = await memDevice();
  const pd = dev.allocPd();
  const cq = dev.createCq({ depth: 4 });
  const mr = pd.regMr(Buffer.alloc(64), ['LOCAL_WRITE']);
  const qp = pd.createQp({ type: 'RC', sendCq: cq, recvCq: cq, cap: { maxSendWr: 4, maxRecvWr: 4 } });
  t.throws(() => pd.close(), { code: 'EBUSY', argument: 'pd' }, 'a PD with an MR and a QP');
  t.throws(() => cq.close(), { code: 'EBUSY', argument: 'cq' }, 'a CQ used by a QP');
  qp.close();
  t.throws(() => qp.postRecv({ wrId: 1, sg: [] }), { code: 'EBADF' });
  mr.close();
  t.equal(dev.mrByRkey.size, 0, 'deregistered keys are gone');
  pd.close();
  cq.close();
  t.throws(() => pd.regMr(Buffer.alloc(1)), { code: 'EBADF' });
  const pd2 = dev.allocPd();
  const cq2 = dev.createCq({ depth: 4 });
  const srq = pd2.createSrq({ maxWr: 4 });
  pd2.createQp({ type: 'UD', sendCq: cq2, recvCq: cq2, srq, cap: { maxSendWr: 4, maxRecvWr: 4 } });
  pd2.createAh({ gid: '10.1.0.9' });
  pd2.regMr(Buffer.alloc(8));
  await dev.close();
  t.ok(pd2.closed && cq2.closed && srq.closed && dev.qps.size === 0, 'device.close() tears everything down');
});

t.test('typed errors name the argument', async (t) => {
  const { dev } = await memDevice();
  const pd = dev.allocPd();
  const cq = dev.createCq({ depth: 4 });
  t.throws(() => dev.createCq({ depth: 0 }), { code: 'EINVAL', argument: 'depth' });
  t.throws(() => pd.createQp({ type: 'XX' as 'RC', sendCq: cq, recvCq: cq, cap: { maxSendWr: 1, maxRecvWr: 1 } }), { code: 'EINVAL', argument: 'type' });
  t.throws(() => pd.createQp({ type: 'RC', sendCq: cq, recvCq: cq, cap: { maxSendWr: 0x4001, maxRecvWr: 1 } }), { code: 'EINVAL', argument: 'cap.maxSendWr' });
  t.throws(() => pd.createQp({ type: 'RC', sendCq: cq, recvCq: cq, cap: { maxSendWr: 1, maxRecvWr: 1, maxSendSge: 33 } }), {
    code: 'EINVAL',
    argument: 'cap.maxSendSge',
  });
  t.throws(() => pd.createQp({ type: 'RC', sendCq: cq, recvCq: cq, cap: { maxSendWr: 1, maxRecvWr: 1, maxInline: 4096 } }), {
    code: 'EINVAL',
    argument: 'cap.maxInline',
  });
  t.throws(() => pd.regMr(Buffer.alloc(8), ['REMOTE_WRITE']), { code: 'EINVAL', argument: 'access' }, 'remote write needs local write');
  t.throws(() => pd.regMr(Buffer.alloc(8), ['BOGUS' as 'LOCAL_WRITE']), { code: 'EINVAL', argument: 'access' });
  t.throws(() => pd.createAh({ gid: 'not a gid' }), { code: 'EINVAL', argument: 'gid' });
  const qp = pd.createQp({ type: 'RC', sendCq: cq, recvCq: cq, cap: { maxSendWr: 2, maxRecvWr: 2 } });
  const mr = pd.regMr(Buffer.alloc(64));
  t.throws(() => qp.postSend({ wrId: 1, opcode: 'SEND', sg: [] }), { code: 'EINVAL', argument: 'qp' }, 'sends need RTS');
  qp.toInit({ accessFlags: ['LOCAL_WRITE'] });
  qp.postRecv([
    { wrId: 1, sg: [{ mr, offset: 0, length: 8 }] },
    { wrId: 2, sg: [] },
  ]);
  t.throws(() => qp.postRecv({ wrId: 3, sg: [] }), { code: 'ENOMEM', argument: 'wr' }, 'receive queue full');
  t.throws(
    () => qp.modify({ state: 'RTR', pathMtu: 1024, destQpn: 5, rqPsn: 0, maxDestRdAtomic: 1, minRnrTimer: 12, av: { dgid: '10.1.0.2' }, qkey: 1 }),
    { code: 'EINVAL', notAllowed: ['qkey'] },
    'an attribute the transition does not take',
  );
  t.throws(() => qp.modify({ state: 'RTR', pathMtu: 1000 as 1024, destQpn: 5, rqPsn: 0, maxDestRdAtomic: 1, minRnrTimer: 12, av: { dgid: '10.1.0.2' } }), {
    code: 'EINVAL',
    argument: 'pathMtu',
  });
  t.throws(() => qp.modify({ state: 'RTR', pathMtu: 1024, destQpn: 5, rqPsn: 1 << 24, maxDestRdAtomic: 1, minRnrTimer: 12, av: { dgid: '10.1.0.2' } }), {
    code: 'EINVAL',
    argument: 'rqPsn',
  });
  t.throws(
    () => qp.modify({ state: 'RTR', pathMtu: 1024, destQpn: 5, rqPsn: 0, maxDestRdAtomic: 1, minRnrTimer: 12, av: { dgid: '10.1.0.2', sgidIndex: 999 } }),
    { code: 'EINVAL', argument: 'av' },
  );
  t.equal(qp.state, 'INIT', 'failed modifies changed nothing');
  t.equal(qp.query().pathMtu, 1024);
  await dev.close();
});

/** Attributes that satisfy the required set of a transition. */
function attrsFor(qp: Qp, to: QpState): QpAttrs {
  const rule = QP_TRANSITIONS[qp.state]?.[to]?.[qp.type];
  const a: QpAttrs = { state: to };
  const values: Record<string, unknown> = {
    port: 1,
    pkeyIndex: 0,
    qkey: 0x11111111,
    accessFlags: ['LOCAL_WRITE'],
    av: { dgid: '10.1.0.2' },
    pathMtu: 1024,
    destQpn: 0x33,
    rqPsn: 1,
    sqPsn: 2,
    maxDestRdAtomic: 1,
    minRnrTimer: 12,
    timeout: 14,
    retryCnt: 7,
    rnrRetry: 7,
    maxRdAtomic: 1,
  };
  for (const k of rule?.required ?? []) (a as Record<string, unknown>)[k] = values[k];
  return a;
}

t.test('every QP state transition, valid and invalid, on real QPs of each type', async (t) => {
  const { dev } = await memDevice();
  const pd = dev.allocPd();
  const cq = dev.createCq({ depth: 64 });
  const path: Record<QpState, QpState[]> = {
    RESET: [],
    INIT: ['INIT'],
    RTR: ['INIT', 'RTR'],
    RTS: ['INIT', 'RTR', 'RTS'],
    SQD: ['INIT', 'RTR', 'RTS', 'SQD'],
    SQE: [],
    ERR: ['ERR'],
  };
  let valid = 0,
    invalid = 0;
  for (const type of ['RC', 'UC', 'UD'] as const) {
    for (const from of QP_STATES) {
      if (from === 'SQE') continue; // entered only by the transport on a UD/UC send error
      for (const to of QP_STATES) {
        const qp = pd.createQp({ type, sendCq: cq, recvCq: cq, cap: { maxSendWr: 1, maxRecvWr: 1 } });
        for (const s of path[from]) qp.modify(attrsFor(qp, s));
        t.equal(qp.state, from);
        if (QP_TRANSITIONS[from]?.[to]?.[type]) {
          qp.modify(attrsFor(qp, to));
          t.equal(qp.state, to, `${type} ${from} -> ${to}`);
          valid++;
        } else {
          t.throws(() => qp.modify(attrsFor(qp, to)), { code: 'EINVAL', from, to, qpType: type }, `${type} ${from} -> ${to} refused`);
          t.equal(qp.state, from, 'state unchanged');
          invalid++;
        }
        qp.close();
      }
    }
  }
  t.equal(valid + invalid, 3 * 6 * 7);
  t.ok(valid > 50 && invalid > 50, `${valid} valid, ${invalid} invalid transitions exercised`);
  await dev.close();
});

t.test('CQ overflow is the CQ_ERR async event; poll fills preallocated WCs', async (t) => {
  const sched = new FakeScheduler();
  const net = new MemNetwork(sched);
  const a = await openDevice({ address: '10.1.0.1', scheduler: sched, link: net.attach('10.1.0.1') });
  const b = await openDevice({ address: '10.1.0.2', scheduler: sched, link: net.attach('10.1.0.2') });
  const events: string[] = [];
  a.on('async', (e: { type: string }) => events.push(e.type));
  const pd = a.allocPd();
  const cq = a.createCq({ depth: 2 });
  const qp = pd.createQp({ type: 'UD', sendCq: cq, recvCq: cq, sigAll: true, cap: { maxSendWr: 8, maxRecvWr: 1 } });
  qp.toInit({ qkey: 1 }).toRtr().toRts();
  const ah = pd.createAh({ gid: '10.1.0.2' });
  for (let i = 0; i < 3; i++) qp.postSend({ wrId: i, opcode: 'SEND', sg: [], ud: { ah, remoteQpn: 0x99, remoteQkey: 1 } });
  sched.advance(1);
  t.same(events, ['CQ_ERR', 'QP_FATAL'], 'the third completion overflowed a 2-entry CQ: the QP goes to ERR, as rxe does');
  t.equal(qp.state, 'ERR');
  const out = [new Wc(), new Wc(), new Wc()];
  t.equal(cq.poll(out), 2);
  t.same(
    out.slice(0, 2).map((w) => w.wrId),
    [0, 1],
  );
  await a.close();
  await b.close();
});

t.test('QP1 (GSI) carries a MAD between devices with Q_Key 0x80010000', async (t) => {
  const sched = new FakeScheduler();
  const net = new MemNetwork(sched);
  const devs = await Promise.all(['10.1.0.1', '10.1.0.2'].map((ip) => openDevice({ address: ip, scheduler: sched, link: net.attach(ip) })));
  const [ga, gb] = devs.map((d) => {
    const pd = d.allocPd();
    const cq = d.createCq({ depth: 8 });
    const qp = d.openGsi(pd, { sendCq: cq, recvCq: cq });
    qp.toInit({ qkey: 0x80010000 }).toRtr().toRts();
    const mem = Buffer.alloc(1024);
    return { d, pd, cq, qp, mem, mr: pd.regMr(mem) };
  });
  t.equal(ga!.qp.qpn, 1);
  t.throws(() => ga!.d.openGsi(ga!.pd, { sendCq: ga!.cq, recvCq: ga!.cq }), { code: 'EBUSY' });
  gb!.qp.postRecv({ wrId: 7, sg: [{ mr: gb!.mr, offset: 0, length: 296 }] });
  ga!.mem[1] = 0x07;
  const ah = ga!.pd.createAh({ gid: '10.1.0.2' });
  ga!.qp.postSend({ wrId: 1, opcode: 'SEND', signaled: true, sg: [{ mr: ga!.mr, offset: 0, length: 256 }], ud: { ah, remoteQpn: 1, remoteQkey: 0x80010000 } });
  sched.advance(1);
  const w = [new Wc()];
  t.equal(gb!.cq.poll(w), 1);
  t.same([w[0]!.status, w[0]!.byteLen, w[0]!.srcQp, w[0]!.grh], ['SUCCESS', 296, 1, true]);
  t.equal(gb!.mem[40 + 1], 0x07, 'the MAD after the GRH');
  for (const d of devs) await d.close();
});

t.test('async events: COMM_EST, SQ_DRAINED, LAST_WQE_REACHED, PORT_ERR / PORT_ACTIVE', async (t) => {
  const sched = new FakeScheduler();
  const net = new MemNetwork(sched);
  const la = net.attach('10.1.0.1');
  const a = await openDevice({ address: '10.1.0.1', scheduler: sched, link: la });
  const b = await openDevice({ address: '10.1.0.2', scheduler: sched, link: net.attach('10.1.0.2') });
  const ev: Record<string, string[]> = { a: [], b: [] };
  a.on('async', (e: { type: string }) => ev['a']!.push(e.type));
  b.on('async', (e: { type: string }) => ev['b']!.push(e.type));
  const mk = (d: Device, srq: boolean) => {
    const pd = d.allocPd();
    const cq = d.createCq({ depth: 16 });
    const s = srq ? pd.createSrq({ maxWr: 4 }) : undefined;
    const qp = pd.createQp({ type: 'RC', sendCq: cq, recvCq: cq, ...(s ? { srq: s } : {}), cap: { maxSendWr: 4, maxRecvWr: 4 } });
    return { pd, cq, qp, s, mr: pd.regMr(Buffer.alloc(64)) };
  };
  const A = mk(a, false),
    B = mk(b, true);
  // B stays in RTR: its first received packet raises COMM_EST (IBA 11.6.3).
  A.qp
    .toInit({ accessFlags: [] })
    .toRtr({ remote: { qpn: B.qp.qpn, gid: '10.1.0.2' }, rqPsn: 0 })
    .toRts({ sqPsn: 0 });
  B.qp.toInit({ accessFlags: [] }).toRtr({ remote: { qpn: A.qp.qpn, gid: '10.1.0.1' }, rqPsn: 0 });
  B.s!.postRecv({ wrId: 1, sg: [] });
  A.qp.postSend({ wrId: 1, opcode: 'SEND', sg: [] });
  sched.advance(1);
  t.same(ev['b'], ['COMM_EST']);
  A.qp.modify({ state: 'SQD', enSqdAsyncNotify: true });
  sched.advance(1);
  t.same(ev['a'], ['SQ_DRAINED'], 'nothing outstanding: drained at once');
  A.qp.modify({ state: 'RTS' });
  B.qp.modify({ state: 'ERR' });
  t.same(ev['b'], ['COMM_EST', 'LAST_WQE_REACHED'], 'a QP on an SRQ entering ERR');
  la.setUp(false);
  la.setUp(true);
  t.same(ev['a'], ['SQ_DRAINED', 'PORT_ERR', 'PORT_ACTIVE']);
  t.equal(a.queryPort().state, 'ACTIVE');
  await a.close();
  await b.close();
});

t.test('QPNs wrap below 0xffffff: that QPN is the multicast one, the receive path drops every packet for it', async (t) => {
  const { dev } = await memDevice('10.1.0.9');
  const pd = dev.allocPd();
  const cq = dev.createCq({ depth: 8 });
  // Start the allocator just below the top of the 24-bit space (a device that has made ~16 M QPs).
  (dev as unknown as { nextQpn: number }).nextQpn = 0xfffffe;
  const mk = (): number => pd.createQp({ type: 'RC', sendCq: cq, recvCq: cq, cap: { maxSendWr: 1, maxRecvWr: 1 } }).qpn;
  const qpns = [mk(), mk(), mk()];
  t.equal(qpns[0], 0xfffffe);
  t.not(qpns[1], 0xffffff, 'never the multicast QPN');
  t.ok(qpns[1]! >= 0x11 && qpns[1]! < 0xffffff, `wrapped to the low range (got 0x${qpns[1]!.toString(16)})`);
  t.equal(new Set(qpns).size, 3, 'all distinct');
  await dev.close();
});
