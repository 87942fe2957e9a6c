/**
 * Issue 10 item 6: GC counts by the kind Node reports (perf_hooks
 * NODE_PERFORMANCE_GC_*), so "0 major GCs" in the bench is measured. The old
 * code took kind 2 for major; Node's major is 4 (it was counted as incremental).
 */
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { constants } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { gcKind } from '../../src/cli/memstats.js';

t.test('gc entry kinds map by perf_hooks constants; forced collections apart', async (t) => {
  t.equal(gcKind(constants.NODE_PERFORMANCE_GC_MAJOR, 0), 'major');
  t.equal(gcKind(constants.NODE_PERFORMANCE_GC_MINOR, 0), 'minor');
  t.equal(gcKind(constants.NODE_PERFORMANCE_GC_INCREMENTAL, 0), 'incremental');
  t.equal(gcKind(constants.NODE_PERFORMANCE_GC_WEAKCB, 0), 'weak');
  t.equal(gcKind(constants.NODE_PERFORMANCE_GC_MAJOR, constants.NODE_PERFORMANCE_GC_FLAGS_FORCED), 'forced');
});

t.test('a run that fills the old generation reports its major GCs', async (t) => {
  const mod = fileURLToPath(new URL('../../src/cli/memstats.js', import.meta.url));
  // Retain ~200 MB in old space in steps: V8 must run mark-compact (major) collections on its own.
  const script = `
    const { MemStats } = await import(${JSON.stringify(mod)});
    const m = new MemStats(); m.start();
    const keep = [];
    for (let i = 0; i < 400; i++) { keep.push(new Array(64 * 1024).fill(i)); if (i % 50 === 0) await new Promise((r) => setTimeout(r, 1)); }
    globalThis.gc(); globalThis.gc();
    await new Promise((r) => setTimeout(r, 20));
    console.log(m.stop(), keep.length);`;
  const r = spawnSync(process.execPath, ['--expose-gc', '--input-type=module', '-e', script], { encoding: 'utf8', timeout: 60_000 });
  t.equal(r.status, 0, r.stderr);
  const m = /gc_major=(\d+).*gc_forced=(\d+)/.exec(r.stdout);
  t.ok(m, r.stdout);
  t.ok(Number(m![1]) > 0, `major GCs counted (${m![1]})`);
  t.equal(Number(m![2]), 2, 'the two forced collections are counted apart, not as major');
});
