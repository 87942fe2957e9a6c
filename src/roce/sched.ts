/**
 * Time and deferral for the transport, injected so that tests can drive it
 * with a fake clock (smoltcp's explicit `Instant`). The real scheduler uses
 * setImmediate for deferred work (bounded work per event-loop turn, never a
 * microtask loop) and setTimeout for the ACK and RNR timers.
 */
import { monoMs } from './clock.js';

export interface TimerHandle {
  cancelled: boolean;
}

export interface Scheduler {
  /** milliseconds, monotonic */
  now(): number;
  /** run fn on a later turn of the event loop */
  defer(fn: () => void): void;
  /** run fn once the current JS stack has unwound (before any I/O): for work an application call started */
  soon(fn: () => void): void;
  /**
   * Runs now, in order, what soon() queued (busy polling: the caller spins without unwinding, so
   * the microtask that would run it does not come until it stops; run later, it finds nothing).
   */
  flushSoon(): void;
  setTimer(ms: number, fn: () => void): TimerHandle;
  clearTimer(h: TimerHandle | null): void;
}

const RESOLVED = Promise.resolve();
function rethrow(err: unknown): never {
  throw err;
}

/**
 * The end of a turn's transport work, without process.nextTick. A link's send batch (udp-base.ts)
 * goes out once the work that may still add to it has run: the soon() queues of every
 * RealScheduler (a coalesced ACK, an application's post from an awaiting continuation, the
 * requester run it kicks), so an ACK and the answer it goes with leave in one sendmmsg (issue 15,
 * ib_send_lat). Run at the end of the last pending soon() drain, or by a microtask of its own when
 * none is pending. (Node 20 allocates a Map and its iterator in every processTicksAndRejections
 * that a nextTick starts: once per receive batch, the largest young-generation source left on a
 * bandwidth responder; issue 15's heap check.)
 */
let soonPending = 0; // soon() drains queued and not yet run, over every RealScheduler
let draining = 0; // soon() drains running
const endQ: Array<(() => void) | undefined> = [];
let endHead = 0;
let endTail = 0;
let endQueued = false;

/** Runs fn once this turn's soon() work is done (see above); a function queued twice runs twice. */
export function atTurnEnd(fn: () => void): void {
  endQ[endTail++] = fn;
  if (soonPending === 0 && draining === 0 && !endQueued) {
    endQueued = true;
    void RESOLVED.then(runEndFromMicrotask);
  }
}

function runEndFromMicrotask(): void {
  endQueued = false;
  runEnd();
}

function runEnd(): void {
  // A drain still to come runs it at its end (its work may add to the batches).
  if (soonPending > 0 || draining > 0) return;
  try {
    while (endHead < endTail) {
      const fn = endQ[endHead]!;
      endQ[endHead++] = undefined;
      fn();
    }
    endHead = endTail = 0;
    if (endQ.length > 1024) endQ.length = 0;
  } catch (err) {
    // As a throw from a microtask is reported: uncaught, on the next tick; the rest still runs.
    process.nextTick(rethrow, err);
    if (endHead < endTail && !endQueued) {
      endQueued = true;
      void RESOLVED.then(runEndFromMicrotask);
    }
  }
}

