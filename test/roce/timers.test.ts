/**
 * The transport's timers (issue 15): the scheduler's reusable timer (sched.ts timer(): one Node
 * Timeout, refreshed while its wait stays the same) and the lazy deadline over it
 * (transport/lazy-timer.ts), on the real clock and on the fake one.
 */
import t from 'tap';
import v8 from 'node:v8';
import vm from 'node:vm';
import { FakeScheduler, RealScheduler, type Scheduler } from '../../src/roce/sched.js';
import { LazyTimer } from '../../src/roce/transport/lazy-timer.js';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Resolves with the scheduler's time when the timer's fn runs, or null when it did not run within `ms`. */
function firesAt(fired: number[], ms: number): Promise<number | null> {
  const seen = fired.length;
  return new Promise((resolve) => {
    const end = Date.now() + ms;
    const look = (): void => {
      if (fired.length > seen) resolve(fired[seen]!);
      else if (Date.now() > end) resolve(null);
      else setTimeout(look, 1);
    };
    look();
  });
}

t.test('a reusable timer runs its fn once per start, never before its time, on the real clock', async (t) => {
  const s = new RealScheduler();
  const fired: number[] = [];
  const tm = s.timer(() => fired.push(s.now()));
  for (const ms of [3, 3, 0.3, 7.5, 3]) {
    const at = s.now();
    tm.start(ms);
    const when = await firesAt(fired, 500);
    t.ok(when !== null, `started for ${ms} ms: it ran`);
    t.ok(when! - at >= ms, `not before its time (${(when! - at).toFixed(2)} >= ${ms} ms)`);
  }
  await sleep(20);
  t.equal(fired.length, 5, 'once per start, not again');
});

t.test('a start while one is pending replaces it; stop cancels; a start after stop runs', async (t) => {
  const s = new RealScheduler();
  const fired: number[] = [];
  const tm = s.timer(() => fired.push(s.now()));
  const at = s.now();
  tm.start(2);
  tm.start(25); // replaces the 2 ms one
  t.equal(await firesAt(fired, 12), null, 'not at the first start time');
  const when = await firesAt(fired, 500);
  t.ok(when !== null && when - at >= 25, 'at the second');
  tm.start(5);
  tm.stop();
  await sleep(30);
  t.equal(fired.length, 1, 'stopped: did not run');
  tm.start(5); // the same wait as the stopped start: its Timeout is refreshed
  t.ok((await firesAt(fired, 500)) !== null, 'started again after stop: it runs');
  t.equal(fired.length, 2);
});

t.test('a start made after the Timeout fired but before its deferred run waits for the new time', async (t) => {
  const s = new RealScheduler();
  const fired: number[] = [];
  const tm = s.timer(() => fired.push(s.now()));
  tm.start(1);
  // Block the loop past the 1 ms, then start again for 20 ms from inside a timer callback: the
  // first expiry's deferred run (check phase) must not run fn at the old time.
  let at = 0;
  await new Promise<void>((resolve) =>
    setTimeout(() => {
      const end = Date.now() + 5;
      while (Date.now() < end);
      at = s.now();
      tm.start(20);
      resolve();
    }, 0),
  );
  const when = await firesAt(fired, 500);
  t.ok(when !== null && when - at >= 20, `ran ${(when! - at).toFixed(2)} ms after the second start (>= 20)`);
  await sleep(30);
  t.equal(fired.length, 1, 'once');
});

/** A LazyTimer on `s` that records (owner, time) when it fires. */
function lazy(s: Scheduler, slack: number): { lt: LazyTimer; fired: Array<[string, number]>; arm: (ms: number) => void } {
  const lt = new LazyTimer(slack);
  const fired: Array<[string, number]> = [];
  const fire = (o: string): void => {
    fired.push([o, s.now()]);
  };
  return { lt, fired, arm: (ms) => lt.arm(s, 'qp', fire, ms, s.now()) };
}

