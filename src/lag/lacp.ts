/**
 * teamd's lacp runner (libteam teamd/teamd_runner_lacp.c; IEEE 802.1AX), per port of a bond:
 *
 * - Port states DISABLED (no carrier), EXPIRED (carrier up, or the partner went quiet once),
 *   CURRENT (a LACPDU arrived within the timeout), DEFAULTED (quiet for two timeouts: partner
 *   forgotten). Carrier up -> EXPIRED, down -> DISABLED; each change sends a LACPDU at once.
 * - Periodic TX while the port is not DISABLED and we (config `active`) or the partner are active:
 *   every 1 s when the partner asked for the short timeout (its TIMEOUT bit), else every 30 s.
 * - Timeout: 3 x our interval (1 s with `fast_rate`, else 30 s) after the last LACPDU; CURRENT ->
 *   EXPIRED (then forced fast: 3 s) -> DEFAULTED.
 * - Aggregation: a CURRENT port is selected into an aggregator with the ports it can aggregate with
 *   (same actor key, partner key and partner system); one aggregator is chosen by
 *   `agg_select_policy`; the actor advertises SYNCHRONIZATION on ports of the chosen aggregator and
 *   COLLECTING | DISTRIBUTING once the partner is in sync.
 * - A port carries traffic (`enabled`) when it is in the chosen aggregator and its partner says
 *   SYNCHRONIZATION | COLLECTING | DISTRIBUTING (teamd checks SYNCHRONIZATION only; 802.1AX's Mux
 *   machine enables distribution once the partner collects, which is what we wait for). The team's
 *   carrier is up while at least `min_ports` ports are enabled.
 *
 * I/O is a LacpPortIo per port (lacp-io.ts: an AF_PACKET socket; tests: a fake peer); timers run on the
 * scheduler (a fake clock in tests). Not here: the Marker protocol, half-duplex detection (teamd
 * disables ports with duplex 0; a softroce port has no duplex), `bandwidth` aggregator selection
 * (no port speeds: it selects by port count, as `count`).
 */
import type { Scheduler, TimerHandle } from '../roce/sched.js';
import type { AggSelectPolicy, LacpRunnerConfig } from './team-config.js';
import { copyInfo, emitLacpdu, emptyInfo, infoEqual, LACP_STATE as S, LACPDU_LEN, parseLacpdu, type LacpInfo } from './lacpdu.js';

/** teamd LACP_PERIODIC_SHORT / _LONG (ms) and LACP_PERIODIC_MUL */
export const LACP_FAST_MS = 1000;
export const LACP_SLOW_MS = 30000;
export const LACP_TIMEOUT_MUL = 3;

/** One port's frames: a packet socket for Ethertype 0x8809 (lacp-io.ts) or a test's fake wire. */
export interface LacpPortIo {
  /** the port's own MAC: the frames' source */
  readonly mac: Uint8Array;
  send(frame: Uint8Array): void;
  /** every frame received on the port (slow protocols), with its length */
  setReceiver(fn: (frame: Uint8Array, len: number) => void): void;
  close(): void;
}

export type LacpPortStateName = 'disabled' | 'current' | 'expired' | 'defaulted';

export interface LacpPortSpec {
  readonly lagPort: number;
  readonly netdev: string;
  /** Actor_Port (teamd: the ifindex; default the lag port number) */
  readonly portId?: number;
  readonly lacpPrio: number;
  readonly lacpKey: number;
  /** the port's teamd prio (agg_select_policy port_config) and sticky */
  readonly prio: number;
  readonly sticky: boolean;
  readonly io: LacpPortIo;
}

/** A port as teamdctl's lacp state shows it. */
export interface LacpPortView {
  readonly lagPort: number;
  readonly netdev: string;
  readonly state: LacpPortStateName;
  readonly selected: boolean;
  /** the aggregator's id: its lead port's lag port number (0: none) */
  readonly aggregator: number;
  readonly enabled: boolean;
  readonly actor: LacpInfo;
  readonly partner: LacpInfo;
  readonly txPdus: number;
  readonly rxPdus: number;
  readonly rxBad: number;
}

