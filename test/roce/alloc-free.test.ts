/**
 * The allocation-free helpers of the per-packet paths (issue 15, the 60 s heap check): the byte
 * copy (wire/copy.ts), the monotonic clock (clock.ts) and the end-of-turn hook the links flush
 * their send batches from (sched.ts atTurnEnd). Each must behave exactly as what it replaced:
 * Buffer.copy, performance.now() and process.nextTick's "after this turn's work".
 */
import t from 'tap';
import { copyBytes } from '../../src/roce/wire/copy.js';
import { monoMs } from '../../src/roce/clock.js';
import { RealScheduler, atTurnEnd } from '../../src/roce/sched.js';
import { loadNative } from '../../src/native.js';
import { spawnSync } from 'node:child_process';

const native = loadNative();

/** Runs fn with process 'uncaughtException' going to `seen` instead of the test runner's handlers. */
async function catchUncaught(fn: (seen: unknown[]) => Promise<void>): Promise<void> {
  const seen: unknown[] = [];
  const onErr = (e: unknown): void => {
    seen.push(e);
  };
  const listeners = process.listeners('uncaughtException');
  process.removeAllListeners('uncaughtException');
  process.on('uncaughtException', onErr);
  try {
    await fn(seen);
  } finally {
    process.removeListener('uncaughtException', onErr);
    for (const l of listeners) process.on('uncaughtException', l);
  }
}

t.test('copyBytes copies as Buffer.copy does, small, large and past either end', async (t) => {
  const src = Buffer.alloc(9000);
  for (let i = 0; i < src.length; i++) src[i] = (i * 7 + 3) & 0xff;
  // [s, d, n]: a loop-sized copy, MTU-sized ones, and ranges that run past the source or the target
  const cases: Array<[number, number, number]> = [
    [0, 0, 0],
    [5, 9, 2],
    [100, 3, 64],
    [100, 3, 65],
    [17, 1000, 4096],
    [0, 0, 9000],
    [8990, 0, 64], // past the source's end: cut short there
    [0, 8000, 4096], // past the target's end: cut short there
    [8000, 8990, 100],
  ];
  for (const [s, d, n] of cases) {
    const want = Buffer.alloc(9000, 0xee);
    const got = Buffer.alloc(9000, 0xee);
    src.copy(want, d, s, Math.min(s + n, src.length));
    copyBytes(src, s, got, d, n);
    t.ok(got.equals(want), `s=${s} d=${d} n=${n}`);
  }
  // a view into a larger buffer (a receive slot's segment, an MR inside a pool) as source and target
  const big = Buffer.alloc(1 << 16);
  src.copy(big, 4096);
  const view = big.subarray(4096, 4096 + 9000);
  const dstBig = Buffer.alloc(20000, 1);
  const dst = dstBig.subarray(5000, 15000);
  copyBytes(view, 10, dst, 20, 5000);
  t.ok(dst.subarray(20, 5020).equals(src.subarray(10, 5010)), 'views: the right bytes');
  t.equal(dstBig[5019], 1, 'nothing written before the target view');
  t.equal(dstBig[5000 + 5020], 1, 'nothing written after the copied range');
});

t.test('the native copy refuses a range outside its arrays and copies nothing', async (t) => {
  if (!native?.copyBytes) {
    t.comment('no native addon here (SOFTROCE_NO_NATIVE=1 or not built): the Buffer.copy fallback is what ran above');
    t.pass('fallback only');
    return;
  }
  const a = Buffer.alloc(100, 1);
  const b = Buffer.alloc(100, 2);
  t.equal(native.copyBytes(a, 0, b, 0, 100), 100);
  t.ok(b.equals(Buffer.alloc(100, 1)));
  const c = Buffer.alloc(100, 3);
  t.equal(native.copyBytes(a, 50, c, 0, 51), -1, 'source range past its end');
  t.equal(native.copyBytes(a, 0, c, 60, 41), -1, 'target range past its end');
  t.equal(native.copyBytes(a, 0xffffffff, c, 0, 1), -1, 'an offset near 2^32 does not wrap');
  t.ok(c.equals(Buffer.alloc(100, 3)), 'nothing copied by a refused call');
  t.equal(native.copyBytes(new Uint16Array(4) as unknown as Uint8Array, 0, c, 0, 1), -1, 'not a Uint8Array');
});

t.test("monoMs is monotonic and on performance.now()'s timeline", async (t) => {
  let prev = monoMs();
  let back = 0;
  for (let i = 0; i < 20000; i++) {
    const x = monoMs();
    if (x < prev) back++;
    prev = x;
  }
  t.equal(back, 0, 'never goes back');
  for (let i = 0; i < 5; i++) {
    const p0 = performance.now();
    const m = monoMs();
    const p1 = performance.now();
    // between the two reads of performance.now(), allowing 0.05 ms for the offset taken at load
    t.ok(m >= p0 - 0.05 && m <= p1 + 0.05, `monoMs ${m} within [${p0}, ${p1}]`);
  }
  const a = monoMs();
  await new Promise((r) => setTimeout(r, 30));
  const el = monoMs() - a;
  t.ok(el >= 29 && el < 1000, `30 ms sleep measured as ${el.toFixed(2)} ms`);
});

