/**
 * The measurement loops of softroce's perftest tools, one per perftest
 * run_iter_* function: bandwidth (a client posting SEND / RDMA WRITE / RDMA
 * READ / atomics on N QPs; a server counting received SENDs) and latency
 * (SEND and RDMA WRITE ping-pong; READ and atomic round trips). Each either
 * runs a number of iterations (-n) or for a duration (-D). They poll the CQs
 * and yield to the event loop when there is nothing to do, since the
 * transport runs on the same thread.
 */
import { Wc, WC_STATUS } from '../verbs/types.js';
import type { SendWr } from '../verbs/types.js';
import type { Qp } from '../verbs/qp.js';
import type { Mr } from '../verbs/mr.js';
import type { Ah } from '../verbs/objects.js';
import type { Cq } from '../verbs/cq.js';
import type { Device } from '../verbs/device.js';
import type { PerfDest } from './perftest-comm.js';
import { WC_STATUS_STR } from './pingpong.js';

export type Verb = 'SEND' | 'WRITE' | 'READ' | 'ATOMIC';
export const UD_QKEY = 0x11111111;
/** UD receive buffers start with the 40-byte GRH (IBV_WC_GRH). */
export const GRH_LEN = 40;

export interface RunCtx {
  device: Device;
  verb: Verb;
  conn: 'RC' | 'UC' | 'UD';
  qps: Qp[];
  rem: PerfDest[];
  ahs: Ah[];
  mr: Mr;
  /** bytes per QP region; QP i sends from region i and exposes region q + i to its peer */
  region: number;
  sendCq: Cq;
  recvCq: Cq;
  txDepth: number;
  rxDepth: number;
  cqMod: number;
  atomicCmp: boolean;
  /** UD: the peers' Q_Key (perftest's 0x11111111; with -R rdma_cm's, from the SIDR_REP) */
  qkey?: number;
  /** called about every 200 ms with a one-line status, when progress is shown */
  progress: ((s: string) => void) | null;
  /** --busy_poll (and the device can): the latency loops spin on the receive sockets instead of sleeping */
  busy?: boolean;
}

/**
 * A RunCtx, always made here: the run's and the warm-up's (perftest-warmup.ts) then share one
 * object shape, so the code V8 compiles during the warm-up fits the run's context too.
 */
export function runCtx(c: RunCtx): RunCtx {
  return {
    device: c.device,
    verb: c.verb,
    conn: c.conn,
    qps: c.qps,
    rem: c.rem,
    ahs: c.ahs,
    mr: c.mr,
    region: c.region,
    sendCq: c.sendCq,
    recvCq: c.recvCq,
    txDepth: c.txDepth,
    rxDepth: c.rxDepth,
    cqMod: c.cqMod,
    atomicCmp: c.atomicCmp,
    progress: c.progress,
    busy: c.busy ?? false,
  };
}

/** Iterations per QP (for at most maxSecs, if given), or a duration in seconds. */
export type Limit = { iters: number; maxSecs?: number } | { secs: number };

export interface BwResult {
  size: number;
  iters: number;
  peak: number;
  avg: number;
  rate: number;
}

/**
 * Sleepers: every wait below also wakes on a 200 ms ticker, so deadlines
 * (-D, the UC/UD stall check) are noticed while nothing arrives, without a
 * timer per wait.
 */
const sleepers = new Set<() => void>();
let ticker: NodeJS.Timeout | null = null;
function startTicker(): void {
  if (!ticker) {
    ticker = setInterval(() => {
      for (const f of [...sleepers]) f();
      for (const w of cqWaitList) wakeCq(w);
    }, 200);
    ticker.unref();
  }
}
function sleep(arm: (wake: () => void) => void, disarm: (wake: () => void) => void): Promise<void> {
  startTicker();
  return new Promise((resolve) => {
    const wake = (): void => {
      sleepers.delete(wake);
      disarm(wake);
      resolve();
    };
    sleepers.add(wake);
    arm(wake);
  });
}

/**
 * Per CQ, its one 'notify' listener (added at the first wait, kept) and the wait it ends: a wait
 * in a latency loop costs a promise, not two closures, a listener added and removed (a new events
 * object each time) and a Set entry added and deleted (issue 15: GC in ib_send_lat's loop).
 */
