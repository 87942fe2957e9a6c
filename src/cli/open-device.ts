/**
 * How the command-line tools find and open a device by name, bonds included: `ibv_devinfo -d
 * softroce_bond_0`, `ibv_rc_pingpong -d softroce_bond_0`, `ib_write_bw -d softroce_bond_0`. A bond
 * is not in the verbs device list (src/verbs must not know src/lag), so it is added here, at the cli
 * level: the bonds configured in the environment are listed after the list's devices, and opening one
 * runs createBond in the tool's process and starts its control socket (bond.listen) so that
 * `softroce teamdctl TEAMDEV ...` can query it while the tool runs; closing the device closes both.
 *
 * Where bonds are configured: SOFTROCE_BONDS, a JSON list (or "@FILE" naming a file holding one), else
 * the "bonds" list of the device config file (SOFTROCE_CONFIG, default ~/.config/softroce/devices.json).
 * Each entry: { "config": <teamd's JSON config>, "ports": [{ "netdev", "address", "udpPort"? }, ...],
 * "device"?: the RDMA device whose ports they are, "socket"?: the control socket's path,
 * "links"?: "memory" (in-process links that reach nothing: for tests and to try the tools without
 * netdevs), "log"?: a file the bond's events are appended to }; or { "follow": "<Linux bond netdev>",
 * "log"? }: the device follows that Linux bond (linux-bond.ts, the mlx5 model: the kernel's bond does
 * the failover). Entry i is softroce_bond_<i>, as mlx5 numbers mlx5_bond_<n>.
 *
 * The log: one line per event with its ISO time ("open ...", "portDown 1 eth1", "portUp ...",
 * "activePortChanged 1 -> 2", "change ...", and at close the per-port and RC retry counters), what
 * teamd writes to syslog at a failover, for a user (and the lab's LAG cases) to see when the bond
 * moved its traffic while a tool ran.
 */
import { appendFileSync, readFileSync } from 'node:fs';
import { homedir, networkInterfaces } from 'node:os';
import { join } from 'node:path';
import { getDeviceList, openDevice, type Device, type DeviceDescriptor } from '../verbs/device.js';
import { VerbsError } from '../verbs/errors.js';
import { MemNetwork } from '../roce/link/link.js';
import { RealScheduler } from '../roce/sched.js';
import { createBond, type Bond, type BondPortSpec } from '../lag/bond.js';
import { followLinuxBond, type LinuxBondFollower } from '../lag/linux-bond.js';

export interface BondEntry {
  /** softroce_bond_<i> */
  readonly name: string;
  readonly config: object;
  readonly ports: readonly BondPortSpec[];
  readonly device?: string;
  readonly socket?: string;
  readonly links?: 'memory';
  /** a Linux bond netdev to follow instead of config + ports */
  readonly follow?: string;
  /** where the bond's events are appended */
  readonly log?: string;
}

function bad(what: string): never {
  throw new VerbsError('EINVAL', 'ibv_get_device_list', what, 'SOFTROCE_BONDS');
}

function entry(e: unknown, i: number, from: string): BondEntry {
  const o = (typeof e === 'object' && e !== null ? e : {}) as Record<string, unknown>;
  if (o['log'] !== undefined && typeof o['log'] !== 'string') bad(`${from}: bond ${i}: "log" must be a path`);
  const log = typeof o['log'] === 'string' ? { log: o['log'] } : {};
  if (o['follow'] !== undefined) {
    if (typeof o['follow'] !== 'string' || o['follow'] === '') bad(`${from}: bond ${i}: "follow" must name a Linux bond netdev`);
    if (o['config'] !== undefined || o['ports'] !== undefined) bad(`${from}: bond ${i}: "follow" takes no "config" or "ports" (the Linux bond has them)`);
    return { name: `softroce_bond_${i}`, config: {}, ports: [], follow: o['follow'], ...log };
  }
  if (typeof o['config'] !== 'object' || o['config'] === null) bad(`${from}: bond ${i} needs a "config" (teamd's JSON config)`);
  const ports = o['ports'];
  if (!Array.isArray(ports) || ports.length === 0) bad(`${from}: bond ${i} needs "ports": [{ "netdev", "address" }, ...]`);
  for (const p of ports as unknown[]) {
    const q = p as Record<string, unknown> | null;
    if (typeof q !== 'object' || q === null || typeof q['netdev'] !== 'string' || typeof q['address'] !== 'string')
      bad(`${from}: bond ${i}: each port needs netdev and address`);
  }
  if (o['links'] !== undefined && o['links'] !== 'memory') bad(`${from}: bond ${i}: "links" can only be "memory"`);
  if (o['socket'] !== undefined && typeof o['socket'] !== 'string') bad(`${from}: bond ${i}: "socket" must be a path`);
  if (o['device'] !== undefined && typeof o['device'] !== 'string') bad(`${from}: bond ${i}: "device" must be a device name`);
  return {
    name: `softroce_bond_${i}`,
    config: o['config'],
    ports: ports as BondPortSpec[],
    ...(typeof o['device'] === 'string' ? { device: o['device'] } : {}),
    ...(typeof o['socket'] === 'string' ? { socket: o['socket'] } : {}),
    ...(o['links'] === 'memory' ? { links: 'memory' as const } : {}),
    ...log,
  };
}