t.test('a lazy timer fires at its last deadline: arming again moves it, with one scheduler timer', async (t) => {
  const s = new FakeScheduler();
  const { lt, fired, arm } = lazy(s, 0);
  arm(10);
  s.advance(4);
  arm(10); // deadline 14
  s.advance(4);
  arm(10); // deadline 18
  t.equal(s.pendingTimers(), 1, 'one scheduler timer while the deadline moves');
  s.advance(9.99);
  t.same(fired, [], 'not before 18');
  s.advance(0.02);
  t.same(fired, [['qp', 18]], 'at 18, with its owner');
  t.equal(lt.at, Infinity, 'fired: disarmed');
  t.notOk(lt.running);
  s.advance(50);
  t.equal(fired.length, 1, 'once');
});

t.test('a deadline moved to Infinity fires nothing; stop() stops the timer; arming after either fires again', async (t) => {
  const s = new FakeScheduler();
  const { lt, fired, arm } = lazy(s, 0);
  arm(5);
  lt.at = Infinity; // as the engine parks a QP: a store
  s.advance(10);
  t.same(fired, []);
  t.notOk(lt.running, 'its timer came and found nothing to do');
  arm(5);
  lt.stop();
  t.equal(s.pendingTimers(), 0, 'stop() cancels the scheduler timer');
  s.advance(10);
  t.same(fired, []);
  arm(5);
  s.advance(5);
  t.same(fired, [['qp', 25]]);
});

t.test("a lazy timer's slack: a timer that comes that little early fires; the ACK timer's slack 0 never does", async (t) => {
  for (const [slack, want] of [
    [0.05, 10], // the probes: 0.03 ms early is on time
    [0, 10.03], // the ACK timer: re-armed for the 0.03 ms left
  ] as const) {
    const s = new FakeScheduler();
    const { fired, arm } = lazy(s, slack);
    arm(10); // its scheduler timer is due at 10
    s.advance(5);
    arm(5.03); // the deadline moves to 10.03; the timer still comes at 10
    s.advance(20);
    t.equal(fired.length, 1, `slack ${slack}: once`);
    t.ok(Math.abs(fired[0]![1] - want) < 1e-9, `slack ${slack}: fired at ${fired[0]![1]} (want ${want})`);
  }
});

t.test('lazy timers on the real clock: never before the deadline, after many moves', async (t) => {
  const s = new RealScheduler();
  const { fired, arm } = lazy(s, 0);
  const start = s.now();
  let last = 0;
  while (s.now() - start < 15) {
    arm(4);
    last = s.now() + 4;
    await sleep(0.5);
  }
  const seen = Date.now();
  while (fired.length === 0 && Date.now() - seen < 500) await sleep(1);
  t.equal(fired.length, 1, 'fired once');
  t.ok(fired[0]![1] >= last, `at ${(fired[0]![1] - start).toFixed(2)} ms, not before the last deadline ${(last - start).toFixed(2)}`);
});

t.test('a stopped reusable timer leaves no Node timer behind holding it (it kept a closed QP alive until it came)', async (t) => {
  v8.setFlagsFromString('--expose-gc');
  const gc = vm.runInNewContext('gc') as () => void;
  const s = new RealScheduler();
  const holder =
    (o: { big: Uint8Array }): (() => void) =>
    () =>
      void o.big.length;
  const made = (): WeakRef<object> => {
    const o = { big: new Uint8Array(1 << 20) };
    const tm = s.timer(holder(o));
    tm.start(5_000); // far off: only a Timeout left pending would hold it now
    tm.stop();
    return new WeakRef(o);
  };
  const ref = made();
  for (let i = 0; i < 3 && ref.deref() !== undefined; i++) {
    await sleep(1);
    gc();
  }
  t.equal(ref.deref(), undefined, 'collected after stop()');
  const fired: number[] = [];
  const tm = s.timer(() => fired.push(s.now()));
  tm.start(5_000);
  tm.stop();
  tm.start(5);
  t.ok((await firesAt(fired, 500)) !== null, 'started again after a stop: it runs');
});
