/**
 * A bonded RDMA device over two ports, as mlx5's RoCE LAG makes one (the Mellanox manual's RoCE LAG;
 * drivers/net/ethernet/mellanox/mlx5/core/lag): teamd's config decides (lag-mode.ts); in LAG mode
 * ONE verbs Device named `<driver>_bond_<n>` with ONE port, its GID table half the per-port size,
 * whose QPs each send on one of the two physical ports (affinity.ts: explicit, flow entropy,
 * round-robin; active-backup: the active port), and whose traffic moves off a port teamd's ethtool
 * link watch finds dead (link-watch.ts) and back when it returns; RC retransmission recovers what
 * the dead port lost. Otherwise two ordinary devices, one per port.
 *
 * Notifier events, as the NetDev talk's LAG notifiers: 'prechange' (before a configuration change;
 * a listener refuses by calling `refuse(why)` or throwing, and the bond stays as it was), 'change',
 * 'portUp' / 'portDown' (a link watch's verdict), 'activePortChanged' (active-backup), 'gidChange'
 * (the bond port's GID table).
 *
 * Not here yet (issue 14): arp_ping / nsna_ping watches (ignored, with a warning), LACP, following a
 * Linux bond, re-registration with fatal events on entering / leaving LAG, teamdctl, GSI traffic
 * per flow (QP1 sends on the active / first live port).
 */
import { EventEmitter } from 'node:events';
import { VerbsError, type ErrnoCode } from '../verbs/errors.js';
import { Device } from '../verbs/device.js';
import { openDeviceWith, type OpenDeviceOptions } from '../verbs/open.js';
import { getDeviceList } from '../verbs/discovery.js';
import { DEFAULT_GID_TBL_LEN } from '../verbs/gid-table.js';
import { emitGuarded } from '../verbs/emit.js';
import type { Qp } from '../verbs/qp.js';
import type { AddressSource } from '../verbs/addr-watch.js';
import { loadNative } from '../native.js';
import type { AsyncEvent } from '../verbs/device.js';
import type { Link } from '../roce/link/link.js';
import type { CounterName } from '../roce/counters.js';
import { UdpLink } from '../roce/link/udp-link.js';
import { RealScheduler, type Scheduler } from '../roce/sched.js';
import { generateTeamDevname, parseTeamConfig, portLinkWatches, TEAMD_DEFAULTS, type TeamConfig, type TeamConfigWarning } from './team-config.js';
import {
  bondDeviceName,
  bondGidTableSize,
  lagMode,
  type LagDecision,
  type LagMode,
  type LagPortRef,
  type LagRefusal,
  type LagRefusalReason,
} from './lag-mode.js';
import { BondLink, MemberPort } from './bond-link.js';
import { EthtoolWatch } from './link-watch.js';
import { toPlain } from './jansson.js';
import { initialLagPort, remapHash, selectActive, type AffinitySource } from './affinity.js';

/** One port of the team: its interface (a key of the config's ports) and where its socket binds. */
export interface BondPortSpec {
  /** the port's interface name, as the config's `ports` names it */
  netdev: string;
  /** the address the port's socket binds: the bond's one address, the same on both ports */
  address: string;
  udpPort?: number;
  /** the RDMA device the port belongs to (default: CreateBondOptions.device): LAG needs both on one */
  device?: string;
}

export interface CreateBondOptions {
  /** the two ports, port 1 first */
  ports: readonly BondPortSpec[];
  /** the RDMA device whose ports these are (the multi-port device the bond replaces); default 'softroce0' */
  device?: string;
  /** tests: one link per port (in-memory links on two segments, at the bond's address) instead of UDP sockets */
  links?: readonly Link[];
  scheduler?: Scheduler;
  /** where the GID tables' addresses come from (default: the host's) */
  addresses?: AddressSource;
  native?: 'auto' | 'on' | 'off';
  /** the per-port GID table length (default 128); the bond device gets half */
  gidTblLen?: number;
  /** RDMA device names taken, for softroce_bond_<n> (default: the device list's and the open bonds') */
  devicesInUse?: Iterable<string>;
}

