/**
 * Many QPs between two processes (issue 10 item 3): N RC QPs on each side, connected pairwise over
 * UDP loopback (127.0.60.1 here, 127.0.60.2 in a child `node` process), every QP keeping 4
 * signaled 64 KiB RDMA WRITEs in flight for a fixed time. N = 100, 1,000, 4,000, 16,000, with
 * (timeout 14, retryCnt 7) and (timeout 10, retryCnt 3). Per case: total throughput, the share
 * of received packets the responder counted as duplicate or out of sequence, the sender's ACK
 * timeouts and completer retries, RETRY_EXC_ERR completions, event-loop delay on both sides, RSS
 * and open fds of each process; then the targets as met/MISSED.
 *
 * Memory: one registered region per side (256 slots of 64 KiB); QP i writes slot i % 256 of the
 * peer's region (the data is not checked: this is about scheduling). CQs are shared by up to
 * 1,024 QPs each (4 completions per QP in flight).
 *
 * Standalone: `node dist/bench/manyqp.bench.js` (BENCH_QUICK=1: 1.5 s per case, N = 100,
 * 1,000, 4,000 at timeout 14 only; BENCH_MANYQP_N=100,4000 picks the sizes, BENCH_MANYQP_TIMEOUT=10
 * the parameters; BENCH_MANYQP_JSON=1 adds a `manyqp-json {...}` line per case, which
 * perf.bench.ts runs with N=1,1000 for its one-QP against 1,000-QP row).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { openDevice, type Device } from '../src/verbs/device.js';
import { connectQp } from '../src/verbs/connect.js';
import type { Qp } from '../src/verbs/qp.js';
import { Wc } from '../src/verbs/types.js';
import type { Cq } from '../src/verbs/cq.js';
import type { Mr } from '../src/verbs/mr.js';

const CLIENT_IP = '127.0.60.1';
const SERVER_IP = '127.0.60.2';
const MSG = 64 * 1024;
const SLOTS = 256;
const DEPTH = 4; // WRITEs in flight per QP
const QPS_PER_CQ = 1024;
const QUICK = process.env['BENCH_QUICK'] === '1';
const RUN_MS = QUICK ? 1500 : 4000;
/** after the run: wait this long at most for the WRITEs still in flight */
const DRAIN_MS = 3000;
/** a case that takes longer than this (setup included) is abandoned: the child is killed */
const CASE_LIMIT_MS = 120_000;

interface Side {
  dev: Device;
  qps: Qp[];
  cqs: Cq[];
  mr: Mr;
}

async function makeSide(ip: string, n: number): Promise<Side> {
  const dev = await openDevice({ address: ip });
  const pd = dev.allocPd();
  const mr = pd.regMr(Buffer.alloc(SLOTS * MSG), ['LOCAL_WRITE', 'REMOTE_WRITE', 'REMOTE_READ']);
  const cqs: Cq[] = [];
  const qps: Qp[] = [];
  for (let i = 0; i < n; i++) {
    if (i % QPS_PER_CQ === 0) cqs.push(dev.createCq({ depth: QPS_PER_CQ * DEPTH + 64 }));
    const cq = cqs[cqs.length - 1]!;
    qps.push(pd.createQp({ type: 'RC', sendCq: cq, recvCq: cq, cap: { maxSendWr: DEPTH, maxRecvWr: 1 } }));
  }
  return { dev, qps, cqs, mr };
}

function loopMonitor(): { stop(): { p50: number; p99: number } } {
  // The histogram holds the interval between the monitor's 1 ms timer ticks (an idle loop reads
  // ~1.07 ms at p50), so the resolution is taken off: what is left is the loop's delay.
  const h = monitorEventLoopDelay({ resolution: 1 });
  h.enable();
  return {
    stop(): { p50: number; p99: number } {
      h.disable();
      // No sample at all: the loop never got round to the monitor's timer (blocked all along).
      if (h.count === 0) return { p50: NaN, p99: NaN };
      return { p50: Math.max(0, h.percentile(50) / 1e6 - 1), p99: Math.max(0, h.percentile(99) / 1e6 - 1) };
    },
  };
}