interface CqWait {
  resolve: (() => void) | null;
}
const cqWaitOf = new WeakMap<Cq, CqWait>();
const cqWaitList: CqWait[] = [];
function wakeCq(w: CqWait): void {
  const r = w.resolve;
  if (r === null) return;
  w.resolve = null;
  r();
}

/**
 * Sleeps until the CQ holds a completion (ibv_req_notify_cq, then
 * ibv_get_cq_event) or the ticker wakes us. Sleeping instead of spinning
 * leaves the CPU to the peer and the kernel, which on a small machine is most
 * of the cost.
 */
function waitCq(cq: Cq): Promise<void> {
  if (cq.length > 0) return Promise.resolve();
  let w = cqWaitOf.get(cq);
  if (w === undefined) {
    const n: CqWait = { resolve: null };
    cq.on('notify', () => wakeCq(n));
    cqWaitOf.set(cq, n);
    cqWaitList.push(n);
    w = n;
  }
  if (w.resolve === null) {
    const cw = w;
    startTicker();
    return new Promise((resolve) => {
      cw.resolve = resolve;
      cq.reqNotify();
    });
  }
  // A second wait on the same CQ at once: its own listener.
  return sleep(
    (w) => {
      cq.on('notify', w);
      cq.reqNotify();
    },
    (w) => {
      cq.off('notify', w);
    },
  );
}

/**
 * Waits until the send queue has room (the previous send's ACK may still be
 * on its way when the peer's answer is already here); true if `end` passed.
 * Its completions are dropped here, as perftest polls them away.
 */
async function sqRoom(c: RunCtx, qp: Qp, end: number): Promise<boolean> {
  const wc = [new Wc()];
  while (qp.outstanding >= c.txDepth) {
    while (c.sendCq.poll(wc, 1) === 1);
    if (now() >= end) return true;
    if (!c.busy) await waitRx(c);
    else {
      const y = busyWait(c);
      if (y) await y;
    }
  }
  return false;
}

/** Lets the last sends of a ping-pong be acknowledged (at most 2 s), dropping their completions. */
async function drain(c: RunCtx, qp: Qp): Promise<void> {
  const wc = [new Wc()];
  const until = now() + 2;
  while (qp.outstanding > 0 && now() < until) {
    while (c.sendCq.poll(wc, 1) === 1);
    if (!c.busy) await waitRx(c);
    else {
      const y = busyWait(c);
      if (y) await y;
    }
  }
  while (c.sendCq.poll(wc, 1) === 1);
}

/** Sleeps until the device has received something (an RDMA WRITE may have landed) or the ticker wakes us. */
function waitRx(c: RunCtx): Promise<void> {
  let live = true;
  return sleep(
    (w) => {
      void c.device.nextRx().then(() => {
        if (live) w();
      });
    },
    () => {
      live = false;
    },
  );
}
/**
 * --busy_poll: one wait spins up to BUSY_SPIN_US on the device's receive sockets (device.busyPoll:
 * it returns as soon as something arrived, its completions already in the CQs). A spin that found
 * nothing sleeps on events (waitRx) as Linux's busy_poll falls back to sleeping: the peer, if
 * descheduled on a loaded machine, gets the CPU instead of the spin, and the event loop its turn
 * (timers: retransmits, the ticker). While things keep arriving, the loop still gets a
 * setImmediate turn every BUSY_YIELD_MS, which a spin never gives it.
 *
 * 30 µs, about three typical round trips here (ib_send_lat 2 B: 11-13 µs). A spin that cannot
 * succeed holds the CPU the peer needs: on two cores with both tools spinning, a third runnable
 * thread (V8's background compiler, early in a run) takes a core from one of them, and the round
 * trip ends only when the other side's spin gives up. With 200 µs spins those round trips were
 * the p99 (220-228 µs in 20,000 iterations, nearly all in the first second); with 30 µs, 66-69 µs,
 * the average unchanged (17.7-18.3 against 19.0-19.4 µs). Spins that adapt to the smoothed wait
 * (two or four times it) did worse: 100-164 µs.
 */