interface Port {
  readonly spec: LacpPortSpec;
  state: LacpPortStateName;
  linkUp: boolean;
  actor: LacpInfo;
  partner: LacpInfo;
  partnerLast: LacpInfo;
  aggLead: Port | null;
  enabled: boolean;
  periodic: TimerHandle | null;
  timeout: TimerHandle | null;
  txPdus: number;
  rxPdus: number;
  rxBad: number;
}

export class LacpRunner {
  readonly #cfg: LacpRunnerConfig;
  readonly #sched: Scheduler;
  readonly #ports: Port[];
  readonly #changed: () => void;
  readonly #frame = new Uint8Array(LACPDU_LEN);
  #selected: Port | null = null;
  #carrier = false;
  #stopped = false;

  /**
   * `system`: the team's MAC (Actor_System); `changed` runs after any port's `enabled` or the carrier
   * changed (the bond remaps its QPs).
   */
  constructor(o: { config: LacpRunnerConfig; system: Uint8Array; ports: readonly LacpPortSpec[]; sched: Scheduler; changed: () => void }) {
    this.#cfg = o.config;
    this.#sched = o.sched;
    this.#changed = o.changed;
    this.#ports = o.ports.map((spec) => {
      const actor = emptyInfo();
      actor.systemPriority = o.config.sysPrio;
      actor.system = Uint8Array.from(o.system.subarray(0, 6));
      actor.key = spec.lacpKey;
      actor.portPriority = spec.lacpPrio;
      actor.port = spec.portId ?? spec.lagPort;
      const p: Port = {
        spec,
        state: 'disabled',
        linkUp: false,
        actor,
        partner: emptyInfo(),
        partnerLast: emptyInfo(),
        aggLead: null,
        enabled: false,
        periodic: null,
        timeout: null,
        txPdus: 0,
        rxPdus: 0,
        rxBad: 0,
      };
      spec.io.setReceiver((f, len) => this.recv(p, f, len));
      return p;
    });
    for (const p of this.#ports) this.actorUpdate(p);
  }

  /** the team's carrier: at least min_ports ports enabled */
  get carrier(): boolean {
    return this.#carrier;
  }
  /** whether port `lagPort` carries traffic (selected, in the chosen aggregator, partner collecting / distributing) */
  enabled(lagPort: number): boolean {
    return this.#ports[lagPort - 1]?.enabled === true;
  }
  port(lagPort: number): LacpPortView {
    const p = this.#ports[lagPort - 1];
    if (p === undefined) throw new RangeError(`LacpRunner: no port ${lagPort}`);
    return {
      lagPort,
      netdev: p.spec.netdev,
      state: p.state,
      selected: p.aggLead !== null,
      aggregator: p.aggLead?.spec.lagPort ?? 0,
      enabled: p.enabled,
      actor: copyInfo(p.actor),
      partner: copyInfo(p.partner),
      txPdus: p.txPdus,
      rxPdus: p.rxPdus,
      rxBad: p.rxBad,
    };
  }

  /** The port's carrier (its ethtool link watch): teamd's lacp_port_link_update. */
  linkUpdate(lagPort: number, up: boolean): void {
    const p = this.#ports[lagPort - 1];
    if (p === undefined || this.#stopped || p.linkUp === up) return;
    p.linkUp = up;
    this.setState(p, up ? 'expired' : 'disabled');
  }

  stop(): void {
    if (this.#stopped) return;
    this.#stopped = true;
    for (const p of this.#ports) {
      this.#sched.clearTimer(p.periodic);
      this.#sched.clearTimer(p.timeout);
      p.periodic = p.timeout = null;
      p.spec.io.close();
    }
  }

  private setState(p: Port, to: LacpPortStateName): void {
    if (to === p.state) return;
    switch (to) {
      case 'current':
        break;
      case 'expired':
        // Transient: the partner is asked (and we send) at the fast rate to get back in touch.
        p.partner.state |= S.TIMEOUT;
        p.partner.state &= ~S.SYNCHRONIZATION;
        this.armTimeout(p, true);
        break;
      case 'defaulted':
        this.#sched.clearTimer(p.timeout);
        p.timeout = null;
        p.partner = emptyInfo();
        p.partner.state = S.TIMEOUT;
        break;
      case 'disabled':
        this.#sched.clearTimer(p.timeout);
        p.timeout = null;
        p.partner = emptyInfo();
        break;
    }
    p.state = to;
    this.partnerUpdate(p);
    this.aggUpdate(p);
    this.actorUpdate(p);
    this.send(p);
  }

  /** The periodic timer follows the partner's TIMEOUT bit and activity (teamd lacp_port_partner_update). */
  private partnerUpdate(p: Port): void {
    p.partnerLast = copyInfo(p.partner);
    this.armPeriodic(p);
  }

  private armPeriodic(p: Port): void {
    this.#sched.clearTimer(p.periodic);
    p.periodic = null;
    const active = this.#cfg.active || (p.partner.state & S.ACTIVITY) !== 0;
    if (this.#stopped || p.state === 'disabled' || !active) return;
    const ms = (p.partner.state & S.TIMEOUT) !== 0 ? LACP_FAST_MS : LACP_SLOW_MS;
    p.periodic = this.#sched.setTimer(ms, () => {
      p.periodic = null;
      this.actorUpdate(p);
      this.send(p);
      this.armPeriodic(p);
    });
  }

  private armTimeout(p: Port, fastForced: boolean): void {
    this.#sched.clearTimer(p.timeout);
    const ms = (fastForced || this.#cfg.fastRate ? LACP_FAST_MS : LACP_SLOW_MS) * LACP_TIMEOUT_MUL;
    p.timeout = this.#sched.setTimer(ms, () => {
      p.timeout = null;
      if (p.state === 'current') this.setState(p, 'expired');
      else if (p.state === 'expired') this.setState(p, 'defaulted');
    });
  }

  private recv(p: Port, f: Uint8Array, len: number): void {
    if (this.#stopped) return;
    const pdu = parseLacpdu(f, len);
    if (pdu === null) {
      p.rxBad++;
      return;
    }
    // Frames on a port without carrier do not count (teamd: the port is not present).
    if (!p.linkUp) return;
    p.rxPdus++;
    if (!infoEqual(pdu.actor, p.partner)) {
      p.partner = copyInfo(pdu.actor);
      if (((p.partner.state ^ p.partnerLast.state) & (S.TIMEOUT | S.ACTIVITY)) !== 0) this.partnerUpdate(p);
      else p.partnerLast = copyInfo(p.partner);
      this.aggUpdate(p);
    }
    this.setState(p, 'current');
    this.actorUpdate(p);
    // The partner's view of us is stale: tell it now rather than at the next period.
    if (!infoEqual(pdu.partner, p.actor)) this.send(p);
    this.armTimeout(p, false);
  }

  private send(p: Port): void {
    if (this.#stopped || !p.linkUp) return;
    const f = emitLacpdu({ src: p.spec.io.mac, actor: p.actor, partner: p.partner, collectorMaxDelay: 0 }, this.#frame);
    p.txPdus++;
    p.spec.io.send(f);
  }

  /** teamd lacp_port_actor_update */
  private actorUpdate(p: Port): void {
    let st = 0;
    if (this.#cfg.active) st |= S.ACTIVITY;
    if (this.#cfg.fastRate) st |= S.TIMEOUT;
    if (p.aggLead !== null && p.aggLead === this.#selected) {
      st |= S.SYNCHRONIZATION;
      if ((p.partner.state & S.SYNCHRONIZATION) !== 0) st |= S.COLLECTING | S.DISTRIBUTING;
    }
    if (p.state === 'expired') st |= S.EXPIRED;
    if (p.state === 'defaulted') st |= S.DEFAULTED;
    if (this.#ports.length > 0) st |= S.AGGREGATION;
    p.actor.state = st;
  }

  // --- aggregator selection (teamd lacp_port_agg_update and its helpers) ---

  private aggregable(a: Port, b: Port): boolean {
    if (a.partner.key !== b.partner.key || a.actor.key !== b.actor.key) return false;
    for (let i = 0; i < 6; i++) if (a.partner.system[i] !== b.partner.system[i]) return false;
    return true;
  }
  /** a port whose partner is ourselves (a cable looped back to the team) is never selected */
  private loopbackFree(p: Port): boolean {
    for (let i = 0; i < 6; i++) if (p.partner.system[i] !== p.actor.system[i]) return true;
    return p.partner.systemPriority !== p.actor.systemPriority;
  }
  /**
   * The lacp_prio order: the information of whichever system has the higher priority (lower system
   * priority, then lower system ID), compared by system priority, system, port priority, port number;
   * lower wins (802.1AX 6.4.8's rules for selecting among ports).
   */
  private prioKey(p: Port): number[] {
    const a = p.actor;
    const b = p.partner;
    let cmp = a.systemPriority - b.systemPriority;
    for (let i = 0; cmp === 0 && i < 6; i++) cmp = a.system[i]! - b.system[i]!;
    const i = cmp < 0 ? a : b;
    return [i.systemPriority, ...i.system, i.portPriority, i.port];
  }
  private better(a: Port, b: Port | null): boolean {
    if (b === null) return true;
    if (this.#cfg.aggSelectPolicy === 'port_config') return a.spec.prio > b.spec.prio;
    const ka = this.prioKey(a);
    const kb = this.prioKey(b);
    for (let i = 0; i < ka.length; i++) if (ka[i] !== kb[i]) return ka[i]! < kb[i]!;
    return false;
  }
  private members(lead: Port): Port[] {
    return this.#ports.filter((x) => x.aggLead === lead);
  }
  private leadFor(p: Port): Port {
    for (const x of this.#ports) if (x !== p && x.aggLead !== null && this.aggregable(x, p)) return x.aggLead;
    return p;
  }
  private switchLead(from: Port, to: Port | null): void {
    if (this.#selected === from) this.#selected = to;
    for (const x of this.#ports) if (x.aggLead === from) x.aggLead = to;
  }
  private unselect(p: Port): void {
    const lead = p.aggLead;
    p.aggLead = null;
    if (lead === p) {
      let next: Port | null = null;
      for (const x of this.#ports) if (x.aggLead === p && this.better(x, next)) next = x;
      this.switchLead(p, next);
    }
  }
  private select(p: Port): void {
    const lead = this.leadFor(p);
    p.aggLead = lead;
    if (lead !== p && this.better(p, lead)) this.switchLead(lead, p);
  }
  private aggUpdate(p: Port): void {
    if (p.aggLead !== null) {
      const other = this.#ports.find((x) => x !== p && x.aggLead === p.aggLead);
      const wrongAgg = other !== undefined && !this.aggregable(other, p);
      // Alone in its aggregator but aggregable with another one: unselect, to merge on reselect.
      const mergeable = p.aggLead === p && this.members(p).length === 1 && this.leadFor(p) !== p;
      if ((p.state !== 'current' && p.state !== 'expired') || !this.loopbackFree(p) || wrongAgg || mergeable) this.unselect(p);
    }
    if (p.aggLead === null && p.state === 'current' && this.loopbackFree(p)) this.select(p);
    this.selectAggregator();
  }

  private nextAggregator(policy: AggSelectPolicy): Port | null {
    const leads = [...new Set(this.#ports.filter((x) => x.aggLead !== null).map((x) => x.aggLead!))];
    const best = (): Port | null => leads.reduce<Port | null>((b, l) => (this.better(l, b) ? l : b), null);
    const cur = this.#selected !== null && leads.includes(this.#selected) ? this.#selected : null;
    switch (policy) {
      case 'lacp_prio':
        return best();
      case 'lacp_prio_stable':
        return cur ?? best();
      case 'port_config':
        return cur !== null && this.members(cur).some((x) => x.spec.sticky) ? cur : best();
      case 'bandwidth':
      case 'count': {
        let b: Port | null = null;
        for (const l of leads) if (b === null || this.members(l).length > this.members(b).length) b = l;
        return b;
      }
    }
  }

  /** The chosen aggregator, every port's enabled state and the carrier; `changed` when any moved. */
  private selectAggregator(): void {
    this.#selected = this.nextAggregator(this.#cfg.aggSelectPolicy);
    let moved = false;
    let n = 0;
    const want = S.SYNCHRONIZATION | S.COLLECTING | S.DISTRIBUTING;
    for (const x of this.#ports) {
      const en = x.aggLead !== null && x.aggLead === this.#selected && (x.partner.state & want) === want;
      if (en !== x.enabled) {
        x.enabled = en;
        moved = true;
      }
      if (en) n++;
    }
    const carrier = n >= this.#cfg.minPorts;
    if (carrier !== this.#carrier) {
      this.#carrier = carrier;
      moved = true;
    }
    if (moved) this.#changed();
  }
}
