/**
 * teamd's JSON config: every key, every default, the write-back of `teamdctl DEV config dump [actual]`,
 * typed errors with the path. The expected dumps are derived from libteam's code (jpirko/libteam at
 * 337125ce, 2024-05-20); each write-back cites the line that does it.
 */
import t from 'tap';
import {
  TEAMD_DEFAULTS,
  TeamConfigError,
  dumpConfig,
  effectiveConfig,
  generateTeamDevname,
  parseTeamConfig,
  portLinkWatches,
  type TeamConfig,
} from '../../src/lag/team-config.js';
import { dumpJson, formatReal, parseJson } from '../../src/lag/jansson.js';

interface Asserts {
  ok(v: unknown, m: string): unknown;
  equal(a: unknown, b: unknown, m: string): unknown;
  match(a: unknown, b: RegExp, m: string): unknown;
  fail(m: string): unknown;
}

function refused(t: Asserts, cfg: string | object, path: string, reason: RegExp): void {
  try {
    parseTeamConfig(cfg);
    t.fail(`accepted, expected a TeamConfigError at ${path}`);
  } catch (e) {
    t.ok(e instanceof TeamConfigError, `${path}: a TeamConfigError`);
    t.equal((e as TeamConfigError).path, path, `path ${path}`);
    t.match((e as TeamConfigError).reason, reason, `${path}: ${(e as Error).message}`);
  }
}

t.test('every key of each runner is read', (t) => {
  const lacp = parseTeamConfig({
    device: 'team7',
    debug_level: 2,
    hwaddr: '02:00:00:00:00:01',
    runner: {
      name: 'lacp',
      active: false,
      fast_rate: true,
      sys_prio: 100,
      min_ports: 2,
      agg_select_policy: 'port_config',
      tx_hash: ['eth', 'vlan', 'ipv4', 'ipv6', 'ip', 'l3', 'l4', 'tcp', 'udp', 'sctp'],
      tx_balancer: { name: 'basic', balancing_interval: 20 },
    },
    notify_peers: { count: 3, interval: 40 },
    mcast_rejoin: { count: 2, interval: 50 },
    link_watch: { name: 'ethtool', delay_up: 2500, delay_down: 1000 },
    link_watch_policy: 'all',
    ports: {
      eth1: { prio: -10, sticky: true, lacp_prio: 10, lacp_key: 7, queue_id: 3 },
      eth2: {
        prio: 100,
        link_watch: {
          name: 'arp_ping',
          interval: 100,
          init_wait: 5,
          missed_max: 30,
          source_host: '192.168.23.2',
          target_host: '192.168.23.1',
          validate_active: true,
          validate_inactive: true,
          send_always: true,
          vlanid: 100,
        },
      },
    },
  });
  t.equal(lacp.device, 'team7');
  t.equal(lacp.debugLevel, 2);
  t.equal(lacp.hwaddr, '02:00:00:00:00:01');
  t.same(lacp.runner, {
    name: 'lacp',
    active: false,
    fastRate: true,
    sysPrio: 100,
    minPorts: 2,
    aggSelectPolicy: 'port_config',
    txHash: ['eth', 'vlan', 'ipv4', 'ipv6', 'ip', 'l3', 'l4', 'tcp', 'udp', 'sctp'],
    txBalancer: { name: 'basic', balancingInterval: 20 },
  });
  t.same(lacp.notifyPeers, { count: 3, interval: 40 });
  t.same(lacp.mcastRejoin, { count: 2, interval: 50 });
  t.same(lacp.linkWatches, [{ name: 'ethtool', delayUp: 2500, delayDown: 1000 }]);
  t.equal(lacp.linkWatchPolicy, 'all');
  t.same(lacp.ports.get('eth1'), {
    name: 'eth1',
    prio: -10,
    sticky: true,
    lacpPrio: 10,
    lacpKey: 7,
    queueId: 3,
    linkWatches: undefined,
  });
  t.same(lacp.ports.get('eth2')?.linkWatches, [
    {
      name: 'arp_ping',
      interval: 100,
      initWait: 5,
      missedMax: 30,
      sourceHost: '192.168.23.2',
      targetHost: '192.168.23.1',
      validateActive: true,
      validateInactive: true,
      sendAlways: true,
      vlanId: 100,
    },
  ]);
  t.same(lacp.warnings, [], 'no warnings for a config of known keys');

  const ab = parseTeamConfig('{"runner": {"name": "activebackup", "hwaddr_policy": "by_active"}}');
  t.same(ab.runner, { name: 'activebackup', hwaddrPolicy: 'by_active' });
  t.same(parseTeamConfig({ runner: { name: 'activebackup', hwaddr_policy: 'only_active' } }).runner, {
    name: 'activebackup',
    hwaddrPolicy: 'only_active',
  });
  const lb = parseTeamConfig({ runner: { name: 'loadbalance', tx_hash: ['l3', 'l4'], tx_balancer: { name: 'basic' } } });
  t.same(lb.runner, { name: 'loadbalance', txHash: ['l3', 'l4'], txBalancer: { name: 'basic', balancingInterval: 50 } });
  for (const name of ['roundrobin', 'broadcast', 'random']) t.same(parseTeamConfig({ runner: { name } }).runner, { name }, name);

  const nsna = parseTeamConfig({
    link_watch: { name: 'nsna_ping', interval: 200, init_wait: 10, missed_max: 5, target_host: 'fe80::1' },
  });
  t.same(nsna.linkWatches, [{ name: 'nsna_ping', interval: 200, initWait: 10, missedMax: 5, targetHost: 'fe80::1' }]);
  t.same(parseTeamConfig({ link_watch: { name: 'tipc', tipc_bearer: 'eth:eth1' } }).linkWatches, [{ name: 'tipc', tipcBearer: 'eth:eth1' }]);
  t.end();
});

