/**
 * Following a Linux bond (issue 14 item 5) on a fake sysfs tree: reading the bonding files as the
 * 6.1 kernel writes them (the lab's guest printed exactly these), the mode mapping and its refusals,
 * the device softroce_bond_<n> over the bond, and the events of the bond's changes (poll on a fake
 * clock, and the netlink trigger).
 */
import t from 'tap';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { bondNet, FakeHost } from './bond-net.js';
import { followLinuxBond, linuxBondLagMode, readLinuxBond, type LinuxBondFollower } from '../../src/lag/linux-bond.js';
import { VerbsError } from '../../src/verbs/errors.js';

/** A fake /sys: `bond` with `slaves`, each slave's carrier and the bond's mii_status for it. */
class FakeSysfs {
  readonly root: string;
  constructor() {
    this.root = mkdtempSync(join(tmpdir(), 'softroce-sysfs-'));
  }
  private w(rel: string, text: string): void {
    const p = join(this.root, 'class', 'net', rel);
    mkdirSync(join(p, '..'), { recursive: true });
    writeFileSync(p, `${text}\n`);
  }
  bond(name: string, o: { mode: string; slaves: string[]; active?: string; miimon?: number; hash?: string }): void {
    this.w(`${name}/bonding/mode`, o.mode);
    this.w(`${name}/bonding/slaves`, o.slaves.join(' '));
    this.w(`${name}/bonding/active_slave`, o.active ?? '');
    this.w(`${name}/bonding/miimon`, String(o.miimon ?? 100));
    this.w(`${name}/bonding/xmit_hash_policy`, o.hash ?? 'layer2 0');
    for (const s of o.slaves) this.slave(s, true);
  }
  slave(name: string, up: boolean, mii: boolean | null = up): void {
    this.w(`${name}/carrier`, up ? '1' : '0');
    if (mii !== null) this.w(`${name}/bonding_slave/mii_status`, mii ? 'up' : 'down');
    else rmSync(join(this.root, 'class', 'net', name, 'bonding_slave'), { recursive: true, force: true });
  }
  set(rel: string, text: string): void {
    this.w(rel, text);
  }
  plain(name: string): void {
    this.w(`${name}/carrier`, '1');
  }
  remove(): void {
    rmSync(this.root, { recursive: true, force: true });
  }
}

t.test('readLinuxBond: the bonding files as the kernel writes them', async (t) => {
  const fs = new FakeSysfs();
  t.teardown(() => fs.remove());
  fs.bond('bond0', { mode: 'active-backup 1', slaves: ['eth0', 'eth1'], active: 'eth0', miimon: 100, hash: 'layer3+4 1' });
  fs.plain('eth9');
  const st = readLinuxBond('bond0', fs.root);
  t.same(st, {
    netdev: 'bond0',
    mode: 'active-backup',
    modeNumber: 1,
    slaves: [
      { name: 'eth0', carrier: true, up: true },
      { name: 'eth1', carrier: true, up: true },
    ],
    activeSlave: 'eth0',
    miimon: 100,
    xmitHashPolicy: 'layer3+4',
  });
  t.equal(readLinuxBond('eth9', fs.root), null, 'a plain netdev is not a bond');
  t.equal(readLinuxBond('nothere', fs.root), null, 'nor a missing one');
  t.throws(() => readLinuxBond('../etc', fs.root), VerbsError, 'a path is not an interface name');
  // The bond's verdict wins over the carrier (its downdelay still running: carrier gone, mii still up).
  fs.slave('eth0', false, true);
  t.equal(readLinuxBond('bond0', fs.root)!.slaves[0]!.up, true, 'mii_status up while the carrier is gone');
  // Without bonding_slave/ (an older kernel): the carrier.
  fs.slave('eth1', false, null);
  t.same(readLinuxBond('bond0', fs.root)!.slaves[1], { name: 'eth1', carrier: false, up: false });
  fs.set('bond0/bonding/active_slave', '');
  t.equal(readLinuxBond('bond0', fs.root)!.activeSlave, null, 'no active slave');
});

t.test('mode mapping: active-backup, balance-xor (hash), 802.3ad; the others are not LAG and say why', async (t) => {
  t.same(linuxBondLagMode('active-backup'), { lag: true, mode: 'active-backup' });
  t.same(linuxBondLagMode('balance-xor'), { lag: true, mode: 'hash' });
  t.same(linuxBondLagMode('802.3ad'), { lag: true, mode: '802.3ad' });
  for (const m of ['balance-rr', 'broadcast', 'balance-tlb', 'balance-alb', 'bogus']) {
    const r = linuxBondLagMode(m);
    t.equal(r.lag, false, m);
    if (!r.lag) t.match(r.why, m === 'bogus' ? /not one mlx5/ : /no LAG mode/, `${m}: why`);
  }
});

t.test('followLinuxBond: refused without a device when the bond makes no LAG', async (t) => {
  const fs = new FakeSysfs();
  t.teardown(() => fs.remove());
  fs.plain('eth9');
  fs.bond('rr0', { mode: 'balance-rr 0', slaves: ['eth0', 'eth1'] });
  fs.bond('ab3', { mode: 'active-backup 1', slaves: ['eth2', 'eth3', 'eth4'], active: 'eth2' });
  const n = bondNet();
  const common = { sysfsRoot: fs.root, scheduler: n.fake, addresses: new FakeHost([]) };
  for (const [dev, reason, detail] of [
    ['eth9', 'not-a-bond', /not a Linux bond master/],
    ['rr0', 'unsupported-mode', /balance-rr .*no LAG mode/],
    ['ab3', 'slave-count', /3 slaves; LAG needs exactly two/],
  ] as const) {
    const r = await followLinuxBond(dev, { ...common, link: n.net.attach('10.9.0.1') });
    t.equal(r.lag, false, dev);
    if (r.lag) continue;
    t.equal(r.reason, reason);
    t.match(r.detail, detail);
  }
  await t.rejects(followLinuxBond('rr0', { ...common, pollMs: 0 }), { code: 'EINVAL', argument: 'pollMs' });
});

