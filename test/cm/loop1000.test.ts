/**
 * 1,000 rdma_cm connections opened and closed in a loop over real UDP on loopback (issue 13, done-when:
 * "no growth in open handles, timers or memory"). One listener (127.0.65.11) on its own channel, handled
 * as cmtime's server does (QP, one receive posted, accept; on DISCONNECTED: disconnect, destroy); the
 * client (127.0.65.12) per cycle: create id, resolve addr and route, create QP (its own PD and CQs),
 * register an MR, connect, send one message (the server's receive completion is checked), disconnect
 * (both sides see DISCONNECTED), deregister, destroy id.
 *
 * After a warm-up of 50 connections and once TimeWait has drained (the IB CM keeps a closed connection's
 * id for conv(AV timeout), about 2-4 s, as the kernel does), a baseline is taken; after the last cycle the
 * same figures again: open handles by type (process.getActiveResourcesInfo), live timers (every
 * setTimeout / setInterval of the process, ref'd or not), file descriptors (/proc/self/fd, less the UDP
 * flow-port sockets the links keep by design, capped at 256 a link: udp-base.ts), the devices' QP, PD,
 * CQ and MR tables, the IB CM agents' id tables, the rdma_cm ports the ids took, the devices' 'close'
 * listeners, the channels' queued events and listeners, the CM's device references, every id, QP, CQ,
 * PD and MR a cycle made (held by WeakRefs: alive after a forced GC or not), and heapUsed after that GC.
 * Tolerances are a few units: one object kept per connection is 950 of them (`--leak` keeps each closed client id: the alive count and
 * the heap bound both fail). The heap bound is generous (4.5 MiB): JIT code and the flow-port pools
 * filling up to their cap take 2-3.5 MiB over the run, on either backend.
 *
 * The loop runs in a child process (`node --expose-gc`) so that GC can be forced and tap's own work is
 * not in the figures; the backend is the parent's (npm test runs the file with and without the addon).
 * Finally everything is closed and the fds and handles must be back to what the child had before the
 * first id.
 */
import { spawn } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { createEventChannel, type CmEvent } from '../../src/cm/event-channel.js';
import { createId, type CmId } from '../../src/cm/cm-id.js';
import { CmAgent } from '../../src/cm/ib-cm.js';
import { cmDevices, cmDevicesClosed } from '../../src/cm/devices.js';
import { portTable } from '../../src/cm/port-space.js';
import { Wc } from '../../src/verbs/types.js';
import type { Device } from '../../src/verbs/device.js';
import type { Cq } from '../../src/verbs/cq.js';

const CHILD_FLAG = '--loop-child';
/** the test's own check: `--leak` keeps each closed client id (the test must then fail) */
const LEAK_FLAG = '--leak';
const SRV = '127.0.65.11';
const CLI = '127.0.65.12';
const CYCLES = 1000;
const WARMUP = 50;
const LIMIT_MS = 5 * 60_000;

export interface Snapshot {
  fds: number;
  txSockets: number;
  resources: Record<string, number>;
  timers: number;
  tables: Record<string, number>;
  heapUsed: number;
  rss: number;
  /** objects made by the cycles still alive after GC */
  alive: number;
}

interface ChildResult {
  backend: string;
  cycles: number;
  timedOut: boolean;
  ms: number;
  made: number;
  maxTimers: number;
  start: Snapshot;
  before: Snapshot;
  after: Snapshot;
  closed: Snapshot;
  errors: string[];
}

/** Every timer the process arms, ref'd or not (the devices' are unref'd and never show as handles). */
function trackTimers(): () => number {
  const live = new Set<unknown>();
  const g = globalThis as unknown as Record<string, (...a: unknown[]) => unknown>;
  for (const [set, clear, once] of [
    ['setTimeout', 'clearTimeout', true],
    ['setInterval', 'clearInterval', false],
  ] as const) {
    const origSet = g[set]!,
      origClear = g[clear]!;
    g[set] = (fn: unknown, ...rest: unknown[]) => {
      const h: unknown = origSet(
        (...a: unknown[]) => {
          if (once) live.delete(h);
          (fn as (...a: unknown[]) => void)(...a);
        },
        ...rest,
      );
      live.add(h);
      return h;
    };
    g[clear] = (h: unknown) => {
      live.delete(h);
      origClear(h);
    };
  }
  return () => live.size;
}

function fdCount(): number {
  return readdirSync('/proc/self/fd').length;
}

