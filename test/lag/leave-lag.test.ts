/**
 * Leaving LAG (issue 14 item 1): bond.leaveLag() on the in-memory network with a fake clock.
 * - Default (mlx5 RoCE LAG, the Mellanox manual: entering or leaving LAG re-registers the device): the
 *   bond device's users get DEVICE_FATAL, its RC QP goes to ERR and the receives it had posted come back
 *   as WR_FLUSH_ERR on a CQ that is still pollable; two ordinary devices softroce_eth1 / softroce_eth2
 *   take its place on the ports' links, and closing the old device leaves their links open.
 * - keepResources (VF-LAG): no fatal event, the QP stays in RTS, a QP on port 2 is redirected to port 1
 *   and its SEND still completes at the peer; port 2 goes to a new ordinary device.
 */
import t from 'tap';
import { bondAt, bondNet, bondOf, teamConfig } from './bond-net.js';
import { queryLagPort, setLagPort } from '../../src/lag/bond.js';
import { connectQp } from '../../src/verbs/connect.js';
import { Wc } from '../../src/verbs/types.js';
import type { AsyncEvent, Device } from '../../src/verbs/device.js';

function rc(dev: Device) {
  const pd = dev.allocPd();
  const cq = dev.createCq({ depth: 64 });
  const qp = pd.createQp({ type: 'RC', sendCq: cq, recvCq: cq, sigAll: true, cap: { maxSendWr: 16, maxRecvWr: 16, maxSendSge: 1, maxRecvSge: 1 } });
  const mem = Buffer.alloc(4096);
  const mr = pd.regMr(mem, ['LOCAL_WRITE']);
  return { pd, cq, qp, mem, mr };
}

async function pair(keepResources: boolean) {
  const n = bondNet();
  const cfg = teamConfig({ name: 'loadbalance' });
  const a = bondOf(await bondAt(n, '10.7.0.1', cfg, [], undefined, { keepResources }));
  const b = bondOf(await bondAt(n, '10.7.0.2', cfg, ['softroce_bond_0']));
  const A = rc(a.device);
  const B = rc(b.device);
  setLagPort(A.qp, 2);
  const local = { pathMtu: 1024 as const, timeout: 12, retryCnt: 7, rnrRetry: 7, minRnrTimer: 1 };
  const ea = A.qp.endpoint();
  const eb = B.qp.endpoint();
  connectQp(A.qp, { ...local, psn: ea.psn }, { qpn: eb.qpn, psn: eb.psn, gid: '10.7.0.2' });
  connectQp(B.qp, { ...local, psn: eb.psn }, { qpn: ea.qpn, psn: ea.psn, gid: '10.7.0.1' });
  return { n, a, b, A, B };
}

function drain(cq: { poll(wc: Wc[]): number }): Wc[] {
  const out: Wc[] = [];
  const wc = Array.from({ length: 16 }, () => new Wc());
  let k: number;
  while ((k = cq.poll(wc)) > 0) for (let i = 0; i < k; i++) out.push(Object.assign(new Wc(), wc[i]!));
  return out;
}

