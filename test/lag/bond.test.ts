/**
 * createBond (issue 14 items 1-3, first slice): LAG mode or two ordinary devices, the bond device's
 * name, port and GID table, the pre-change check and 'prechange' refusals leaving the bond as it was,
 * the notifier events, QP port affinity (explicit, flow entropy, round-robin, active-backup), and
 * the ethtool link watch's delays.
 */
import t from 'tap';
import { bondAt, bondNet, bondOf, FakeHost, teamConfig, type BondNet } from './bond-net.js';
import { createBond, LagRefusedError, queryLagPort, setLagPort, type Bond, type BondPrechange } from '../../src/lag/bond.js';
import { TeamConfigError } from '../../src/lag/team-config.js';
import { flowLabelToSourcePort } from '../../src/roce/flow.js';
import { openDevice, type Device } from '../../src/verbs/device.js';
import { InvalidQpAttrError } from '../../src/verbs/errors.js';
import type { Qp } from '../../src/verbs/qp.js';

async function lagBond(
  t: { teardown(f: () => Promise<void>): void },
  n: BondNet,
  runner: string | Record<string, unknown>,
  extra: Record<string, unknown> = {},
  host?: FakeHost,
): Promise<Bond> {
  const b = bondOf(await bondAt(n, '10.8.0.1', teamConfig(runner, extra), [], host));
  t.teardown(() => b.close());
  return b;
}

function rcQp(dev: Device): Qp {
  const pd = dev.allocPd();
  const cq = dev.createCq({ depth: 16 });
  return pd.createQp({ type: 'RC', sendCq: cq, recvCq: cq, cap: { maxSendWr: 4, maxRecvWr: 4 } });
}

t.test('LAG mode: one device softroce_bond_<n>, one port, half the GID table', async (t) => {
  for (const [runner, mode] of [
    ['activebackup', 'active-backup'],
    ['loadbalance', 'hash'],
    ['lacp', '802.3ad'],
  ] as const) {
    const n = bondNet();
    const r = await bondAt(n, '10.8.0.1', teamConfig(runner), ['softroce_bond_0']);
    t.ok(r.lag, `${runner}: LAG`);
    if (!r.lag) continue;
    t.equal(r.mode, mode);
    t.equal(r.device.name, 'softroce_bond_1', 'the next free softroce_bond_<n>');
    t.equal(r.device.query().physPortCnt, 1, 'one port');
    t.equal(r.device.queryPort(1).gidTblLen, 64, 'GID table: half of 128');
    t.equal(r.device.queryPort(1).state, 'ACTIVE');
    t.equal(r.bond.netdev, 'team0');
    t.same(
      r.bond.ports.map((p) => `${p.lagPort} ${p.netdev} ${p.up}`),
      ['1 eth1 true', '2 eth2 true'],
    );
    t.equal(r.bond.activePort, runner === 'activebackup' ? 1 : null, 'active-backup has an active port');
    await r.bond.close();
    t.equal(r.device.closed, true, 'closing the bond closes its device');
  }
  // Without devicesInUse: the open bonds' names are taken.
  const n = bondNet();
  const ports = (a: string) => ({
    ports: [
      { netdev: 'eth1', address: a },
      { netdev: 'eth2', address: a },
    ],
    links: [n.net.attach(a, 4791, 'w1'), n.net.attach(a, 4791, 'w2')],
    scheduler: n.fake,
  });
  const b0 = await createBond(teamConfig('activebackup'), ports('10.8.0.5'));
  const b1 = await createBond(teamConfig('activebackup'), ports('10.8.0.6'));
  t.equal(b0.lag && b1.lag && `${b0.device.name} ${b1.device.name}`, 'softroce_bond_0 softroce_bond_1');
  if (b0.lag) await b0.bond.close();
  if (b1.lag) await b1.bond.close();
});