function fds(): number {
  try {
    return readdirSync('/proc/self/fd').length;
  } catch {
    return -1;
  }
}

// ------------------------------------------------------------------ server (child) ---

async function server(): Promise<void> {
  const out = (o: unknown): void => {
    process.stdout.write(JSON.stringify(o) + '\n');
  };
  let side: Side | null = null;
  let mon: ReturnType<typeof loopMonitor> | null = null;
  const rl = createInterface({ input: process.stdin });
  for await (const line of rl) {
    const m = JSON.parse(line) as { cmd: string; n?: number; timeout?: number; retryCnt?: number; eps?: Array<{ qpn: number; psn: number }> };
    if (m.cmd === 'setup') {
      side = await makeSide(SERVER_IP, m.n!);
      out({ eps: side.qps.map((q) => ({ qpn: q.qpn, psn: q.sqPsn })), mr: { addr: '0x' + side.mr.addr.toString(16), rkey: side.mr.rkey } });
    } else if (m.cmd === 'connect') {
      const s = side!;
      m.eps!.forEach((ep, i) =>
        connectQp(s.qps[i]!, { pathMtu: 4096, timeout: m.timeout!, retryCnt: m.retryCnt!, rnrRetry: 7 }, { qpn: ep.qpn, psn: ep.psn, gid: CLIENT_IP }),
      );
      out({ ok: true });
    } else if (m.cmd === 'start') {
      mon = loopMonitor();
      out({ ok: true });
    } else if (m.cmd === 'stats') {
      const d = mon ? mon.stop() : { p50: 0, p99: 0 };
      out({ counters: side!.dev.counters(), loop: d, rss: process.memoryUsage().rss, fds: fds() });
    } else if (m.cmd === 'close') {
      await side?.dev.close();
      out({ ok: true });
      rl.close();
      break;
    }
  }
}

// ------------------------------------------------------------------ client (parent) ---

interface Result {
  n: number;
  timeout: number;
  retryCnt: number;
  mbps: number;
  dupPct: number;
  timeouts: number;
  retryErr: number;
  retryExc: number;
  otherErr: number;
  loopC: { p50: number; p99: number };
  loopS: { p50: number; p99: number };
  rssC: number;
  rssS: number;
  fdsC: number;
  fdsS: number;
  setupS: number;
  note: string;
}

class Child {
  readonly proc: ChildProcess;
  private readonly waiters: Array<(v: unknown) => void> = [];
  private readonly lines: unknown[] = [];
  constructor() {
    this.proc = spawn(process.execPath, [fileURLToPath(import.meta.url), 'server'], { stdio: ['pipe', 'pipe', 'inherit'] });
    const rl = createInterface({ input: this.proc.stdout! });
    rl.on('line', (l) => {
      const v = JSON.parse(l) as unknown;
      const w = this.waiters.shift();
      if (w) w(v);
      else this.lines.push(v);
    });
  }
  async ask<T>(o: unknown): Promise<T> {
    this.proc.stdin!.write(JSON.stringify(o) + '\n');
    if (this.lines.length > 0) return this.lines.shift() as T;
    return new Promise<T>((r) => this.waiters.push(r as (v: unknown) => void));
  }
  kill(): void {
    if (this.proc.exitCode === null && this.proc.signalCode === null && this.proc.pid !== undefined) {
      try {
        process.kill(this.proc.pid, 'SIGKILL');
      } catch {
        /* gone already */
      }
    }
  }
}

const tick = (): Promise<void> => new Promise((r) => setImmediate(r));

// A full collection between cases: the 16,000-QP case leaves ~400 MB of garbage whose major GC
// pauses would otherwise land in the next case's loop-delay figures.
setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as (() => void) | undefined;