export class RealScheduler implements Scheduler {
  now(): number {
    return monoMs();
  }
  defer(fn: () => void): void {
    setImmediate(fn);
  }
  /** soon()'s work, run by one microtask (or by flushSoon, whichever comes first): q[head, tail) */
  private readonly soonQ: Array<(() => void) | undefined> = [];
  private soonHead = 0;
  private soonTail = 0;
  private soonQueued = false;
  private readonly soonDrain = (): void => {
    this.soonQueued = false;
    soonPending--;
    draining++;
    try {
      this.flushSoon();
    } catch (err) {
      // As queueMicrotask reports a throw: an uncaught exception (here on the next tick), not a
      // rejection of the promise that ran this.
      process.nextTick(rethrow, err);
    } finally {
      draining--;
    }
    if (endHead < endTail) runEnd();
  };
  /**
   * Queues the drain as a reaction to a resolved promise: a microtask like queueMicrotask's, without
   * the AsyncResource and bound function Node's queueMicrotask allocates per call (twice per
   * ping-pong round trip: the post and the coalesced ACK; issue 15, GC in ib_send_lat).
   */
  private queueDrain(): void {
    this.soonQueued = true;
    soonPending++;
    void RESOLVED.then(this.soonDrain);
  }
  soon(fn: () => void): void {
    this.soonQ[this.soonTail++] = fn;
    if (!this.soonQueued) this.queueDrain();
  }
  flushSoon(): void {
    const q = this.soonQ;
    try {
      // A function may queue more (or flush from inside): the shared head takes each exactly once.
      while (this.soonHead < this.soonTail) {
        const fn = q[this.soonHead]!;
        q[this.soonHead++] = undefined;
        fn();
      }
      // Emptied by position, not by length = 0 (which gives the array's store back, so the next
      // soon() allocated a new one); a queue that once grew long is trimmed.
      this.soonHead = this.soonTail = 0;
      if (q.length > 1024) q.length = 0;
    } finally {
      // One threw: the rest still runs, in its own microtask, as separate microtasks each would have.
      if (this.soonHead < this.soonTail && !this.soonQueued) this.queueDrain();
    }
  }
  setTimer(ms: number, fn: () => void): TimerHandle {
    const h = { cancelled: false, t: undefined as NodeJS.Timeout | undefined };
    // The callback runs in the check phase of the turn its timeout expires in, after that turn's
    // poll phase: what already arrived is read first. A loop that stalled past an ACK deadline
    // (GC, a descheduled process) would otherwise fire the ACK timer in the timers phase while
    // the ACK sat in our own socket (issue 10 item 3: a resend for nothing, retry_cnt spent).
    h.t = setTimeout(
      () => {
        if (!h.cancelled)
          setImmediate(() => {
            if (!h.cancelled) fn();
          });
      },
      Math.max(0, ms),
    );
    h.t.unref?.();
    return h;
  }
  clearTimer(h: TimerHandle | null): void {
    if (!h) return;
    h.cancelled = true;
    const t = (h as { t?: NodeJS.Timeout }).t;
    if (t) clearTimeout(t);
  }
}

interface FakeTimer extends TimerHandle {
  at: number;
  seq: number;
  fn: () => void;
}

/** A deterministic scheduler: nothing happens until the test calls run() or advance(). */
export class FakeScheduler implements Scheduler {
  private t = 0;
  private seq = 0;
  private readonly queue: Array<() => void> = [];
  private timers: FakeTimer[] = [];
  now(): number {
    return this.t;
  }
  defer(fn: () => void): void {
    this.queue.push(fn);
  }
  soon(fn: () => void): void {
    this.queue.push(fn);
  }
  /** run() runs soon()'s work with the deferred work: nothing to do here (nothing busy-polls a fake clock). */
  flushSoon(): void {}
  setTimer(ms: number, fn: () => void): TimerHandle {
    const h: FakeTimer = { cancelled: false, at: this.t + Math.max(0, ms), seq: this.seq++, fn };
    this.timers.push(h);
    return h;
  }
  clearTimer(h: TimerHandle | null): void {
    if (h) h.cancelled = true;
  }
  /** Runs deferred work until none is left (bounded: throws after `max` steps, a livelock). */
  run(max = 1_000_000): number {
    let n = 0;
    while (this.queue.length) {
      if (++n > max) throw new Error('FakeScheduler.run: no quiescence (livelock?)');
      this.queue.shift()!();
    }
    return n;
  }
  /** Advances the clock by ms, firing due timers in order and running deferred work after each. */
  advance(ms: number): void {
    const end = this.t + ms;
    this.run();
    for (;;) {
      this.timers = this.timers.filter((x) => !x.cancelled);
      let next: FakeTimer | undefined;
      for (const x of this.timers) if (x.at <= end && (!next || x.at < next.at || (x.at === next.at && x.seq < next.seq))) next = x;
      if (!next) break;
      this.t = Math.max(this.t, next.at);
      next.cancelled = true;
      next.fn();
      this.run();
    }
    this.t = end;
  }
  pendingTimers(): number {
    return this.timers.filter((x) => !x.cancelled).length;
  }
}