t.test('no LAG mode: two ordinary devices, and why', async (t) => {
  const n = bondNet();
  const r = await bondAt(n, '10.8.0.1', teamConfig('roundrobin'));
  t.equal(r.lag, false);
  if (r.lag) return;
  t.equal(r.reason, 'unsupported-runner');
  t.same(
    r.devices.map((d) => `${d.name} ${d.query().physPortCnt} ${d.queryPort(1).gidTblLen}`),
    ['softroce_eth1 1 128', 'softroce_eth2 1 128'],
  );
  for (const d of r.devices) await d.close();

  const n2 = bondNet();
  const r2 = await createBond(teamConfig('lacp'), {
    ports: [
      { netdev: 'eth1', address: '10.8.0.1', device: 'softroce0' },
      { netdev: 'eth2', address: '10.8.0.1', device: 'softroce1' },
    ],
    links: [n2.net.attach('10.8.0.1', 4791, 'w1'), n2.net.attach('10.8.0.1', 4791, 'w2')],
    scheduler: n2.fake,
  });
  t.equal(r2.lag ? 'lag' : r2.reason, 'ports-of-different-devices');
  if (!r2.lag) for (const d of r2.devices) await d.close();
  await t.rejects(
    createBond(
      { runner: { name: 'activebackup' }, ports: { eth1: {}, eth9: {} } },
      { ports: [{ netdev: 'eth1', address: '10.8.0.1' }], links: [bondNet().net.attach('10.8.0.1')] },
    ),
    TeamConfigError,
    'a config port that is not given',
  );
  await t.rejects(createBond({ runner: { name: 'nope' } }, { ports: [{ netdev: 'eth1', address: '10.8.0.1' }] }), TeamConfigError, 'a config teamd refuses');
});

t.test("pre-change: a third port, a runner with no LAG mode, a listener's refusal leave the bond as it was", async (t) => {
  const n = bondNet();
  const b = await lagBond(t, n, 'activebackup');
  const events: string[] = [];
  b.on('change', (e: { mode: string }) => events.push(`change ${e.mode}`));
  const cfg = b.config;
  const third = (() => {
    try {
      b.addPort({ netdev: 'eth3' });
    } catch (e) {
      return e;
    }
    return null;
  })();
  t.type(third, LagRefusedError);
  t.match(third, { reason: 'port-count', code: 'EINVAL', argument: 'config' });
  t.throws(() => b.reconfigure(teamConfig('roundrobin')), { reason: 'unsupported-runner', code: 'EOPNOTSUPP' });
  t.throws(
    () => b.reconfigure({ runner: { name: 'activebackup' }, ports: { eth1: {}, eth2: {}, eth3: {} } }),
    TeamConfigError,
    'a port the bond does not have',
  );
  const refuse = (e: BondPrechange): void => e.refuse('the admin said no');
  b.on('prechange', refuse);
  t.throws(() => b.reconfigure(teamConfig('loadbalance')), { reason: 'refused-by-listener', code: 'EBUSY' });
  b.off('prechange', refuse);
  b.once('prechange', () => {
    throw new Error('a listener that throws refuses');
  });
  t.throws(() => b.reconfigure(teamConfig('loadbalance')), { reason: 'refused-by-listener', code: 'EBUSY' });
  t.equal(b.config, cfg, 'the config is the one it had');
  t.equal(b.mode, 'active-backup');
  t.same(events, [], "no 'change' for a refused change");
  let seen: BondPrechange | null = null;
  b.once('prechange', (e: BondPrechange) => {
    seen = e;
  });
  b.reconfigure(teamConfig('loadbalance'));
  t.equal((seen as BondPrechange | null)?.decision.lag, true, 'prechange sees the decision');
  t.equal(b.mode, 'hash');
  t.equal(b.activePort, null);
  t.same(events, ['change hash']);
});