const BUSY_SPIN_US = 30;
const BUSY_YIELD_MS = 1;
let lastYield = 0;
const yieldTurn = (): Promise<void> => new Promise((r) => setImmediate(r));
/** One busy wait: undefined, or what the caller must await (a sleep, or a turn for the event loop). */
function busyWait(c: RunCtx): Promise<void> | undefined {
  const got = c.device.busyPoll(BUSY_SPIN_US);
  const t = performance.now();
  if (got === 0) {
    lastYield = t;
    return waitRx(c);
  }
  if (t - lastYield < BUSY_YIELD_MS) return undefined;
  lastYield = t;
  return yieldTurn();
}

/** seconds (performance.now: a double, no allocation per call) */
const now = (): number => performance.now() / 1000;
const MB = 1048576;
const PEAK_WINDOW = 0.005;

function wcError(side: string, w: Wc): string {
  const code = WC_STATUS.indexOf(w.status);
  return ` Completion with error at ${side}:\n Failed status ${code}: wr_id ${w.wrId} syndrom 0x0 (${WC_STATUS_STR[code] ?? w.status})`;
}

/** One reusable work request per QP, as perftest's ctx_set_send_wqes builds them. */
function sendWrs(c: RunCtx, size: number): SendWr[] {
  return c.qps.map((_, i) => {
    const sg = [{ mr: c.mr, offset: i * c.region, length: c.verb === 'ATOMIC' ? 8 : size }];
    const remote = { addr: c.rem[i]!.vaddr, rkey: c.rem[i]!.rkey };
    switch (c.verb) {
      case 'WRITE':
        return { wrId: 0, opcode: 'RDMA_WRITE', signaled: false, sg, remote };
      case 'READ':
        return { wrId: 0, opcode: 'RDMA_READ', signaled: false, sg, remote };
      case 'ATOMIC':
        return c.atomicCmp
          ? { wrId: 0, opcode: 'ATOMIC_CMP_AND_SWP', signaled: false, compareAdd: 0n, swap: 1n, sg, remote }
          : { wrId: 0, opcode: 'ATOMIC_FETCH_AND_ADD', signaled: false, compareAdd: 1n, sg, remote };
      case 'SEND':
        return c.conn === 'UD'
          ? { wrId: 0, opcode: 'SEND', signaled: false, sg, ud: { ah: c.ahs[i]!, remoteQpn: c.rem[i]!.qpn, remoteQkey: c.qkey ?? UD_QKEY } }
          : { wrId: 0, opcode: 'SEND', signaled: false, sg };
    }
  });
}

/**
 * Posts receives on every QP until each holds rxDepth (SEND tests' receiving
 * side). Each receive spans a whole region, so one set serves every message
 * size of an -a sweep (a UD region has room for the GRH too).
 */
export function fillRecvs(c: RunCtx, posted: number[]): void {
  c.qps.forEach((qp, i) => {
    const sg = [{ mr: c.mr, offset: (c.qps.length + i) * c.region, length: c.region }];
    const wr = { wrId: i, sg };
    while ((posted[i] ?? 0) < c.rxDepth) {
      qp.postRecv(wr);
      posted[i] = (posted[i] ?? 0) + 1;
    }
  });
}

/**
 * run_iter_bw: post up to txDepth per QP, signal every cqMod-th WR, poll the
 * send CQ. Bandwidth counts size x completed messages over all QPs; the peak
 * is the best rate between two consecutive polls that completed something.
 */
