/**
 * SOFTROCE_MEMSTATS=1: what a tool's run did to memory, for the benchmark's
 * steady-state checks (no allocation per packet: the heap does not grow over
 * a long run; RSS stays bounded with many QPs). Counts garbage collections by
 * kind, samples the heap once a second, and measures the live heap after a
 * full GC at the start of the measured phase and at its end (with node
 * --expose-gc; without it, the lowest sample of the first and last tenth).
 *
 * GC counts alone cannot say who allocates: V8's sampling heap profiler (through node:inspector,
 * counting objects the GC has already collected) attributes what was allocated during the phase
 * to whoever made it (see `attribute`). On Node 20 the largest source on a receiver is Node itself:
 * each event-loop turn's check phase (Environment::RunAndClearNativeImmediates) makes one empty JS
 * object for its callback scope, 56 bytes per turn with no JS on the stack, whatever the addon does.
 */
import { Session } from 'node:inspector';
import { PerformanceObserver, constants, type PerformanceEntry } from 'node:perf_hooks';

interface ProfileNode {
  callFrame: { functionName: string; url: string; lineNumber: number };
  selfSize: number;
  children: ProfileNode[];
}

/** Who allocated, in bytes: this package's library, the CLI tools, Node's event loop (no JS on the stack), anything else. */
export interface Attribution {
  softroce: number;
  tool: number;
  nodeLoop: number;
  other: number;
  /** the library's largest sites, "function file:line", bytes */
  top: Array<[string, number]>;
}

/**
 * Sorts a sampling heap profile's bytes by the innermost frame that is ours: under dist/src/cli a
 * tool's, elsewhere under dist/src the library's (Node's timers called from the transport count
 * as the transport's); a sample with no JS frame at all is Node's loop (V8 reports it as "(V8
 * API)"); the rest, other.
 */
export function attribute(head: ProfileNode): Attribution {
  const a: Attribution = { softroce: 0, tool: 0, nodeLoop: 0, other: 0, top: [] };
  const sites = new Map<string, number>();
  const walk = (n: ProfileNode, ours: string | null, oursUrl: string, depth: number): void => {
    const f = n.callFrame;
    const i = f.url.lastIndexOf('/dist/src/');
    if (i >= 0) {
      ours = `${f.functionName || '(anonymous)'} ${f.url.slice(i + 10)}:${f.lineNumber + 1}`;
      oursUrl = f.url.slice(i + 10);
    }
    if (n.selfSize > 0) {
      if (ours === null) {
        if (depth === 1 && f.functionName === '(V8 API)') a.nodeLoop += n.selfSize;
        else a.other += n.selfSize;
      } else if (oursUrl.startsWith('cli/')) a.tool += n.selfSize;
      else {
        a.softroce += n.selfSize;
        sites.set(ours, (sites.get(ours) ?? 0) + n.selfSize);
      }
    }
    for (const c of n.children) walk(c, ours, oursUrl, depth + 1);
  };
  walk(head, null, '', 0);
  a.top = [...sites].sort((x, y) => y[1] - x[1]).slice(0, 3);
  return a;
}

export type GcKind = 'minor' | 'major' | 'incremental' | 'weak' | 'forced';

/**
 * A gc performance entry's kind, by the constants Node defines for them (perf_hooks
 * NODE_PERFORMANCE_GC_*: minor 1, major 4, incremental 8, weak callbacks 16). A collection
 * the process forced (global.gc(), FLAGS_FORCED: our own heap measurements) is counted apart,
 * so "major" counts only what the run itself caused.
 */
export function gcKind(kind: number, flags: number): GcKind {
  if (flags & constants.NODE_PERFORMANCE_GC_FLAGS_FORCED) return 'forced';
  switch (kind) {
    case constants.NODE_PERFORMANCE_GC_MINOR:
      return 'minor';
    case constants.NODE_PERFORMANCE_GC_MAJOR:
      return 'major';
    case constants.NODE_PERFORMANCE_GC_INCREMENTAL:
      return 'incremental';
    default:
      return 'weak';
  }
}

export class MemStats {
  private readonly gcs: Record<GcKind, number> = { minor: 0, major: 0, incremental: 0, weak: 0, forced: 0 };
  private readonly samples: Array<[number, number]> = [];
  private obs: PerformanceObserver | null = null;
  private timer: NodeJS.Timeout | null = null;
  private t0 = 0;
  private heapStart = 0;
  /** the live heap after a full GC once the run has warmed up (SOFTROCE_MEMSTATS_WARM_S, default 10 s in) */
  private heapWarm = 0;
  private warmTimer: NodeJS.Timeout | null = null;
  private session: Session | null = null;