export type BondResult =
  | { readonly lag: true; readonly mode: LagMode; readonly bond: Bond; readonly device: Device }
  | {
      readonly lag: false;
      /** why not LAG: the first rule broken (lag-mode.ts) */
      readonly reason: LagRefusalReason;
      readonly refusals: readonly LagRefusal[];
      /** one ordinary device per port, in port order */
      readonly devices: readonly Device[];
    };

/** A change a bond refused (its pre-change check or a 'prechange' listener): the bond is as it was. */
export class LagRefusedError extends VerbsError {
  readonly reason: LagRefusalReason | 'refused-by-listener';
  readonly refusals: readonly LagRefusal[];
  constructor(code: ErrnoCode, op: string, reason: LagRefusalReason | 'refused-by-listener', refusals: readonly LagRefusal[], message: string) {
    super(code, op, message, 'config');
    this.name = 'LagRefusedError';
    this.reason = reason;
    this.refusals = refusals;
  }
}

/** What 'prechange' listeners get: the change, and a way to refuse it. */
export interface BondPrechange {
  readonly bond: Bond;
  readonly config: TeamConfig;
  readonly decision: LagDecision;
  refuse(why: string): void;
}

/** queryLagPort: mlx5dv_query_qp_lag_port's port_num (configured) and active_port_num. */
export interface LagPortInfo {
  readonly configured: number;
  readonly active: number;
  readonly source: AffinitySource;
}

/** One physical port of the bond. */
export interface BondPortState {
  /** 1 or 2 */
  readonly lagPort: number;
  readonly netdev: string;
  readonly link: Link;
  /** the port as the transport sends on it: its TX counters */
  readonly member: MemberPort;
  /** the link watch's verdict */
  readonly up: boolean;
  readonly prio: number;
  readonly sticky: boolean;
}

interface PortRec {
  readonly lagPort: number;
  readonly netdev: string;
  readonly link: Link;
  readonly member: MemberPort;
  watch: EthtoolWatch;
  up: boolean;
  prio: number;
  sticky: boolean;
}

interface QpLag {
  configured: number;
  source: AffinitySource;
  active: number;
}

/** The bond device: a Device whose QPs get their LAG port at RESET -> INIT. */
class BondDevice extends Device {
  bond: Bond | null = null;
  override qpInit(qp: Qp): void {
    this.bond?.qpInit(qp);
  }
  /** The bond port's counters count what its members sent too (bond.portCounters(n): one physical port's). */
  override counters(port = 1): Record<string, number> {
    const c = super.counters(port);
    for (const p of this.bond?.ports ?? []) {
      const m = p.member.counters.snapshot();
      for (const k of Object.keys(m) as (keyof typeof m)[]) c[k] = (c[k] ?? 0) + m[k];
    }
    return c;
  }
}

const openBonds = new Set<string>();
const bondOf = new WeakMap<Device, Bond>();

export class Bond extends EventEmitter {
  /** the RDMA device's name: softroce_bond_<n> */
  readonly name: string;
  /** the team device's name (the config's device, else team<n>) */
  readonly netdev: string;
  readonly device: Device;
  #config: TeamConfig;
  #mode: LagMode;
  readonly #rdmaDevice: string;
  readonly #link: BondLink;
  readonly #ports: PortRec[];
  readonly #qps = new WeakMap<Qp, QpLag>();
  /** explicit ports set before INIT (setLagPort on a RESET QP) */
  readonly #pending = new WeakMap<Qp, number>();
  #counter = 0;
  #active: number | null = null;
  #warnings: TeamConfigWarning[] = [];
  #closed = false;
  /** failovers: QP moves from one port to the other, over the bond's life */
  readonly stats = { qpMoves: 0, portDowns: 0, portUps: 0 };

