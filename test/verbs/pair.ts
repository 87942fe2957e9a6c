/** Test helpers: two connected devices with a QP each, over the in-memory network or real UDP loopback. */
import { openDevice, type Device } from '../../src/verbs/device.js';
import { connectQp } from '../../src/verbs/connect.js';
import type { Qp } from '../../src/verbs/qp.js';
import { Wc, type Access } from '../../src/verbs/types.js';
import type { Pd, Srq } from '../../src/verbs/objects.js';
import type { Cq } from '../../src/verbs/cq.js';
import type { Mr } from '../../src/verbs/mr.js';
import { FakeScheduler, type Scheduler } from '../../src/roce/sched.js';
import { MemNetwork } from '../../src/roce/link/link.js';
import type { FaultOptions } from '../../src/roce/link/fault-link.js';
import type { Mtu } from '../../src/roce/opcode.js';

export interface Side {
  dev: Device;
  pd: Pd;
  scq: Cq;
  rcq: Cq;
  qp: Qp;
  mem: Buffer;
  mr: Mr;
  srq?: Srq;
}
export interface Pair {
  a: Side;
  b: Side;
  sched: Scheduler;
  fake: FakeScheduler | null;
  net: MemNetwork | null;
  /** A `size`-byte Buffer inside a larger one, with random guard bytes before and after that checkGuards() verifies. */
  guarded(size: number): Buffer;
  /** One line per guarded buffer whose guard bytes changed (an out-of-region write); empty when all are intact. */
  checkGuards(): string[];
  close(): Promise<void>;
}

export interface PairOptions {
  mode?: 'mem' | 'udp';
  /** two addresses; for 'udp' use a 127/8 pair no other test file uses */
  addrs?: [string, string];
  /** UDP ports of the two devices ('udp' mode; two devices on one address, ::1, need two ports) */
  ports?: [number, number];
  type?: 'RC' | 'UC' | 'UD';
  mtu?: Mtu;
  memSize?: number;
  timeout?: number;
  retryCnt?: number;
  rnrRetry?: number;
  minRnrTimer?: number;
  maxRdAtomic?: number;
  access?: readonly Access[];
  faults?: FaultOptions;
  icrcIpv4?: 'infer-id' | 'id-zero';
  sendWr?: number;
  recvWr?: number;
  cqDepth?: number;
  srq?: boolean;
  sigAll?: boolean;
  maxSge?: number;
  maxInline?: number;
  /** a.mem and b.mem are guarded buffers (Pair.guarded): a write outside them shows in checkGuards() */
  guard?: boolean;
}

/** Guard bytes on each side of a guarded buffer: more than one MTU, so a packet-sized overrun lands inside. */
export const GUARD_BYTES = 4096;

/**
 * Buffers that are slices of a larger allocation, with random (seeded) guard
 * bytes before and after. A write that misses its region (through the
 * underlying ArrayBuffer, from native code, at an offset computed without
 * the region's byteOffset or bounds) lands in the guards, where a check of
 * the region's own bytes would never see it.
 */
export class Guards {
  private readonly list: Array<{ whole: Buffer; size: number; before: Buffer; after: Buffer }> = [];
  private seed: number;
  constructor(seed = 0x5eed) {
    this.seed = seed;
  }
  alloc(size: number): Buffer {
    const whole = Buffer.alloc(size + 2 * GUARD_BYTES);
    const g = Buffer.alloc(2 * GUARD_BYTES);
    fill(g, this.seed++);
    g.copy(whole, 0, 0, GUARD_BYTES);
    g.copy(whole, GUARD_BYTES + size, GUARD_BYTES);
    this.list.push({ whole, size, before: g.subarray(0, GUARD_BYTES), after: g.subarray(GUARD_BYTES) });
    return whole.subarray(GUARD_BYTES, GUARD_BYTES + size);
  }
  check(): string[] {
    const out: string[] = [];
    this.list.forEach((e, i) => {
      const pre = e.whole.subarray(0, GUARD_BYTES);
      const post = e.whole.subarray(GUARD_BYTES + e.size);
      const first = (x: Buffer, y: Buffer): number => {
        for (let k = 0; k < x.length; k++) if (x[k] !== y[k]) return k;
        return -1;
      };
      const b = first(pre, e.before);
      const a = first(post, e.after);
      if (b >= 0) out.push(`buffer ${i} (${e.size} B): guard before changed, first at ${b - GUARD_BYTES} from the start`);
      if (a >= 0) out.push(`buffer ${i} (${e.size} B): guard after changed, first at ${a} past the end`);
    });
    return out;
  }
}