t.test('affinity: explicit, flow entropy (even -> 1, odd -> 2), else round-robin over the live ports', async (t) => {
  const n = bondNet();
  const b = await lagBond(t, n, 'loadbalance');
  const dev = b.device;
  const explicit = rcQp(dev);
  t.throws(() => queryLagPort(explicit), { code: 'EINVAL', argument: 'qp' }, 'no LAG port before INIT');
  setLagPort(explicit, 2);
  t.same(queryLagPort(explicit), { configured: 2, active: 2, source: 'explicit' }, 'set in RESET: taken at INIT');
  explicit.toInit({ accessFlags: [] });
  t.same(queryLagPort(explicit), { configured: 2, active: 2, source: 'explicit' });
  const even = rcQp(dev).toInit({ flowEntropy: 0x1234 });
  const odd = rcQp(dev).toInit({ flowEntropy: 0x1235 });
  t.same(queryLagPort(even), { configured: 1, active: 1, source: 'flow-entropy' });
  t.same(queryLagPort(odd), { configured: 2, active: 2, source: 'flow-entropy' });
  t.equal(odd.srcPort, flowLabelToSourcePort(0x1235), 'the UDP source port carries the flow entropy');
  const rr = [rcQp(dev), rcQp(dev), rcQp(dev)].map((q) => queryLagPort(q.toInit()).configured);
  t.same(rr, [1, 2, 1], 'round-robin, one counter for the device');
  setLagPort(even, 2);
  t.same(queryLagPort(even), { configured: 2, active: 2, source: 'explicit' }, 'moved by the application after INIT');
  t.throws(() => setLagPort(even, 3), { code: 'EINVAL', argument: 'port' });
  t.throws(() => setLagPort(even, 0), { code: 'EINVAL', argument: 'port' });
  // Port 2 down: a new QP's turn counts over the live ports only.
  n.net.setSegmentUp('w2', false);
  t.same(
    [rcQp(dev), rcQp(dev)].map((q) => queryLagPort(q.toInit())),
    [
      { configured: 1, active: 1, source: 'round-robin' },
      { configured: 1, active: 1, source: 'round-robin' },
    ],
  );
  t.same(queryLagPort(odd), { configured: 2, active: 1, source: 'flow-entropy' }, 'a QP configured on the dead port is active on the live one');
  const gsiPd = dev.allocPd();
  const cq = dev.createCq({ depth: 4 });
  const gsi = dev.openGsi(gsiPd, { sendCq: cq, recvCq: cq, cap: { maxSendWr: 2, maxRecvWr: 2 } });
  t.throws(() => queryLagPort(gsi), { code: 'EOPNOTSUPP' }, 'QP1 has no LAG port');
  const plain = await openDevice({ address: '10.8.9.9', link: n.net.attach('10.8.9.9'), scheduler: n.fake });
  t.teardown(() => plain.close());
  t.throws(() => queryLagPort(rcQp(plain)), { code: 'EOPNOTSUPP', argument: 'qp' }, 'not a bonded device');
});

t.test('activebackup: every QP on the active port, whatever its configured port', async (t) => {
  const n = bondNet();
  const b = await lagBond(t, n, 'activebackup', { ports: { eth1: {}, eth2: { prio: 5 } } });
  t.equal(b.activePort, 2, 'the higher prio port is active');
  const qs = [rcQp(b.device).toInit({ flowEntropy: 2 }), rcQp(b.device).toInit(), rcQp(b.device).toInit()];
  t.same(
    qs.map((q) => queryLagPort(q)),
    [
      { configured: 1, active: 2, source: 'flow-entropy' },
      { configured: 1, active: 2, source: 'round-robin' },
      { configured: 2, active: 2, source: 'round-robin' },
    ],
  );
  const changed: string[] = [];
  b.on('activePortChanged', (e: { from: number | null; to: number | null }) => changed.push(`${e.from}->${e.to}`));
  n.net.setSegmentUp('w2', false);
  t.equal(b.activePort, 1);
  t.same(
    qs.map((q) => queryLagPort(q).active),
    [1, 1, 1],
  );
  n.net.setSegmentUp('w1', false);
  t.equal(b.activePort, null, 'no port up: no active port');
  t.equal(b.device.queryPort(1).state, 'DOWN', 'the bond port is down with both ports');
  n.net.setSegmentUp('w1', true);
  n.net.setSegmentUp('w2', true);
  t.same(changed, ['2->1', '1->null', 'null->1', '1->2'], 'back to the higher prio port');
});

