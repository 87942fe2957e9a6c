/**
 * Time and deferral for the transport, injected so that tests can drive it
 * with a fake clock (smoltcp's explicit `Instant`). The real scheduler runs
 * deferred work in the event loop's check phase, as setImmediate does (bounded
 * work per event-loop turn, never a microtask loop), and uses setTimeout for
 * the ACK and RNR timers.
 */
import { MONO, monoTick } from './clock.js';
import { loadNative } from '../native.js';

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
  /**
   * A timer made once and started many times: `fn` runs once per start() that stop() did not
   * cancel, as setTimer's would, at least `ms` later. Starting it again allocates nothing where
   * the scheduler can avoid it (the transport's lazy timers, lazy-timer.ts, re-arm once per period).
   */
  timer(fn: () => void): ReusableTimer;
}

export interface ReusableTimer {
  /** Runs the timer's fn `ms` from now (a start while running replaces the pending one). */
  start(ms: number): void;
  stop(): void;
}

/** A ReusableTimer over any scheduler's setTimer/clearTimer (the fake clock's: exact times). */
class HandleTimer implements ReusableTimer {
  #h: TimerHandle | null = null;
  readonly #sched: Scheduler;
  readonly #fn: () => void;
  readonly #fire = (): void => {
    this.#h = null;
    this.#fn();
  };
  constructor(sched: Scheduler, fn: () => void) {
    this.#sched = sched;
    this.#fn = fn;
  }
  start(ms: number): void {
    this.#sched.clearTimer(this.#h);
    this.#h = this.#sched.setTimer(ms, this.#fire);
  }
  stop(): void {
    this.#sched.clearTimer(this.#h);
    this.#h = null;
  }
}

/**
 * RealScheduler's ReusableTimer: one Node Timeout, re-armed with refresh() (no allocation) while
 * the wait, rounded up to whole milliseconds (Node's timers have no finer grain), stays the same,
 * as a probe's does; a new Timeout only when it changes, or after a stop (refresh() cannot revive
 * a cleared one). It fires in the check phase, as setTimer's do (see there).
 */
