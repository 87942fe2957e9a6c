/**
 * teamd's periodic send-and-receive link watches (teamd_lw_psr.c) and the two built on it:
 * `arp_ping` (teamd_lw_arp_ping.c) and `nsna_ping` (teamd_lw_nsna_ping.c); and a port's list of
 * watches under link_watch_policy any / all (teamd_link_watch.c). Same small interface as the
 * ethtool watch (link-watch.ts): `up`, `stop()`, a changed callback; plus `state()`, the plain data
 * teamd's state dump shows for the watch (link_watches.list.link_watch_N).
 *
 * The periodic tick, as lw_psr_callback_periodic: first `init_wait` ms after the start (0: at
 * once, teamd's 1 ns), then every `interval` ms: a reply since the last tick resets `missed` and
 * says up; none counts a miss, and more than `missed_max` misses in a row say down; then the next
 * probe goes out. So a peer that dies is found missed_max + 1 to missed_max + 2 intervals later: the
 * tick after its death still counts the reply to the probe before it, and sends one that is lost. A watch starts with the port's current verdict (teamd: the port's user link-up,
 * false for a new port), so a new port stays down until its first reply.
 *
 * Who sends (link_watch_refresh_forced_send): a port the runner has enabled, or every port while
 * none is enabled; arp_ping's `send_always` sends from disabled ports too. Which replies count
 * (lw_ap_receive): any ARP packet the port sees, unless `validate_active` (on an enabled port) or
 * `validate_inactive` (on a disabled one) asks for a REPLY between source_host and target_host;
 * nsna_ping: an NA for target_host with its link-layer address (lw_nsnap_receive).
 *
 * target_host / source_host as a host name: resolved once when the watch starts, as teamd's
 * getaddrinfo at load time (the probes wait for it); a name that does not resolve to the watch's
 * family leaves the watch unable to run (a typed error, the watch stays down).
 */
import { lookup } from 'node:dns/promises';
import { isIPv4, isIPv6 } from 'node:net';
import type { Link } from '../roce/link/link.js';
import type { Scheduler, TimerHandle } from '../roce/sched.js';
import { VerbsError } from '../verbs/errors.js';
import { EthtoolWatch } from './link-watch.js';
import type { ArpPingLinkWatch, EthtoolLinkWatch, LinkWatchPolicy, NsnaPingLinkWatch } from './team-config.js';
import { packetProbeIo, type ProbeIo, type ProbeIoFactory } from './probe-io.js';
import { arpReplyValid, ipv6Hex, naValid, type ProbeReply } from './probe-wire.js';

/** Resolves a host name to one address of a family (default: the system resolver, once). */
export type HostResolver = (host: string, family: 4 | 6) => Promise<string>;

const systemResolver: HostResolver = async (host, family) => (await lookup(host, { family })).address;

export interface PsrWatchOptions {
  sched: Scheduler;
  /** the port's netdev (the probe socket binds to it) */
  netdev: string;
  /** the watch's verdict changed */
  changed: (up: boolean) => void;
  /** the probe I/O (default: AF_PACKET through the addon) */
  io?: ProbeIoFactory;
  resolve?: HostResolver;
  /** teamd's "enabled" port option: the runner sends on the port (default: the watch's verdict) */
  enabled?: () => boolean;
  /** teamd's forced_send: the port is enabled or no port of the team is (default: always) */
  forcedSend?: () => boolean;
  /** the port's verdict when the watch starts (default false: a new port) */
  initialUp?: boolean;
  /** the watch cannot run (its error is also in `error`) */
  cannotRun?: (e: VerbsError) => void;
}

/** What teamd's state dump shows for an arp_ping watch (lw_ap_state_vals + the common name, up, down_count). */
export interface ArpPingState {
  name: 'arp_ping';
  up: boolean;
  down_count: number;
  source_host: string;
  target_host: string;
  interval: number;
  init_wait: number;
  validate_active: boolean;
  validate_inactive: boolean;
  send_always: boolean;
  missed_max: number;
  missed: number;
}
/** lw_nsnap_state_vals + the common ones */
export interface NsnaPingState {
  name: 'nsna_ping';
  up: boolean;
  down_count: number;
  target_host: string;
  interval: number;
  init_wait: number;
  missed_max: number;
  missed: number;
}
export interface EthtoolState {
  name: 'ethtool';
  up: boolean;
  down_count: number;
  delay_up: number;
  delay_down: number;
}
export type LinkWatchState = ArpPingState | NsnaPingState | EthtoolState;

