/**
 * The latency tools' warm-up: before the timed run, the tool plays its own latency loop (sendLat,
 * writeLat, rdLat) between two QPs of its own device, connected to each other through the
 * device's own GID, so V8 has compiled the transport, the verbs and the loop before the first
 * timed round trip. Without it the first ~3,000 round trips of ib_send_lat 2 B ran at 100-200 us
 * each against 24-28 us later (V8 still interpreting, then compiling), which made the average
 * about twice the median and the p99 about 13 times it (issue 15). A C perftest has no such phase.
 *
 * It runs once the run's own QPs exist (objects created after the warm-up would reach the compiled
 * code with new shapes, and V8 would discard it) and before they are connected, on QPs the peer never
 * hears of: nothing changes on the wire towards the peer, so real perftest and rxe see the same
 * run as before. Its traffic goes only to the device's own address. SOFTROCE_LAT_WARMUP sets
 * the round trips (0: none).
 */
import type { Device } from '../verbs/device.js';
import type { Qp } from '../verbs/qp.js';
import type { Access } from '../verbs/types.js';
import type { PerfDest } from './perftest-comm.js';
import { randomInt } from 'node:crypto';
import { fillRecvs, latency, runCtx, type RunCtx, type Verb } from './perftest-run.js';

/** Round trips by default: past the point where ib_send_lat 2 B reached its steady median (issue 15's figures). */
export const LAT_WARMUP_ITERS = 4000;
/** No warm-up runs longer than this, whatever the machine. */
const WARMUP_MAX_SECS = 3;

/** SOFTROCE_LAT_WARMUP: round trips (0: none), LAT_WARMUP_ITERS if unset; anything else throws (the tool says so and exits). */
export function warmupIters(env: NodeJS.ProcessEnv = process.env): number {
  const v = env['SOFTROCE_LAT_WARMUP'];
  if (v === undefined || v === '') return LAT_WARMUP_ITERS;
  const n = Number(v);
  if (!/^\d+$/.test(v.trim()) || !Number.isSafeInteger(n)) throw new Error(`SOFTROCE_LAT_WARMUP=${v}: must be a number of round trips (0: no warm-up)`);
  return n;
}

export interface WarmupOpts {
  device: Device;
  verb: Verb;
  conn: 'RC' | 'UC';
  port: number;
  sgidIndex: number;
  size: number;
  iters: number;
  /** the run's responder resources (PerfDest.outReads) */
  outReads: number;
  /** the run's QP access flags */
  access: readonly Access[];
  /**
   * RTR and RTS exactly as the run's own QPs get them: attributes of another shape (no hop
   * limit, say) would leave V8 code compiled for objects the run never makes, and the run
   * deoptimizes it and starts over.
   */
  connect: (qp: Qp, remote: PerfDest, sqPsn: number) => void;
}

/** What a warm-up did, and the release of what it made. */
export interface Warmup {
  /** round trips done, or why none were (the tool goes on: a warm-up changes no result, only when V8 compiles) */
  result: number | string;
  /**
   * Frees the warm-up's QPs, CQs, MR and PD. Call it after the timed run: closing them
   * stores nulls into fields the compiled code had only seen objects in, and V8 would throw
   * that code away at the start of the run.
   */
  close(): void;
}

/**
 * Runs `iters` round trips of the verb's latency loop between two QPs of `device` (both
 * sides in this process, in event mode: a spin would starve the other side's loop).
 */
export async function warmUp(o: WarmupOpts): Promise<Warmup> {
  const d = o.device;
  const gid = d.gidTable(o.port).find((g) => g.index === o.sgidIndex)?.gid;
  if (gid === undefined) return { result: `no GID at index ${o.sgidIndex}`, close: () => {} };
  const region = Math.max(o.size, 4096);
  const pd = d.allocPd();
  const made: { close(): void }[] = [pd];
  const close = (): void => {
    for (const x of made) {
      try {
        x.close();
      } catch {
        // A QP still busy (an error above) keeps its CQ; the device's close frees both.
      }
    }
    made.length = 0;
  };
  try {
    // Each side: two regions (it sends from 0, the peer writes into 1), as perftest's latency buffers.
    const sides = [0, 1].map(() => {
      const mr = pd.regMr(Buffer.alloc(2 * region), ['LOCAL_WRITE', 'REMOTE_WRITE', 'REMOTE_READ', 'REMOTE_ATOMIC']);
      const sendCq = d.createCq({ depth: 32 });
      const recvCq = o.verb === 'SEND' ? d.createCq({ depth: 32 }) : sendCq;
      const qp = pd.createQp({ type: o.conn, sendCq, recvCq, cap: { maxSendWr: 1, maxRecvWr: o.verb === 'SEND' ? 16 : 1 } });
      qp.toInit({ port: o.port, accessFlags: [...o.access] });
      made.unshift(mr, sendCq, ...(recvCq !== sendCq ? [recvCq] : []));
      made.unshift(qp);
      return { mr, sendCq, recvCq, qp, psn: randomInt(0, 0x1000000) };
    });
    const [a, b] = sides as [(typeof sides)[0], (typeof sides)[0]];
    const dest = (me: typeof a): PerfDest => ({
      lid: 0,
      outReads: o.outReads,
      qpn: me.qp.qpn,
      psn: me.psn,
      rkey: me.mr.rkey,
      vaddr: me.mr.addr + BigInt(region),
      gid,
      srqn: 0,
    });
    o.connect(a.qp, dest(b), a.psn);
    o.connect(b.qp, dest(a), b.psn);
    const ctx = (me: typeof a, peer: typeof a): RunCtx =>
      runCtx({
        device: d,
        verb: o.verb,
        conn: o.conn,
        qps: [me.qp],
        rem: [dest(peer)],
        ahs: [],
        mr: me.mr,
        region,
        sendCq: me.sendCq,
        recvCq: me.recvCq,
        txDepth: 1,
        rxDepth: 16,
        cqMod: 1,
        atomicCmp: false,
        progress: null,
        busy: false,
      });
    const ca = ctx(a, b),
      cb = ctx(b, a);
    // The receives as the run posts them (perftest.ts: fillRecvs on a copy of its context).
    if (o.verb === 'SEND') for (const c of [ca, cb]) fillRecvs({ ...c, rxDepth: Math.min(c.rxDepth, 64) }, [0]);
    const limit = { iters: o.iters, maxSecs: WARMUP_MAX_SECS };
    // READ and atomics: one side asks, the other's responder answers (no loop of its own).
    const runs =
      o.verb === 'SEND' || o.verb === 'WRITE' ? [latency(ca, o.size, limit, true), latency(cb, o.size, limit, false)] : [latency(ca, o.size, limit, true)];
    const res = await Promise.all(runs);
    const bad = res.find((r): r is string => typeof r === 'string');
    if (bad !== undefined) return { result: bad.trim(), close };
    // Round trips: one time per round trip, except writeLat's, which times the gaps between its sends.
    const timed = Math.max(...res.map((r) => (r as number[]).length));
    return { result: o.verb === 'WRITE' && timed > 0 ? timed + 1 : timed, close };
  } catch (e) {
    close();
    return { result: (e as Error).message, close };
  }
}