async function runCase(n: number, timeout: number, retryCnt: number): Promise<Result> {
  const child = new Child();
  const limit = setTimeout(() => {
    console.log(`  case N=${n} over ${CASE_LIMIT_MS} ms: killing the server`);
    child.kill();
  }, CASE_LIMIT_MS);
  let side: Side | null = null;
  try {
    const t0 = performance.now();
    const srv = await child.ask<{ eps: Array<{ qpn: number; psn: number }>; mr: { addr: string; rkey: number } }>({ cmd: 'setup', n });
    side = await makeSide(CLIENT_IP, n);
    const s = side;
    await child.ask({ cmd: 'connect', timeout, retryCnt, eps: s.qps.map((q) => ({ qpn: q.qpn, psn: q.sqPsn })) });
    s.qps.forEach((q, i) => connectQp(q, { pathMtu: 4096, timeout, retryCnt, rnrRetry: 7 }, { qpn: srv.eps[i]!.qpn, psn: srv.eps[i]!.psn, gid: SERVER_IP }));
    const setupS = (performance.now() - t0) / 1000;
    const remoteBase = BigInt(srv.mr.addr);
    const byQpn = new Map<number, number>();
    s.qps.forEach((q, i) => byQpn.set(q.qpn, i));
    const dead = new Uint8Array(n);
    const inflight = new Uint8Array(n);
    const post = (i: number): void => {
      const slot = i % SLOTS;
      s.qps[i]!.postSend({
        wrId: i,
        opcode: 'RDMA_WRITE',
        signaled: true,
        sg: [{ mr: s.mr, offset: slot * MSG, length: MSG }],
        remote: { addr: remoteBase + BigInt(slot * MSG), rkey: srv.mr.rkey },
      });
      inflight[i]!++;
    };
    await child.ask({ cmd: 'start' });
    const before = s.dev.counters();
    const mon = loopMonitor();
    const wcs = Array.from({ length: 256 }, () => new Wc());
    let done = 0,
      retryExc = 0,
      otherErr = 0;
    const tStart = performance.now();
    const until = tStart + RUN_MS;
    // The first WRs go out 500 QPs per turn, as an application bringing up thousands of QPs
    // would: 64,000 posts in one synchronous loop would itself block the loop being measured.
    for (let i = 0; i < n; i++) {
      for (let k = 0; k < DEPTH; k++) post(i);
      if (i % 500 === 499) await tick();
    }
    let posting = true;
    let outstanding = n * DEPTH;
    let tEnd = until;
    while (outstanding > 0) {
      const now = performance.now();
      if (posting && now >= until) {
        posting = false;
        tEnd = now;
      }
      if (!posting && now > until + DRAIN_MS) break;
      await tick();
      for (const cq of s.cqs) {
        let k: number;
        while ((k = cq.poll(wcs)) > 0) {
          for (let j = 0; j < k; j++) {
            const wc = wcs[j]!;
            const i = byQpn.get(wc.qpn)!;
            inflight[i]!--;
            outstanding--;
            if (wc.status === 'SUCCESS') {
              if (posting) {
                done++;
                post(i);
                outstanding++;
              }
            } else {
              if (!dead[i]) {
                dead[i] = 1;
                if (wc.status === 'RETRY_EXC_ERR') retryExc++;
                else if (wc.status !== 'WR_FLUSH_ERR') otherErr++;
              }
            }
          }
        }
      }
    }
    const loopC = mon.stop();
    const after = s.dev.counters();
    const st = await child.ask<{ counters: Record<string, number>; loop: { p50: number; p99: number }; rss: number; fds: number }>({ cmd: 'stats' });
    const rc = st.counters;
    const rcvd = rc['rcvd_pkts'] ?? 0;
    const r: Result = {
      n,
      timeout,
      retryCnt,
      setupS,
      mbps: (done * MSG) / ((tEnd - tStart) / 1000) / 1e6,
      dupPct: rcvd > 0 ? (100 * ((rc['duplicate_request'] ?? 0) + (rc['out_of_sequence'] ?? 0))) / rcvd : 0,
      timeouts: (after['timeouts'] ?? 0) - (before['timeouts'] ?? 0),
      retryErr: (after['completer_retry_err'] ?? 0) - (before['completer_retry_err'] ?? 0),
      retryExc,
      otherErr,
      loopC,
      loopS: st.loop,
      rssC: process.memoryUsage().rss,
      rssS: st.rss,
      fdsC: fds(),
      fdsS: st.fds,
      note: outstanding > 0 ? `${outstanding} WRs not completed ${DRAIN_MS} ms after the run: not waited for` : '',
    };
    await s.dev.close();
    side = null;
    await child.ask({ cmd: 'close' });
    return r;
  } finally {
    clearTimeout(limit);
    if (side)
      await side.dev.close().catch(() => {
        /* reported by the caller */
      });
    child.proc.stdin?.end();
    // Give the child a moment to exit by itself; then kill it (only ours, by its PID).
    await new Promise<void>((res) => {
      if (child.proc.exitCode !== null || child.proc.signalCode !== null) {
        res();
        return;
      }
      const t = setTimeout(() => {
        child.kill();
        res();
      }, 2000);
      child.proc.once('exit', () => {
        clearTimeout(t);
        res();
      });
    });
  }
}