t.test("teamd's defaults", (t) => {
  const empty = parseTeamConfig('{}');
  t.equal(empty.device, undefined, 'no device: teamd generates team%d');
  t.equal(empty.runner.name, 'roundrobin', 'teamd.c TEAMD_DEFAULT_RUNNER_NAME');
  t.same(empty.notifyPeers, { count: 0, interval: 0 });
  t.same(empty.mcastRejoin, { count: 0, interval: 0 });
  t.same(empty.linkWatches, []);
  t.equal(empty.linkWatchPolicy, 'any');
  t.equal(empty.debugLevel, 0);
  t.equal(empty.hwaddr, undefined);
  t.equal(empty.ports.size, 0);

  const ab = parseTeamConfig({ runner: { name: 'activebackup' }, ports: { eth1: {} } });
  t.same(ab.runner, { name: 'activebackup', hwaddrPolicy: 'same_all' });
  t.same(ab.notifyPeers, { count: 1, interval: 0 }, 'activebackup: notify_peers.count 1');
  t.same(ab.mcastRejoin, { count: 1, interval: 0 }, 'activebackup: mcast_rejoin.count 1');
  t.same(ab.ports.get('eth1'), {
    name: 'eth1',
    prio: 0,
    sticky: false,
    lacpPrio: 255,
    lacpKey: 0,
    queueId: undefined,
    linkWatches: undefined,
  });
  t.same(portLinkWatches(ab, 'eth1'), [{ name: 'ethtool', delayUp: 0, delayDown: 0 }], 'implicit ethtool watch');

  const lb = parseTeamConfig({ runner: { name: 'loadbalance' } });
  t.same(lb.runner, { name: 'loadbalance', txHash: ['eth', 'ipv4', 'ipv6'], txBalancer: { name: undefined, balancingInterval: 50 } });
  const lacp = parseTeamConfig({ runner: { name: 'lacp' } });
  t.same(lacp.runner, {
    name: 'lacp',
    active: true,
    fastRate: false,
    sysPrio: 65535,
    minPorts: 1,
    aggSelectPolicy: 'lacp_prio',
    txHash: ['eth', 'ipv4', 'ipv6'],
    txBalancer: { name: undefined, balancingInterval: 50 },
  });
  t.same(lacp.notifyPeers, { count: 0, interval: 0 }, 'not activebackup: 0');

  const lw = parseTeamConfig({
    link_watch: [{ name: 'ethtool' }, { name: 'arp_ping', target_host: '10.0.0.1' }, { name: 'nsna_ping', target_host: '::1' }],
  });
  t.same(lw.linkWatches, [
    { name: 'ethtool', delayUp: 0, delayDown: 0 },
    {
      name: 'arp_ping',
      interval: 1000,
      initWait: 0,
      missedMax: 3,
      sourceHost: '0.0.0.0',
      targetHost: '10.0.0.1',
      validateActive: false,
      validateInactive: false,
      sendAlways: false,
      vlanId: undefined,
    },
    { name: 'nsna_ping', interval: 1000, initWait: 0, missedMax: 3, targetHost: '::1' },
  ]);
  t.equal(TEAMD_DEFAULTS.lacpMinPortsMax, 1024, 'teamd_runner_lacp.c LACP_CFG_DFLT_MIN_PORTS_MAX (the man page says 255)');
  t.equal(generateTeamDevname(), 'team0');
  t.equal(generateTeamDevname(['team0', 'team2']), 'team1');
  t.end();
});

