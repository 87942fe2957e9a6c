/**
 * The port interface between the transport and the network (smoltcp's
 * `phy::Device`): send one IB packet (BTH … ICRC) as a datagram, receive
 * datagrams, report link state. Backends: `UdpLink` (Node dgram, with the
 * native addon's socket options when built) and `MemLink` (in-process, for
 * deterministic tests with the fake scheduler). Wrappers compose:
 * `FaultInjector` (seeded drop/duplicate/reorder/corrupt/delay) and
 * `PcapRecorder` (what a device sends and receives, as a pcap).
 *
 * Transmit buffers belong to the link: `allocTx()` hands out a pooled buffer,
 * `send()` takes it back once the datagram is out. An empty pool is
 * backpressure: the requester stops and resumes on 'drain'.
 */
import { EventEmitter } from 'node:events';
import type { Scheduler, TimerHandle } from '../transport/sched.js';
import { gidFromString } from '../gid.js';

/** One spelling per address (an IPv6 address has many: '::1', '0:0:0:0:0:0:0:1'), for the in-memory network's table. */
function addrKey(ip: string, port: number): string {
  return `${ip.includes(':') ? Buffer.from(gidFromString(ip.split('%')[0]!)).toString('hex') : ip}:${port}`;
}

/** ipIdDf: the datagram's IPv4 `id | df << 16` when the link read its IP header (raw receive), else absent or -1. */
export type RxHandler = (buf: Buffer, len: number, srcIp: string, srcPort: number, ipIdDf?: number) => void;

export interface LinkInfo {
  readonly localIp: string;
  readonly family: 4 | 6;
  /** the UDP port datagrams leave from (the ICRC covers it) and arrive on */
  readonly localPort: number;
  /** 'dgram' | 'native' | 'memory' */
  readonly backend: string;
  /** true when the sender's IPv4 ID is 0 (IP_PMTUDISC_DO): what our ICRC assumes */
  readonly ipv4IdZero: boolean;
}

export interface Link extends LinkInfo {
  allocTx(): Buffer | null;
  /** tos: the IPv4 TOS / IPv6 traffic class byte (DSCP + ECN) of the AV; applied by the native backend */
  send(buf: Buffer, len: number, dstIp: string, dstPort: number, tos?: number): void;
  /** return an unsent tx buffer */
  freeTx(buf: Buffer): void;
  setReceiver(h: RxHandler): void;
  readonly up: boolean;
  /**
   * 'drain': tx buffers are free again; 'link': up/down; 'error': a socket error (the datagram is
   * lost); 'late': packets the link held (the socket was full) went out only now, `heldMs` after
   * the first of them was handed over (emitted when that was over 1 ms): ACK timers armed at
   * hand-over measure from now for those (device.ts)
   */
  on(ev: 'drain' | 'link' | 'error' | 'late', fn: (...a: unknown[]) => void): this;
  off(ev: 'drain' | 'link' | 'error' | 'late', fn: (...a: unknown[]) => void): this;
  /** a closing device takes its listeners back, so a link the caller keeps does not keep the device alive */
  off(ev: 'drain' | 'link', fn: (...a: unknown[]) => void): this;
  close(): Promise<void>;
}

/** Largest datagram: GRH-less IB packet with 4096 B payload plus headers. */
export const TX_BUF_SIZE = 4096 + 128;

export class TxPool {
  private readonly free: Buffer[] = [];
  private disposed = false;
  constructor(n: number) {
    // One slab cut into views, not n separate buffers: one allocation to make and to free per
    // link, so opening and closing devices does not fragment the heap (RSS stays flat).
    const slab = Buffer.allocUnsafeSlow(n * TX_BUF_SIZE);
    for (let i = 0; i < n; i++) this.free.push(slab.subarray(i * TX_BUF_SIZE, (i + 1) * TX_BUF_SIZE));
  }
  get available(): number {
    return this.free.length;
  }
  alloc(): Buffer | null {
    return this.free.pop() ?? null;
  }
  release(b: Buffer): void {
    if (!this.disposed) this.free.push(b);
  }
  /**
   * A closed link lets go of its buffers (1,024 of them are ~4.3 MB) at once: something may
   * still hold the link object for a while (a dgram socket stays reachable until libuv's
   * close phase, which a loop of awaited open/close calls never reaches), and the pool must
   * not ride along. Buffers still out (in a send) are dropped when they come back.
   */
  dispose(): void {
    this.disposed = true;
    this.free.length = 0;
  }
}

