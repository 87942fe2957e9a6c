/**
 * Failover of a bonded device (issue 14 item 4, the core): two bonds on the in-memory network with a
 * fake clock, joined by two cables; an RC WRITE stream and an RC SEND stream from A to B; cable 1
 * pulled mid-stream (both ends lose carrier, as a veth pair's do) and plugged back later. The ethtool
 * link watch reports it after delay_down / delay_up, the QPs on port 1 move to port 2 and back, RC
 * retransmission recovers what was in flight on the dead cable, and both streams arrive byte for byte.
 */
import t from 'tap';
import { bondAt, bondNet, bondOf, teamConfig } from './bond-net.js';
import { queryLagPort, setLagPort, type Bond } from '../../src/lag/bond.js';
import { connectQp } from '../../src/verbs/connect.js';
import { Wc } from '../../src/verbs/types.js';
import type { Device } from '../../src/verbs/device.js';
import type { Qp } from '../../src/verbs/qp.js';
import type { Cq } from '../../src/verbs/cq.js';
import type { Mr } from '../../src/verbs/mr.js';
import { Rng } from '../helpers.js';

const MSGS = 64;
const SIZE = 4096;
const DELAY_DOWN = 10;
const DELAY_UP = 20;
/** ms between pulling cable 1 and plugging it back */
const OUTAGE = 40;

/** deterministic stream contents (test/helpers.ts's xorshift) */
function fill(buf: Buffer, seed: number): void {
  buf.set(new Rng(seed).bytes(buf.length));
}

interface End {
  dev: Device;
  scq: Cq;
  rcq: Cq;
  w: Qp;
  s: Qp;
  mem: Buffer;
  mr: Mr;
}

function end(dev: Device): End {
  const pd = dev.allocPd();
  const scq = dev.createCq({ depth: 1024 });
  const rcq = dev.createCq({ depth: 1024 });
  const cap = { maxSendWr: 256, maxRecvWr: 256, maxSendSge: 1, maxRecvSge: 1 };
  const w = pd.createQp({ type: 'RC', sendCq: scq, recvCq: rcq, sigAll: true, cap });
  const s = pd.createQp({ type: 'RC', sendCq: scq, recvCq: rcq, sigAll: true, cap });
  const mem = Buffer.alloc(2 * MSGS * SIZE);
  const mr = pd.regMr(mem, ['LOCAL_WRITE', 'REMOTE_WRITE']);
  return { dev, scq, rcq, w, s, mem, mr };
}

function connect(x: End, y: End, xa: string, ya: string): void {
  const local = { pathMtu: 1024 as const, timeout: 12, retryCnt: 7, rnrRetry: 7, minRnrTimer: 1 };
  for (const [q, r] of [
    [x.w, y.w],
    [x.s, y.s],
  ] as const) {
    const rq = r.endpoint();
    const lq = q.endpoint();
    connectQp(q, { ...local, psn: lq.psn }, { qpn: rq.qpn, psn: rq.psn, gid: ya });
    connectQp(r, { ...local, psn: rq.psn }, { qpn: lq.qpn, psn: lq.psn, gid: xa });
  }
}

interface Run {
  cutAt: number;
  /** when A's WRITE QP was first active on port 2 (queryLagPort) */
  movedAt: number;
  firstOnPort2: number;
  plugAt: number;
  firstBackOnPort1: number;
  sent1: [number, number, number];
  sent2: [number, number, number];
  /** port 2's count when the first packet went back on port 1 */
  sent2AtBack: number;
  retries: number;
  timeouts: number;
  done: number;
}

/** Streams A -> B, pulling cable 1 after `cutAfter` WRITE completions and plugging it back `outage` ms later. */
type Tap = Pick<typeof t, 'equal' | 'ok' | 'same' | 'teardown'>;