// What teamd writes into its config tree, each with the line (libteam 337125ce) that does it:
//   teamd.c:993                  runner.name = "roundrobin" when absent (teamd_runner_init)
//   teamd.c:1648                 device = the generated team%d when absent (teamd_get_devname)
//   teamd_runner_activebackup.c:646, 653   notify_peers.count / mcast_rejoin.count = 1 when absent (ab_init)
//   teamd_hash_func.c:158, 172   runner.tx_hash = ["eth","ipv4","ipv6"] when absent (loadbalance, lacp)
//   teamd_link_watch.c:392       ports.IF.link_watch.name = "ethtool" for a port with no watch at all
// and teamd_config.c:109-151 (teamd_config_actual_dump) keeps only the present ports, {} for unconfigured ones;
// teamd_json.h:25 and utils/teamdctl.c:92 dump with JSON_INDENT(4) | JSON_ENSURE_ASCII | JSON_SORT_KEYS.
t.test('write-back of each runner, as `teamdctl DEV config dump actual` prints it', (t) => {
  const ports = { eth1: {}, eth2: {} };
  const ethtool = { link_watch: { name: 'ethtool' } };
  const cases: [string, object, object][] = [
    ['no runner', { ports }, { device: 'team0', runner: { name: 'roundrobin' }, ports: { eth1: ethtool, eth2: ethtool } }],
    [
      'roundrobin',
      { device: 'team1', runner: { name: 'roundrobin' }, ports },
      { device: 'team1', runner: { name: 'roundrobin' }, ports: { eth1: ethtool, eth2: ethtool } },
    ],
    ['broadcast', { runner: { name: 'broadcast' } }, { device: 'team0', runner: { name: 'broadcast' } }],
    ['random', { runner: { name: 'random' } }, { device: 'team0', runner: { name: 'random' } }],
    [
      'activebackup',
      { device: 'team0', runner: { name: 'activebackup' }, ports },
      {
        device: 'team0',
        runner: { name: 'activebackup' },
        notify_peers: { count: 1 },
        mcast_rejoin: { count: 1 },
        ports: { eth1: ethtool, eth2: ethtool },
      },
    ],
    [
      'activebackup keeps given counts, adds only the missing one',
      { runner: { name: 'activebackup' }, notify_peers: { count: 0, interval: 10 }, mcast_rejoin: { interval: 5 } },
      {
        device: 'team0',
        runner: { name: 'activebackup' },
        notify_peers: { count: 0, interval: 10 },
        mcast_rejoin: { count: 1, interval: 5 },
      },
    ],
    [
      'loadbalance',
      { device: 'team0', runner: { name: 'loadbalance' }, ports },
      { device: 'team0', runner: { name: 'loadbalance', tx_hash: ['eth', 'ipv4', 'ipv6'] }, ports: { eth1: ethtool, eth2: ethtool } },
    ],
    [
      'loadbalance with its own tx_hash (unknown fragment kept, as teamd dumps its tree)',
      { runner: { name: 'loadbalance', tx_hash: ['l4', 'bogus'] } },
      { device: 'team0', runner: { name: 'loadbalance', tx_hash: ['l4', 'bogus'] } },
    ],
    [
      'lacp',
      { device: 'team0', runner: { name: 'lacp', active: true, fast_rate: true }, link_watch: { name: 'ethtool' }, ports },
      {
        device: 'team0',
        runner: { name: 'lacp', active: true, fast_rate: true, tx_hash: ['eth', 'ipv4', 'ipv6'] },
        link_watch: { name: 'ethtool' },
        ports: { eth1: {}, eth2: {} },
      },
    ],
  ];
  for (const [what, cfg, want] of cases) t.same(effectiveConfig(parseTeamConfig(cfg)), want, what);

  // The exact text, from teamd.conf(5)'s second example
  const cfg = parseTeamConfig(
    '{"device": "team0", "runner": {"name": "activebackup"}, "link_watch": {"name": "ethtool"},' +
      ' "ports": {"eth1": {"prio": -10, "sticky": true}, "eth2": {"prio": 100}}}',
  );
  t.equal(
    dumpConfig(cfg, { actual: true }),
    `{
    "device": "team0",
    "link_watch": {
        "name": "ethtool"
    },
    "mcast_rejoin": {
        "count": 1
    },
    "notify_peers": {
        "count": 1
    },
    "ports": {
        "eth1": {
            "prio": -10,
            "sticky": true
        },
        "eth2": {
            "prio": 100
        }
    },
    "runner": {
        "name": "activebackup"
    }
}
`,
  );
  t.equal(
    dumpConfig(cfg, { oneline: true, noports: true }),
    '{"device": "team0", "link_watch": {"name": "ethtool"}, "mcast_rejoin": {"count": 1}, "notify_peers": {"count": 1}, "runner": {"name": "activebackup"}}\n',
    '--oneline: JSON_INDENT(0); noports drops "ports"',
  );
  t.end();
});