export async function bwClient(c: RunCtx, size: number, limit: Limit): Promise<BwResult | string> {
  const q = c.qps.length;
  const wrs = sendWrs(c, size);
  const posted = new Array<number>(q).fill(0),
    done = new Array<number>(q).fill(0);
  const index = new Map(c.qps.map((qp, i) => [qp.qpn, i]));
  const wcs = Array.from({ length: 64 }, () => new Wc());
  const iters = 'iters' in limit ? limit.iters : Infinity;
  // perftest's perform_warm_up (WRITE, READ, atomics; a SEND would eat the server's receives):
  // a burst per QP, completed before the clock starts.
  if (c.verb !== 'SEND') {
    const burst = Math.max(1, Math.min(c.txDepth, 64));
    for (let i = 0; i < q; i++) {
      const wr = wrs[i]!;
      for (let k = 0; k < burst; k++) {
        wr.wrId = -1;
        wr.signaled = k === burst - 1;
        c.qps[i]!.postSend(wr);
      }
    }
    for (let got = 0; got < q;) {
      const n = c.sendCq.poll(wcs);
      for (let k = 0; k < n; k++) {
        if (wcs[k]!.status !== 'SUCCESS') return wcError('client', wcs[k]!);
        got++;
      }
      if (n === 0) await waitCq(c.sendCq);
    }
  }
  const t0 = now();
  const end = 'secs' in limit ? t0 + limit.secs : Infinity;
  let last = t0,
    lastDone = 0,
    totalDone = 0,
    peak = 0,
    stopping = false,
    nextProgress = t0 + 0.2;
  for (;;) {
    if (!stopping && now() >= end) stopping = true;
    if (!stopping) {
      for (let i = 0; i < q; i++) {
        const qp = c.qps[i]!,
          wr = wrs[i]!;
        while (posted[i]! < iters && posted[i]! - done[i]! < c.txDepth) {
          const n = posted[i]!;
          wr.wrId = n;
          wr.signaled = n % c.cqMod === c.cqMod - 1 || n === iters - 1;
          qp.postSend(wr);
          posted[i] = n + 1;
        }
      }
    }
    // An iteration run ends on the last (signalled) WR; a duration run stops
    // posting and waits for the send queues to drain (its last WR may be unsignalled).
    if (!stopping ? done.every((d) => d >= iters) : c.qps.every((qp) => qp.outstanding === 0)) {
      if (stopping) for (let i = 0; i < q; i++) done[i] = posted[i]!;
      break;
    }
    const n = c.sendCq.poll(wcs);
    if (n === 0) {
      await (stopping ? waitRx(c) : waitCq(c.sendCq));
      continue;
    }
    for (let k = 0; k < n; k++) {
      const w = wcs[k]!;
      if (w.status !== 'SUCCESS') return wcError('client', w);
      const i = index.get(w.qpn) ?? 0;
      totalDone += w.wrId + 1 - done[i]!;
      done[i] = w.wrId + 1;
    }
    // The peak is the best rate over windows of at least 5 ms (a single poll's burst says nothing).
    const t2 = now();
    if (t2 - last >= PEAK_WINDOW) {
      peak = Math.max(peak, ((totalDone - lastDone) * size) / (t2 - last) / MB);
      last = t2;
      lastDone = totalDone;
    }
    if (c.progress && t2 >= nextProgress) {
      nextProgress = t2 + 0.2;
      c.progress(
        'secs' in limit ? `${size} B: ${(t2 - t0).toFixed(1)}/${limit.secs} s, ${totalDone} messages` : `${size} B: ${totalDone}/${iters * q} messages`,
      );
    }
  }
  const total = done.reduce((a, b) => a + b, 0);
  const secs = now() - t0;
  const avg = (total * size) / secs / MB;
  return { size, iters: 'iters' in limit ? limit.iters : total, peak: Math.max(peak, avg), avg, rate: total / secs / 1e6 };
}

/**
 * run_iter_bw_server: count received SENDs, re-posting each receive. Timed
 * from the first arrival. UC and UD lose messages without telling anyone, so
 * the server stops when nothing has arrived for a while and reports what it
 * got (perftest's check_alive does the same).
 */
