/**
 * Following a Linux bond (issue 14 item 5): the mlx5 model where the host has the bonding driver. mlx5's
 * LAG tracker (mlx5/core/lag: mlx5_lag_netdev_event) does not run a LAG of its own: it watches the bond
 * netdev's NETDEV_CHANGEUPPER / CHANGELOWERSTATE events and mirrors what the bond decided (its slaves,
 * their link state, the active slave) onto one IB device `mlx5_bond_<n>`. The same here: the Linux bond
 * does the L2 failover (it moves the bond's MAC and sends the gratuitous ARPs), softroce's one UDP
 * socket is bound on the bond's address (SO_BINDTODEVICE the bond), so its packets leave by whichever
 * slave the bond picks; this module reads the bond's state from sysfs and reports it as the events a
 * createBond bond emits ('portUp' / 'portDown' per slave, 'activePortChanged', 'change').
 *
 * Where the state comes from (Documentation/networking/bonding.rst, "Configuring Bonding Manually via
 * Sysfs"; drivers/net/bonding/bond_sysfs.c, bond_sysfs_slave.c):
 *   /sys/class/net/<bond>/bonding/mode              "active-backup 1"   (name, then number)
 *   /sys/class/net/<bond>/bonding/slaves            "eth0 eth1"         (enslaving order)
 *   /sys/class/net/<bond>/bonding/active_slave      "eth0" or ""        (active-backup, tlb, alb only)
 *   /sys/class/net/<bond>/bonding/miimon            "100"               (ms; 0: no MII monitoring)
 *   /sys/class/net/<bond>/bonding/xmit_hash_policy  "layer3+4 1"
 *   /sys/class/net/<slave>/bonding_slave/mii_status "up" / "down"       (the bond's own verdict)
 *   /sys/class/net/<slave>/carrier                  "1" / "0"           (EINVAL while the slave is down)
 * A slave is up when the bond says so (mii_status, which honours the bond's updelay / downdelay), else
 * when its carrier is. A team device (teamd) has no such tree: its state is teamd's, over its own
 * socket (teamdctl), not sysfs; followLinuxBond says so ('not-a-bond').
 *
 * Acting on changes: with the addon, the NETLINK_ROUTE link events (a slave's carrier, the bond's
 * failover both send RTM_NEWLINK) trigger a re-read at once, with a slow poll behind them; without it
 * a poll every `pollMs`. Every trigger re-reads the whole tree, so a missed event costs time, not state.
 */
import { EventEmitter } from 'node:events';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { networkInterfaces } from 'node:os';
import { VerbsError } from '../verbs/errors.js';
import { Device } from '../verbs/device.js';
import { openDeviceWith } from '../verbs/open.js';
import { getDeviceList } from '../verbs/discovery.js';
import { DEFAULT_GID_TBL_LEN } from '../verbs/gid-table.js';
import { emitGuarded } from '../verbs/emit.js';
import { addressEventsByNetlink, hostAddressSource, type AddressSource } from '../verbs/addr-watch.js';
import type { Link } from '../roce/link/link.js';
import { RealScheduler, type Scheduler, type TimerHandle } from '../roce/sched.js';
import { bondDeviceName, bondGidTableSize, type LagMode } from './lag-mode.js';

/** One slave of a Linux bond, as sysfs shows it. */
export interface LinuxBondSlave {
  readonly name: string;
  /** the bond's verdict (bonding_slave/mii_status), else the carrier */
  readonly up: boolean;
  /** /sys/class/net/<slave>/carrier (false when unreadable: the slave is administratively down) */
  readonly carrier: boolean;
}

/** A Linux bond's state, as sysfs shows it. */
export interface LinuxBondState {
  readonly netdev: string;
  /** the bonding mode's name ('active-backup', 'balance-xor', '802.3ad', 'balance-rr', ...) */
  readonly mode: string;
  /** its number (0..6), as the mode file prints it */
  readonly modeNumber: number;
  /** in enslaving order: port 1 is the first */
  readonly slaves: readonly LinuxBondSlave[];
  /** the active slave's name, or null (none, or a mode without one) */
  readonly activeSlave: string | null;
  readonly miimon: number;
  /** the hash policy's name ('layer2', 'layer3+4', ...), or null when the file is absent */
  readonly xmitHashPolicy: string | null;
}

export type LinuxBondRefusal = 'not-a-bond' | 'unsupported-mode' | 'slave-count';