t.test('actual: only present ports; plain dump: the whole tree', (t) => {
  const cfg = parseTeamConfig({ runner: { name: 'roundrobin' }, ports: { eth1: { prio: 5 }, eth2: {} } });
  t.same(effectiveConfig(cfg, { presentPorts: ['eth1', 'eth3'], device: 'tm0' }), {
    device: 'tm0',
    runner: { name: 'roundrobin' },
    ports: { eth1: { prio: 5, link_watch: { name: 'ethtool' } }, eth3: { link_watch: { name: 'ethtool' } } },
  });
  const plain = parseJson(dumpConfig(cfg, { presentPorts: ['eth1'] }));
  t.same(
    dumpJson(plain, 0),
    '{"device": "team0", "ports": {"eth1": {"link_watch": {"name": "ethtool"}, "prio": 5}, "eth2": {}}, "runner": {"name": "roundrobin"}}',
    'config dump keeps eth2 (configured, not present) without a written-back watch',
  );
  t.equal(effectiveConfig(cfg, { netdevsInUse: ['team0'] })['device'], 'team1', 'the first free team%d');
  t.end();
});

t.test('keys teamd does not know: kept in the dump, warned about', (t) => {
  const cfg = parseTeamConfig({ runer: { name: 'lacp' }, runner: { name: 'activebackup', tx_hash: ['eth'] }, ports: { eth1: { prioo: 1 } } });
  t.same(
    cfg.warnings.map((w) => w.path),
    ['runer', 'runner.tx_hash', 'ports.eth1.prioo'],
  );
  t.equal(cfg.runner.name, 'activebackup');
  const eff = effectiveConfig(cfg);
  t.same(eff['runer'], { name: 'lacp' });
  t.same((eff['runner'] as Record<string, unknown>)['tx_hash'], ['eth'], 'not read by activebackup, still dumped');
  const w = parseTeamConfig({ runner: { name: 'loadbalance', tx_hash: ['eth', 'nope'], tx_balancer: { name: 'fancy' } } });
  t.same(w.runner, { name: 'loadbalance', txHash: ['eth'], txBalancer: { name: undefined, balancingInterval: 50 } });
  t.same(
    w.warnings.map((x) => x.path),
    ['runner.tx_hash[1]', 'runner.tx_balancer.name'],
    'teamd skips an unknown frag and disables balancing for a name other than basic',
  );
  t.end();
});

