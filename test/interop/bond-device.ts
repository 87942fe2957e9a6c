/**
 * What the CLI tools get as src/verbs/device.js under bond-open.ts: everything the real module
 * exports, and an openDevice that makes the bond for the device named by SOFTROCE_LAB_BOND.
 *
 * The bond: createBond(SOFTROCE_LAB_BOND_CONFIG, ports = the SOFTROCE_DEVICES entry's ports), its GID
 * table from the bond's one address (on the team device, as the kernel lists a bond's address). Its
 * ports' cables: the UDP links do not report carrier yet (the realbond branch adds netlink / sysfs
 * carrier events), so this fixture polls /sys/class/net/<port>/carrier every 10 ms and reports a
 * change on the link ('link' event, `up`), which is what teamd's ethtool watch follows. What the bond
 * did (port down/up, active port, QP moves) goes to SOFTROCE_LAB_BOND_LOG, one line each, with the time.
 *
 * In a guest, SOFTROCE_LAB_FOLLOW=<bond netdev> instead: a device named softroce_bond_<n> is the one
 * followLinuxBond makes over that Linux bond (SOFTROCE_DEVICES lists it at the bond's address).
 */
import { appendFileSync, readFileSync } from 'node:fs';
import { openDevice as realOpenDevice, getDeviceList, portsOf, type Device, type OpenDeviceOptions } from '../../src/verbs/device.js';
import { createBond } from '../../src/lag/bond.js';
import { followLinuxBond } from '../../src/lag/linux-bond.js';
import type { AddressSource } from '../../src/verbs/addr-watch.js';

export * from '../../src/verbs/device.js';

const log = (line: string): void => {
  const f = process.env['SOFTROCE_LAB_BOND_LOG'];
  if (f) appendFileSync(f, `${new Date().toISOString()} ${line}\n`);
};

function carrier(netdev: string): boolean {
  try {
    return readFileSync(`/sys/class/net/${netdev}/carrier`, 'utf8').trim() === '1';
  } catch {
    return false;
  }
}

/** SOFTROCE_LAB_FOLLOW=<bond netdev>: the device softroce_bond_<n> that follows that Linux bond (linux-bond.ts). */
async function openFollower(netdev: string, name: string): Promise<Device> {
  // The device list names the device itself: that name is the one to take, not to skip.
  const r = await followLinuxBond(netdev, {
    devicesInUse: getDeviceList()
      .map((d) => d.name)
      .filter((n) => n !== name),
  });
  if (!r.lag) throw new Error(`${netdev}: no LAG: ${r.reason}: ${r.detail}`);
  const b = r.bond;
  const slaves = (): string => b.state.slaves.map((s, i) => `${i + 1}=${s.name}${s.up ? '' : '(down)'}`).join(' ');
  log(
    `follow ${netdev} as ${b.name} mode ${b.mode} (${b.state.mode}) slaves ${slaves()} active ${b.state.activeSlave} miimon ${b.state.miimon} poll ${b.pollMs} ms`,
  );
  b.on('portDown', (e: { port: number; netdev: string }) => log(`portDown ${e.port} ${e.netdev}`));
  b.on('portUp', (e: { port: number; netdev: string }) => log(`portUp ${e.port} ${e.netdev}`));
  b.on('activePortChanged', (e: { from: number | null; to: number | null; toNetdev: string | null }) =>
    log(`activePortChanged ${e.from} -> ${e.to} (${e.toNetdev})`),
  );
  b.on('change', (e: { lag: boolean; mode: string }) => log(`change mode ${e.mode} lag ${e.lag}`));
  r.device.on('close', () => {
    const d = r.device.counters(1);
    log(
      `close ${b.name}: sent ${d['sent_pkts']} rcvd ${d['rcvd_pkts']} timeouts ${d['timeouts'] ?? 0} duplicate_request ${d['duplicate_request'] ?? 0}; bond ${JSON.stringify(b.stats)}`,
    );
  });
  return r.device;
}

export async function openDevice(o: OpenDeviceOptions = {}): Promise<Device> {
  const follow = process.env['SOFTROCE_LAB_FOLLOW'];
  if (follow !== undefined && o.name !== undefined && /^softroce_bond_\d+$/.test(o.name)) return openFollower(follow, o.name);
  const name = process.env['SOFTROCE_LAB_BOND'];
  if (name === undefined || o.name !== name) return realOpenDevice(o);
  const desc = getDeviceList().find((d) => d.name === name);
  if (desc === undefined) throw new Error(`${name}: not in SOFTROCE_DEVICES`);
  const ports = portsOf(desc);
  const cfg = JSON.parse(process.env['SOFTROCE_LAB_BOND_CONFIG'] ?? '{"runner":{"name":"activebackup"}}') as Record<string, unknown>;
  const team = typeof cfg['device'] === 'string' ? cfg['device'] : 'team0';
  cfg['device'] = team;
  cfg['ports'] ??= Object.fromEntries(ports.map((p) => [p.netdev, {}]));
  const address = ports[0]!.address;
  // The bond's address is the team device's (its ports have it too, only so that the kernel takes it there).
  const addresses: AddressSource = {
    list: () => [{ name: team, address, family: address.includes(':') ? 6 : 4 }],
    netdevs: { uppers: () => [], vlanRealDev: () => null, bondActiveSlave: () => null },
    watch: () => () => undefined,
  };
  const r = await createBond(cfg, { ports, addresses, devicesInUse: [] });
  if (!r.lag) throw new Error(`${name}: no LAG: ${r.reason}`);
  const { bond, device } = r;
  log(
    `open ${device.name} mode ${bond.mode} ports ${bond.ports.map((p) => `${p.lagPort}=${p.netdev}${p.up ? '' : '(down)'}`).join(' ')} active ${bond.activePort}`,
  );
  bond.on('portDown', (e: { port: number; netdev: string }) => log(`portDown ${e.port} ${e.netdev}`));
  bond.on('portUp', (e: { port: number; netdev: string }) => log(`portUp ${e.port} ${e.netdev}`));
  bond.on('activePortChanged', (e: { from: number | null; to: number | null }) => log(`activePortChanged ${e.from} -> ${e.to}`));
  const links = bond.ports.map((p) => ({ netdev: p.netdev, link: p.link as unknown as { up: boolean; emit(e: string, v: boolean): boolean } }));
  const poll = setInterval(() => {
    for (const l of links) {
      const c = carrier(l.netdev);
      if (c === l.link.up) continue;
      log(`carrier ${l.netdev} ${c ? 'up' : 'down'}`);
      l.link.up = c;
      l.link.emit('link', c);
    }
  }, 10);
  poll.unref();
  device.on('close', () => {
    clearInterval(poll);
    const c = bond.ports.map((p) => {
      const k = bond.portCounters(p.lagPort);
      return `port ${p.lagPort} sent ${k.sent_pkts} rx ${k.rx_datagrams}`;
    });
    const d = device.counters(1);
    c.push(
      `timeouts ${d['timeouts'] ?? 0} rcvd_seq_err ${d['rcvd_seq_err'] ?? 0} out_of_sequence ${d['out_of_sequence'] ?? 0} duplicate_request ${d['duplicate_request'] ?? 0}`,
    );
    log(`close ${device.name}: ${c.join(', ')}; qpMoves ${bond.stats.qpMoves} portDowns ${bond.stats.portDowns}`);
  });
  return device;
}