t.test('events: portDown / portUp after the ethtool delays, a flap shorter than the delay is no event, PORT_ERR / PORT_ACTIVE, gidChange', async (t) => {
  const n = bondNet();
  const host = new FakeHost([]);
  const b = await lagBond(t, n, 'loadbalance', { link_watch: { name: 'ethtool', delay_down: 100, delay_up: 300 } }, host);
  const ev: string[] = [];
  const at = (): number => n.fake.now();
  b.on('portDown', (e: { port: number; netdev: string }) => ev.push(`${at()} down ${e.port} ${e.netdev}`));
  b.on('portUp', (e: { port: number; netdev: string }) => ev.push(`${at()} up ${e.port} ${e.netdev}`));
  b.on('gidChange', (e: { port: number }) => ev.push(`${at()} gid ${e.port}`));
  b.device.on('async', (e: { type: string }) => {
    if (e.type !== 'GID_CHANGE') ev.push(`${at()} ${e.type}`);
  });
  n.net.setSegmentUp('w1', false);
  n.fake.advance(50);
  n.net.setSegmentUp('w1', true);
  n.fake.advance(500);
  t.same(ev, [], 'a 50 ms flap under delay_down (100 ms): nothing');
  const t0 = at();
  n.net.setSegmentUp('w1', false);
  n.fake.advance(99);
  t.same(ev, [], 'not before delay_down');
  n.fake.advance(1);
  n.net.setSegmentUp('w2', false);
  n.fake.advance(100);
  n.net.setSegmentUp('w1', true);
  n.fake.advance(300);
  t.same(ev, [`${t0 + 100} down 1 eth1`, `${t0 + 200} down 2 eth2`, `${t0 + 200} PORT_ERR`, `${t0 + 500} up 1 eth1`, `${t0 + 500} PORT_ACTIVE`]);
  ev.length = 0;
  // The team device gets another address: the bond port's GID table follows it.
  host.add('team0', '10.8.0.77');
  t.same(ev, [`${at()} gid 1`]);
  t.ok(
    b.device.gidTable(1).some((g) => g.netdev === 'team0' && Buffer.from(g.gid.subarray(12)).equals(Buffer.from([10, 8, 0, 77]))),
    'the new address is in the bond port',
  );
});

t.test('flowEntropy on an ordinary device: RESET -> INIT only, and the source port on the wire', async (t) => {
  const n = bondNet();
  const d = await openDevice({ address: '10.8.1.1', link: n.net.attach('10.8.1.1'), scheduler: n.fake });
  t.teardown(() => d.close());
  const q = rcQp(d);
  q.toInit({ flowEntropy: 77 });
  t.equal(q.flowEntropy, 77);
  t.equal(q.srcPort, flowLabelToSourcePort(77));
  t.throws(() => q.modify({ state: 'INIT', flowEntropy: 78 }), InvalidQpAttrError, 'not at INIT -> INIT');
  t.throws(() => rcQp(d).modify({ state: 'INIT', port: 1, pkeyIndex: 0, accessFlags: [], flowEntropy: -1 }), { code: 'EINVAL', argument: 'flowEntropy' });
  const d2 = await openDevice({ address: '10.8.1.2', link: n.net.attach('10.8.1.2'), scheduler: n.fake });
  t.teardown(() => d2.close());
  const peer = rcQp(d2).toInit({ accessFlags: [] });
  q.toRtr({ remote: { qpn: peer.qpn, psn: 0, gid: '10.8.1.2' } }).toRts({ sqPsn: 0 });
  peer.toRtr({ remote: { qpn: q.qpn, psn: 0, gid: '10.8.1.1' } }).toRts({ sqPsn: 0 });
  t.equal(q.srcPort, flowLabelToSourcePort(77), 'an AV without a flow label keeps the entropy port');
  const sports = new Set<number>();
  n.net.filter = (_p, src, _d, sport) => {
    if (src === '10.8.1.1') sports.add(sport);
    return true;
  };
  peer.postRecv({ wrId: 1, sg: [] });
  q.postSend({ wrId: 2, opcode: 'SEND', sg: [] });
  for (let i = 0; i < 20; i++) n.fake.advance(1);
  t.same([...sports], [flowLabelToSourcePort(77)], 'every packet leaves from the entropy port');
});