// ------------------------------------------------------------- in-memory ---

/** An in-process network: links addressed by ip:port, delivery deferred through the scheduler. */
export class MemNetwork {
  readonly links = new Map<string, MemLink>();
  readonly sched: Scheduler;
  /** Tests: see every datagram; return false to drop it. */
  filter: ((pkt: Buffer, srcIp: string, dstIp: string) => boolean) | null = null;
  /** Tests: one-way delay of every datagram in (fake) ms; 0 delivers on the next deferred turn. */
  latencyMs = 0;
  constructor(sched: Scheduler) {
    this.sched = sched;
  }
  /** Tests: deliver raw bytes as if `srcIp:srcPort` had sent them. */
  inject(srcIp: string, srcPort: number, dstIp: string, dstPort: number, bytes: Uint8Array): void {
    const dst = this.links.get(addrKey(dstIp, dstPort));
    const copy = Buffer.from(bytes);
    this.sched.defer(() => dst?.receive(copy, copy.length, srcIp, srcPort));
  }
  attach(ip: string, port = 4791): MemLink {
    const l = new MemLink(this, ip, port);
    this.links.set(addrKey(ip, port), l);
    return l;
  }
}

export class MemLink extends EventEmitter implements Link {
  readonly localIp: string;
  readonly localPort: number;
  readonly family: 4 | 6;
  readonly backend = 'memory';
  readonly ipv4IdZero = true;
  up = true;
  private readonly net: MemNetwork;
  private readonly pool = new TxPool(512);
  private rx: RxHandler | null = null;
  constructor(net: MemNetwork, ip: string, port: number) {
    super();
    this.net = net;
    this.localIp = ip;
    this.localPort = port;
    this.family = ip.includes(':') ? 6 : 4;
  }
  allocTx(): Buffer | null {
    return this.pool.alloc();
  }
  freeTx(b: Buffer): void {
    this.pool.release(b);
  }
  receive(buf: Buffer, len: number, srcIp: string, srcPort: number): void {
    if (this.up && this.rx) this.rx(buf, len, srcIp, srcPort);
  }
  send(buf: Buffer, len: number, dstIp: string, dstPort: number): void {
    const dst = this.net.links.get(addrKey(dstIp, dstPort));
    const deliver = (b: Buffer): void => {
      const pass = this.net.filter ? this.net.filter(b.subarray(0, len), this.localIp, dstIp) : true;
      if (pass && dst && dst.up && this.up && dst.rx) dst.rx(b, len, this.localIp, this.localPort);
    };
    const release = (): void => {
      const wasEmpty = this.pool.available === 0;
      this.pool.release(buf);
      if (wasEmpty) this.emit('drain');
    };
    if (this.net.latencyMs > 0) {
      // The datagram is on the wire: the tx buffer is free now, a copy arrives later.
      const copy = Buffer.from(buf.subarray(0, len));
      this.net.sched.defer(release);
      this.net.sched.setTimer(this.net.latencyMs, () => deliver(copy));
      return;
    }
    this.net.sched.defer(() => {
      deliver(buf);
      release();
    });
  }
  setReceiver(h: RxHandler): void {
    this.rx = h;
  }
  /** Tests: take the link down / up (port events). */
  setUp(up: boolean): void {
    this.up = up;
    this.emit('link', up);
  }
  // eslint-disable-next-line @typescript-eslint/require-await -- Link.close() is async; the in-memory link has nothing to wait for, and async keeps a throw a rejection as on the socket links
  async close(): Promise<void> {
    // Only our own entry: a new link may already have taken the address.
    const key = addrKey(this.localIp, this.localPort);
    if (this.net.links.get(key) === this) this.net.links.delete(key);
    this.rx = null;
    this.pool.dispose();
  }
}

