/**
 * A bonded RDMA device over two ports, as mlx5's RoCE LAG makes one (the Mellanox manual's RoCE LAG;
 * drivers/net/ethernet/mellanox/mlx5/core/lag): teamd's config decides (lag-mode.ts); in LAG mode
 * ONE verbs Device named `<driver>_bond_<n>` with ONE port, its GID table half the per-port size,
 * whose QPs each send on one of the two physical ports (affinity.ts: explicit, flow entropy,
 * round-robin; active-backup: the active port), and whose traffic moves off a port teamd's link
 * watches find dead (ethtool: link-watch.ts; arp_ping / nsna_ping: link-watch-psr.ts; a port's list
 * under link_watch_policy any / all) and back when it returns; RC retransmission recovers what the
 * dead port lost. Otherwise two ordinary devices, one per port.
 *
 * Notifier events, as the NetDev talk's LAG notifiers: 'prechange' (before a configuration change;
 * a listener refuses by calling `refuse(why)` or throwing, and the bond stays as it was), 'change',
 * 'portUp' / 'portDown' (a link watch's verdict), 'activePortChanged' (active-backup), 'gidChange'
 * (the bond port's GID table).
 *
 * 802.3ad: teamd's lacp runner (lacp.ts) decides which ports carry traffic. leaveLag: mlx5's
 * re-registration (fatal events) or, with keepResources, VF-LAG's redirection.
 *
 * Not here yet (issue 14): the tipc link watch (ignored, with a warning), GSI traffic per flow
 * (QP1 sends on the active / first live port).
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
import { ArpPingWatch, ethtoolPortWatch, NsnaPingWatch, PortLinkWatches, type HostResolver, type LinkWatchState, type PortWatch } from './link-watch-psr.js';
import type { ProbeIoFactory } from './probe-io.js';
import type { LinkWatchStateSource } from './link-watch.js';
import { BondCtlServer } from './bond-ctl.js';
import { toPlain } from './jansson.js';
import { initialLagPort, remapHash, selectActive, type AffinitySource } from './affinity.js';
import { LacpRunner, type LacpPortIo } from './lacp.js';
import { openLacpPacketIo } from './lacp-io.js';

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
  /** the arp_ping / nsna_ping watches' probe I/O (default: AF_PACKET sockets on the ports' netdevs; tests fake it) */
  linkWatchIo?: ProbeIoFactory;
  /** resolves a link watch's host names (default: the system resolver) */
  resolveHost?: HostResolver;
  /**
   * The lacp runner's LACPDU I/O per port: 'packet' (an AF_PACKET socket on the port's netdev,
   * lacp-io.ts; the default with real ports), 'none' (no runner: ports follow their link watch, a
   * static 802.3ad; the default with `links`), or a factory (tests: a fake peer).
   */
  lacpIo?: 'packet' | 'none' | ((netdev: string, lagPort: number) => LacpPortIo);
  /** the lacp runner's Actor_System (the team's MAC; default: port 1's LACP I/O MAC) */
  systemMac?: Uint8Array;
  /**
   * Leaving LAG (bond.leaveLag) keeps the bond device's resources, as NVIDIA's VF-LAG does (traffic is
   * redirected to the port that stays); false (default): mlx5's RoCE LAG, the device is re-registered
   * and its users get fatal events.
   */
  keepResources?: boolean;
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
  watch: PortLinkWatches;
  /** the link watch's verdict; `up` is it and, in 802.3ad with a runner, the runner's 'enabled' */
  carrier: boolean;
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
  readonly #watchIo: ProbeIoFactory | undefined;
  readonly #resolveHost: HostResolver | undefined;
  #ctl: BondCtlServer | null = null;
  readonly #lacpIo: 'packet' | 'none' | ((netdev: string, lagPort: number) => LacpPortIo);
  readonly #systemMac: Uint8Array | undefined;
  #lacp: LacpRunner | null = null;
  #lacpError: VerbsError | null = null;
  #lacpKey = '';
  /** @internal createBond */
  keepResources = false;
  #left = false;
  /** failovers: QP moves from one port to the other, over the bond's life; resends: moves off a dead port that resent what was in flight */
  readonly stats = { qpMoves: 0, portDowns: 0, portUps: 0, resends: 0 };

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
    linkWatchIo?: ProbeIoFactory | undefined;
    resolveHost?: HostResolver | undefined;
    lacpIo?: 'packet' | 'none' | ((netdev: string, lagPort: number) => LacpPortIo);
    systemMac?: Uint8Array;
  }) {
    super();
    this.#watchIo = o.linkWatchIo;
    this.#resolveHost = o.resolveHost;
    this.name = o.name;
    this.netdev = o.netdev;
    this.device = o.device;
    this.#config = o.config;
    this.#mode = o.mode;
    this.#rdmaDevice = o.rdmaDevice;
    this.#link = o.link;
    this.#lacpIo = o.lacpIo ?? 'none';
    this.#systemMac = o.systemMac;
    const port = o.device.ports[0]!;
    this.#ports = o.specs.map((s, i) => {
      const link = o.link.members[i]!;
      const watch = this.makeWatch(s.netdev, link, i + 1);
      return {
        lagPort: i + 1,
        netdev: s.netdev,
        link,
        member: new MemberPort(port, i + 1, s.netdev, link),
        watch,
        carrier: watch.up,
        up: watch.up,
        prio: 0,
        sticky: false,
      };
    });
    this.applyPortConfig();
    this.startLacp();
    for (const p of this.#ports) p.up = this.usable(p);
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
  /** what the bond does not do with the config (link watches it does not run, or that cannot run here) */
  get warnings(): readonly TeamConfigWarning[] {
    const cannot = this.#ports.flatMap((p) => p.watch.errors.map((e) => ({ path: `ports.${p.netdev}.link_watch`, message: `cannot run: ${e.message}` })));
    return cannot.length === 0 ? this.#warnings : [...this.#warnings, ...cannot];
  }
  /**
   * teamd's per-port `link_watches` state (teamdctl state): the port's verdict under
   * link_watch_policy and each watch's state as link_watch_N (name, up, down_count, and the
   * watch's own: delay_up / delay_down; interval, init_wait, missed_max, missed, hosts, ...).
   */
  linkWatchState(lagPort: number): { up: boolean; list: Record<string, LinkWatchState> } {
    return this.portAt('linkWatchState', lagPort).watch.state();
  }
  get ports(): readonly BondPortState[] {
    return this.#ports.map((p) => ({ lagPort: p.lagPort, netdev: p.netdev, link: p.link, member: p.member, up: p.up, prio: p.prio, sticky: p.sticky }));
  }
  /** The TX counters of physical port `lagPort` (the packets its QPs sent on it), and the datagrams it received. */
  portCounters(lagPort: number): Record<CounterName, number> & { rx_datagrams: number; rx_bytes: number } {
    const p = this.portAt('portCounters', lagPort);
    return { ...p.member.counters.snapshot(), rx_datagrams: this.#link.rxDatagrams(lagPort - 1), rx_bytes: this.#link.rxBytes(lagPort - 1) };
  }

  /** The link watches port `lagPort` runs, in teamd's link_watch_0, _1, ... order (teamdctl's state). */
  portLinkWatches(lagPort: number): readonly LinkWatchStateSource[] {
    // A snapshot per watch: the dump reads each once (link-watch-psr.ts's state() has teamd's keys).
    return this.portAt('portLinkWatches', lagPort).watch.watches.map((w) => {
      const { name, up, down_count: downCount, ...own } = w.state();
      return { name, up, downCount, state: () => own };
    });
  }

  /** How many of the bond device's QPs (QP1 aside) have port `lagPort` as configured port, and how many send on it now. */
  portQps(lagPort: number): { configured: number; active: number } {
    this.portAt('portQps', lagPort);
    let configured = 0;
    let active = 0;
    for (const qp of this.device.qps.values()) {
      const st = this.#qps.get(qp);
      if (st === undefined || qp.closed) continue;
      if (st.configured === lagPort) configured++;
      if (st.active === lagPort) active++;
    }
    return { configured, active };
  }

  /**
   * Starts the bond's control socket (bond-ctl.ts: teamd's usock protocol, for `softroce teamdctl`) at
   * `path` (default: ctlSocketPath(bond.netdev)); it closes with the bond. Resolves to the path. EBUSY
   * when it already listens, EBADF on a closed bond; a socket a live server holds is EADDRINUSE.
   */
  async listen(path?: string): Promise<string> {
    const op = 'bond.listen';
    if (this.#closed) throw new VerbsError('EBADF', op, `${this.name} is closed`, 'bond');
    if (this.#ctl !== null) throw new VerbsError('EBUSY', op, `${this.name} already listens on ${this.#ctl.path}`, 'path');
    const srv = new BondCtlServer(this);
    this.#ctl = srv;
    try {
      await srv.listen(path);
    } catch (e) {
      this.#ctl = null;
      throw e;
    }
    // closed while binding: no socket left behind
    if (this.#closed) await srv.close();
    return srv.path;
  }

  /** The control socket's path while it listens, else null. */
  get controlPath(): string | null {
    return this.#ctl?.path ?? null;
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

  /** prio and sticky from the config; warnings for the link watches a port does not run (tipc). */
  private applyPortConfig(): void {
    const warnings: TeamConfigWarning[] = [];
    for (const p of this.#ports) {
      const pc = this.#config.ports.get(p.netdev);
      p.prio = pc?.prio ?? TEAMD_DEFAULTS.prio;
      p.sticky = pc?.sticky ?? TEAMD_DEFAULTS.sticky;
      for (const lw of portLinkWatches(this.#config, p.netdev))
        if (lw.name === 'tipc')
          warnings.push({ path: `ports.${p.netdev}.link_watch`, message: "the tipc link watch is not run: it has no say in the port's state" });
    }
    this.#warnings = warnings;
  }

  /**
   * The port's link watches, as teamd loads them (its own list, then the global one) under
   * link_watch_policy: ethtool on the port's link, arp_ping / nsna_ping probing from the port's
   * netdev; tipc is not run (a warning), and a list of only tipc leaves the port on its carrier.
   * `initialUp`: the port's verdict the new watches start from (teamd: the port's user link-up).
   */
  private makeWatch(netdev: string, link: Link, lagPort: number, initialUp = false): PortLinkWatches {
    const run = portLinkWatches(this.#config, netdev).filter((w) => w.name !== 'tipc');
    const makers = run.map((lw) => (changed: () => void): PortWatch => {
      if (lw.name === 'ethtool') return ethtoolPortWatch(link, lw, this.device.sched, changed);
      const o = {
        sched: this.device.sched,
        netdev,
        changed,
        initialUp,
        enabled: () => this.portEnabled(lagPort),
        forcedSend: () => this.portEnabled(lagPort) || !this.#ports.some((p) => this.portEnabled(p.lagPort)),
        ...(this.#watchIo !== undefined ? { io: this.#watchIo } : {}),
        ...(this.#resolveHost !== undefined ? { resolve: this.#resolveHost } : {}),
      };
      return lw.name === 'arp_ping' ? new ArpPingWatch(lw, o) : new NsnaPingWatch(lw, o);
    });
    if (makers.length === 0) makers.push((changed) => ethtoolPortWatch(link, { delayUp: 0, delayDown: 0 }, this.device.sched, changed));
    return new PortLinkWatches(this.#config.linkWatchPolicy, makers, (up) => this.carrierChanged(lagPort, up));
  }

  /**
   * teamd's "enabled" port option, which decides who probes (forced_send) and which validation
   * applies: active-backup enables the active port only; the hash runners every port that is up.
   */
  private portEnabled(lagPort: number): boolean {
    if (this.#mode === 'active-backup') return this.#active === lagPort;
    return this.#ports[lagPort - 1]?.up === true;
  }

  /** New watches after a config change; a port whose verdict differs from the old watch's changes state now. */
  private restartWatches(): void {
    for (const p of this.#ports) {
      p.watch.stop();
      p.watch = this.makeWatch(p.netdev, p.link, p.lagPort, p.carrier);
    }
    for (const p of this.#ports) if (p.watch.up !== p.carrier) this.carrierChanged(p.lagPort, p.watch.up);
  }

  /** the lacp runner (802.3ad with LACPDU I/O), or null */
  get lacp(): LacpRunner | null {
    return this.#lacp;
  }
  /** why the lacp runner could not start (no addon, no CAP_NET_RAW, no such netdev), or null */
  get lacpError(): VerbsError | null {
    return this.#lacpError;
  }

  /**
   * 802.3ad: teamd's lacp runner over each port's LACPDU I/O; ports it has not enabled carry no QP
   * traffic (remapped as a down port is). I/O that cannot be opened leaves no runner, a warning and
   * `lacpError`: the bond then runs a static 802.3ad on its link watches, never crashes.
   */
  private startLacp(): void {
    const r0 = this.#config.runner;
    const key = JSON.stringify([
      this.#mode,
      r0,
      this.#ports.map((p) => [this.#config.ports.get(p.netdev)?.lacpPrio, this.#config.ports.get(p.netdev)?.lacpKey, p.prio, p.sticky]),
    ]);
    // A reconfigure that leaves the runner's settings as they were keeps it running (and its partners).
    if (key === this.#lacpKey && (this.#lacp !== null || this.#lacpError !== null)) return;
    this.#lacpKey = key;
    this.#lacp?.stop();
    this.#lacp = null;
    this.#lacpError = null;
    const r = this.#config.runner;
    if (this.#mode !== '802.3ad' || r.name !== 'lacp' || this.#lacpIo === 'none') return;
    const ios: LacpPortIo[] = [];
    try {
      for (const p of this.#ports) ios.push(this.#lacpIo === 'packet' ? openLacpPacketIo(p.netdev) : this.#lacpIo(p.netdev, p.lagPort));
    } catch (e) {
      for (const io of ios) io.close();
      this.#lacpError = e instanceof VerbsError ? e : new VerbsError('EINVAL', 'lacp', String(e), 'runner');
      this.#warnings = [
        ...this.#warnings,
        { path: 'runner', message: `the lacp runner cannot run: ${this.#lacpError.message}; ports follow their link watch alone` },
      ];
      return;
    }
    const hw = this.#config.hwaddr;
    const system = this.#systemMac ?? (hw !== undefined ? Uint8Array.from(hw.split(':').map((h) => parseInt(h, 16))) : ios[0]!.mac);
    this.#lacp = new LacpRunner({
      config: r,
      system,
      sched: this.device.sched,
      ports: this.#ports.map((p, i) => {
        const pc = this.#config.ports.get(p.netdev);
        return {
          lagPort: p.lagPort,
          netdev: p.netdev,
          lacpPrio: pc?.lacpPrio ?? TEAMD_DEFAULTS.lacpPrio,
          lacpKey: pc?.lacpKey ?? TEAMD_DEFAULTS.lacpKey,
          prio: p.prio,
          sticky: p.sticky,
          io: ios[i]!,
        };
      }),
      changed: () => {
        for (const p of this.#ports) this.portState(p.lagPort, this.usable(p));
      },
    });
    for (const p of this.#ports) if (p.carrier) this.#lacp.linkUpdate(p.lagPort, true);
  }

  private usable(p: PortRec): boolean {
    if (this.#left && p.lagPort !== 1) return false;
    const l = this.#lacp;
    return p.carrier && (l === null || (l.carrier && l.enabled(p.lagPort)));
  }

  /** A link watch's verdict: the runner hears it, then the port's state follows. */
  private carrierChanged(lagPort: number, up: boolean): void {
    if (this.#closed) return;
    const p = this.#ports[lagPort - 1]!;
    p.carrier = up;
    this.#lacp?.linkUpdate(lagPort, up);
    this.portState(lagPort, this.usable(p));
  }

  private stop(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const p of this.#ports) p.watch.stop();
    this.#lacp?.stop();
    openBonds.delete(this.name);
    const ctl = this.#ctl;
    this.#ctl = null;
    if (ctl !== null) this.#ctlClosing = ctl.close();
  }
  #ctlClosing: Promise<void> = Promise.resolve();

  /** Port `lagPort` can carry traffic or not (link watch, lacp runner): events, the active port, every QP's active port. */
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
      const fromDead = up[st.active - 1] !== true;
      st.active = to;
      qp.txPort = this.#ports[to - 1]!.member;
      this.stats.qpMoves++;
      // Its next packets leave by the new port. Off a dead port, what it had in flight is resent
      // there now rather than one ACK timeout later (retry.ts resendOnNewPath); back to a port
      // that came up, the old one still carries what is in flight: no resend.
      if (qp.state === 'RTS' || qp.state === 'SQD') {
        if (!fromDead) this.device.kick(qp);
        else if (this.device.resendOnNewPath(qp)) this.stats.resends++;
      }
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
    this.startLacp();
    this.restartWatches();
    for (const p of this.#ports) this.portState(p.lagPort, this.usable(p));
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
    if (this.#left) throw new VerbsError('EBADF', op, `${this.name} left LAG`, 'bond');
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

  /** @internal createBond: how ordinary devices are opened when the bond leaves LAG */
  reopen: { common: OpenDeviceOptions; gidTblLen: number | undefined } = { common: {}, gidTblLen: undefined };

  /** whether the bond left LAG (leaveLag) */
  get left(): boolean {
    return this.#left;
  }

  /**
   * Leaves LAG mode, as mlx5 does when the team stops being a LAG (a runner with no LAG mode, a port
   * removed, the team deleted): one ordinary device per port takes the bond's place (softroce_<netdev>,
   * on the member's link, as createBond makes them outside LAG), and:
   * - keepResources false (the Mellanox manual's RoCE LAG: entering or leaving LAG re-registers the
   *   device): the bond device gets IBV_EVENT_DEVICE_FATAL ('async' DEVICE_FATAL), every QP moves to
   *   ERR and its outstanding work requests complete with WR_FLUSH_ERR on CQs that stay pollable; the
   *   device is unregistered (gone from the bonds; it sends and receives nothing more) and its users
   *   close it (which no longer closes the ports' links, now the new devices');
   * - keepResources true (VF-LAG): nothing fatal, the bond device keeps its resources and becomes port
   *   1's device; QPs on port 2 move to port 1 (remapped as off a down port, traffic redirected) and
   *   port 2 goes to a new ordinary device.
   * Then 'leftLag' { devices, keepResources }. Resolves to the devices, port order.
   */
  async leaveLag(): Promise<readonly Device[]> {
    const op = 'leaveLag';
    if (this.#closed || this.#left) throw new VerbsError('EBADF', op, `${this.name} is no longer a LAG device`, 'bond');
    const keep = this.keepResources;
    const open = async (p: PortRec): Promise<Device> => {
      const { gidTblLen } = this.reopen;
      return openDeviceWith(
        {
          ...this.reopen.common,
          name: `softroce_${p.netdev}`,
          address: p.link.localIp,
          netdev: p.netdev,
          link: p.link,
          ...(gidTblLen !== undefined ? { gidTblLen } : {}),
        },
        (n, s, m) => new Device(n, s, m),
      );
    };
    this.#left = true;
    if (keep) {
      this.#lacp?.stop();
      this.#lacp = null;
      for (const p of this.#ports) this.portState(p.lagPort, this.usable(p));
      const others: Device[] = [];
      for (const p of this.#ports.slice(1)) {
        this.#link.release(p.lagPort - 1);
        p.watch.stop();
        others.push(await open(p));
      }
      const devices = [this.device, ...others];
      emitGuarded(this, 'leftLag', { devices, keepResources: true });
      return devices;
    }
    this.stop();
    this.device.asyncEvent({ type: 'DEVICE_FATAL' });
    for (const qp of [...this.device.qps.values()]) if (!qp.closed && qp.state !== 'RESET' && qp.state !== 'ERR') qp.modify({ state: 'ERR' });
    const devices: Device[] = [];
    for (const p of this.#ports) {
      this.#link.release(p.lagPort - 1);
      devices.push(await open(p));
    }
    emitGuarded(this, 'leftLag', { devices, keepResources: false });
    return devices;
  }

  /** Closes the bond device (and the ports' links). */
  async close(): Promise<void> {
    this.stop();
    await this.device.close();
    await this.#ctlClosing;
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
  const bond = new Bond({
    name,
    netdev,
    device: dev,
    config: cfg,
    mode: decision.mode,
    rdmaDevice,
    link: bondLink,
    specs: team,
    linkWatchIo: o.linkWatchIo,
    resolveHost: o.resolveHost,
    lacpIo: o.lacpIo ?? (given ? 'none' : 'packet'),
    ...(o.systemMac !== undefined ? { systemMac: o.systemMac } : {}),
  });
  bond.keepResources = o.keepResources === true;
  bond.reopen = { common, gidTblLen: o.gidTblLen };
  dev.bond = bond;
  openBonds.add(name);
  return { lag: true, mode: decision.mode, bond, device: dev };
}