async function child(): Promise<void> {
  const gc = (globalThis as { gc?: () => void }).gc;
  if (!gc) throw new Error('run with --expose-gc');
  const leak = process.argv.includes(LEAK_FLAG);
  const kept: unknown[] = [];
  /** every object a cycle makes (both ids, QPs, CQs, PDs, MRs): none may outlive its cycle once collected */
  const made: Array<WeakRef<object>> = [];
  const alive = (): number => made.reduce((k, w) => k + (w.deref() === undefined ? 0 : 1), 0);
  let maxTimers = 0;
  /** the rdma_cm ports the client ids took: each must be free again once its id is closed */
  const usedPorts: number[] = [];
  const timers = trackTimers();
  const errors: string[] = [];
  const settle = async (): Promise<void> => {
    // twice, with a turn between: closed handles go in libuv's close phase
    gc();
    await new Promise((r) => setTimeout(r, 20));
    gc();
    await new Promise((r) => setTimeout(r, 20));
  };
  const devs: Device[] = [];
  const agents: CmAgent[] = [];
  const chS = createEventChannel();
  const chC = createEventChannel();
  const snap = async (): Promise<Snapshot> => {
    await settle();
    const resources: Record<string, number> = {};
    for (const r of process.getActiveResourcesInfo()) resources[r] = (resources[r] ?? 0) + 1;
    const tables: Record<string, number> = {};
    devs.forEach((d, i) => {
      tables[`dev${i}.qps`] = d.qps.size;
      tables[`dev${i}.pds`] = d.pds.size;
      tables[`dev${i}.cqs`] = d.cqs.size;
      tables[`dev${i}.mrs`] = d.mrByLkey.size;
      tables[`dev${i}.closeListeners`] = d.listenerCount('close');
    });
    agents.forEach((a, i) => {
      tables[`agent${i}.ids`] = a.ids.size;
      tables[`agent${i}.remoteIds`] = a.remoteIds.size;
      tables[`agent${i}.remoteQpns`] = a.remoteQpns.size;
      tables[`agent${i}.listeners`] = a.listeners.size;
      tables[`agent${i}.remoteSidr`] = a.remoteSidr.size;
    });
    tables['chS.pending'] = chS.closed ? 0 : chS.pending;
    tables['chC.pending'] = chC.closed ? 0 : chC.pending;
    tables['chS.listeners'] = chS.listenerCount('event');
    tables['chC.listeners'] = chC.listenerCount('event');
    tables['cm.portsStillTaken'] = usedPorts.filter((p) => portTable.owners('TCP', p).length > 0).length;
    tables['cm.devices'] = cmDevices().length;
    tables['cm.deviceRefs'] = cmDevices().reduce((s, d) => s + d.refs, 0);
    let txSockets = 0;
    for (const d of devs)
      for (const p of d.ports) {
        // the UDP link: the port's own, or the one under its RoCE v1 path (the addon's)
        const l = (p.v1?.udp ?? p.link) as unknown as { txSocketCount?: number };
        txSockets += l.txSocketCount ?? 0;
      }
    const m = process.memoryUsage();
    return { fds: fdCount(), txSockets, resources, timers: timers(), tables, heapUsed: m.heapUsed, rss: m.rss, alive: alive() };
  };

  const start = await snap();
  const port = 20_000 + (process.pid % 10_000);
  // the server: cmtime's (a QP on a shared PD and CQ, one receive, accept; DISCONNECTED: disconnect, destroy)
  const listener = createId(chS);
  await listener.bind({ address: SRV, port });
  await listener.listen();
  const sdev = listener.verbs!;
  const spd = sdev.allocPd();
  const scq = sdev.createCq({ depth: 16 });
  const smem = Buffer.alloc(64);
  const smr = spd.regMr(smem, ['LOCAL_WRITE']);
  let srvDisconnected = 0;
  chS.on('event', (ev: CmEvent) => {
    const id = ev.id;
    try {
      if (ev.event === 'CONNECT_REQUEST') {
        const qp = id.createQp(spd, { sendCq: scq, recvCq: scq, cap: { maxSendWr: 1, maxRecvWr: 1 } });
        made.push(new WeakRef(id), new WeakRef(qp));
        qp.postRecv({ wrId: 1, sg: [{ mr: smr, offset: 0, length: smem.length }] });
        void id.accept();
      } else if (ev.event === 'DISCONNECTED') {
        void id.disconnect();
        id.close();
        srvDisconnected++;
      }
    } catch (e) {
      errors.push(`server ${ev.event}: ${(e as Error).message}`);
    }
  });
  // the client's device stays open between connections (an id bound to the address holds it)
  const hold = createId(chC);
  await hold.bind({ address: CLI, port: 0 });
  const cdev = hold.verbs!;
  devs.push(sdev, cdev);
  // the agents, to read their tables (this reference keeps them for the whole run)
  agents.push(CmAgent.acquire(sdev, 1), CmAgent.acquire(cdev, 1));
  const restIds = agents.map((a) => a.ids.size);
  const quiet = async (): Promise<void> => {
    const end = Date.now() + 15_000;
    while (Date.now() < end && agents.some((a, i) => a.ids.size > restIds[i]! || a.remoteIds.size > 0)) await new Promise((r) => setTimeout(r, 100));
  };

  const wc = [new Wc()];
  const pollOne = async (cq: Cq, what: string): Promise<Wc | null> => {
    const end = Date.now() + 5000;
    while (Date.now() < end) {
      if (cq.poll(wc, 1) === 1) return wc[0]!;
      await new Promise((r) => setTimeout(r, 1));
    }
    errors.push(`no ${what} completion`);
    return null;
  };
  const msg = Buffer.alloc(32);
  const cycle = async (i: number): Promise<void> => {
    const id: CmId = createId(chC, { context: i });
    await id.resolveAddr({ src: { address: CLI, port: 0 }, dst: { address: SRV, port }, timeoutMs: 2000 });
    await id.resolveRoute({ timeoutMs: 2000 });
    usedPorts.push(id.getSrcPort());
    const qp = id.createQp(null, { cap: { maxSendWr: 1, maxRecvWr: 1 } });
    const mr = qp.pd.regMr(msg, ['LOCAL_WRITE']);
    for (const o of [id, qp, qp.pd, qp.sendCq, qp.recvCq, mr]) made.push(new WeakRef(o));
    await id.connect({ responderResources: 1, initiatorDepth: 1, retryCount: 7, rnrRetryCount: 7 }, { timeoutMs: 10_000 });
    msg.writeUInt32BE(i, 0);
    qp.postSend({ wrId: i, opcode: 'SEND', signaled: true, sg: [{ mr, offset: 0, length: msg.length }] });
    const s = await pollOne(qp.sendCq, 'send');
    if (s && s.status !== 'SUCCESS') errors.push(`cycle ${i}: send ${s.status}`);
    const r = await pollOne(scq, 'receive');
    if (r && (r.status !== 'SUCCESS' || r.byteLen !== msg.length || smem.readUInt32BE(0) !== i)) errors.push(`cycle ${i}: receive ${r.status} ${r.byteLen}`);
    const want = srvDisconnected + 1;
    const d = await id.disconnect({ timeoutMs: 10_000 });
    if (d.event !== 'DISCONNECTED') errors.push(`cycle ${i}: client got ${d.event}`);
    const end = Date.now() + 10_000;
    while (srvDisconnected < want && Date.now() < end) await new Promise((res) => setTimeout(res, 1));
    if (srvDisconnected < want) errors.push(`cycle ${i}: the server saw no DISCONNECTED`);
    mr.close();
    id.close();
    // --leak: what a registry that forgets to delete would do, one closed id kept per connection
    if (leak) kept.push(id);
    maxTimers = Math.max(maxTimers, timers());
  };

  const t0 = performance.now();
  let n = 0;
  let timedOut = false;
  let before = start;
  try {
    for (; n < CYCLES && errors.length < 5; n++) {
      if (n === WARMUP) {
        await quiet();
        before = await snap();
      }
      if (performance.now() - t0 > LIMIT_MS) {
        timedOut = true;
        break;
      }
      await cycle(n);
    }
  } catch (e) {
    errors.push(`cycle ${n}: ${(e as Error).stack ?? String(e)}`);
  }
  const ms = performance.now() - t0;
  await quiet();
  const after = await snap();
  // all of it closed: back to where the child was before the first id
  for (const a of agents) a.release();
  agents.length = 0;
  smr.close();
  for (const o of [spd]) o.close();
  scq.close();
  listener.close();
  hold.close();
  chS.close();
  chC.close();
  devs.length = 0;
  await new Promise((r) => setTimeout(r, 200)); // the closes' 50 ms linger (QP1's last MAD)
  await cmDevicesClosed();
  const closed = await snap();
  const backend = process.env['SOFTROCE_NO_NATIVE'] === '1' ? 'pure-JS' : 'native (addon)';
  const res: ChildResult = { backend, cycles: n, timedOut, ms, made: made.length, maxTimers, start, before, after, closed, errors };
  process.stdout.write(`LOOP ${JSON.stringify(res)}\n`);
  kept.length = 0;
}