/** The common part: the tick, the missed counter, the verdict. */
abstract class PsrWatch {
  readonly netdev: string;
  readonly interval: number;
  readonly initWait: number;
  readonly missedMax: number;
  /** probes sent, send errors, replies counted (beyond teamd's state: tests, teamdctl) */
  readonly stats = { sent: 0, sendErrors: 0, replies: 0 };
  protected readonly o: PsrWatchOptions;
  #up: boolean;
  #missed = 0;
  #downCount = 0;
  #reply = false;
  #io: ProbeIo | null = null;
  #timer: TimerHandle | null = null;
  #next = 0;
  #stopped = false;
  #error: VerbsError | null = null;

  protected constructor(cfg: { interval: number; initWait: number; missedMax: number }, o: PsrWatchOptions) {
    this.netdev = o.netdev;
    this.interval = cfg.interval;
    this.initWait = cfg.initWait;
    this.missedMax = cfg.missedMax;
    this.o = o;
    this.#up = o.initialUp ?? false;
  }

  abstract readonly name: 'arp_ping' | 'nsna_ping';
  /** resolve the hosts, then open the I/O; called once by the subclass's constructor */
  protected abstract open(): Promise<ProbeIo> | ProbeIo;
  /** does this packet count as a reply? */
  protected abstract counts(p: ProbeReply): boolean;
  /** does the port send a probe this tick? */
  protected abstract sends(): boolean;

  get up(): boolean {
    return this.#up;
  }
  get missed(): number {
    return this.#missed;
  }
  get downCount(): number {
    return this.#downCount;
  }
  /** why the watch cannot run (it then stays down), or null */
  get error(): VerbsError | null {
    return this.#error;
  }
  /** the port is enabled (the runner sends on it) */
  protected enabled(): boolean {
    return this.o.enabled?.() ?? this.#up;
  }
  protected forcedSend(): boolean {
    return this.o.forcedSend?.() ?? true;
  }

  protected start(): void {
    let r: Promise<ProbeIo> | ProbeIo;
    try {
      r = this.open();
    } catch (e) {
      this.fail(e);
      return;
    }
    if (r instanceof Promise)
      r.then(
        (io) => this.run(io),
        (e: unknown) => this.fail(e),
      );
    else this.run(r);
  }