/**
 * The LAG mode of a Linux bonding mode, as mlx5 maps the bond's TX type (mlx5_lag_netdev_event:
 * NETDEV_LAG_TX_TYPE_ACTIVEBACKUP, and _HASH for balance-xor and 802.3ad), or why there is none: balance-rr
 * (round robin), broadcast, balance-tlb and balance-alb spread one flow over both slaves or pick the TX
 * slave per peer in the bond itself, which a device whose QPs each keep one port cannot mirror (mlx5
 * refuses their TX types the same way).
 */
export function linuxBondLagMode(mode: string): { lag: true; mode: LagMode } | { lag: false; why: string } {
  switch (mode) {
    case 'active-backup':
      return { lag: true, mode: 'active-backup' };
    case 'balance-xor':
      return { lag: true, mode: 'hash' };
    case '802.3ad':
      return { lag: true, mode: '802.3ad' };
    case 'balance-rr':
      return { lag: false, why: 'balance-rr sends one flow over both slaves in turn (TX type round robin): no LAG mode' };
    case 'broadcast':
      return { lag: false, why: 'broadcast sends every packet on every slave (TX type broadcast): no LAG mode' };
    case 'balance-tlb':
    case 'balance-alb':
      return { lag: false, why: `${mode} balances by peer in the bond driver (TX type TLB): no LAG mode` };
    default:
      return { lag: false, why: `bonding mode ${JSON.stringify(mode)} is not one mlx5 makes a LAG of` };
  }
}

function readOpt(path: string): string | null {
  try {
    return readFileSync(path, 'utf8').trim();
  } catch {
    return null;
  }
}

/**
 * Reads bond `netdev`'s state under `sysfsRoot` (default '/sys'); null when it is not a bond master
 * (no bonding/ directory: a plain netdev, or a team device).
 */
export function readLinuxBond(netdev: string, sysfsRoot = '/sys'): LinuxBondState | null {
  if (!/^[^/\0]{1,15}$/.test(netdev) || netdev === '.' || netdev === '..')
    throw new VerbsError('EINVAL', 'readLinuxBond', `${JSON.stringify(netdev)} is not an interface name`, 'netdev');
  const net = join(sysfsRoot, 'class', 'net');
  const b = join(net, netdev, 'bonding');
  const modeLine = readOpt(join(b, 'mode'));
  if (modeLine === null) return null;
  const [mode = '', num = ''] = modeLine.split(/\s+/);
  const slaves = (readOpt(join(b, 'slaves')) ?? '').split(/\s+/).filter((s) => s !== '');
  const active = readOpt(join(b, 'active_slave')) ?? '';
  const miimon = Number(readOpt(join(b, 'miimon')) ?? '0');
  const hash = readOpt(join(b, 'xmit_hash_policy'));
  return {
    netdev,
    mode,
    modeNumber: Number(num),
    slaves: slaves.map((name) => {
      const carrier = readOpt(join(net, name, 'carrier')) === '1';
      const mii = readOpt(join(net, name, 'bonding_slave', 'mii_status'));
      return { name, carrier, up: mii === null ? carrier : mii === 'up' };
    }),
    activeSlave: active === '' ? null : active,
    miimon: Number.isFinite(miimon) ? miimon : 0,
    xmitHashPolicy: hash === null ? null : (hash.split(/\s+/)[0] ?? null),
  };
}

export interface FollowLinuxBondOptions {
  /** where sysfs is (tests: a fake tree); default '/sys' */
  sysfsRoot?: string;
  /** the address the device's socket binds (default: the bond's first IPv4 address, else its first address) */
  address?: string;
  udpPort?: number;
  native?: 'auto' | 'on' | 'off';
  /** tests: the bond's link (an in-memory link) instead of a UDP socket on the bond */
  link?: Link;
  scheduler?: Scheduler;
  /** where the GID table's addresses come from (default: the host's) */
  addresses?: AddressSource;
  /**
   * what says the bond may have changed (default: the addon's netlink link events, else nothing: the
   * poll alone); returns a stop function
   */
  watch?: (changed: () => void) => () => void;
  /** the poll interval in ms: default the bond's miimon (100 if 0) without netlink events, 1000 with them */
  pollMs?: number;
  gidTblLen?: number;
  /** RDMA device names taken, for softroce_bond_<n> (default: the device list's) */
  devicesInUse?: Iterable<string>;
}

export type FollowResult =
  | { readonly lag: true; readonly mode: LagMode; readonly bond: LinuxBondFollower; readonly device: Device }
  | { readonly lag: false; readonly reason: LinuxBondRefusal; readonly detail: string; readonly state: LinuxBondState | null };

