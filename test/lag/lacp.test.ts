/**
 * The lacp runner (src/lag/lacp.ts) with a fake clock: two runners joined by two fake cables (each
 * LACPDU delivered on the next deferred turn), and a scripted fake peer. Covers: both ports become
 * collecting / distributing and enabled, the carrier and min_ports, the timeout (3 x the interval:
 * 3 s with fast_rate, 90 s without) after which a silent partner's port is no longer enabled, the
 * periodic rate the partner asks for, loopback refusal; and the bond on the in-memory network: a QP on
 * the port LACP stops enabling moves to the other port (while its carrier stays up) and comes back.
 */
import t from 'tap';
import { FakeScheduler } from '../../src/roce/sched.js';
import { LacpRunner, type LacpPortIo, type LacpPortSpec } from '../../src/lag/lacp.js';
import { emitLacpdu, LACP_STATE as S, parseLacpdu, type LacpInfo } from '../../src/lag/lacpdu.js';
import { parseTeamConfig, type LacpRunnerConfig } from '../../src/lag/team-config.js';
import { bondAt, bondNet, bondOf, teamConfig } from './bond-net.js';
import { queryLagPort, setLagPort } from '../../src/lag/bond.js';

const CD = S.SYNCHRONIZATION | S.COLLECTING | S.DISTRIBUTING;

function lacpCfg(runner: Record<string, unknown>): LacpRunnerConfig {
  const c = parseTeamConfig({ runner: { name: 'lacp', ...runner }, ports: { eth1: {}, eth2: {} } });
  if (c.runner.name !== 'lacp') throw new Error('not lacp');
  return c.runner;
}

/** Two fake cables: what one end sends arrives at the other on the next turn, unless the sender is muted. */
class Wire {
  readonly rx: Array<((f: Uint8Array, len: number) => void) | null> = [null, null];
  readonly muted = [false, false];
  readonly sent: Uint8Array[][] = [[], []];
  readonly fake: FakeScheduler;
  constructor(fake: FakeScheduler) {
    this.fake = fake;
  }
  end(side: 0 | 1, mac: Uint8Array): LacpPortIo {
    return {
      mac,
      send: (f) => {
        const copy = Uint8Array.from(f);
        this.sent[side]!.push(copy);
        if (this.muted[side]) return;
        this.fake.defer(() => this.rx[1 - side]?.(copy, copy.length));
      },
      setReceiver: (fn) => {
        this.rx[side] = fn;
      },
      close: () => {
        this.rx[side] = null;
      },
    };
  }
}

const mac = (a: number, b: number): Uint8Array => Uint8Array.of(2, 0, 0, 0, a, b);

function pair(cfgA: Record<string, unknown>, cfgB: Record<string, unknown> = cfgA, extraA: Partial<LacpPortSpec> = {}) {
  const fake = new FakeScheduler();
  const wires = [new Wire(fake), new Wire(fake)];
  const changes = { a: 0, b: 0 };
  const spec = (side: 0 | 1, i: number): LacpPortSpec => ({
    lagPort: i + 1,
    netdev: `eth${i + 1}`,
    lacpPrio: 255,
    lacpKey: 0,
    prio: 0,
    sticky: false,
    io: wires[i]!.end(side, mac(side + 1, i + 1)),
    ...(side === 0 ? extraA : {}),
  });
  const a = new LacpRunner({ config: lacpCfg(cfgA), system: mac(0xa, 0), ports: [spec(0, 0), spec(0, 1)], sched: fake, changed: () => changes.a++ });
  const b = new LacpRunner({ config: lacpCfg(cfgB), system: mac(0xb, 0), ports: [spec(1, 0), spec(1, 1)], sched: fake, changed: () => changes.b++ });
  for (const r of [a, b]) for (const p of [1, 2]) r.linkUpdate(p, true);
  return { fake, wires, a, b, changes };
}

