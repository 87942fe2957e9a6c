/**
 * teamd's `ethtool` link watch (teamd_lw_ethtool.c) over a port's link: the port is up when its
 * carrier is (the link's 'link' events, its `up`), reported `delay_up` / `delay_down` ms after the
 * carrier changed; a carrier that flips back before its delay ran out cancels the report, as
 * teamd's delayed work is cancelled. Timers run on the device's scheduler (a fake clock in tests).
 * arp_ping and nsna_ping are not here yet (bond.ts says which watches it runs).
 */
import type { Link } from '../roce/link/link.js';
import type { Scheduler, TimerHandle } from '../roce/sched.js';
import type { EthtoolLinkWatch } from './team-config.js';

/**
 * What a link watch shows in teamd's state dump (teamd_link_watch.c link_watch_state_vals: name, up,
 * down_count under ports.IF.link_watches.list.link_watch_N) plus its own options and counters
 * (`state()`: ethtool's delay_up / delay_down; arp_ping's interval, missed, ...), as
 * `teamdctl DEV state` prints them (bond-ctl.ts). Every watch a bond runs implements it.
 */
export interface LinkWatchStateSource {
  /** the watch's name as teamd's config names it: ethtool, arp_ping, nsna_ping */
  readonly name: string;
  /** the watch's verdict */
  readonly up: boolean;
  /** how many times the verdict went down (teamd's link_down_count) */
  readonly downCount: number;
  /** the watch's own state items, with teamd's names (snake_case), JSON values only */
  state(): Record<string, unknown>;
}

export class EthtoolWatch implements LinkWatchStateSource {
  readonly name = 'ethtool';
  readonly link: Link;
  readonly delayUp: number;
  readonly delayDown: number;
  readonly #sched: Scheduler;
  readonly #changed: (up: boolean) => void;
  #up: boolean;
  #timer: TimerHandle | null = null;
  #downCount = 0;
  /** when the carrier last changed to the state a timer is pending for (ms, the scheduler's clock) */
  #since = 0;
  readonly #onLink = (up: unknown): void => this.carrier(up === true);

  constructor(link: Link, cfg: Pick<EthtoolLinkWatch, 'delayUp' | 'delayDown'>, sched: Scheduler, changed: (up: boolean) => void) {
    this.link = link;
    this.delayUp = cfg.delayUp;
    this.delayDown = cfg.delayDown;
    this.#sched = sched;
    this.#changed = changed;
    // teamd reads the carrier when the port is added: no delay for the state it starts from.
    this.#up = link.up;
    link.on('link', this.#onLink);
  }

  /** What the watch reports now (the carrier, once its delay passed). */
  get up(): boolean {
    return this.#up;
  }
  /** A change of carrier waiting for its delay to pass. */
  get pending(): boolean {
    return this.#timer !== null;
  }

  private carrier(up: boolean): void {
    if (up === this.#up) {
      // Back to the reported state before the delay ran out: nothing to report.
      this.#sched.clearTimer(this.#timer);
      this.#timer = null;
      return;
    }
    if (this.#timer !== null) return; // already counting down to this state
    const delay = up ? this.delayUp : this.delayDown;
    if (delay === 0) {
      this.report(up);
      return;
    }
    this.#since = this.#sched.now();
    this.#timer = this.#sched.setTimer(delay, () => {
      this.#timer = null;
      this.report(up);
    });
  }

  private report(up: boolean): void {
    this.#up = up;
    if (!up) this.#downCount++;
    this.#changed(up);
  }

  get downCount(): number {
    return this.#downCount;
  }

  /** teamd_lw_ethtool.c's state items: the delays (teamdctl -v prints "link up delay", "link down delay") */
  state(): Record<string, unknown> {
    return { delay_up: this.delayUp, delay_down: this.delayDown };
  }

  /** ms since the carrier changed, while a report waits for its delay (tests, teamdctl later) */
  pendingFor(): number {
    return this.#timer === null ? 0 : this.#sched.now() - this.#since;
  }

  stop(): void {
    this.#sched.clearTimer(this.#timer);
    this.#timer = null;
    this.link.off('link', this.#onLink);
  }
}