/** Whether a state makes a LAG device: a LAG mode and exactly two slaves (mlx5's tracker needs both ports). */
function decide(st: LinuxBondState | null, netdev: string): { lag: true; mode: LagMode } | { lag: false; reason: LinuxBondRefusal; detail: string } {
  if (st === null)
    return {
      lag: false,
      reason: 'not-a-bond',
      detail: `${netdev} is not a Linux bond master (no /sys/class/net/${netdev}/bonding; a team device's state is teamd's)`,
    };
  const m = linuxBondLagMode(st.mode);
  if (!m.lag) return { lag: false, reason: 'unsupported-mode', detail: m.why };
  if (st.slaves.length !== 2) return { lag: false, reason: 'slave-count', detail: `${netdev} has ${st.slaves.length} slaves; LAG needs exactly two` };
  return m;
}

/** The bond netdev's address: its first IPv4 one, else its first (not link-local IPv6). */
function bondAddress(netdev: string): string | null {
  const list = networkInterfaces()[netdev] ?? [];
  const v4 = list.find((a) => a.family === 'IPv4');
  const v6 = list.find((a) => a.family === 'IPv6' && !a.address.startsWith('fe80'));
  return (v4 ?? v6)?.address ?? null;
}

/** The netlink trigger (the addon's link events, shared with the GID tables' address watch), or null without it. */
function netlinkWatch(): ((changed: () => void) => () => void) | null {
  return addressEventsByNetlink() ? (changed) => hostAddressSource.watch(changed) : null;
}

/**
 * A followed Linux bond: its state now, and the events of its changes. Events: 'portUp' / 'portDown'
 * `{ port, netdev }` (port = the slave's place in the slaves list, 1-based), 'activePortChanged'
 * `{ from, to, fromNetdev, toNetdev }` (ports or null), 'change' `{ state, mode, lag }` (the mode or
 * the slaves changed; `lag` false: the bond no longer makes a LAG device, the device stays open and
 * says so here: re-registration on leaving LAG is not done yet).
 */
export class LinuxBondFollower extends EventEmitter {
  readonly netdev: string;
  /** the RDMA device's name: softroce_bond_<n> */
  readonly name: string;
  readonly device: Device;
  readonly #root: string;
  readonly #sched: Scheduler;
  #state: LinuxBondState;
  #mode: LagMode;
  #lag = true;
  #timer: TimerHandle | null = null;
  #stopWatch: (() => void) | null = null;
  readonly #pollMs: number;
  #closed = false;
  /** state changes seen: port ups and downs, active-slave changes, re-reads */
  readonly stats = { portUps: 0, portDowns: 0, activeChanges: 0, reads: 0 };

  /** @internal followLinuxBond */
  constructor(o: {
    netdev: string;
    name: string;
    device: Device;
    state: LinuxBondState;
    mode: LagMode;
    root: string;
    sched: Scheduler;
    pollMs: number;
    watch: ((c: () => void) => () => void) | null;
  }) {
    super();
    this.netdev = o.netdev;
    this.name = o.name;
    this.device = o.device;
    this.#state = o.state;
    this.#mode = o.mode;
    this.#root = o.root;
    this.#sched = o.sched;
    this.#pollMs = o.pollMs;
    if (o.watch !== null) this.#stopWatch = o.watch(() => this.refresh());
    this.schedule();
    o.device.on('close', () => this.stop());
  }

  get state(): LinuxBondState {
    return this.#state;
  }
  get mode(): LagMode {
    return this.#mode;
  }
  /** whether the bond (still) makes a LAG device */
  get lag(): boolean {
    return this.#lag;
  }
  /** the active slave's port (1-based), or null (none, or a mode without one) */
  get activePort(): number | null {
    return portOf(this.#state, this.#state.activeSlave);
  }
  get pollMs(): number {
    return this.#pollMs;
  }

  private schedule(): void {
    if (this.#closed) return;
    this.#timer = this.#sched.setTimer(this.#pollMs, () => {
      this.#timer = null;
      this.refresh();
      this.schedule();
    });
  }