t.test('two runners: both ports collecting / distributing, enabled, the carrier up', async (t) => {
  const { fake, a, b } = pair({ fast_rate: true });
  fake.advance(0);
  for (const r of [a, b])
    for (const p of [1, 2]) {
      const v = r.port(p);
      t.equal(v.state, 'current', `port ${p} current`);
      t.ok(v.selected, 'selected');
      t.equal(v.actor.state & CD, CD, 'actor in sync, collecting, distributing');
      t.equal(v.partner.state & CD, CD, 'partner in sync, collecting, distributing');
      t.ok(v.enabled, 'enabled for TX');
    }
  t.equal(a.port(1).aggregator, a.port(2).aggregator, 'one aggregator for both ports (same keys, same partner system)');
  t.same(Array.from(a.port(1).partner.system), Array.from(mac(0xb, 0)), "the partner's system is B's");
  t.equal(a.port(1).actor.state & S.TIMEOUT, S.TIMEOUT, 'fast_rate: the short timeout advertised');
  t.ok(a.carrier && b.carrier);
});

t.test('fast_rate: a silent partner expires the port after 3 x 1 s; it returns when the partner talks again', async (t) => {
  const { fake, wires, a, b, changes } = pair({ fast_rate: true });
  fake.advance(0);
  const before = changes.a;
  // B's port 2 stops sending LACPDUs (the partner's socket is gone), its carrier stays up.
  wires[1]!.muted[1] = true;
  fake.advance(2900);
  t.ok(a.enabled(2), 'at 2.9 s port 2 is still enabled (the timeout is 3 s)');
  t.equal(a.port(2).state, 'current');
  fake.advance(200);
  t.equal(a.port(2).state, 'expired', 'at 3.1 s: expired');
  t.notOk(a.enabled(2), 'and no longer enabled');
  t.ok(a.enabled(1), 'port 1 unaffected');
  t.ok(a.carrier, 'min_ports 1: the carrier stays up');
  t.ok(changes.a > before, 'the bond heard of it');
  fake.advance(3000);
  t.equal(a.port(2).state, 'defaulted', 'another 3 s (forced fast): defaulted, the partner forgotten');
  t.equal(a.port(2).partner.port, 0);
  t.notOk(b.enabled(2), "B's side of the cable is not distributing either (A stopped collecting)");
  wires[1]!.muted[1] = false;
  fake.advance(1100);
  t.ok(a.enabled(2) && b.enabled(2), 'the partner talks again: enabled on both sides');
});

t.test('slow rate: periodic 30 s, timeout 90 s', async (t) => {
  const { fake, wires, a } = pair({});
  fake.advance(0);
  t.ok(a.enabled(2));
  t.equal(a.port(1).actor.state & S.TIMEOUT, 0, 'long timeout advertised');
  const n = wires[0]!.sent[0]!.length;
  fake.advance(60_000);
  t.equal(wires[0]!.sent[0]!.length - n, 2, 'one LACPDU per 30 s on a quiet, converged port');
  wires[1]!.muted[1] = true;
  fake.advance(85_000);
  t.ok(a.enabled(2), 'silent for 85 s: still enabled');
  fake.advance(10_000);
  t.notOk(a.enabled(2), 'silent for 95 s: expired (90 s)');
});

t.test('min_ports 2: the carrier goes down with one port, comes back with both', async (t) => {
  const { fake, wires, a } = pair({ fast_rate: true, min_ports: 2 });
  fake.advance(0);
  t.ok(a.carrier);
  wires[1]!.muted[1] = true;
  fake.advance(3100);
  t.notOk(a.carrier, 'one port enabled < min_ports 2');
  t.ok(a.enabled(1));
  wires[1]!.muted[1] = false;
  fake.advance(1100);
  t.ok(a.carrier);
});