const mb = (b: number): string => (b / 1e6).toFixed(0);

async function main(): Promise<void> {
  const sizes = process.env['BENCH_MANYQP_N'] ? process.env['BENCH_MANYQP_N'].split(',').map(Number) : QUICK ? [100, 1000, 4000] : [100, 1000, 4000, 16000];
  const all: Array<[number, number]> = [
    [14, 7],
    [10, 3],
  ];
  const pick = process.env['BENCH_MANYQP_TIMEOUT'];
  const params = pick ? all.filter(([t]) => String(t) === pick) : QUICK ? all.slice(0, 1) : all;
  console.log(`many QPs: 64 KiB RDMA WRITEs, ${DEPTH} in flight per QP, ${RUN_MS} ms per case, ${CLIENT_IP} -> ${SERVER_IP} (child process)`);
  console.log('     N  to rc    MB/s  dup%   timeouts  retries  RETRY_EXC  loop p50/p99 ms (client | server)  RSS MB c|s  fds c|s  setup s');
  for (const [timeout, retryCnt] of params) {
    const res: Result[] = [];
    for (const n of sizes) {
      gc?.();
      const r = await runCase(n, timeout, retryCnt);
      res.push(r);
      // For perf.bench.ts (issue 15's 1,000-QP row): the case's figures as one parseable line.
      if (process.env['BENCH_MANYQP_JSON'] === '1') console.log(`manyqp-json ${JSON.stringify(r)}`);
      console.log(
        `${String(n).padStart(6)}  ${String(timeout).padStart(2)} ${retryCnt}  ${r.mbps.toFixed(0).padStart(6)}  ${r.dupPct.toFixed(2).padStart(5)}  ${String(r.timeouts).padStart(9)}  ${String(r.retryErr).padStart(7)}  ${String(r.retryExc).padStart(9)}  ` +
          `${r.loopC.p50.toFixed(1)}/${r.loopC.p99.toFixed(1)} | ${r.loopS.p50.toFixed(1)}/${r.loopS.p99.toFixed(1)}`.padEnd(36) +
          `${mb(r.rssC)}|${mb(r.rssS)}`.padStart(11) +
          `${r.fdsC}|${r.fdsS}`.padStart(9) +
          r.setupS.toFixed(1).padStart(9) +
          (r.otherErr ? `  other errors ${r.otherErr}` : '') +
          (r.note ? `  (${r.note})` : ''),
      );
    }
    const base = res.find((r) => r.n === 100);
    const at4k = res.find((r) => r.n === 4000);
    const ok = (b: boolean): string => (b ? 'met' : 'MISSED');
    if (base && at4k) {
      console.log(
        `  targets at timeout ${timeout}/retryCnt ${retryCnt}: 4,000-QP throughput ${((100 * at4k.mbps) / base.mbps).toFixed(0)}% of 100-QP (>= 80%): ${ok(at4k.mbps >= 0.8 * base.mbps)}; ` +
          `dup < 1% (all N): ${ok(res.every((r) => r.dupPct < 1))}; no RETRY_EXC_ERR: ${ok(res.every((r) => r.retryExc === 0))}; ` +
          `loop p99 < 10 ms (both sides, all N): ${ok(res.every((r) => r.loopC.p99 < 10 && r.loopS.p99 < 10))}` +
          (res.some((r) => Number.isNaN(r.loopC.p99)) ? ' (NaN: no loop-delay sample at all, the loop was blocked for the whole run)' : ''),
      );
    }
  }
}

if (process.argv[2] === 'server') await server();
else await main();