// ---------------------------------------------------------- fault inject ---

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
 * Seeded faults on the receive side of a link (xorshift32, so a seed replays
 * the same run). Reordering holds a packet back until 1-3 later packets have
 * passed; corruption flips one bit of a copy.
 */
export class FaultInjector {
  private s: number;
  readonly stats = { seen: 0, dropped: 0, duplicated: 0, reordered: 0, corrupted: 0, delayed: 0 };
  private held: Array<{ b: Buffer; ip: string; port: number; after: number; ipIdDf: number | undefined }> = [];
  private readonly o: Required<FaultOptions>;
  private readonly sched: Scheduler;
  private timers = new Set<TimerHandle>();
  private closed = false;
  private readonly link: Link;
  private readonly prevSetReceiver: Link['setReceiver'];
  constructor(link: Link, o: FaultOptions, sched: Scheduler) {
    this.o = { dropPct: 0, dupPct: 0, reorderPct: 0, corruptPct: 0, delayMs: 0, delayPct: 0, ...o };
    this.s = o.seed >>> 0 || 0x9e3779b9;
    this.sched = sched;
    this.link = link;
    // eslint-disable-next-line @typescript-eslint/unbound-method -- only ever put back on the same link (close()), so `this` stays that link
    this.prevSetReceiver = link.setReceiver;
    const orig = link.setReceiver.bind(link);
    link.setReceiver = (h: RxHandler) => orig((buf, len, ip, port, ipIdDf) => this.rx(h, buf, len, ip, port, ipIdDf));
  }
  /**
   * Cancels the delay timers and drops held packets, so nothing reaches the device after its
   * close and no timer outlives it; the link gets its own setReceiver back (a link the caller
   * passed to openDevice outlives a failed open).
   */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const t of this.timers) this.sched.clearTimer(t);
    this.timers.clear();
    this.held.length = 0;
    this.link.setReceiver = this.prevSetReceiver;
  }
  private rand(): number {
    let x = this.s;
    x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0;
    this.s = x;
    return x / 4294967296;
  }
  private rx(h: RxHandler, buf: Buffer, len: number, ip: string, port: number, ipIdDf?: number): void {
    if (this.closed) return;
    this.stats.seen++;
    // Release held packets whose turn has come.
    for (let i = 0; i < this.held.length;) {
      const p = this.held[i]!;
      if (--p.after <= 0) {
        this.held.splice(i, 1);
        h(p.b, p.b.length, p.ip, p.port, p.ipIdDf);
      } else i++;
    }
    const pct = (): number => this.rand() * 100;
    if (pct() < this.o.dropPct) { this.stats.dropped++; return; }
    let b = buf;
    let l = len;
    if (pct() < this.o.corruptPct) {
      b = Buffer.from(buf.subarray(0, len));
      l = b.length;
      const bit = Math.floor(this.rand() * l * 8);
      b[bit >> 3]! ^= 1 << (bit & 7);
      this.stats.corrupted++;
    }
    if (pct() < this.o.reorderPct) {
      this.stats.reordered++;
      this.held.push({ b: Buffer.from(b.subarray(0, l)), ip, port, after: 1 + Math.floor(this.rand() * 3), ipIdDf });
      return;
    }
    if (this.o.delayMs > 0 && pct() < this.o.delayPct) {
      this.stats.delayed++;
      const copy = Buffer.from(b.subarray(0, l));
      const t = this.sched.setTimer(this.o.delayMs, () => { this.timers.delete(t); h(copy, copy.length, ip, port, ipIdDf); });
      this.timers.add(t);
      return;
    }
    h(b, l, ip, port, ipIdDf);
    if (pct() < this.o.dupPct) {
      this.stats.duplicated++;
      h(b, l, ip, port, ipIdDf);
    }
  }
}