if (process.argv.includes(CHILD_FLAG)) {
  await child();
} else {
  const { default: t } = await import('tap');
  t.setTimeout(LIMIT_MS + 90_000);

  /** Runs the child (with `extra` flags) and returns its figures. */
  const runChild = async (extra: string[]): Promise<{ res: ChildResult | null; status: number | null; stderr: string }> => {
    const env = { ...process.env };
    delete env['NODE_OPTIONS']; // tap's loaders would add their own work to the figures
    const c = spawn(process.execPath, ['--expose-gc', fileURLToPath(import.meta.url), CHILD_FLAG, ...extra], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '',
      err = '';
    c.stdout.on('data', (d: Buffer) => (out += d.toString()));
    c.stderr.on('data', (d: Buffer) => (err += d.toString()));
    const killer = setTimeout(() => c.kill(), LIMIT_MS + 60_000);
    const status = await new Promise<number | null>((res) => c.on('close', (code) => res(code)));
    clearTimeout(killer);
    const line = out.split('\n').find((l) => l.startsWith('LOOP '));
    return { res: line ? (JSON.parse(line.slice(5)) as ChildResult) : null, status, stderr: err };
  };

  t.test(`${CYCLES} rdma_cm connections opened and closed: no growth in handles, timers, fds, tables or memory`, async (t) => {
    const { res, status, stderr } = await runChild([]);
    if (!t.ok(res, `the child printed its figures (status ${status}, stderr: ${stderr.slice(0, 800)})`)) return;
    const r = res!;
    t.same(r.errors, [], 'every cycle connected, moved its message and saw DISCONNECTED on both sides');
    t.notOk(r.timedOut, `${CYCLES} cycles within ${LIMIT_MS / 60_000} minutes`);
    t.equal(r.cycles, CYCLES, 'all cycles ran');
    const b = r.before,
      a = r.after;
    t.comment(`${r.backend}: ${r.cycles} cycles in ${(r.ms / 1000).toFixed(1)} s, ${(r.ms / r.cycles).toFixed(2)} ms a cycle`);
    t.comment(
      `before (after ${WARMUP}): ${JSON.stringify({ ...b, heapUsed: (b.heapUsed / 2 ** 20).toFixed(2) + ' MiB', rss: (b.rss / 2 ** 20).toFixed(1) + ' MiB' })}`,
    );
    t.comment(
      `after (${r.cycles}): ${JSON.stringify({ ...a, heapUsed: (a.heapUsed / 2 ** 20).toFixed(2) + ' MiB', rss: (a.rss / 2 ** 20).toFixed(1) + ' MiB' })}`,
    );
    t.comment(
      `all closed: fds ${r.closed.fds} (start ${r.start.fds}), handles ${JSON.stringify(r.closed.resources)} (start ${JSON.stringify(r.start.resources)})`,
    );
    for (const k of Object.keys({ ...b.tables, ...a.tables })) t.equal(a.tables[k], b.tables[k], `${k}: ${b.tables[k]} -> ${a.tables[k]}`);
    // the pure-JS links' flow-port sockets are UDPWrap handles, as many as txSockets
    const handles = (x: Snapshot, k: string): number => (x.resources[k] ?? 0) - (k === 'UDPWrap' ? x.txSockets : 0);
    for (const k of Object.keys({ ...b.resources, ...a.resources }))
      t.ok(handles(a, k) <= handles(b, k) + 2, `open handles ${k}${k === 'UDPWrap' ? ' less flow-port sockets' : ''}: ${handles(b, k)} -> ${handles(a, k)}`);
    t.ok(a.timers <= b.timers + 5, `live timers: ${b.timers} -> ${a.timers} (${r.maxTimers} at most at a cycle's end)`);
    t.ok(a.alive <= 8, `of the ${r.made} ids, QPs, CQs, PDs and MRs the cycles made, ${a.alive} are alive after GC (at most one cycle's 8)`);
    t.ok(a.fds - a.txSockets <= b.fds - b.txSockets + 2, `fds less flow-port sockets: ${b.fds - b.txSockets} -> ${a.fds - a.txSockets}`);
    t.ok(a.txSockets <= 2 * 256, `flow-port sockets within the links' cap: ${a.txSockets}`);
    const growth = a.heapUsed - b.heapUsed;
    // JIT code and the flow-port pool filling up to its cap (2 x 256 sockets) account for 2-3.5 MiB; one
    // closed CmId kept per connection (--leak) adds 3 to 5 MiB more, and the alive count above catches it exactly
    t.ok(growth < 4.5 * 2 ** 20, `heapUsed after GC grew ${(growth / 1024).toFixed(0)} KiB (< 4608 KiB)`);
    t.ok(a.rss - b.rss < 64 * 2 ** 20, `rss grew ${((a.rss - b.rss) / 2 ** 20).toFixed(1)} MiB (< 64 MiB)`);
    t.ok(r.closed.fds <= r.start.fds, `all closed: fds back to the start (${r.start.fds} -> ${r.closed.fds})`);
    for (const k of Object.keys(r.closed.resources))
      t.ok(
        (r.closed.resources[k] ?? 0) <= (r.start.resources[k] ?? 0),
        `all closed: handles ${k} back to the start (${r.start.resources[k] ?? 0} -> ${r.closed.resources[k]})`,
      );
    t.equal(r.closed.tables['cm.devices'], 0, 'all closed: the CM closed its devices');
  });
}