t.test('atTurnEnd runs after the soon() work the turn queues, even work queued by a continuation', async (t) => {
  const s = new RealScheduler();
  const log: string[] = [];
  let resolveWait!: () => void;
  const wait = new Promise<void>((r) => (resolveWait = r));
  // An application waiting on a completion: its continuation posts (soon) after the ACK was queued.
  const app = (async (): Promise<void> => {
    await wait;
    log.push('app');
    s.soon(() => {
      log.push('answer');
      atTurnEnd(() => log.push('flush (answer)'));
    });
  })();
  // A receive batch: completes the wait, queues the coalesced ACK, whose send asks for a flush.
  resolveWait();
  s.soon(() => {
    log.push('ack');
    atTurnEnd(() => log.push('flush'));
  });
  await app;
  await new Promise((r) => setImmediate(r));
  t.same(log, ['app', 'ack', 'answer', 'flush', 'flush (answer)'], 'the flush waits for the answer queued by the continuation');
});

t.test('atTurnEnd outside a callback of the addon runs as a tick: after the microtasks, before the next macrotask', async (t) => {
  const log: string[] = [];
  setImmediate(() => log.push('immediate'));
  atTurnEnd(() => log.push('end'));
  void Promise.resolve().then(() => log.push('micro'));
  log.push('sync');
  await new Promise((r) => setImmediate(r));
  t.same(log, ['sync', 'micro', 'end', 'immediate']);
});

t.test('a throwing atTurnEnd function is reported as uncaught and the rest still runs', async (t) => {
  await catchUncaught(async (seen) => {
    const log: string[] = [];
    atTurnEnd(() => log.push('a'));
    atTurnEnd(() => {
      throw new Error('boom');
    });
    atTurnEnd(() => log.push('c'));
    await new Promise((r) => setImmediate(r));
    await new Promise((r) => setImmediate(r));
    t.same(log, ['a', 'c'], 'the functions before and after the throw ran');
    t.equal(seen.length, 1, 'one uncaught exception');
    t.match(String(seen[0]), /boom/);
    // later calls work as before
    const after: string[] = [];
    atTurnEnd(() => after.push('x'));
    await new Promise((r) => setImmediate(r));
    t.same(after, ['x']);
  });
});

t.test('defer runs in the check phase, after microtasks, and what a run defers gets the next turn', async (t) => {
  const s = new RealScheduler();
  const log: string[] = [];
  s.defer(() => log.push('d1'));
  void Promise.resolve().then(() => log.push('micro'));
  s.defer(() => {
    log.push('d2');
    // deferred from a run: the next turn, after I/O and timers of this one had their chance
    s.defer(() => log.push('d3 (next turn)'));
    setTimeout(() => log.push('timer'), 0);
  });
  log.push('sync');
  await new Promise((r) => setTimeout(r, 20));
  t.same(log.slice(0, 4), ['sync', 'micro', 'd1', 'd2'], 'in order, after the microtasks');
  t.ok(log.includes('d3 (next turn)'), 'a function deferred during a run still runs');
  // a function that defers itself forever must not starve timers (bounded work per turn)
  let spins = 0;
  let timerRan = false;
  setTimeout(() => (timerRan = true), 1);
  await new Promise<void>((resolve) => {
    const again = (): void => {
      spins++;
      if (timerRan || spins > 200_000) resolve();
      else s.defer(again);
    };
    s.defer(again);
  });
  t.ok(timerRan, `a timer ran while a function deferred itself (${spins} turns)`);
});

t.test('a throwing deferred function is reported as uncaught and the others still run', async (t) => {
  const s = new RealScheduler();
  await catchUncaught(async (seen) => {
    const log: string[] = [];
    s.defer(() => log.push('a'));
    s.defer(() => {
      throw new Error('deferred boom');
    });
    s.defer(() => log.push('c'));
    await new Promise((r) => setTimeout(r, 20));
    t.same(log, ['a', 'c']);
    t.equal(seen.length, 1);
    t.match(String(seen[0]), /deferred boom/);
  });
});

t.test('deferred work keeps the process alive, and a worker that deferred work exits cleanly', async (t) => {
  const sched = new URL('../../src/roce/sched.js', import.meta.url).href;
  const main = `import { RealScheduler } from ${JSON.stringify(sched)};
    const s = new RealScheduler();
    s.defer(() => s.defer(() => console.log('ran twice')));`;
  const r1 = spawnSync(process.execPath, ['--input-type=module', '-e', main], { encoding: 'utf8', timeout: 20_000 });
  t.equal(r1.status, 0, r1.stderr);
  t.equal(r1.stdout.trim(), 'ran twice');
  // A worker's environment ends with the check handle still open: the addon's cleanup hook closes it
  // (an open handle would abort the worker's loop close).
  const body = `import(${JSON.stringify(sched)}).then(({ RealScheduler }) => { const s = new RealScheduler(); s.defer(() => s.defer(() => {})); });`;
  const worker = `import { Worker } from 'node:worker_threads';
    const codes = await Promise.all([0, 1, 2].map(() => new Promise((res) => new Worker(${JSON.stringify(body)}, { eval: true }).on('exit', res))));
    console.log('worker exits ' + codes.join(','));`;
  const r2 = spawnSync(process.execPath, ['--input-type=module', '-e', worker], { encoding: 'utf8', timeout: 30_000 });
  t.equal(r2.status, 0, r2.stderr);
  t.equal(r2.stdout.trim(), 'worker exits 0,0,0');
});