t.test('link watch lists, per port and global', (t) => {
  const cfg = parseTeamConfig({
    runner: { name: 'activebackup' },
    link_watch: [
      { name: 'arp_ping', interval: 100, missed_max: 30, target_host: '192.168.23.1' },
      { name: 'arp_ping', interval: 50, missed_max: 20, target_host: '192.168.24.1' },
    ],
    ports: { eth1: { link_watch: { name: 'ethtool', delay_up: 10 } }, eth2: {} },
  });
  t.same(
    portLinkWatches(cfg, 'eth1').map((w) => [w.name, 'interval' in w ? w.interval : (w as { delayUp: number }).delayUp]),
    [
      ['ethtool', 10],
      ['arp_ping', 100],
      ['arp_ping', 50],
    ],
    "teamd_link_watch.c: the port's own watch first, then the global ones (both run)",
  );
  t.same(
    portLinkWatches(cfg, 'eth2').map((w) => w.name),
    ['arp_ping', 'arp_ping'],
  );
  const eff = effectiveConfig(cfg) as { ports: Record<string, unknown> };
  t.same(eff.ports, { eth1: { link_watch: { name: 'ethtool', delay_up: 10 } }, eth2: {} }, 'no implicit watch written');

  const own = parseTeamConfig({ ports: { eth1: { link_watch: [{ name: 'nsna_ping', target_host: 'fe80::2' }] }, eth2: {} } });
  t.same(
    portLinkWatches(own, 'eth1').map((w) => w.name),
    ['nsna_ping'],
  );
  t.same(
    portLinkWatches(own, 'eth2').map((w) => w.name),
    ['ethtool'],
  );
  t.same((effectiveConfig(own) as { ports: unknown }).ports, {
    eth1: { link_watch: [{ name: 'nsna_ping', target_host: 'fe80::2' }] },
    eth2: { link_watch: { name: 'ethtool' } },
  });
  t.end();
});

t.test('errors name the path; wrong types and ranges refused', (t) => {
  refused(t, '[]', '', /expected an object, got an array/);
  refused(t, '{"a": 1, "a": 2}', '', /duplicate object key "a"/);
  refused(t, '{"ports": {"eth1": {"prio": 1,}}}', 'ports.eth1', /string or '\}' expected/);
  refused(t, '{"ports": {"eth1": {"prio": 1.0}}}', 'ports.eth1.prio', /expected an integer, got a real/);
  refused(t, { device: 5 }, 'device', /expected a string/);
  refused(t, { device: 'a-very-long-team-name' }, 'device', /longer than 15 bytes/);
  refused(t, { hwaddr: '02:00:00:00:01' }, 'hwaddr', /6-byte/);
  refused(t, { debug_level: -1 }, 'debug_level', /out of range/);
  refused(t, { runner: 'lacp' }, 'runner', /expected an object, got a string/);
  refused(t, { runner: { name: 'xor' } }, 'runner.name', /no runner named "xor"/);
  refused(t, { runner: { name: 'activebackup', hwaddr_policy: 'by_mac' } }, 'runner.hwaddr_policy', /unknown hwaddr_policy/);
  refused(t, { runner: { name: 'loadbalance', tx_hash: 'eth' } }, 'runner.tx_hash', /expected an array/);
  refused(t, { runner: { name: 'lacp', tx_hash: ['eth', 'ipv4', 4] } }, 'runner.tx_hash[2]', /expected a string, got an integer/);
  refused(t, { runner: { name: 'loadbalance', tx_balancer: { balancing_interval: -1 } } }, 'runner.tx_balancer.balancing_interval', /out of range/);
  refused(t, { runner: { name: 'lacp', active: 'yes' } }, 'runner.active', /expected true or false, got a string/);
  refused(t, { runner: { name: 'lacp', fast_rate: 1 } }, 'runner.fast_rate', /expected true or false/);
  refused(t, { runner: { name: 'lacp', sys_prio: 65536 } }, 'runner.sys_prio', /65536 is out of range \(0\.\.65535\)/);
  refused(t, { runner: { name: 'lacp', min_ports: 0 } }, 'runner.min_ports', /out of range \(1\.\.1024\)/);
  refused(t, { runner: { name: 'lacp', min_ports: 1025 } }, 'runner.min_ports', /out of range/);
  refused(t, { runner: { name: 'lacp', agg_select_policy: 'best' } }, 'runner.agg_select_policy', /unknown agg_select_policy "best"/);
  refused(t, { notify_peers: { count: -1 } }, 'notify_peers.count', /must not be negative/);
  refused(t, { mcast_rejoin: { interval: -5 } }, 'mcast_rejoin.interval', /must not be negative/);
  refused(t, { link_watch_policy: 'most' }, 'link_watch_policy', /unknown link_watch_policy "most"/);
  refused(t, { link_watch: {} }, 'link_watch.name', /needs a name/);
  refused(t, { link_watch: { name: 'miimon' } }, 'link_watch.name', /no link watch named "miimon"/);
  refused(t, { link_watch: [{ name: 'ethtool' }, { name: 'ethtool', delay_up: -1 }] }, 'link_watch[1].delay_up', /must not be negative/);
  refused(t, { link_watch: { name: 'arp_ping' } }, 'link_watch.target_host', /needs a target_host/);
  refused(t, { link_watch: { name: 'arp_ping', target_host: 'h', vlanid: 4096 } }, 'link_watch.vlanid', /out of range \(0\.\.4095\)/);
  refused(t, { link_watch: { name: 'arp_ping', target_host: 'h', interval: -1 } }, 'link_watch.interval', /must not be negative/);
  refused(t, { link_watch: { name: 'arp_ping', target_host: 'h', send_always: 'true' } }, 'link_watch.send_always', /true or false/);
  refused(t, { link_watch: { name: 'nsna_ping', target_host: 'h', missed_max: -1 } }, 'link_watch.missed_max', /must not be negative/);
  refused(t, { link_watch: { name: 'tipc' } }, 'link_watch.tipc_bearer', /needs a tipc_bearer/);
  refused(t, { ports: [] }, 'ports', /expected an object/);
  refused(t, { ports: { eth1: true } }, 'ports.eth1', /expected an object/);
  refused(t, { ports: { 'eth/1': {} } }, 'ports.eth/1', /'\/'/);
  refused(t, { ports: { eth1: { sticky: 1 } } }, 'ports.eth1.sticky', /true or false/);
  refused(t, { ports: { eth1: { lacp_prio: 70000 } } }, 'ports.eth1.lacp_prio', /0\.\.65535/);
  refused(t, { ports: { eth1: { lacp_key: -1 } } }, 'ports.eth1.lacp_key', /0\.\.65535/);
  refused(t, { ports: { eth1: { queue_id: -1 } } }, 'ports.eth1.queue_id', /must not be negative/);
  refused(t, { ports: { eth1: { link_watch: [{ name: 'arp_ping', target_host: 'x' }, { name: 'nope' }] } } }, 'ports.eth1.link_watch[1].name', /no link watch/);
  refused(t, { ports: { eth1: { link_watch: [] } } }, 'ports.eth1.link_watch', /no watch for the port/);
  refused(t, { device: undefined, x: Number.NaN }, 'x', /not a JSON number/);
  t.end();
});