async function streams(
  t: Tap,
  runner: Record<string, unknown>,
  ports: Record<string, unknown>,
  linkWatch: Record<string, unknown> | null = { name: 'ethtool', delay_down: DELAY_DOWN, delay_up: DELAY_UP },
): Promise<{ run: Run; a: Bond; b: Bond; A: End }> {
  const n = bondNet();
  n.net.latencyMs = 1; // packets are in flight for a millisecond: the cut loses some
  const extra = linkWatch === null ? {} : { link_watch: linkWatch };
  const a = bondOf(await bondAt(n, '10.9.0.1', { ...teamConfig(runner, extra), ports }));
  const b = bondOf(await bondAt(n, '10.9.0.2', { ...teamConfig(runner, extra), ports }));
  t.teardown(async () => {
    await a.close();
    await b.close();
  });
  const A = end(a.device);
  const B = end(b.device);
  // Both of A's QPs on port 1 (the hash modes keep it; active-backup puts them on the active port).
  setLagPort(A.w, 1);
  setLagPort(A.s, 1);
  setLagPort(B.w, 1);
  setLagPort(B.s, 1);
  connect(A, B, '10.9.0.1', '10.9.0.2');
  fill(A.mem, 0x1234);
  for (let i = 0; i < MSGS; i++) B.s.postRecv({ wrId: i, sg: [{ mr: B.mr, offset: MSGS * SIZE + i * SIZE, length: SIZE }] });
  // One WRITE and one SEND every 2 ms: the streams run through the cut, the outage and the return.
  let posted = 0;
  const post = (i: number): void => {
    A.w.postSend({
      wrId: i,
      opcode: 'RDMA_WRITE',
      sg: [{ mr: A.mr, offset: i * SIZE, length: SIZE }],
      remote: { addr: B.mr.addr + BigInt(i * SIZE), rkey: B.mr.rkey },
    });
    A.s.postSend({ wrId: 1000 + i, opcode: 'SEND', sg: [{ mr: A.mr, offset: MSGS * SIZE + i * SIZE, length: SIZE }] });
  };
  const wc = Array.from({ length: 64 }, () => new Wc());
  const run: Run = {
    cutAt: -1,
    movedAt: -1,
    firstOnPort2: -1,
    plugAt: -1,
    firstBackOnPort1: -1,
    sent1: [0, 0, 0],
    sent2: [0, 0, 0],
    sent2AtBack: 0,
    retries: 0,
    timeouts: 0,
    done: 0,
  };
  let writes = 0;
  let sends = 0;
  let recvs = 0;
  const bad: string[] = [];
  const tx = (p: number): number => a.portCounters(p)['sent_pkts'];
  for (let ms = 0; ms < 20_000 && (writes < MSGS || sends < MSGS || recvs < MSGS); ms++) {
    if (ms % 2 === 0 && posted < MSGS) post(posted++);
    // The requester sends what was just posted: those packets are on the wire (1 ms) when the cable goes.
    n.fake.run();
    if (run.cutAt < 0 && writes >= MSGS / 8) {
      run.cutAt = n.fake.now();
      run.sent1[0] = tx(1);
      run.sent2[0] = tx(2);
      n.net.setSegmentUp('w1', false);
    }
    if (run.cutAt >= 0 && run.movedAt < 0 && queryLagPort(A.w).active === 2) run.movedAt = n.fake.now();
    n.fake.advance(1);
    let k: number;
    while ((k = A.scq.poll(wc)) > 0)
      for (let i = 0; i < k; i++) {
        if (wc[i]!.status !== 'SUCCESS') bad.push(`A ${wc[i]!.wrId} ${wc[i]!.status}`);
        if (wc[i]!.wrId >= 1000) sends++;
        else writes++;
      }
    while ((k = B.rcq.poll(wc)) > 0)
      for (let i = 0; i < k; i++) {
        if (wc[i]!.status !== 'SUCCESS') bad.push(`B ${wc[i]!.wrId} ${wc[i]!.status}`);
        recvs++;
      }
    const now = n.fake.now();
    if (run.cutAt >= 0 && run.firstOnPort2 < 0 && tx(2) > run.sent2[0]) run.firstOnPort2 = now;
    if (run.cutAt >= 0 && run.plugAt < 0 && now - run.cutAt >= OUTAGE) {
      run.plugAt = now;
      run.sent1[1] = tx(1);
      run.sent2[1] = tx(2);
      t.same(queryLagPort(A.w), { configured: 1, active: 2, source: 'explicit' }, 'during the outage: configured port 1, active port 2');
      n.net.setSegmentUp('w1', true);
    } else if (run.plugAt >= 0 && run.firstBackOnPort1 < 0 && tx(1) > run.sent1[1]) {
      run.firstBackOnPort1 = now;
      run.sent2AtBack = tx(2);
    }
  }
  run.sent1[2] = tx(1);
  run.sent2[2] = tx(2);
  run.done = n.fake.now();
  const c = a.device.counters(1);
  run.retries = c['completer_retry_err'] ?? 0;
  run.timeouts = c['timeouts'] ?? 0;
  t.equal(c['sent_pkts'], run.sent1[2] + run.sent2[2], "the bond port's sent_pkts: both physical ports' (no QP1 here)");
  t.same(bad, [], 'every completion succeeded');
  t.equal(writes, MSGS, 'every WRITE completed');
  t.equal(sends, MSGS, 'every SEND completed');
  t.equal(recvs, MSGS, 'every receive completed');
  t.ok(B.mem.subarray(0, MSGS * SIZE).equals(A.mem.subarray(0, MSGS * SIZE)), 'the WRITE stream arrived byte for byte');
  t.ok(B.mem.subarray(MSGS * SIZE).equals(A.mem.subarray(MSGS * SIZE)), 'the SEND stream arrived byte for byte');
  t.ok(run.cutAt >= 0 && run.plugAt >= 0, 'the cable was pulled mid-stream and plugged back');
  // Moved off the dead port, a QP resends what it had in flight at once (bond.stats.resends);
  // what it sent before the watch saw the cut is recovered by RC retransmission.
  t.ok(a.stats.resends + run.timeouts + run.retries > 0, 'what the dead cable lost was resent (on the move, or by RC retransmission)');
  return { run, a, b, A };
}