  protected onReply = (p: ProbeReply): void => {
    if (this.#stopped || !this.counts(p)) return;
    this.stats.replies++;
    this.#reply = true;
  };

  private run(io: ProbeIo): void {
    if (this.#stopped) {
      io.close();
      return;
    }
    this.#io = io;
    this.#next = this.o.sched.now() + this.initWait;
    this.#timer = this.o.sched.setTimer(this.initWait, () => this.tick());
  }

  private fail(e: unknown): void {
    if (this.#stopped) return;
    this.#error =
      e instanceof VerbsError
        ? e
        : new VerbsError('EINVAL', `link_watch ${this.name}`, `${this.netdev}: ${e instanceof Error ? e.message : String(e)}`, 'link_watch');
    // A watch that cannot probe finds no reply: it says down, as it would after missed_max misses.
    this.report(false);
    this.o.cannotRun?.(this.#error);
  }

  private tick(): void {
    this.#timer = null;
    if (this.#stopped) return;
    let up = this.#up;
    if (this.#reply) {
      up = true;
      this.#missed = 0;
    } else {
      this.#missed++;
      if (this.#missed > this.missedMax && up) up = false;
    }
    this.report(up);
    this.#reply = false;
    if (this.#stopped) return; // the verdict's listener stopped us
    if (this.sends()) {
      const r = this.#io!.send();
      if (r < 0) this.stats.sendErrors++;
      else this.stats.sent++;
    }
    // teamd's timerfd: periodic from the first expiry, no drift; interval 0 is a one-shot timer there.
    if (this.interval === 0) return;
    this.#next += this.interval;
    this.#timer = this.o.sched.setTimer(Math.max(0, this.#next - this.o.sched.now()), () => this.tick());
  }

  private report(up: boolean): void {
    if (up === this.#up) return;
    this.#up = up;
    if (!up) this.#downCount++;
    this.o.changed(up);
  }

  stop(): void {
    if (this.#stopped) return;
    this.#stopped = true;
    this.o.sched.clearTimer(this.#timer);
    this.#timer = null;
    this.#io?.close();
    this.#io = null;
  }

  abstract state(): ArpPingState | NsnaPingState;
}

async function resolveHost(o: PsrWatchOptions, kind: string, what: string, host: string, family: 4 | 6): Promise<string> {
  if (family === 4 ? isIPv4(host) : isIPv6(host)) return host;
  if (family === 4 ? isIPv6(host) : isIPv4(host))
    throw new VerbsError('EINVAL', `link_watch ${kind}`, `${what} "${host}" is not an IPv${family} address`, what);
  try {
    const a = await (o.resolve ?? systemResolver)(host, family);
    if (family === 4 ? isIPv4(a) : isIPv6(a)) return a;
    throw new Error(`resolved to "${a}"`);
  } catch (e) {
    throw new VerbsError('ENOENT', `link_watch ${kind}`, `${what} "${host}" does not resolve to an IPv${family} address (${(e as Error).message})`, what);
  }
}

const isLiteral = (host: string, family: 4 | 6): boolean => (family === 4 ? isIPv4(host) : isIPv6(host));

/** teamd's arp_ping: ARP requests to target_host, replies counted (validated on request). */
export class ArpPingWatch extends PsrWatch {
  readonly name = 'arp_ping';
  readonly cfg: ArpPingLinkWatch;
  #source: string;
  #target: string;

  constructor(cfg: ArpPingLinkWatch, o: PsrWatchOptions) {
    super(cfg, o);
    this.cfg = cfg;
    this.#source = cfg.sourceHost;
    this.#target = cfg.targetHost;
    this.start();
  }

  /** the resolved source and target (the config's text until resolved) */
  get sourceHost(): string {
    return this.#source;
  }
  get targetHost(): string {
    return this.#target;
  }

  protected open(): Promise<ProbeIo> | ProbeIo {
    const io = (): ProbeIo =>
      (this.o.io ?? packetProbeIo())(
        { kind: 'arp_ping', netdev: this.netdev, source: this.#source, target: this.#target, vlanId: this.cfg.vlanId },
        this.onReply,
      );
    if (isLiteral(this.#source, 4) && isLiteral(this.#target, 4)) return io();
    return (async () => {
      this.#source = await resolveHost(this.o, 'arp_ping', 'source_host', this.#source, 4);
      this.#target = await resolveHost(this.o, 'arp_ping', 'target_host', this.#target, 4);
      return io();
    })();
  }

  protected counts(p: ProbeReply): boolean {
    if (p.kind !== 'arp') return false;
    const enabled = this.enabled();
    if ((enabled && this.cfg.validateActive) || (!enabled && this.cfg.validateInactive)) return arpReplyValid(p, this.#source, this.#target);
    return true;
  }

  protected sends(): boolean {
    return this.forcedSend() || this.cfg.sendAlways;
  }

  state(): ArpPingState {
    return {
      name: 'arp_ping',
      up: this.up,
      down_count: this.downCount,
      source_host: this.#source,
      target_host: this.#target,
      interval: this.interval,
      init_wait: this.initWait,
      validate_active: this.cfg.validateActive,
      validate_inactive: this.cfg.validateInactive,
      send_always: this.cfg.sendAlways,
      missed_max: this.missedMax,
      missed: this.missed,
    };
  }
}

/** teamd's nsna_ping: Neighbour Solicitations for target_host, its Neighbour Advertisements counted. */
export class NsnaPingWatch extends PsrWatch {
  readonly name = 'nsna_ping';
  readonly cfg: NsnaPingLinkWatch;
  #target: string;
  #targetHex = '';

  constructor(cfg: NsnaPingLinkWatch, o: PsrWatchOptions) {
    super(cfg, o);
    this.cfg = cfg;
    this.#target = cfg.targetHost;
    this.start();
  }

  get targetHost(): string {
    return this.#target;
  }

  protected open(): Promise<ProbeIo> | ProbeIo {
    const io = (): ProbeIo => {
      this.#targetHex = ipv6Hex(this.#target);
      return (this.o.io ?? packetProbeIo())({ kind: 'nsna_ping', netdev: this.netdev, source: '::', target: this.#target }, this.onReply);
    };
    if (isLiteral(this.#target, 6)) return io();
    return (async () => {
      this.#target = await resolveHost(this.o, 'nsna_ping', 'target_host', this.#target, 6);
      return io();
    })();
  }

  protected counts(p: ProbeReply): boolean {
    return p.kind === 'na' && naValid(p, this.#targetHex);
  }

  /** teamd's nsna_ping has no send_always: only forced_send */
  protected sends(): boolean {
    return this.forcedSend();
  }

  state(): NsnaPingState {
    return {
      name: 'nsna_ping',
      up: this.up,
      down_count: this.downCount,
      target_host: this.#target,
      interval: this.interval,
      init_wait: this.initWait,
      missed_max: this.missedMax,
      missed: this.missed,
    };
  }
}

/** One watch of a port's list, as PortLinkWatches runs it. */
export interface PortWatch {
  readonly up: boolean;
  stop(): void;
  state(): LinkWatchState;
  /** why it cannot run, or null */
  readonly error?: VerbsError | null;
}

/**
 * A port's link watches under link_watch_policy (teamd_link_watch_port_up): "any", the port is up
 * when one of them says up; "all", when every one does. `changed` hears the port's verdict when
 * it changes. Watches are made by `make(changed)` in list order (their state ids: link_watch_0, ...).
 */
export class PortLinkWatches {
  readonly policy: LinkWatchPolicy;
  readonly watches: readonly PortWatch[];
  readonly #changed: (up: boolean) => void;
  #up: boolean;
  #building = true;

  constructor(policy: LinkWatchPolicy, makers: readonly ((changed: () => void) => PortWatch)[], changed: (up: boolean) => void) {
    this.policy = policy;
    this.#changed = changed;
    const ws: PortWatch[] = [];
    for (const m of makers) ws.push(m(() => this.recompute()));
    this.watches = ws;
    this.#building = false;
    this.#up = this.evaluate();
  }

  private evaluate(): boolean {
    if (this.watches.length === 0) return true;
    return this.policy === 'all' ? this.watches.every((w) => w.up) : this.watches.some((w) => w.up);
  }

  private recompute(): void {
    if (this.#building) return;
    const up = this.evaluate();
    if (up === this.#up) return;
    this.#up = up;
    this.#changed(up);
  }

  get up(): boolean {
    return this.#up;
  }

  /** The watches that cannot run, with why. */
  get errors(): VerbsError[] {
    return this.watches.flatMap((w) => (w.error ? [w.error] : []));
  }

  /** teamd's per-port `link_watches` state: the port's verdict and each watch's, as link_watch_N. */
  state(): { up: boolean; list: Record<string, LinkWatchState> } {
    const list: Record<string, LinkWatchState> = {};
    this.watches.forEach((w, i) => {
      list[`link_watch_${i}`] = w.state();
    });
    return { up: this.#up, list };
  }

  stop(): void {
    for (const w of this.watches) w.stop();
  }
}

/** The ethtool watch (link-watch.ts) as one watch of a port's list, with teamd's down_count for its state. */
export function ethtoolPortWatch(link: Link, cfg: Pick<EthtoolLinkWatch, 'delayUp' | 'delayDown'>, sched: Scheduler, changed: () => void): PortWatch {
  let downs = 0;
  const w = new EthtoolWatch(link, cfg, sched, (up) => {
    if (!up) downs++;
    changed();
  });
  return {
    get up() {
      return w.up;
    },
    error: null,
    stop: () => w.stop(),
    state: () => ({ name: 'ethtool', up: w.up, down_count: downs, delay_up: w.delayUp, delay_down: w.delayDown }),
  };
}