t.test('leaving LAG re-registers: DEVICE_FATAL, the QP to ERR, receives flushed, two ordinary devices', async (t) => {
  const { n, a, b, A } = await pair(false);
  const closers: Array<() => Promise<void>> = [() => b.close()];
  t.teardown(async () => {
    for (const c of closers) await c();
  });
  t.equal(A.qp.state, 'RTS');
  for (let i = 0; i < 3; i++) A.qp.postRecv({ wrId: 10 + i, sg: [{ mr: A.mr, offset: i * 64, length: 64 }] });
  const events: AsyncEvent[] = [];
  a.device.on('async', (e: AsyncEvent) => events.push(e));
  const left: unknown[] = [];
  a.on('leftLag', (e: unknown) => left.push(e));
  const devices = await a.leaveLag();
  closers.push(async () => {
    for (const d of devices) await d.close();
  });
  n.fake.advance(1);
  t.same(events.filter((e) => e.type === 'DEVICE_FATAL').length, 1, 'IBV_EVENT_DEVICE_FATAL on the bond device');
  t.equal(A.qp.state, 'ERR', 'its QP is in ERR');
  const wcs = drain(A.cq);
  t.same(
    wcs.map((w) => [w.wrId, w.status]),
    [
      [10, 'WR_FLUSH_ERR'],
      [11, 'WR_FLUSH_ERR'],
      [12, 'WR_FLUSH_ERR'],
    ],
    'the posted receives complete flushed, on a CQ still pollable',
  );
  t.same(
    devices.map((d) => d.name),
    ['softroce_eth1', 'softroce_eth2'],
    'two ordinary devices, one per port',
  );
  t.not(devices[0], a.device);
  t.ok(a.left);
  t.equal(left.length, 1, "'leftLag'");
  t.throws(() => a.reconfigure(teamConfig('activebackup')), { code: 'EBADF' }, 'the old bond takes no more configuration');
  await t.rejects(a.leaveLag(), { code: 'EBADF' });
  // The user closes the dead device: the ports' links stay open for the new devices.
  await a.device.close();
  // softroce_eth1 on port 1's link talks RC to B (its link was not closed with the old device).
  const X = rc(devices[0]!);
  const Y = rc(b.device);
  // B answers by cable 1: both ordinary devices carry the bond's address, one per cable.
  setLagPort(Y.qp, 1);
  const local = { pathMtu: 1024 as const, timeout: 12, retryCnt: 7, rnrRetry: 7, minRnrTimer: 1 };
  const ex = X.qp.endpoint();
  const ey = Y.qp.endpoint();
  connectQp(X.qp, { ...local, psn: ex.psn }, { qpn: ey.qpn, psn: ey.psn, gid: '10.7.0.2' });
  connectQp(Y.qp, { ...local, psn: ey.psn }, { qpn: ex.qpn, psn: ex.psn, gid: '10.7.0.1' });
  Y.qp.postRecv({ wrId: 1, sg: [{ mr: Y.mr, offset: 0, length: 64 }] });
  X.mem.write('ordinary device', 0);
  X.qp.postSend({ wrId: 2, opcode: 'SEND', sg: [{ mr: X.mr, offset: 0, length: 15 }] });
  for (let i = 0; i < 50; i++) n.fake.advance(1);
  t.same(
    drain(X.cq).map((w) => [w.wrId, w.status]),
    [[2, 'SUCCESS']],
    'the new device sends on the port link the old one no longer owns',
  );
  t.equal(Y.mem.toString('utf8', 0, 15), 'ordinary device');
});

t.test('keepResources (VF-LAG): no fatal event, the QP survives and its traffic is redirected to port 1', async (t) => {
  const { n, a, b, A, B } = await pair(true);
  let others: readonly Device[] = [];
  t.teardown(async () => {
    for (const d of others.slice(1)) await d.close();
    await a.close();
    await b.close();
  });
  t.same([queryLagPort(A.qp).configured, queryLagPort(A.qp).active], [2, 2]);
  const events: AsyncEvent[] = [];
  a.device.on('async', (e: AsyncEvent) => events.push(e));
  others = await a.leaveLag();
  t.equal(others[0], a.device, 'the bond device stays, as port 1 device');
  t.equal(others[1]!.name, 'softroce_eth2');
  t.same(
    events.map((e) => e.type),
    [],
    'no fatal event',
  );
  t.equal(A.qp.state, 'RTS', 'the QP survives');
  t.same([queryLagPort(A.qp).configured, queryLagPort(A.qp).active], [2, 1], 'redirected to port 1');
  const sent2 = a.portCounters(2)['sent_pkts'];
  B.qp.postRecv({ wrId: 1, sg: [{ mr: B.mr, offset: 0, length: 64 }] });
  A.mem.write('after leaving LAG', 0);
  A.qp.postSend({ wrId: 2, opcode: 'SEND', sg: [{ mr: A.mr, offset: 0, length: 17 }] });
  for (let i = 0; i < 50; i++) n.fake.advance(1);
  t.same(
    drain(A.cq).map((w) => [w.wrId, w.status]),
    [[2, 'SUCCESS']],
  );
  t.same(
    drain(B.cq).map((w) => [w.wrId, w.status]),
    [[1, 'SUCCESS']],
  );
  t.equal(B.mem.toString('utf8', 0, 17), 'after leaving LAG', 'the bytes arrived');
  t.equal(a.portCounters(2)['sent_pkts'], sent2, 'nothing more left by port 2');
});