t.test('loadbalance (hash): port 1 dies mid-stream, its QPs go to port 2 and come back', async (t) => {
  const { run, a, A } = await streams(t, { name: 'loadbalance' }, { eth1: {}, eth2: {} });
  t.ok(run.sent1[0] > 0, `before the cut: ${run.sent1[0]} packets on port 1`);
  t.equal(run.sent2[0], 0, 'before the cut: none on port 2 (both QPs are on port 1)');
  t.ok(run.sent2[1] > 0, `during the outage: ${run.sent2[1]} packets on port 2`);
  t.equal(run.movedAt - run.cutAt, DELAY_DOWN, 'the QPs move delay_down after the cut');
  t.ok(run.firstOnPort2 - run.cutAt >= DELAY_DOWN, `nothing on port 2 before delay_down (${run.firstOnPort2 - run.cutAt} ms after the cut)`);
  t.ok(run.firstBackOnPort1 - run.plugAt >= DELAY_UP, `back on port 1 only after delay_up (${run.firstBackOnPort1 - run.plugAt} ms after the plug)`);
  t.ok(run.sent1[2] > run.sent1[1], `after the plug: ${run.sent1[2] - run.sent1[1]} more packets on port 1`);
  t.equal(run.sent2[2], run.sent2AtBack, 'after the move back: nothing more on port 2');
  t.same(queryLagPort(A.w), { configured: 1, active: 1, source: 'explicit' }, 'after the plug: back on port 1');
  t.equal(a.stats.portDowns, 1);
  t.equal(a.stats.portUps, 1);
  t.equal(a.stats.qpMoves, 4, 'two QPs moved out and back');
  t.comment(
    `hash: cut at ${run.cutAt} ms, QPs moved ${run.movedAt - run.cutAt} ms later, first packet on port 2 ${run.firstOnPort2 - run.cutAt} ms later; plug at ${run.plugAt} ms, back on port 1 ${run.firstBackOnPort1 - run.plugAt} ms later; ` +
      `done at ${run.done} ms; timeouts ${run.timeouts}, retries ${run.retries}; TX port1/port2 ${run.sent1[2]}/${run.sent2[2]}`,
  );
});

t.test('activebackup: the active port fails over, and back to the higher prio port when it returns', async (t) => {
  const { run, a, A } = await streams(t, { name: 'activebackup' }, { eth1: { prio: 10 }, eth2: {} });
  t.equal(run.sent2[0], 0, 'before the cut: everything on the active port 1');
  t.ok(run.sent2[1] > 0, 'during the outage: on port 2');
  t.ok(run.sent1[2] > run.sent1[1], 'after the plug: port 1 (prio 10) is active again');
  t.equal(a.activePort, 1);
  t.same(queryLagPort(A.s), { configured: 1, active: 1, source: 'explicit' });
  t.comment(`activebackup: first packet on port 2 ${run.firstOnPort2 - run.cutAt} ms after the cut; timeouts ${run.timeouts}, retries ${run.retries}`);
});

t.test('a sticky port keeps its QPs when the configured port returns', async (t) => {
  const { run, A } = await streams(t, { name: 'loadbalance' }, { eth1: {}, eth2: { sticky: true } });
  t.ok(run.sent2[1] > 0, 'during the outage: on port 2');
  t.equal(run.sent1[2], run.sent1[1], 'after the plug: nothing more on port 1');
  t.same(queryLagPort(A.w), { configured: 1, active: 2, source: 'explicit' }, 'configured 1, still active on the sticky port 2');
});

t.test("teamd's default ethtool watch (no delays): the QPs move at the cut", async (t) => {
  const { run } = await streams(t, { name: 'loadbalance' }, { eth1: {}, eth2: {} }, null);
  t.equal(run.movedAt, run.cutAt, 'the QPs move at the cut');
  t.ok(run.firstOnPort2 - run.cutAt <= 4, `first packet on port 2 ${run.firstOnPort2 - run.cutAt} ms after the cut (a WR every 2 ms)`);
  t.ok(run.firstBackOnPort1 - run.plugAt <= 2, `back on port 1 ${run.firstBackOnPort1 - run.plugAt} ms after the plug`);
  t.comment(`default watch: port 2 from ${run.firstOnPort2 - run.cutAt} ms after the cut; timeouts ${run.timeouts}, retries ${run.retries}`);
});
