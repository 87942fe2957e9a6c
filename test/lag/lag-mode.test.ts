/**
 * The LAG-mode decision of the Mellanox manual / mlx5: exactly two ports of one device and a runner that
 * maps to active-backup, hash or 802.3ad; the bond device's name and GID table size.
 */
import t from 'tap';
import { parseTeamConfig, TeamConfigError } from '../../src/lag/team-config.js';
import { bondDeviceName, bondGidTableSize, lagMode, RUNNER_LAG_MODE, type LagPortRef } from '../../src/lag/lag-mode.js';

const P: Record<string, LagPortRef> = {
  eth1: { name: 'eth1', device: 'softroce0', port: 1 },
  eth2: { name: 'eth2', device: 'softroce0', port: 2 },
  eth3: { name: 'eth3', device: 'softroce1', port: 1 },
  eth4: { name: 'eth4', device: 'softroce0', port: 3 },
  eth1b: { name: 'eth1b', device: 'softroce0', port: 1 },
};
const all = Object.values(P);

function cfg(runner: string, ports: string[]) {
  return parseTeamConfig({ runner: { name: runner }, ports: Object.fromEntries(ports.map((p) => [p, {}])) });
}

t.test('each runner on two ports of one device', (t) => {
  const want: [string, string | undefined][] = [
    ['activebackup', 'active-backup'],
    ['loadbalance', 'hash'],
    ['lacp', '802.3ad'],
    ['roundrobin', undefined],
    ['broadcast', undefined],
    ['random', undefined],
  ];
  for (const [runner, mode] of want) {
    const d = lagMode(cfg(runner, ['eth2', 'eth1']), all);
    if (mode === undefined) {
      t.same(d.lag ? 'lag' : d.reason, 'unsupported-runner', `${runner}: no LAG`);
      t.equal(d.lag ? 0 : d.refusals.length, 1, `${runner}: only the runner is wrong`);
    } else {
      t.ok(d.lag, `${runner}: LAG`);
      if (d.lag) {
        t.equal(d.mode, mode, `${runner} -> ${mode}`);
        t.equal(d.device, 'softroce0');
        t.same(
          d.ports.map((p) => p.port),
          [1, 2],
          'ports by port number',
        );
      }
    }
    t.equal(RUNNER_LAG_MODE[runner as keyof typeof RUNNER_LAG_MODE], mode);
  }
  t.same(lagMode(parseTeamConfig({ ports: { eth1: {}, eth2: {} } }), all).lag ? 'lag' : 'no', 'no', 'the default runner (roundrobin) is no LAG');
  t.end();
});

t.test('port sets', (t) => {
  const reason = (runner: string, ports: string[]) => {
    const d = lagMode(cfg(runner, ports), all);
    return d.lag ? 'lag' : d.refusals.map((r) => r.reason).join(',');
  };
  t.equal(reason('activebackup', []), 'port-count', 'no ports');
  t.equal(reason('activebackup', ['eth1']), 'port-count', 'one port');
  t.equal(reason('loadbalance', ['eth1', 'eth2', 'eth4']), 'port-count', 'a third port of the same device');
  t.equal(reason('lacp', ['eth1', 'eth3']), 'ports-of-different-devices');
  t.equal(reason('lacp', ['eth1', 'eth1b']), 'port-count', 'two interfaces on the same device port');
  t.equal(reason('roundrobin', ['eth1', 'eth2', 'eth3']), 'port-count,ports-of-different-devices,unsupported-runner');
  t.equal(reason('activebackup', ['eth4', 'eth2']), 'lag', 'any two ports of one device (2 and 3)');
  const d = lagMode(cfg('roundrobin', ['eth1', 'eth3']), all);
  t.equal(d.lag ? '' : d.reason, 'ports-of-different-devices', 'the first refusal: devices before the runner');
  t.throws(() => lagMode(cfg('activebackup', ['eth1', 'eth9']), all), TeamConfigError, 'a port no device has');
  t.throws(() => lagMode(cfg('activebackup', ['eth1', 'eth2']), [P.eth1!, { ...P.eth2!, port: 0 }]), TeamConfigError);
  t.end();
});

t.test('bond device name and GID table', (t) => {
  t.equal(bondDeviceName('softroce', []), 'softroce_bond_0');
  t.equal(bondDeviceName('softroce', ['softroce_bond_0', 'softroce_bond_2', 'softroce0']), 'softroce_bond_1');
  t.equal(bondDeviceName('mlx5', ['softroce_bond_0']), 'mlx5_bond_0');
  t.throws(() => bondDeviceName('a b', []), TypeError);
  t.equal(bondGidTableSize(128), 64, 'half the per-port table');
  t.equal(bondGidTableSize(3), 1);
  t.throws(() => bondGidTableSize(1), RangeError);
  t.end();
});