/** The bonds configured in the environment (SOFTROCE_BONDS, else the config file's "bonds"), in order. */
export function bondEntries(env: NodeJS.ProcessEnv = process.env): BondEntry[] {
  const spec = env['SOFTROCE_BONDS'];
  let list: unknown;
  let from: string;
  if (spec !== undefined && spec !== '') {
    from = spec.startsWith('@') ? spec.slice(1) : 'SOFTROCE_BONDS';
    try {
      list = JSON.parse(spec.startsWith('@') ? readFileSync(spec.slice(1), 'utf8') : spec);
    } catch (e) {
      bad(`${from}: ${(e as Error).message}`);
    }
  } else {
    from = env['SOFTROCE_CONFIG'] ?? join(homedir(), '.config', 'softroce', 'devices.json');
    try {
      list = (JSON.parse(readFileSync(from, 'utf8')) as { bonds?: unknown }).bonds;
    } catch {
      return [];
    }
    if (list === undefined) return [];
  }
  if (!Array.isArray(list)) bad(`${from}: want a list of bonds`);
  return (list as unknown[]).map((e, i) => entry(e, i, from));
}

/** The device list the tools show: the verbs list, then the configured bonds (named, on their team device and address). */
export function cliDeviceList(env: NodeJS.ProcessEnv = process.env): DeviceDescriptor[] {
  const list = getDeviceList(env);
  for (const b of bondEntries(env)) {
    if (b.follow !== undefined) {
      // the Linux bond's own address, as followLinuxBond binds it
      const a = (networkInterfaces()[b.follow] ?? []).find((x) => x.family === 'IPv4');
      list.push({ name: b.name, netdev: b.follow, address: a?.address ?? '0.0.0.0' });
      continue;
    }
    const dev = (b.config as { device?: unknown }).device;
    list.push({ name: b.name, netdev: typeof dev === 'string' ? dev : 'team0', address: b.ports[0]!.address });
  }
  return list;
}

export interface OpenCliDeviceOptions {
  env?: NodeJS.ProcessEnv;
  /** a bond: start its control socket (default true) */
  listen?: boolean;
  /** a bond: in-process links whatever its entry says (ibv_devinfo describing a bond another process holds) */
  memory?: boolean;
}

/**
 * Opens device `name` as a tool does: a configured bond is made with createBond (EINVAL when its
 * config does not make a LAG device: the reason) and its control socket started; anything else is
 * openDevice({ name }).
 */