export async function makePair(o: PairOptions = {}): Promise<Pair> {
  const mode = o.mode ?? 'mem';
  const [ipA, ipB] = o.addrs ?? ['10.0.0.1', '10.0.0.2'];
  const fake = mode === 'mem' ? new FakeScheduler() : null;
  const net = fake ? new MemNetwork(fake) : null;
  const devOpts = (ip: string, seed: number) => ({
    address: ip,
    ...(o.ports ? { udpPort: o.ports[seed]! } : {}),
    ...(fake ? { scheduler: fake, link: net!.attach(ip) } : {}),
    ...(o.faults ? { faults: { ...o.faults, seed: o.faults.seed + seed } } : {}),
    ...(o.icrcIpv4 ? { icrcIpv4: o.icrcIpv4 } : {}),
  });
  const da = await openDevice(devOpts(ipA, 0));
  const db = await openDevice(devOpts(ipB, 1));
  const type = o.type ?? 'RC';
  const guards = new Guards();
  const side = (dev: Device): Side => {
    const pd = dev.allocPd();
    const depth = o.cqDepth ?? 4096;
    const scq = dev.createCq({ depth });
    const rcq = dev.createCq({ depth });
    const srq = o.srq ? pd.createSrq({ maxWr: o.recvWr ?? 1024, maxSge: o.maxSge ?? 4 }) : undefined;
    const qp = pd.createQp({
      type,
      sendCq: scq,
      recvCq: rcq,
      ...(srq ? { srq } : {}),
      sigAll: o.sigAll ?? true,
      cap: { maxSendWr: o.sendWr ?? 1024, maxRecvWr: o.recvWr ?? 1024, maxSendSge: o.maxSge ?? 4, maxRecvSge: o.maxSge ?? 4, maxInline: o.maxInline ?? 256 },
    });
    const mem = o.guard ? guards.alloc(o.memSize ?? 1 << 20) : Buffer.alloc(o.memSize ?? 1 << 20);
    const mr = pd.regMr(mem, ['LOCAL_WRITE', 'REMOTE_WRITE', 'REMOTE_READ', 'REMOTE_ATOMIC']);
    return { dev, pd, scq, rcq, qp, mem, mr, ...(srq ? { srq } : {}) };
  };
  const a = side(da);
  const b = side(db);
  const mtu = o.mtu ?? 1024;
  if (type === 'UD') {
    for (const s of [a, b]) s.qp.toInit({ qkey: 0x11111111 }).toRtr().toRts({ sqPsn: 0 });
  } else {
    const local = (psn: number) => ({
      psn,
      pathMtu: mtu,
      timeout: o.timeout ?? 10,
      retryCnt: o.retryCnt ?? 7,
      rnrRetry: o.rnrRetry ?? 7,
      minRnrTimer: o.minRnrTimer ?? 1,
      maxRdAtomic: o.maxRdAtomic ?? 16,
      maxDestRdAtomic: 16,
      accessFlags: o.access ?? ['LOCAL_WRITE', 'REMOTE_WRITE', 'REMOTE_READ', 'REMOTE_ATOMIC'],
    });
    connectQp(a.qp, local(0x00fff0), { qpn: b.qp.qpn, psn: 0xfffff0, gid: ipB, ...(o.ports ? { udpPort: o.ports[1] } : {}) });
    connectQp(b.qp, local(0xfffff0), { qpn: a.qp.qpn, psn: 0x00fff0, gid: ipA, ...(o.ports ? { udpPort: o.ports[0] } : {}) });
  }
  return {
    a,
    b,
    sched: fake ?? da.sched,
    fake,
    net,
    guarded: (size) => guards.alloc(size),
    checkGuards: () => guards.check(),
    async close() {
      await da.close();
      await db.close();
    },
  };
}

/** Polls `cq` until `n` completions arrived (advancing the fake clock, or waiting on the real one). */
export async function waitWc(p: Pair, cq: Cq, n: number, timeoutMs = 20_000): Promise<Wc[]> {
  const out: Wc[] = [];
  const buf = Array.from({ length: 64 }, () => new Wc());
  const take = (): void => {
    let k: number;
    while ((k = cq.poll(buf)) > 0) for (let i = 0; i < k; i++) out.push(Object.assign(new Wc(), buf[i]!));
  };
  if (p.fake) {
    for (let t = 0; t < timeoutMs && out.length < n; t += 1) {
      p.fake.advance(1);
      take();
    }
    take();
    return out;
  }
  const end = performance.now() + timeoutMs;
  while (out.length < n && performance.now() < end) {
    take();
    if (out.length < n) await new Promise((r) => setTimeout(r, 1));
  }
  take();
  return out;
}

/** Runs the fake clock (or waits real time) for ms. */
export async function settle(p: Pair, ms: number): Promise<void> {
  if (p.fake) p.fake.advance(ms);
  else await new Promise((r) => setTimeout(r, ms));
}

export function fill(buf: Buffer, seed: number): void {
  let x = seed >>> 0 || 1;
  for (let i = 0; i < buf.length; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    buf[i] = x & 0xff;
  }
}