export async function bwServer(c: RunCtx, size: number, limit: Limit): Promise<BwResult | string> {
  const q = c.qps.length;
  const want = 'iters' in limit ? limit.iters * q : Infinity;
  const wcs = Array.from({ length: 64 }, () => new Wc());
  const index = new Map(c.qps.map((qp, i) => [qp.qpn, i]));
  const wrs = c.qps.map((_, i) => ({ wrId: i, sg: [{ mr: c.mr, offset: (q + i) * c.region, length: c.region }] }));
  const reliable = c.conn === 'RC';
  const start = now();
  const end = 'secs' in limit ? start + limit.secs + 1 : Infinity;
  let got = 0,
    t0 = 0,
    tLast = 0,
    last = 0,
    lastGot = 0,
    peak = 0,
    lastArrival = start,
    nextProgress = start + 0.2;
  while (got < want) {
    const n = c.recvCq.poll(wcs);
    const t = now();
    if (n === 0) {
      if (t >= end) break;
      const stall = got ? 3 : 60;
      if (!reliable && t - lastArrival > stall) break;
      await waitCq(c.recvCq);
      continue;
    }
    if (got === 0) {
      t0 = t;
      last = t;
    }
    for (let k = 0; k < n; k++) {
      const w = wcs[k]!;
      if (w.status !== 'SUCCESS') return wcError('server', w);
      const i = index.get(w.qpn) ?? 0;
      c.qps[i]!.postRecv(wrs[i]!);
      got++;
    }
    lastArrival = t;
    if (t - last >= PEAK_WINDOW) {
      peak = Math.max(peak, ((got - lastGot) * size) / (t - last) / MB);
      last = t;
      lastGot = got;
    }
    tLast = t;
    if (c.progress && t >= nextProgress) {
      nextProgress = t + 0.2;
      c.progress(`${size} B: ${got}${want === Infinity ? '' : `/${want}`} messages received`);
    }
  }
  const secs = Math.max(tLast - t0, 1e-9);
  const avg = got > 1 ? (got * size) / secs / MB : 0;
  return { size, iters: 'iters' in limit ? limit.iters : got, peak: Math.max(peak, avg), avg, rate: got > 1 ? got / secs / 1e6 : 0 };
}

/**
 * Latency tests. Returns per-iteration latencies in microseconds: half the
 * round trip for SEND and WRITE ping-pong, the whole round trip for READ and
 * atomics (perftest's rtt_factor).
 */
export async function latency(c: RunCtx, size: number, limit: Limit, client: boolean): Promise<number[] | string> {
  switch (c.verb) {
    case 'SEND':
      return sendLat(c, size, limit, client);
    case 'WRITE':
      return writeLat(c, size, limit, client);
    default:
      return rdLat(c, size, limit);
  }
}

function limits(limit: Limit): { iters: number; end: number } {
  if ('secs' in limit) return { iters: Infinity, end: now() + limit.secs };
  return { iters: limit.iters, end: limit.maxSecs !== undefined ? now() + limit.maxSecs : Infinity };
}

/** run_iter_lat_send: the client sends first; each side sends once it has received. */
async function sendLat(c: RunCtx, size: number, limit: Limit, client: boolean): Promise<number[] | string> {
  const qp = c.qps[0]!;
  const wr = sendWrs(c, size)[0]!;
  wr.signaled = true;
  const wc = [new Wc(), new Wc()];
  const recvWr = { wrId: 0, sg: [{ mr: c.mr, offset: c.region, length: c.region }] };
  const { iters, end } = limits(limit);
  const times: number[] = [];
  let prev = performance.now();
  /**
   * One look at the CQs: null (a receive came, its buffer is posted again), an error message,
   * 'timeout', or undefined (nothing yet: sleep, then look again). Synchronous, and the loop below
   * awaits only the sleep: a nested async call per wait was a promise and a suspended frame more
   * per round trip (issue 15: GC in the latency loop).
   */
  // eslint-disable-next-line @typescript-eslint/no-redundant-type-constituents -- 'timeout' names the sentinel; any other string is an error message
  const tryRecv = (): string | null | 'timeout' | undefined => {
    if (c.recvCq.poll(wc, 1) === 1) {
      const w = wc[0]!;
      if (w.status !== 'SUCCESS') return wcError(client ? 'client' : 'server', w);
      qp.postRecv(recvWr);
      return null;
    }
    // Sends are signalled so the SQ never fills; their completions are only drained here.
    while (c.sendCq.poll(wc, 1) === 1) if (wc[0]!.status !== 'SUCCESS') return wcError(client ? 'client' : 'server', wc[0]!);
    if (now() >= end) return 'timeout';
    return undefined;
  };
  /** What to await before the next look (undefined: a busy spin did the waiting). */
  const sleepRecv = (): Promise<void> | undefined => (c.busy ? busyWait(c) : waitCq(c.recvCq));
  for (let i = 0; i < iters; i++) {
    if (!client) {
      let e;
      while ((e = tryRecv()) === undefined) {
        const y = sleepRecv();
        if (y) await y;
      }
      if (e === 'timeout') break;
      if (e) return e;
    }
    if (now() >= end) break;
    // Only when the SQ is full: an async call per iteration is a promise and a microtask turn.
    if (qp.outstanding >= c.txDepth && (await sqRoom(c, qp, end))) break;
    wr.wrId = i;
    qp.postSend(wr);
    if (client) {
      let e;
      while ((e = tryRecv()) === undefined) {
        const y = sleepRecv();
        if (y) await y;
      }
      if (e === 'timeout') break;
      if (e) return e;
    }
    const t = performance.now();
    times.push((t - prev) * 500); // ms -> us, half the round trip
    prev = t;
    if (c.progress && i % 500 === 499) c.progress(`${size} B: ${i + 1}${iters === Infinity ? '' : `/${iters}`} iterations`);
  }
  await drain(c, qp);
  return times;
}

