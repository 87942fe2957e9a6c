/**
 * Seeded faults on the receive side of a link, as a link wrapper: it takes a
 * link and is one, so it composes with the pcap recorder in either order.
 */
import type { Scheduler, TimerHandle } from '../sched.js';
import { LinkWrapper, rxUnverified, type Link, type RxHandler } from './link.js';

export interface FaultOptions {
  seed: number;
  /** percentages of received packets */
  dropPct?: number;
  dupPct?: number;
  reorderPct?: number;
  corruptPct?: number;
  /** extra delay in ms for delayed packets, and the share of packets delayed */
  delayMs?: number;
  delayPct?: number;
}

/**
 * Seeded faults on what a link receives (xorshift32, so a seed replays the
 * same run). Reordering holds a packet back until 1-3 later packets have
 * passed; corruption flips one bit of a copy. Sends pass through untouched.
 */
export class FaultInjector extends LinkWrapper {
  private s: number;
  readonly stats = { seen: 0, dropped: 0, duplicated: 0, reordered: 0, corrupted: 0, delayed: 0 };
  private held: Array<{ b: Buffer; ip: string; port: number; after: number; ipIdDf: number | undefined; group: string | undefined }> = [];
  private readonly o: Required<FaultOptions>;
  private readonly sched: Scheduler;
  private timers = new Set<TimerHandle>();
  private detached = false;
  constructor(inner: Link, o: FaultOptions, sched: Scheduler) {
    super(inner);
    this.o = { dropPct: 0, dupPct: 0, reorderPct: 0, corruptPct: 0, delayMs: 0, delayPct: 0, ...o };
    this.s = o.seed >>> 0 || 0x9e3779b9;
    this.sched = sched;
  }
  override setReceiver(h: RxHandler): void {
    this.inner.setReceiver((buf, len, ip, port, ipIdDf, group) => this.rx(h, buf, len, ip, port, ipIdDf, group));
  }
  /**
   * Cancels the delay timers and drops held packets, so nothing reaches the device after its
   * close and no timer outlives it. The inner link stays open (a link the caller passed to
   * openDevice outlives a failed open).
   */
  detach(): Promise<void> {
    if (!this.detached) {
      this.detached = true;
      for (const t of this.timers) this.sched.clearTimer(t);
      this.timers.clear();
      this.held.length = 0;
    }
    return Promise.resolve();
  }
  private rand(): number {
    let x = this.s;
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    this.s = x;
    return x / 4294967296;
  }
  private rx(h: RxHandler, buf: Buffer, len: number, ip: string, port: number, ipIdDf?: number, group?: string): void {
    if (this.detached) return;
    this.stats.seen++;
    // Release held packets whose turn has come.
    for (let i = 0; i < this.held.length;) {
      const p = this.held[i]!;
      if (--p.after <= 0) {
        this.held.splice(i, 1);
        h(p.b, p.b.length, p.ip, p.port, p.ipIdDf, p.group);
      } else i++;
    }
    const pct = (): number => this.rand() * 100;
    if (pct() < this.o.dropPct) {
      this.stats.dropped++;
      return;
    }
    let b = buf;
    let l = len;
    if (pct() < this.o.corruptPct) {
      b = Buffer.from(buf.subarray(0, len));
      l = b.length;
      const bit = Math.floor(this.rand() * l * 8);
      b[bit >> 3]! ^= 1 << (bit & 7);
      this.stats.corrupted++;
      // The inner link's ICRC verdict was for the bytes before the flip.
      ipIdDf = rxUnverified(ipIdDf);
    }
    if (pct() < this.o.reorderPct) {
      this.stats.reordered++;
      this.held.push({ b: Buffer.from(b.subarray(0, l)), ip, port, after: 1 + Math.floor(this.rand() * 3), ipIdDf, group });
      return;
    }
    if (this.o.delayMs > 0 && pct() < this.o.delayPct) {
      this.stats.delayed++;
      const copy = Buffer.from(b.subarray(0, l));
      const t = this.sched.setTimer(this.o.delayMs, () => {
        this.timers.delete(t);
        h(copy, copy.length, ip, port, ipIdDf, group);
      });
      this.timers.add(t);
      return;
    }
    h(b, l, ip, port, ipIdDf, group);
    if (pct() < this.o.dupPct) {
      this.stats.duplicated++;
      h(b, l, ip, port, ipIdDf, group);
    }
  }
}
