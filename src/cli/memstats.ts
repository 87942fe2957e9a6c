/**
 * SOFTROCE_MEMSTATS=1: what a tool's run did to memory, for the benchmark's
 * steady-state checks (no allocation per packet: the heap does not grow over
 * a long run; RSS stays bounded with many QPs). Counts garbage collections by
 * kind, samples the heap once a second, and measures the live heap after a
 * full GC at the start of the measured phase and at its end (with node
 * --expose-gc; without it, the lowest sample of the first and last tenth).
 */
import { PerformanceObserver, constants, type PerformanceEntry } from 'node:perf_hooks';

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
    this.obs = new PerformanceObserver((list) => {
      for (const e of list.getEntries() as Array<PerformanceEntry & { detail?: { kind?: number; flags?: number } }>) {
        this.gcs[gcKind(e.detail?.kind ?? 0, e.detail?.flags ?? 0)]++;
      }
    });
    this.obs.observe({ entryTypes: ['gc'] });
    this.t0 = performance.now();
    this.timer = setInterval(() => {
      this.samples.push([performance.now() - this.t0, process.memoryUsage().heapUsed]);
    }, 1000);
    this.timer.unref();
  }

  /** The measured phase ended: one line for the log. */
  stop(): string {
    if (this.timer) clearInterval(this.timer);
    this.obs?.disconnect();
    const secs = (performance.now() - this.t0) / 1000;
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
    return (
      ` memstats: secs=${secs.toFixed(1)} heap_start_mb=${mb(start)} heap_end_mb=${mb(end)} heap_growth_mb=${mb(end - start)}` +
      ` gc_minor=${this.gcs.minor} gc_major=${this.gcs.major} gc_incremental=${this.gcs.incremental} gc_forced=${this.gcs.forced} rss_max_mb=${(ru.maxRSS / 1024).toFixed(1)}`
    );
  }
}
