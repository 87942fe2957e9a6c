/**
 * The completer's three timers (the ACK timer of IBA 9.7.6.1.3, the tail-loss probe, the READ
 * hole's probe) share one shape: a deadline that moves with nearly every packet, and one
 * scheduler timer behind it. rxe calls mod_timer per packet; here moving the deadline is a store
 * to `at`, and the timer, when it comes before the deadline, re-arms for the rest. One timer per
 * period instead of a clear/set pair per packet.
 */
import type { ReusableTimer, Scheduler } from '../sched.js';

export class LazyTimer {
  /** when it fires (ms on the scheduler's clock); Infinity: not armed. Moving it is a store. */
  at = Infinity;
  /** the scheduler's timer, made at the first arm and started again for each period */
  #t: ReusableTimer | null = null;
  #running = false;
  #sched: Scheduler | null = null;
  #owner: unknown = null;
  #fire: ((owner: unknown) => void) | null = null;
  /** A timer that comes at most this early (ms) fires as if on time (the probes); 0: never early (the ACK timer, a lower bound). */
  readonly #slackMs: number;
  // Made once per timer: a closure made per arm would be an allocation per period (issue 15's heap check).
  readonly #onTimer = (): void => {
    this.#running = false;
    if (this.at === Infinity) return;
    const left = this.at - this.#sched!.now();
    if (left > this.#slackMs) {
      this.#start(left);
      return;
    }
    this.at = Infinity;
    this.#fire!(this.#owner);
  };

  constructor(slackMs: number) {
    this.#slackMs = slackMs;
  }

  /** Whether the scheduler's timer is running (the deadline may have been moved to Infinity since). */
  get running(): boolean {
    return this.#running;
  }

  /**
   * Fires `fire(owner)` once `ms` from `now` has passed; a call before then moves the deadline.
   * `sched`, `owner` and `fire` are the same on every call for a given timer.
   */
  arm<T>(sched: Scheduler, owner: T, fire: (owner: T) => void, ms: number, now: number): void {
    this.at = now + ms;
    if (this.#running) return;
    if (this.#t === null) {
      this.#sched = sched;
      this.#owner = owner;
      this.#fire = fire as (owner: unknown) => void; // called only with this owner
      this.#t = sched.timer(this.#onTimer);
    }
    this.#start(ms);
  }

  /** Disarms it (retry, RNR wait, flush, reset, close). */
  stop(): void {
    if (this.#running) this.#t!.stop();
    this.#running = false;
    this.at = Infinity;
  }

  #start(ms: number): void {
    this.#running = true;
    this.#t!.start(ms);
  }
}