  /** @internal createBond */
  constructor(o: {
    name: string;
    netdev: string;
    device: BondDevice;
    config: TeamConfig;
    mode: LagMode;
    rdmaDevice: string;
    link: BondLink;
    specs: readonly BondPortSpec[];
  }) {
    super();
    this.name = o.name;
    this.netdev = o.netdev;
    this.device = o.device;
    this.#config = o.config;
    this.#mode = o.mode;
    this.#rdmaDevice = o.rdmaDevice;
    this.#link = o.link;
    const port = o.device.ports[0]!;
    this.#ports = o.specs.map((s, i) => {
      const link = o.link.members[i]!;
      const watch = this.makeWatch(s.netdev, link, i + 1);
      return { lagPort: i + 1, netdev: s.netdev, link, member: new MemberPort(port, i + 1, s.netdev, link), watch, up: watch.up, prio: 0, sticky: false };
    });
    this.applyPortConfig();
    this.#link.setUp(this.#ports.some((p) => p.up));
    if (this.#mode === 'active-backup') this.#active = selectActive(null, this.upList(), this.prioList(), this.stickyList());
    this.updateFallback();
    o.device.on('async', (e: AsyncEvent) => {
      if (e.type === 'GID_CHANGE') emitGuarded(this, 'gidChange', { port: e.port ?? 1 });
    });
    o.device.on('close', () => this.stop());
    bondOf.set(o.device, this);
  }

  get config(): TeamConfig {
    return this.#config;
  }
  get mode(): LagMode {
    return this.#mode;
  }
  /** active-backup: the active port (null when no port is up); the hash modes: null */
  get activePort(): number | null {
    return this.#mode === 'active-backup' ? this.#active : null;
  }
  /** what the bond does not do with the config (link watches it does not run) */
  get warnings(): readonly TeamConfigWarning[] {
    return this.#warnings;
  }
  get ports(): readonly BondPortState[] {
    return this.#ports.map((p) => ({ lagPort: p.lagPort, netdev: p.netdev, link: p.link, member: p.member, up: p.up, prio: p.prio, sticky: p.sticky }));
  }
  /** The TX counters of physical port `lagPort` (the packets its QPs sent on it), and the datagrams it received. */
  portCounters(lagPort: number): Record<CounterName, number> & { rx_datagrams: number } {
    const p = this.portAt('portCounters', lagPort);
    return { ...p.member.counters.snapshot(), rx_datagrams: this.#link.rxDatagrams(lagPort - 1) };
  }

  private portAt(op: string, lagPort: number): PortRec {
    const p = Number.isInteger(lagPort) ? this.#ports[lagPort - 1] : undefined;
    if (p === undefined) throw new VerbsError('EINVAL', op, `port ${String(lagPort)} is not a port of ${this.name} (1..${this.#ports.length})`, 'port');
    return p;
  }
  private upList(): boolean[] {
    return this.#ports.map((p) => p.up);
  }
  private prioList(): number[] {
    return this.#ports.map((p) => p.prio);
  }
  private stickyList(): boolean[] {
    return this.#ports.map((p) => p.sticky);
  }

  /** prio and sticky from the config; the link watches each port runs (ethtool only, for now). */
  private applyPortConfig(): void {
    const warnings: TeamConfigWarning[] = [];
    for (const p of this.#ports) {
      const pc = this.#config.ports.get(p.netdev);
      p.prio = pc?.prio ?? TEAMD_DEFAULTS.prio;
      p.sticky = pc?.sticky ?? TEAMD_DEFAULTS.sticky;
      for (const lw of portLinkWatches(this.#config, p.netdev))
        if (lw.name !== 'ethtool')
          warnings.push({ path: `ports.${p.netdev}.link_watch`, message: `the ${lw.name} link watch is not run yet: the port follows its carrier` });
    }
    this.#warnings = warnings;
  }

  /**
   * One ethtool watch per port: the first ethtool watch of the port's list, else the carrier with no
   * delay (the port's arp_ping / nsna_ping watches are not run yet: warnings).
   */
  private makeWatch(netdev: string, link: Link, lagPort: number): EthtoolWatch {
    const lw = portLinkWatches(this.#config, netdev).find((w) => w.name === 'ethtool');
    const cfg = lw?.name === 'ethtool' ? lw : { delayUp: 0, delayDown: 0 };
    return new EthtoolWatch(link, cfg, this.device.sched, (up) => this.portState(lagPort, up));
  }

  /** New watches after a config change; a port whose verdict differs from the old watch's changes state now. */
  private restartWatches(): void {
    for (const p of this.#ports) {
      p.watch.stop();
      p.watch = this.makeWatch(p.netdev, p.link, p.lagPort);
    }
    for (const p of this.#ports) if (p.watch.up !== p.up) this.portState(p.lagPort, p.watch.up);
  }

  private stop(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const p of this.#ports) p.watch.stop();
    openBonds.delete(this.name);
  }

  /** A link watch's verdict on port `lagPort`: events, the active port, every QP's active port. */
  private portState(lagPort: number, up: boolean): void {
    if (this.#closed) return;
    const p = this.#ports[lagPort - 1]!;
    if (p.up === up) return;
    p.up = up;
    if (up) this.stats.portUps++;
    else this.stats.portDowns++;
    emitGuarded(this, up ? 'portUp' : 'portDown', { port: lagPort, netdev: p.netdev });
    // No ADDR_CHANGE for rdma_cm ids here: the kernel gives one on a bonding failover only when the
    // bond's MAC changed (cma_netdev_callback), never with hwaddr_policy same_all (one MAC on every port).
    this.remap();
    this.#link.setUp(this.#ports.some((x) => x.up));
  }

  /** After a port or config change: the active port (active-backup), then each QP's. */
  private remap(): void {
    const up = this.upList();
    if (this.#mode === 'active-backup') {
      const was = this.#active;
      this.#active = selectActive(was, up, this.prioList(), this.stickyList());
      if (this.#active !== was) emitGuarded(this, 'activePortChanged', { from: was, to: this.#active });
    }
    this.updateFallback();
    const sticky = this.stickyList();
    for (const qp of this.device.qps.values()) {
      const st = this.#qps.get(qp);
      if (st === undefined) continue;
      const to = this.activeFor(st, up, sticky);
      if (to === st.active) continue;
      st.active = to;
      qp.txPort = this.#ports[to - 1]!.member;
      this.stats.qpMoves++;
      // Its next packets (and the retransmissions of what the dead port lost) leave by the new port.
      if (qp.state === 'RTS' || qp.state === 'SQD') this.device.kick(qp);
    }
  }

  private activeFor(st: QpLag, up: readonly boolean[], sticky: readonly boolean[]): number {
    if (this.#mode === 'active-backup') return this.#active ?? st.active;
    return remapHash(st.active, st.configured, up, sticky);
  }

  /** What has no TX port of its own (QP1, the fallback path) leaves by: the active port, else a live one. */
  private updateFallback(): void {
    const cur = this.#ports.find((p) => p.link === this.#link.fallback);
    let to = this.#mode === 'active-backup' && this.#active !== null ? this.#ports[this.#active - 1]! : cur?.up === true ? cur : this.#ports.find((p) => p.up);
    to ??= cur ?? this.#ports[0]!;
    this.#link.setFallback(to.link);
  }

  /** @internal the bond device's QP moved RESET -> INIT: its configured and active port (not QP1: the fallback path). */
  qpInit(qp: Qp): void {
    if (qp.type === 'GSI' || this.#closed) return;
    const up = this.upList();
    const prev = this.#qps.get(qp);
    const explicit = this.#pending.get(qp) ?? (prev?.source === 'explicit' ? prev.configured : null);
    this.#pending.delete(qp);
    const c = initialLagPort({ explicit, flowEntropy: qp.flowEntropy, counter: this.#counter, up });
    this.#counter = c.counter;
    const st: QpLag = { configured: c.port, source: c.source, active: c.port };
    st.active = this.#mode === 'active-backup' ? (this.#active ?? c.port) : remapHash(c.port, c.port, up, this.stickyList());
    this.#qps.set(qp, st);
    qp.txPort = this.#ports[st.active - 1]!.member;
  }

  private checkQp(op: string, qp: Qp): void {
    if (typeof qp !== 'object' || qp === null || qp.device !== this.device) throw new VerbsError('EINVAL', op, `not a QP of ${this.name}`, 'qp');
    if (qp.closed) throw new VerbsError('EBADF', op, `QP ${qp.qpn} is closed`, 'qp');
    if (qp.type === 'GSI') throw new VerbsError('EOPNOTSUPP', op, 'QP1 has no LAG port of its own', 'qp');
  }

  /**
   * mlx5dv_modify_qp_lag_port: the QP's configured port from now on (and its active port, where the
   * mode and the ports allow: in active-backup the QP stays on the active port). On a QP in RESET
   * it takes effect at RESET -> INIT. EINVAL for a port that is not 1 or 2.
   */
  setLagPort(qp: Qp, port: number): void {
    const op = 'mlx5dv_modify_qp_lag_port';
    this.checkQp(op, qp);
    this.portAt(op, port);
    const st = this.#qps.get(qp);
    if (qp.state === 'RESET' || st === undefined) {
      this.#pending.set(qp, port);
      return;
    }
    st.configured = port;
    st.source = 'explicit';
    // The application's choice wins over where the QP was: off a dead port only by the remap rule.
    const up = this.upList();
    const to = this.#mode === 'active-backup' ? (this.#active ?? st.active) : up[port - 1] === true ? port : remapHash(st.active, port, up, this.stickyList());
    if (to !== st.active) {
      st.active = to;
      qp.txPort = this.#ports[to - 1]!.member;
      if (qp.state === 'RTS' || qp.state === 'SQD') this.device.kick(qp);
    }
  }

  /** mlx5dv_query_qp_lag_port: the configured port and the one its packets leave by now. EINVAL before INIT (none yet). */
  queryLagPort(qp: Qp): LagPortInfo {
    const op = 'mlx5dv_query_qp_lag_port';
    this.checkQp(op, qp);
    const st = this.#qps.get(qp);
    if (st === undefined || qp.state === 'RESET') {
      const pending = this.#pending.get(qp);
      if (pending === undefined) throw new VerbsError('EINVAL', op, `QP ${qp.qpn} has no LAG port before RESET -> INIT`, 'qp');
      return { configured: pending, active: pending, source: 'explicit' };
    }
    return { configured: st.configured, active: st.active, source: st.source };
  }

  /**
   * A new configuration for the running bond: the pre-change check (lag-mode.ts on the bond's ports:
   * the mode must stay a LAG mode) and the 'prechange' listeners first; refused, the bond is exactly as
   * it was (LagRefusedError). Accepted: the runner's mode, the ports' prio / sticky and link watches
   * change in place, QPs move where the new mode puts them, then 'change'.
   */
  reconfigure(config: string | object): void {
    const cfg = parseTeamConfig(config);
    this.precheck('reconfigure', cfg, []);
    this.#config = cfg;
    const d = lagMode(cfg, this.refs([]));
    // Into active-backup from a hash mode: teamd's runner starts with no active port and picks one.
    if (d.lag && d.mode === 'active-backup' && this.#mode !== 'active-backup') this.#active = null;
    if (d.lag) this.#mode = d.mode;
    this.applyPortConfig();
    this.restartWatches();
    this.remap();
    emitGuarded(this, 'change', { config: cfg, mode: this.#mode });
  }

  /** Adds a port to the team: always refused in LAG mode ('port-count': a bond has exactly two), the bond untouched. */
  addPort(spec: { netdev: string; device?: string }): never {
    const src = toPlain(this.#config.source) as Record<string, unknown>;
    const ports = { ...((src['ports'] as Record<string, unknown> | undefined) ?? {}), [spec.netdev]: {} };
    const cfg = parseTeamConfig({ ...src, ports });
    this.precheck('addPort', cfg, [{ name: spec.netdev, device: spec.device ?? this.#rdmaDevice, port: this.#ports.length + 1 }]);
    // lagMode never accepts three ports: precheck has thrown.
    throw new LagRefusedError('EINVAL', 'addPort', 'port-count', [], 'unreachable');
  }

  private refs(extra: readonly LagPortRef[]): LagPortRef[] {
    return [...this.#ports.map((p) => ({ name: p.netdev, device: this.#rdmaDevice, port: p.lagPort })), ...extra];
  }

  private precheck(op: string, cfg: TeamConfig, extra: readonly LagPortRef[]): void {
    if (this.#closed) throw new VerbsError('EBADF', op, `${this.name} is closed`, 'bond');
    const decision = lagMode(cfg, this.refs(extra));
    const refusedBy: string[] = [];
    const info: BondPrechange = {
      bond: this,
      config: cfg,
      decision,
      refuse: (why: string) => {
        refusedBy.push(String(why));
      },
    };
    // A listener that throws refuses too (the notifier's NOTIFY_BAD).
    try {
      this.emit('prechange', info);
    } catch (e) {
      refusedBy.push(e instanceof Error ? e.message : String(e));
    }
    if (!decision.lag) {
      const code: ErrnoCode = decision.reason === 'unsupported-runner' ? 'EOPNOTSUPP' : 'EINVAL';
      throw new LagRefusedError(code, op, decision.reason, decision.refusals, decision.refusals.map((r) => r.detail).join('; '));
    }
    if (refusedBy.length > 0) throw new LagRefusedError('EBUSY', op, 'refused-by-listener', [], `a prechange listener refused: ${refusedBy.join('; ')}`);
  }

  /** Closes the bond device (and the ports' links). */
  async close(): Promise<void> {
    this.stop();
    await this.device.close();
  }
}

/** The bond of a bonded device, or null (setLagPort / queryLagPort take the QP alone, as mlx5dv's do). */
export function bondOfDevice(dev: Device): Bond | null {
  return bondOf.get(dev) ?? null;
}

function bondFor(op: string, qp: Qp): Bond {
  const b = typeof qp === 'object' && qp !== null ? bondOf.get(qp.device) : undefined;
  if (b === undefined) throw new VerbsError('EOPNOTSUPP', op, 'the QP is not on a bonded (LAG) device', 'qp');
  return b;
}

/** mlx5dv_modify_qp_lag_port (EOPNOTSUPP off a bonded device). */
export function setLagPort(qp: Qp, port: number): void {
  bondFor('mlx5dv_modify_qp_lag_port', qp).setLagPort(qp, port);
}

/** mlx5dv_query_qp_lag_port (EOPNOTSUPP off a bonded device). */
export function queryLagPort(qp: Qp): LagPortInfo {
  return bondFor('mlx5dv_query_qp_lag_port', qp).queryLagPort(qp);
}

/**
 * Team ports over real netdevs that share one address (a bond's ports all carry the bond's) need one
 * socket per netdev at that address:4791, which Linux accepts only when each is bound to its netdev
 * BEFORE bind (SO_BINDTODEVICE: udp_lib_lport_inuse lets sockets on different bound devices share a
 * port; each then gets its own netdev's datagrams, compute_score). Only the addon's IPv4 socket does
 * that (Node's dgram socket binds first, and has no SO_BINDTODEVICE): without it, EOPNOTSUPP naming
 * `ports` before anything is bound. (A refused SO_BINDTODEVICE, EPERM: kernels before 5.7 want CAP_NET_RAW
 * even for the first binding of a socket, is rethrown naming `ports` too.)
 */
function checkRealPorts(op: string, team: readonly BondPortSpec[], native: 'auto' | 'on' | 'off'): void {
  const byAddr = new Map<string, number>();
  for (const p of team) byAddr.set(`${p.address}:${p.udpPort ?? 4791}`, (byAddr.get(`${p.address}:${p.udpPort ?? 4791}`) ?? 0) + 1);
  if (![...byAddr.values()].some((n) => n > 1)) return;
  const shared = team.find((p) => byAddr.get(`${p.address}:${p.udpPort ?? 4791}`)! > 1)!;
  const n = native === 'off' ? null : loadNative();
  const why =
    n === null || n.udpOpen4 === undefined || n.rxStart === undefined
      ? native === 'off'
        ? "native: 'off'"
        : 'the native addon is not built or is disabled (SOFTROCE_NO_NATIVE=1)'
      : shared.address.includes(':')
        ? "IPv6 ports use Node's dgram socket, which binds before it can be bound to a device"
        : process.env['SOFTROCE_NATIVE_RX'] === '0'
          ? "SOFTROCE_NATIVE_RX=0 (Node's dgram socket binds before it can be bound to a device)"
          : null;
  if (why !== null)
    throw new VerbsError(
      'EOPNOTSUPP',
      op,
      `team ports sharing ${shared.address} need one socket per netdev bound with SO_BINDTODEVICE before bind, which needs the addon's IPv4 socket: ${why}`,
      'ports',
    );
}

/**
 * Makes the team's RDMA side from teamd's config: one bonded device when LAG mode applies (exactly
 * two ports of one device, a runner with a LAG mode), else one ordinary device per port (the result
 * says which and why). A config teamd refuses is a TeamConfigError; nothing stays bound on failure.
 */
export async function createBond(config: string | object, o: CreateBondOptions): Promise<BondResult> {
  const op = 'createBond';
  if (typeof o !== 'object' || o === null) throw new VerbsError('EINVAL', op, 'options must be an object', 'options');
  // (a test that does not narrow: Array.isArray would turn the readonly lists into any[])
  const isList = (x: unknown): boolean => Array.isArray(x);
  if (!isList(o.ports) || o.ports.length === 0) throw new VerbsError('EINVAL', op, 'ports must list the team ports', 'ports');
  o.ports.forEach((p, i) => {
    if (typeof p !== 'object' || p === null || typeof p.netdev !== 'string' || typeof p.address !== 'string')
      throw new VerbsError('EINVAL', op, 'a port is { netdev, address, udpPort?, device? }', `ports[${i}]`);
  });
  if (o.links !== undefined && (!isList(o.links) || o.links.length !== o.ports.length)) throw new VerbsError('EINVAL', op, 'one link per port', 'links');
  const cfg = parseTeamConfig(config);
  const rdmaDevice = o.device ?? 'softroce0';
  const refs: LagPortRef[] = o.ports.map((p, i) => ({ name: p.netdev, device: p.device ?? rdmaDevice, port: i + 1 }));
  // Ports the config does not name are not team ports (lagMode); ports it names must be given.
  const decision = lagMode(cfg, refs);
  const sched = o.scheduler ?? new RealScheduler();
  const team = cfg.ports.size > 0 ? o.ports.filter((p) => cfg.ports.has(p.netdev)) : [...o.ports];
  const links: Link[] = [];
  const given = o.links !== undefined;
  if (!given) checkRealPorts(op, team, o.native ?? 'auto');
  try {
    for (let i = 0; i < o.ports.length; i++) {
      const p = o.ports[i]!;
      if (!team.includes(p)) continue;
      links.push(given ? o.links![i]! : await UdpLink.open({ address: p.address, port: p.udpPort ?? 4791, native: o.native ?? 'auto', netdev: p.netdev }));
    }
  } catch (e) {
    if (!given) for (const l of links) await l.close().catch(() => undefined);
    // SO_BINDTODEVICE refused (EPERM without CAP_NET_RAW before Linux 5.7): the ports cannot be had, said of the ports.
    if (e instanceof VerbsError && e.argument === 'netdev')
      throw new VerbsError(e.code, op, `a team port's socket cannot be bound to its netdev: ${e.message}`, 'ports');
    throw e;
  }
  const common: OpenDeviceOptions = { scheduler: sched };
  if (o.addresses !== undefined) common.addresses = o.addresses;
  if (!decision.lag) {
    const devices: Device[] = [];
    try {
      for (let i = 0; i < team.length; i++) {
        const d = await openDeviceWith(
          {
            ...common,
            name: `softroce_${team[i]!.netdev}`,
            address: links[i]!.localIp,
            netdev: team[i]!.netdev,
            link: links[i]!,
            ...(o.gidTblLen !== undefined ? { gidTblLen: o.gidTblLen } : {}),
          },
          (n, s, m) => new Device(n, s, m),
        );
        devices.push(d);
      }
    } catch (e) {
      for (const d of devices) await d.close().catch(() => undefined);
      if (!given) for (const l of links.slice(devices.length)) await l.close().catch(() => undefined);
      throw e;
    }
    return { lag: false, reason: decision.reason, refusals: decision.refusals, devices };
  }
  const inUse = o.devicesInUse ?? [...getDeviceList().map((d) => d.name), ...openBonds];
  const name = bondDeviceName('softroce', inUse);
  const netdev = cfg.device ?? generateTeamDevname();
  let bondLink: BondLink;
  try {
    bondLink = new BondLink(links);
  } catch (e) {
    if (!given) for (const l of links) await l.close().catch(() => undefined);
    throw new VerbsError('EINVAL', op, (e as Error).message, 'ports');
  }
  let dev: BondDevice;
  try {
    dev = (await openDeviceWith(
      { ...common, name, address: bondLink.localIp, netdev, link: bondLink, gidTblLen: bondGidTableSize(o.gidTblLen ?? DEFAULT_GID_TBL_LEN) },
      (n, s, m) => new BondDevice(n, s, m),
    )) as BondDevice;
  } catch (e) {
    // openDevice leaves a link it was given open: ours are closed here.
    if (!given) await bondLink.close().catch(() => undefined);
    throw e;
  }
  const bond = new Bond({ name, netdev, device: dev, config: cfg, mode: decision.mode, rdmaDevice, link: bondLink, specs: team });
  dev.bond = bond;
  openBonds.add(name);
  return { lag: true, mode: decision.mode, bond, device: dev };
}