/**
 * run_iter_lat_write: each side RDMA-WRITEs size bytes whose last byte is its
 * send count into the peer's exposed region, and polls the last byte of its
 * own exposed region for the peer's count. In perftest the server writes
 * first and the client answers.
 */
async function writeLat(c: RunCtx, size: number, limit: Limit, client: boolean): Promise<number[] | string> {
  const qp = c.qps[0]!;
  const wr = sendWrs(c, size)[0]!;
  wr.signaled = true;
  const buf = c.mr.buffer;
  const postAt = size - 1,
    pollAt = c.region + size - 1;
  const wc = [new Wc()];
  const { iters, end } = limits(limit);
  const times: number[] = [];
  const side = client ? 'client' : 'server';
  let prev = 0,
    scnt = 0,
    rcnt = 0;
  while (scnt < iters || rcnt < iters) {
    if (rcnt < iters && !(scnt === 0 && !client)) {
      rcnt++;
      while (buf[pollAt] !== (rcnt & 0xff)) {
        if (now() >= end) return times;
        while (c.sendCq.poll(wc, 1) === 1) if (wc[0]!.status !== 'SUCCESS') return wcError(side, wc[0]!);
        if (!c.busy) await waitRx(c);
        else {
          const y = busyWait(c);
          if (y) await y;
        }
      }
    }
    if (now() >= end) break;
    if (scnt < iters) {
      const t = performance.now();
      if (scnt > 0) times.push((t - prev) * 500); // ms -> us, half the round trip
      prev = t;
      if (qp.outstanding >= c.txDepth && (await sqRoom(c, qp, end))) break;
      buf[postAt] = ++scnt & 0xff;
      wr.wrId = scnt;
      qp.postSend(wr);
      if (c.progress && scnt % 500 === 0) c.progress(`${size} B: ${scnt}${iters === Infinity ? '' : `/${iters}`} iterations`);
    }
    while (c.sendCq.poll(wc, 1) === 1) if (wc[0]!.status !== 'SUCCESS') return wcError(side, wc[0]!);
  }
  await drain(c, qp);
  return times;
}

/** run_iter_lat for READ and atomics: one request at a time; the latency is the whole round trip. */
async function rdLat(c: RunCtx, size: number, limit: Limit): Promise<number[] | string> {
  const qp = c.qps[0]!;
  const wr = sendWrs(c, size)[0]!;
  wr.signaled = true;
  const wc = [new Wc()];
  const { iters, end } = limits(limit);
  const times: number[] = [];
  for (let i = 0; i < iters && now() < end; i++) {
    const t0 = performance.now();
    wr.wrId = i;
    qp.postSend(wr);
    while (c.sendCq.poll(wc, 1) === 0) {
      if (now() >= end + 5) return ' Completion timeout at client';
      if (!c.busy) await waitCq(c.sendCq);
      else {
        const y = busyWait(c);
        if (y) await y;
      }
    }
    if (wc[0]!.status !== 'SUCCESS') return wcError('client', wc[0]!);
    times.push((performance.now() - t0) * 1000);
    if (c.progress && i % 500 === 499) c.progress(`${size} B: ${i + 1}${iters === Infinity ? '' : `/${iters}`} iterations`);
  }
  return times;
}