t.test('nothing half-applied, nothing shared', (t) => {
  const input = { runner: { name: 'activebackup' }, ports: { eth1: {} } };
  const before = JSON.stringify(input);
  const cfg: TeamConfig = parseTeamConfig(input);
  effectiveConfig(cfg);
  dumpConfig(cfg, { actual: true });
  t.equal(JSON.stringify(input), before, 'the caller object is not written back into');
  t.same(effectiveConfig(cfg), effectiveConfig(cfg), 'the write-back does not accumulate');
  t.ok(Object.isFrozen(cfg) && Object.isFrozen(cfg.runner) && Object.isFrozen(cfg.ports.get('eth1')), 'frozen');
  const bad = { runner: { name: 'lacp' }, ports: { eth1: { lacp_prio: 1 }, eth2: { lacp_prio: -1 } } };
  const badBefore = JSON.stringify(bad);
  t.throws(() => parseTeamConfig(bad), TeamConfigError);
  t.equal(JSON.stringify(bad), badBefore);
  t.end();
});

t.test("jansson's text: reals, escapes, key order", (t) => {
  t.equal(formatReal(2), '2.0');
  t.equal(formatReal(0.1), '0.10000000000000001');
  t.equal(formatReal(1e20), '1e20');
  t.equal(formatReal(1e-5), '1.0000000000000001e-5');
  t.equal(formatReal(-0.5), '-0.5');
  const cfg = parseTeamConfig('{"x": 1.0, "é": "a\\"b\\u0001\\n\\u00e9\\ud83d\\ude00\\/", "B": [], "a": {}}');
  t.equal(
    dumpConfig(cfg, { oneline: true, device: 't0' }),
    '{"B": [], "a": {}, "device": "t0", "runner": {"name": "roundrobin"}, "x": 1.0, "\\u00E9": "a\\"b\\u0001\\n\\u00E9\\uD83D\\uDE00/"}\n',
    'sorted by bytes, ENSURE_ASCII with upper-case hex, a real stays a real',
  );
  refused(t, '{"a": "\\ud800"}', 'a', /lone surrogate/);
  refused(t, '{"a": 12345678901234567890}', 'a', /integer too big/);
  refused(t, '"x"', '', /'\[' or '\{' expected/);
  refused(t, '{} x', '', /end of file expected/);
  t.end();
});