t.test('carrier loss: DISABLED at once, partner cleared; lacp_prio / lacp_key go on the wire', async (t) => {
  const { fake, wires, a } = pair({ fast_rate: true, sys_prio: 100 }, { fast_rate: true }, { lacpPrio: 7, lacpKey: 3 });
  fake.advance(0);
  const pdu = parseLacpdu(wires[0]!.sent[0]!.at(-1)!)!;
  t.equal(pdu.actor.systemPriority, 100, 'sys_prio');
  t.equal(pdu.actor.portPriority, 7, 'lacp_prio');
  t.equal(pdu.actor.key, 3, 'lacp_key');
  a.linkUpdate(1, false);
  t.equal(a.port(1).state, 'disabled');
  t.notOk(a.enabled(1));
  t.equal(a.port(1).partner.port, 0);
});

t.test('a fake peer: our LACPDUs answered by hand; a looped-back cable is never selected', async (t) => {
  const fake = new FakeScheduler();
  const sent: Uint8Array[] = [];
  let rx: ((f: Uint8Array, len: number) => void) | null = null;
  const io: LacpPortIo = { mac: mac(1, 1), send: (f) => sent.push(Uint8Array.from(f)), setReceiver: (fn) => (rx = fn), close: () => undefined };
  const r = new LacpRunner({
    config: lacpCfg({}),
    system: mac(0xa, 0),
    ports: [{ lagPort: 1, netdev: 'eth1', lacpPrio: 255, lacpKey: 0, prio: 0, sticky: false, io }],
    sched: fake,
    changed: () => undefined,
  });
  r.linkUpdate(1, true);
  t.equal(sent.length, 1, 'carrier up: one LACPDU at once');
  const first = parseLacpdu(sent[0]!)!;
  t.equal(first.actor.state & S.EXPIRED, S.EXPIRED, 'we are EXPIRED (no partner yet)');
  t.equal(first.partner.state & S.TIMEOUT, S.TIMEOUT, 'and ask for the fast rate');
  fake.advance(1000);
  t.equal(sent.length, 2, 'periodic 1 s while the partner is unknown');
  const peer: LacpInfo = { systemPriority: 1, system: mac(0xc, 0), key: 9, portPriority: 1, port: 42, state: S.ACTIVITY | S.AGGREGATION | CD };
  const answer = (actor: LacpInfo): Uint8Array => emitLacpdu({ src: mac(0xc, 1), actor, partner: parseLacpdu(sent.at(-1)!)!.actor, collectorMaxDelay: 0 });
  rx!(answer(peer), 124);
  t.equal(r.port(1).state, 'current');
  t.ok(r.enabled(1), 'partner in sync, collecting, distributing: enabled');
  t.equal(r.port(1).partner.port, 42);
  // Neither side asks for the short timeout: we send every 30 s, and expect as much.
  const n = sent.length;
  fake.advance(29_000);
  rx!(answer(peer), 124);
  t.equal(sent.length, n, 'nothing new to say and 30 s not yet passed: no LACPDU');
  // A peer that stops distributing is not sent to.
  rx!(answer({ ...peer, state: S.ACTIVITY | S.AGGREGATION | S.SYNCHRONIZATION }), 124);
  t.notOk(r.enabled(1), 'partner not collecting / distributing: not enabled');
  // Our own LACPDU coming back (a looped cable): the partner is ourselves, never selected.
  rx!(sent.at(-1)!, 124);
  t.notOk(r.port(1).selected, 'loopback: not selected');
  t.notOk(r.enabled(1));
  t.equal(r.port(1).rxBad, 0);
  rx!(new Uint8Array(60), 60);
  t.equal(r.port(1).rxBad, 1, 'a runt is counted and dropped');
  r.stop();
});