async function follow(
  t: { teardown(f: () => Promise<void>): void },
  fs: FakeSysfs,
  watch?: (c: () => void) => () => void,
): Promise<{ b: LinuxBondFollower; n: ReturnType<typeof bondNet>; events: string[] }> {
  const n = bondNet();
  const r = await followLinuxBond('bond0', {
    sysfsRoot: fs.root,
    scheduler: n.fake,
    link: n.net.attach('10.9.0.1'),
    addresses: new FakeHost([{ name: 'bond0', address: '10.9.0.1', family: 4 }]),
    devicesInUse: ['softroce_bond_0'],
    ...(watch !== undefined ? { watch } : {}),
  });
  if (!r.lag) throw new Error(`not LAG: ${r.reason}`);
  const b = r.bond;
  t.teardown(() => b.close());
  const events: string[] = [];
  b.on('portUp', (e: { port: number; netdev: string }) => events.push(`up ${e.port} ${e.netdev}`));
  b.on('portDown', (e: { port: number; netdev: string }) => events.push(`down ${e.port} ${e.netdev}`));
  b.on('activePortChanged', (e: { from: number | null; to: number | null; toNetdev: string | null }) => events.push(`active ${e.from}->${e.to} ${e.toNetdev}`));
  b.on('change', (e: { mode: string; lag: boolean }) => events.push(`change ${e.mode} lag=${e.lag}`));
  return { b, n, events };
}

t.test('followLinuxBond: one device over the bond; the bond failing over is portDown + activePortChanged', async (t) => {
  const fs = new FakeSysfs();
  t.teardown(() => fs.remove());
  fs.bond('bond0', { mode: 'active-backup 1', slaves: ['eth0', 'eth1'], active: 'eth0', miimon: 100 });
  const { b, n, events } = await follow(t, fs);
  t.equal(b.name, 'softroce_bond_1', 'the next free softroce_bond_<n>');
  t.equal(b.device.name, b.name);
  t.equal(b.device.query().physPortCnt, 1, 'one port');
  t.equal(b.device.queryPort(1).gidTblLen, 64, 'GID table: half of 128, as a bond device');
  t.equal(b.mode, 'active-backup');
  t.equal(b.activePort, 1);
  t.equal(b.pollMs, 100, 'polled at the bond miimon');
  // The bond's miimon finds eth0's carrier gone and makes eth1 active.
  fs.slave('eth0', false);
  fs.set('bond0/bonding/active_slave', 'eth1');
  n.fake.advance(99);
  t.same(events, [], 'nothing before the poll');
  n.fake.advance(1);
  t.same(events, ['down 1 eth0', 'active 1->2 eth1']);
  t.equal(b.activePort, 2);
  n.fake.advance(500);
  t.equal(events.length, 2, 'a state reported once');
  // Back: the bond keeps eth1 active (no primary): only the port comes up.
  fs.slave('eth0', true);
  n.fake.advance(100);
  t.same(events.slice(2), ['up 1 eth0']);
  t.same(b.stats, { portUps: 1, portDowns: 1, activeChanges: 1, reads: 7 });
  // The bond's mode changed under us: still LAG (hash), then not (balance-rr).
  fs.set('bond0/bonding/mode', 'balance-xor 2');
  fs.set('bond0/bonding/active_slave', '');
  n.fake.advance(100);
  t.same(events.slice(3), ['change hash lag=true', 'active 2->null null']);
  t.equal(b.mode, 'hash');
  fs.set('bond0/bonding/mode', 'balance-rr 0');
  n.fake.advance(100);
  t.same(events.slice(5), ['change hash lag=false']);
  t.equal(b.lag, false);
  await b.close();
  n.fake.advance(1000);
  t.equal(events.length, 6, 'no event after close');
  t.equal(b.device.closed, true);
});

t.test('followLinuxBond: the netlink trigger re-reads at once; the poll runs behind it', async (t) => {
  const fs = new FakeSysfs();
  t.teardown(() => fs.remove());
  fs.bond('bond0', { mode: '802.3ad 4', slaves: ['eth0', 'eth1'], miimon: 0 });
  let fire: (() => void) | null = null;
  let stopped = 0;
  const { b, n, events } = await follow(t, fs, (c) => {
    fire = c;
    return () => {
      stopped++;
    };
  });
  t.equal(b.mode, '802.3ad');
  t.equal(b.activePort, null, '802.3ad has no active slave');
  t.equal(b.pollMs, 100, 'miimon 0: the 100 ms poll');
  fs.slave('eth1', false);
  t.ok(fire, 'the trigger was installed');
  fire!();
  t.same(events, ['down 2 eth1'], 'at once, no clock advance');
  fs.slave('eth1', true);
  n.fake.advance(100);
  t.same(events, ['down 2 eth1', 'up 2 eth1'], 'and the poll still runs');
  await b.close();
  t.equal(stopped, 1, 'the trigger stopped on close');
});