  static fromEnv(): MemStats | null {
    return process.env['SOFTROCE_MEMSTATS'] === '1' ? new MemStats() : null;
  }

  private gc(): boolean {
    const g = (globalThis as { gc?: () => void }).gc;
    if (typeof g !== 'function') return false;
    g();
    return true;
  }

  /** The measured phase starts. */
  start(): void {
    this.heapStart = this.gc() ? process.memoryUsage().heapUsed : 0;
    // The growth from the start includes the JIT's one-time step (optimized code, feedback and
    // deoptimization data: +0.4 MB code space and +0.7 MB old space on an ib_write_bw client, the
    // same after 5 s as after 60 s); the growth from a warm point says whether steady state grows.
    const warmS = Number(process.env['SOFTROCE_MEMSTATS_WARM_S'] ?? 10);
    if (this.heapStart > 0 && warmS > 0) {
      this.warmTimer = setTimeout(() => {
        if (this.gc()) this.heapWarm = process.memoryUsage().heapUsed;
      }, warmS * 1000);
      this.warmTimer.unref();
    }
    this.obs = new PerformanceObserver((list) => {
      for (const e of list.getEntries() as Array<PerformanceEntry & { detail?: { kind?: number; flags?: number } }>) {
        this.gcs[gcKind(e.detail?.kind ?? 0, e.detail?.flags ?? 0)]++;
      }
    });
    this.obs.observe({ entryTypes: ['gc'] });
    try {
      this.session = new Session();
      this.session.connect();
      // One sample per 32 KiB allocated (V8's default), objects the GC collected since included.
      this.session.post('HeapProfiler.startSampling', {
        samplingInterval: 32768,
        includeObjectsCollectedByMinorGC: true,
        includeObjectsCollectedByMajorGC: true,
      } as never);
    } catch {
      this.session = null; // no inspector in this build: the line says alloc=n/a
    }
    this.t0 = performance.now();
    this.timer = setInterval(() => {
      this.samples.push([performance.now() - this.t0, process.memoryUsage().heapUsed]);
    }, 1000);
    this.timer.unref();
  }

  /** The measured phase ended: one line for the log. */
  stop(): string {
    if (this.timer) clearInterval(this.timer);
    if (this.warmTimer) clearTimeout(this.warmTimer);
    this.obs?.disconnect();
    const secs = (performance.now() - this.t0) / 1000;
    let att: Attribution | null = null;
    // A session on the main thread answers synchronously: the callback has run when post returns.
    this.session?.post('HeapProfiler.stopSampling', (e, r) => {
      if (!e && r) att = attribute(r.profile.head);
    });
    this.session?.disconnect();
    const mb = (b: number): string => (b / 1048576).toFixed(1);
    let start = this.heapStart,
      end = 0;
    if (this.gc()) end = process.memoryUsage().heapUsed;
    const n = this.samples.length;
    const tenth = Math.max(1, Math.floor(n / 10));
    const low = (a: Array<[number, number]>): number => Math.min(...a.map(([, h]) => h));
    if (!start && n) start = low(this.samples.slice(0, tenth));
    if (!end && n) end = low(this.samples.slice(n - tenth));
    const ru = process.resourceUsage();
    const steady =
      this.heapWarm > 0 && end > 0 ? ` heap_warm_mb=${mb(this.heapWarm)} heap_steady_growth_mb=${((end - this.heapWarm) / 1048576).toFixed(2)}` : '';
    const a = att as Attribution | null;
    const kbs = (b: number): string => (b / 1024 / secs).toFixed(1);
    const alloc =
      a === null
        ? ' alloc=n/a'
        : ` alloc_softroce_kb_s=${kbs(a.softroce)} alloc_tool_kb_s=${kbs(a.tool)} alloc_node_loop_kb_s=${kbs(a.nodeLoop)} alloc_other_kb_s=${kbs(a.other)}` +
          ` alloc_top="${a.top.map(([k, b]) => `${k} ${kbs(b)} kB/s`).join('; ')}"`;
    return (
      ` memstats: secs=${secs.toFixed(1)} heap_start_mb=${mb(start)} heap_end_mb=${mb(end)} heap_growth_mb=${mb(end - start)}${steady}` +
      ` gc_minor=${this.gcs.minor} gc_major=${this.gcs.major} gc_incremental=${this.gcs.incremental} gc_forced=${this.gcs.forced} rss_max_mb=${(ru.maxRSS / 1024).toFixed(1)}` +
      alloc
    );
  }
}
