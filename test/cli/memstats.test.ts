/**
 * Issue 10 item 6: GC counts by the kind Node reports (perf_hooks
 * NODE_PERFORMANCE_GC_*), so "0 major GCs" in the bench is measured. The old
 * code took kind 2 for major; Node's major is 4 (it was counted as incremental).
 */
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { constants } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { attribute, gcKind } from '../../src/cli/memstats.js';

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

t.test('allocation is attributed to the innermost frame of ours: library, tool, Node loop, other', async (t) => {
  const f = (functionName: string, url: string, selfSize: number, children: Parameters<typeof attribute>[0][] = []): Parameters<typeof attribute>[0] => ({
    callFrame: { functionName, url, lineNumber: 9 },
    selfSize,
    children,
  });
  const root = f('(root)', '', 0, [
    f('(V8 API)', '', 1000),
    f('listOnTimeout', 'node:internal/timers', 7, [f('insert', 'node:internal/timers', 30)]),
    f('runDeferred', 'file:///x/dist/src/roce/sched.js', 0, [
      f('insert', 'node:internal/timers', 200),
      f('onAck', 'file:///x/dist/src/roce/transport/completer.js', 50),
    ]),
    f('bwClient', 'file:///x/dist/src/cli/perftest-run.js', 40, [f('Promise', '', 60)]),
  ]);
  const a = attribute(root);
  t.equal(a.nodeLoop, 1000, "no JS on the stack: Node's loop");
  t.equal(a.softroce, 250, "Node's timers called from the transport count as the transport's");
  t.equal(a.tool, 100, "the tool's frames and what they call");
  t.equal(a.other, 37, 'the rest');
  t.same(
    a.top.map(([k]) => k),
    ['runDeferred roce/sched.js:10', 'onAck roce/transport/completer.js:10'],
    'sites by bytes',
  );
});

t.test('a run reports the sampled attribution on its memstats line', async (t) => {
  const mod = fileURLToPath(new URL('../../src/cli/memstats.js', import.meta.url));
  const script = `
    const { MemStats } = await import(${JSON.stringify(mod)});
    const m = new MemStats(); m.start();
    const keep = [];
    for (let i = 0; i < 2000; i++) keep.push({ i, s: 'x' + i });
    console.log(m.stop(), keep.length);`;
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', timeout: 60_000 });
  t.equal(r.status, 0, r.stderr);
  t.match(r.stdout, /alloc_softroce_kb_s=[\d.]+ alloc_tool_kb_s=[\d.]+ alloc_node_loop_kb_s=[\d.]+ alloc_other_kb_s=[\d.]+ alloc_top="/);
});