  /** Re-reads the bond and emits what changed since the last read (called by the poll and the netlink trigger). */
  refresh(): void {
    if (this.#closed) return;
    this.stats.reads++;
    const now = readLinuxBond(this.netdev, this.#root);
    const was = this.#state;
    if (now === null) {
      // The bond was deleted: its slaves are gone with it.
      if (this.#lag) {
        this.#lag = false;
        emitGuarded(this, 'change', { state: null, mode: this.#mode, lag: false, detail: `${this.netdev} is no longer a bond` });
      }
      return;
    }
    this.#state = now;
    const sameSlaves = was.slaves.length === now.slaves.length && was.slaves.every((s, i) => s.name === now.slaves[i]!.name);
    if (now.mode !== was.mode || !sameSlaves) {
      const d = decide(now, this.netdev);
      this.#lag = d.lag;
      if (d.lag) this.#mode = d.mode;
      emitGuarded(this, 'change', { state: now, mode: this.#mode, lag: d.lag, ...(d.lag ? {} : { detail: d.detail }) });
    }
    // Per slave (by name, so a re-ordered list does not look like a link change).
    now.slaves.forEach((s, i) => {
      const before = was.slaves.find((x) => x.name === s.name);
      if (before === undefined || before.up === s.up) return;
      if (s.up) this.stats.portUps++;
      else this.stats.portDowns++;
      emitGuarded(this, s.up ? 'portUp' : 'portDown', { port: i + 1, netdev: s.name });
    });
    if (now.activeSlave !== was.activeSlave) {
      this.stats.activeChanges++;
      emitGuarded(this, 'activePortChanged', {
        from: portOf(was, was.activeSlave),
        to: portOf(now, now.activeSlave),
        fromNetdev: was.activeSlave,
        toNetdev: now.activeSlave,
      });
    }
  }

  private stop(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#sched.clearTimer(this.#timer);
    this.#timer = null;
    this.#stopWatch?.();
    this.#stopWatch = null;
  }

  /** Stops following and closes the device. */
  async close(): Promise<void> {
    this.stop();
    await this.device.close();
  }
}

function portOf(st: LinuxBondState, slave: string | null): number | null {
  if (slave === null) return null;
  const i = st.slaves.findIndex((s) => s.name === slave);
  return i < 0 ? null : i + 1;
}

/**
 * Follows Linux bond `netdev`: when its mode maps to a LAG mode and it has exactly two slaves, one RDMA
 * device `softroce_bond_<n>` (one port, half the GID table, as createBond's) whose socket is bound on the
 * bond (its address, SO_BINDTODEVICE the bond), and a follower that reports the bond's changes. Otherwise
 * no device, and the reason (not a bond, a mode with no LAG mode, not two slaves).
 */
export async function followLinuxBond(netdev: string, o: FollowLinuxBondOptions = {}): Promise<FollowResult> {
  const op = 'followLinuxBond';
  if (typeof netdev !== 'string') throw new VerbsError('EINVAL', op, 'netdev must be an interface name', 'netdev');
  if (typeof o !== 'object' || o === null) throw new VerbsError('EINVAL', op, 'options must be an object', 'options');
  if (o.pollMs !== undefined && (!Number.isInteger(o.pollMs) || o.pollMs < 1 || o.pollMs > 60_000))
    throw new VerbsError('EINVAL', op, `pollMs must be 1..60000 ms, got ${String(o.pollMs)}`, 'pollMs');
  const root = o.sysfsRoot ?? '/sys';
  const state = readLinuxBond(netdev, root);
  const d = decide(state, netdev);
  if (!d.lag) return { lag: false, reason: d.reason, detail: d.detail, state };
  const address = o.address ?? o.link?.localIp ?? bondAddress(netdev);
  if (address === null) throw new VerbsError('EADDRNOTAVAIL', op, `${netdev} has no address to bind`, 'netdev');
  const sched = o.scheduler ?? new RealScheduler();
  const watch = o.watch ?? (o.link === undefined ? netlinkWatch() : null);
  const pollMs = o.pollMs ?? (watch !== null && o.watch === undefined ? 1000 : state!.miimon > 0 ? state!.miimon : 100);
  const inUse = o.devicesInUse ?? getDeviceList().map((x) => x.name);
  const name = bondDeviceName('softroce', inUse);
  const dev = await openDeviceWith(
    {
      name,
      address,
      netdev,
      scheduler: sched,
      gidTblLen: bondGidTableSize(o.gidTblLen ?? DEFAULT_GID_TBL_LEN),
      ...(o.link !== undefined ? { link: o.link } : {}),
      ...(o.udpPort !== undefined ? { udpPort: o.udpPort } : {}),
      ...(o.native !== undefined ? { native: o.native } : {}),
      ...(o.addresses !== undefined ? { addresses: o.addresses } : {}),
    },
    (n, s, m) => new Device(n, s, m),
  );
  const bond = new LinuxBondFollower({ netdev, name, device: dev, state: state!, mode: d.mode, root, sched, pollMs, watch });
  return { lag: true, mode: d.mode, bond, device: dev };
}