export async function openCliDevice(name: string, o: OpenCliDeviceOptions = {}): Promise<Device> {
  const env = o.env ?? process.env;
  const entries = bondEntries(env);
  const i = entries.findIndex((b) => b.name === name);
  if (i < 0) return openDevice({ name });
  const b = entries[i]!;
  if (b.follow !== undefined) {
    const r = await followLinuxBond(b.follow, { devicesInUse: entries.slice(0, i).map((x) => x.name) });
    if (!r.lag) throw new VerbsError('EINVAL', 'ibv_open_device', `${name}: ${b.follow} makes no LAG device (${r.reason}: ${r.detail})`, 'follow');
    if (b.log !== undefined) logFollower(r.bond, r.device, b.log);
    return r.device;
  }
  const memory = o.memory === true || b.links === 'memory';
  const sched = new RealScheduler();
  const net = memory ? new MemNetwork(sched) : null;
  const r = await createBond(b.config, {
    ports: b.ports,
    ...(b.device !== undefined ? { device: b.device } : {}),
    ...(net !== null ? { links: b.ports.map((p, k) => net.attach(p.address, p.udpPort ?? 4791, `bond${i}-port${k}`)), scheduler: sched } : {}),
    // the earlier entries' names are taken: this one is softroce_bond_<i>
    devicesInUse: entries.slice(0, i).map((x) => x.name),
  });
  if (!r.lag) {
    for (const d of r.devices) await d.close();
    throw new VerbsError(
      'EINVAL',
      'ibv_open_device',
      `${name}: the config makes no LAG device (${r.reason}: ${r.refusals.map((x) => x.detail).join('; ')})`,
      'config',
    );
  }
  if (b.log !== undefined) logBond(r.bond, r.device, b.log);
  if (o.listen !== false) {
    try {
      await r.bond.listen(b.socket);
    } catch (e) {
      await r.bond.close();
      throw e;
    }
  }
  return r.device;
}

/** One line per event, appended with its time; a log that cannot be written is not the tool's failure. */
function logger(path: string): (line: string) => void {
  return (line) => {
    try {
      appendFileSync(path, `${new Date().toISOString()} ${line}\n`);
    } catch {
      // (the tool runs on without its log)
    }
  };
}

/** A bond's events while a tool runs, and what it counted at close (per physical port, RC retries). */
function logBond(bond: Bond, device: Device, path: string): void {
  const log = logger(path);
  const ports = (): string => bond.ports.map((p) => `${p.lagPort}=${p.netdev}${p.up ? '' : '(down)'}`).join(' ');
  log(`open ${device.name} mode ${bond.mode} ports ${ports()} active ${String(bond.activePort)}`);
  bond.on('portDown', (e: { port: number; netdev: string }) => log(`portDown ${e.port} ${e.netdev}`));
  bond.on('portUp', (e: { port: number; netdev: string }) => log(`portUp ${e.port} ${e.netdev}`));
  bond.on('activePortChanged', (e: { from: number | null; to: number | null }) => log(`activePortChanged ${String(e.from)} -> ${String(e.to)}`));
  bond.on('change', (e: { mode: string }) => log(`change mode ${e.mode}`));
  device.once('close', () => {
    const per = bond.ports.map((p) => {
      const k = bond.portCounters(p.lagPort);
      return `port ${p.lagPort} sent ${k.sent_pkts} rx ${k.rx_datagrams}`;
    });
    log(`close ${device.name}: ${per.join(', ')}; ${retries(device)}; qpMoves ${bond.stats.qpMoves} portDowns ${bond.stats.portDowns}`);
  });
}

/** A followed Linux bond's events (linux-bond.ts), the same way. */
function logFollower(bond: LinuxBondFollower, device: Device, path: string): void {
  const log = logger(path);
  const st = bond.state;
  const slaves = st.slaves.map((s, i) => `${i + 1}=${s.name}${s.up ? '' : '(down)'}`).join(' ');
  log(`follow ${bond.netdev} as ${device.name} mode ${bond.mode} (${st.mode}) slaves ${slaves} active ${String(st.activeSlave)} miimon ${st.miimon}`);
  bond.on('portDown', (e: { port: number; netdev: string }) => log(`portDown ${e.port} ${e.netdev}`));
  bond.on('portUp', (e: { port: number; netdev: string }) => log(`portUp ${e.port} ${e.netdev}`));
  bond.on('activePortChanged', (e: { from: number | null; to: number | null; toNetdev: string | null }) =>
    log(`activePortChanged ${String(e.from)} -> ${String(e.to)} (${String(e.toNetdev)})`),
  );
  bond.on('change', (e: { mode: string; lag: boolean }) => log(`change mode ${e.mode} lag ${String(e.lag)}`));
  device.once('close', () => log(`close ${device.name}: ${retries(device)}; ${JSON.stringify(bond.stats)}`));
}

function retries(device: Device): string {
  const d = device.counters(1);
  const n = (k: string): number => d[k] ?? 0;
  return `sent ${n('sent_pkts')} rcvd ${n('rcvd_pkts')} timeouts ${n('timeouts')} rcvd_seq_err ${n('rcvd_seq_err')} out_of_sequence ${n('out_of_sequence')} duplicate_request ${n('duplicate_request')}`;
}