t.test('the bond: a port LACP stops enabling carries no QP traffic; its QPs move and come back', async (t) => {
  const n = bondNet();
  const wires = [new Wire(n.fake), new Wire(n.fake)];
  const io =
    (side: 0 | 1) =>
    (_netdev: string, lagPort: number): LacpPortIo =>
      wires[lagPort - 1]!.end(side, mac(side + 1, lagPort));
  const cfg = teamConfig({ name: 'lacp', fast_rate: true });
  const ra = await bondAt(n, '10.0.0.1', cfg, [], undefined, { lacpIo: io(0), systemMac: mac(0xa, 0) });
  const rb = await bondAt(n, '10.0.0.2', cfg, ['softroce_bond_0'], undefined, { lacpIo: io(1), systemMac: mac(0xb, 0) });
  const a = bondOf(ra);
  const b = bondOf(rb);
  t.teardown(async () => {
    await a.close();
    await b.close();
  });
  t.equal(a.mode, '802.3ad');
  t.ok(a.lacp, 'the runner runs');
  t.same(
    a.ports.map((p) => p.up),
    [false, false],
    'before any LACPDU exchange no port carries traffic',
  );
  n.fake.advance(10);
  t.same(
    a.ports.map((p) => p.up),
    [true, true],
    'both ports enabled by LACP',
  );
  const pd = a.device.allocPd();
  const cq = a.device.createCq({ depth: 16 });
  const qp = pd.createQp({ type: 'RC', sendCq: cq, recvCq: cq, cap: { maxSendWr: 4, maxRecvWr: 4, maxSendSge: 1, maxRecvSge: 1 } });
  setLagPort(qp, 2);
  qp.modify({ state: 'INIT', port: 1, pkeyIndex: 0, accessFlags: [] });
  t.same([queryLagPort(qp).configured, queryLagPort(qp).active], [2, 2]);
  const downs: number[] = [];
  a.on('portDown', (e: { port: number }) => downs.push(e.port));
  wires[1]!.muted[1] = true; // B's port 2 goes quiet; every carrier stays up
  n.fake.advance(3100);
  t.ok(a.ports[1]!.link.up, "port 2's carrier is still up");
  t.notOk(a.ports[1]!.up, 'but LACP no longer enables it');
  t.same(downs, [2], 'portDown for port 2');
  t.same([queryLagPort(qp).configured, queryLagPort(qp).active], [2, 1], 'the QP moved to port 1, keeping its configured port');
  wires[1]!.muted[1] = false;
  n.fake.advance(1100);
  t.ok(a.ports[1]!.up);
  t.equal(queryLagPort(qp).active, 2, 'and back');
  // A reconfigure that keeps the runner's settings keeps the runner and its partners.
  const runner = a.lacp;
  a.reconfigure({ ...cfg, link_watch: { name: 'ethtool', delay_up: 5 } });
  t.equal(a.lacp, runner, 'same runner after an unrelated change');
  t.same(
    a.ports.map((p) => p.up),
    [true, true],
  );
  // Out of 802.3ad: no runner; the ports follow their carrier.
  a.reconfigure(teamConfig('activebackup'));
  t.equal(a.lacp, null);
  wires[1]!.muted[0] = true;
  n.fake.advance(10_000);
  t.same(
    a.ports.map((p) => p.up),
    [true, true],
    'no LACP: silence on the wire changes nothing',
  );
});

t.test('the bond: lacp I/O that cannot open is a warning and a typed lacpError, not a crash', async (t) => {
  const n = bondNet();
  const r = await bondAt(n, '10.0.0.1', teamConfig({ name: 'lacp' }), [], undefined, {
    lacpIo: () => {
      throw new Error('no socket');
    },
  });
  const a = bondOf(r);
  t.teardown(() => a.close());
  t.equal(a.lacp, null);
  t.equal(a.lacpError?.code, 'EINVAL');
  t.equal(a.lacpError?.argument, 'runner');
  t.match(a.warnings.map((w) => w.message).join('\n'), /the lacp runner cannot run/);
  t.same(
    a.ports.map((p) => p.up),
    [true, true],
    'ports follow their link watch (static 802.3ad)',
  );
  // 'packet' with no such netdev: a typed error naming the reason.
  const r2 = await bondAt(n, '10.0.0.3', teamConfig({ name: 'lacp' }), ['softroce_bond_0'], undefined, { lacpIo: 'packet' });
  const b = bondOf(r2);
  t.teardown(() => b.close());
  t.ok(b.lacpError);
  t.match(b.lacpError!.code, /^(ENODEV|EOPNOTSUPP|EPERM)$/);
  t.match(b.lacpError!.message, /lacp runner cannot run|native addon/);
});