class NodeTimer implements ReusableTimer {
  #t: NodeJS.Timeout | null = null;
  #ms = -1;
  /** a start not yet run or stopped, and when it is due; the Timeout and the deferred run check them */
  #live = false;
  #due = 0;
  readonly #sched: RealScheduler;
  readonly #fn: () => void;
  readonly #run = (): void => {
    if (!this.#live) return;
    // Early: Node times from the loop's cached clock, or a start() since has moved the time.
    const left = this.#due - this.#sched.now();
    if (left > 0) {
      this.start(left);
      return;
    }
    this.#live = false;
    this.#fn();
  };
  readonly #onTimeout = (): void => {
    if (this.#live) this.#sched.defer(this.#run);
  };
  constructor(sched: RealScheduler, fn: () => void) {
    this.#sched = sched;
    this.#fn = fn;
  }
  start(ms: number): void {
    this.#live = true;
    this.#due = this.#sched.now() + ms;
    const d = Math.max(1, Math.ceil(ms));
    if (this.#t !== null && d === this.#ms) {
      this.#t.refresh();
      return;
    }
    if (this.#t !== null) clearTimeout(this.#t);
    this.#ms = d;
    this.#t = setTimeout(this.#onTimeout, d);
    this.#t.unref();
  }
  stop(): void {
    this.#live = false;
    // Cleared, not left to expire: a pending Timeout keeps this timer, and through its fn the
    // QP, alive until it comes (up to the ACK timeout after a close; loop1000.test's GC check).
    // Stops are rare (retry, RNR wait, flush, reset, close); the next start makes a new one.
    if (this.#t !== null) clearTimeout(this.#t);
    this.#t = null;
  }
}

const RESOLVED = Promise.resolve();
function rethrow(err: unknown): never {
  throw err;
}

/**
 * The end of a turn's transport work: a link's send batch (udp-base.ts) goes out after every
 * continuation of the current callback, so a coalesced ACK (queued at the end of a receive batch)
 * leaves in one sendmmsg with the application's answer to the request it acknowledges, posted from
 * an awaiting continuation (issue 15, ib_send_lat). That is process.nextTick's place, and it is used
 * where nothing better is at hand. Inside a callback of the addon (a receive batch, a deferred run)
 * the addon runs the queue itself right after the callback, once Node has run its microtasks and
 * ticks (turnEndStart): Node 20 allocates a Map and an iterator in every tick-queue run, once per
 * receive batch, the largest young-generation source left on a bandwidth responder (issue 15's
 * heap check).
 */
const endQ: Array<(() => void) | undefined> = [];
let endHead = 0;
let endTail = 0;
let endTickQueued = false;
let endRunning = false;
const nativeAddon = loadNative();
/** [0]: the addon's callbacks running (it counts them), [1]: work queued for its epilogue. Off the JS heap. */
const turnState = new Int32Array(new ArrayBuffer(8));
const nativeTurnEnd = nativeAddon?.turnEndStart?.(turnState, runEndFromNative) === 0;

/** Runs fn once the current callback's work is done (see above); a function queued twice runs twice. */
export function atTurnEnd(fn: () => void): void {
  endQ[endTail++] = fn;
  // Queued while the queue runs (the soon() drain it holds sends the ACK, whose flush lands here):
  // the running loop takes it.
  if (endRunning) return;
  if (nativeTurnEnd && turnState[0]! > 0) {
    turnState[1] = 1;
    return;
  }
  if (!endTickQueued) {
    endTickQueued = true;
    process.nextTick(runEndFromTick);
  }
}

function runEndFromNative(): void {
  turnState[1] = 0;
  runEnd();
}

function runEndFromTick(): void {
  endTickQueued = false;
  runEnd();
}

function runEnd(): void {
  if (endRunning) return;
  endRunning = true;
  try {
    while (endHead < endTail) {
      const fn = endQ[endHead]!;
      endQ[endHead++] = undefined;
      fn();
    }
    endHead = endTail = 0;
    if (endQ.length > 1024) endQ.length = 0;
    endRunning = false;
  } catch (err) {
    endRunning = false;
    // Reported as a throw from a tick is (uncaught); the rest still runs, on a tick of its own.
    process.nextTick(rethrow, err);
    if (endHead < endTail && !endTickQueued) {
      endTickQueued = true;
      process.nextTick(runEndFromTick);
    }
  }
}

/**
 * defer()'s work, over every RealScheduler, in order: run in the check phase of the event loop's
 * turn (setImmediate's), all that was queued before the run began, by one callback per turn. With
 * the addon that callback is its check handle (deferStart/deferArm), which allocates nothing per
 * turn; without it, one setImmediate per turn. (A setImmediate per deferred function made an
 * Immediate, its async ids and an async-resource stack entry per requester run: the largest
 * young-generation source left on a bandwidth requester; issue 15's heap check.)
 */
const deferQ: Array<(() => void) | undefined> = [];
let deferHead = 0;
let deferTail = 0;
let deferArmed = false;
let deferHandle: object | null | undefined;

function runDeferred(): void {
  deferArmed = false;
  // Only what was queued before this run; what it queues runs on the next turn (as immediates).
  const end = deferTail;
  try {
    while (deferHead < end) {
      const fn = deferQ[deferHead]!;
      deferQ[deferHead++] = undefined;
      fn();
    }
  } finally {
    // What is left (queued during the run, or after a throw, which is reported as uncaught as an
    // immediate's is) moves to the front and gets the next turn.
    let j = 0;
    for (let i = deferHead; i < deferTail; i++) {
      deferQ[j++] = deferQ[i];
      deferQ[i] = undefined;
    }
    deferHead = 0;
    deferTail = j;
    if (deferQ.length > 1024 && j < 1024) deferQ.length = 1024;
    if (j > 0) armDefer();
  }
}

function armDefer(): void {
  if (deferArmed) return;
  deferArmed = true;
  if (deferHandle === undefined) deferHandle = nativeAddon?.deferStart?.(runDeferred) ?? null;
  if (deferHandle !== null && nativeAddon?.deferArm !== undefined) nativeAddon.deferArm(deferHandle);
  else setImmediate(runDeferred);
}

export class RealScheduler implements Scheduler {
  now(): number {
    // Through MONO, not monoMs's return: inlined into a caller, this read stays an unboxed double
    // even where monoMs would not have been inlined (clock.ts).
    monoTick();
    return MONO[0]!;
  }
  defer(fn: () => void): void {
    deferQ[deferTail++] = fn;
    armDefer();
  }
  /** soon()'s work, run by one microtask (or by flushSoon, whichever comes first): q[head, tail) */
  private readonly soonQ: Array<(() => void) | undefined> = [];
  private soonHead = 0;
  private soonTail = 0;
  private soonQueued = false;
  private readonly soonDrain = (): void => {
    this.soonQueued = false;
    try {
      this.flushSoon();
    } catch (err) {
      // As queueMicrotask reports a throw: an uncaught exception (here on the next tick), not a
      // rejection of the promise that ran this.
      process.nextTick(rethrow, err);
    }
  };
  /**
   * Queues the drain as a reaction to a resolved promise: a microtask like queueMicrotask's, without
   * the AsyncResource and bound function Node's queueMicrotask allocates per call (twice per
   * ping-pong round trip: the post and the coalesced ACK; issue 15, GC in ib_send_lat).
   */
  private queueDrain(): void {
    this.soonQueued = true;
    // Inside a callback of the addon (a receive batch): drained right after it, with the turn's end
    // (atTurnEnd), after the application's continuations: no promise per drain (issue 15's heap
    // check), and what they post goes in the same drain. The link's flush, queued by the drain's
    // sends, comes after it.
    if (nativeTurnEnd && turnState[0]! > 0) atTurnEnd(this.soonDrain);
    else void RESOLVED.then(this.soonDrain);
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
          this.defer(() => {
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
  timer(fn: () => void): ReusableTimer {
    return new NodeTimer(this, fn);
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
  timer(fn: () => void): ReusableTimer {
    return new HandleTimer(this, fn);
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
