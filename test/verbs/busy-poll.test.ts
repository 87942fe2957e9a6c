/**
 * Busy polling (issue 15, opt-in) and the event path's ACK: with the native addon, a CQ created
 * with busyPollUs (and device.busyPoll) reads the receive socket itself, so a loop of cq.poll makes
 * progress, sends included, without the event loop ever getting a turn; a spin is bounded in time;
 * without the addon (SOFTROCE_NO_NATIVE=1: Node's dgram; the in-memory network) it falls back to
 * events, says so once, and never spins. Loopback only, in 127.0.83.0/24.
 */
import t from 'tap';
import { executionAsyncResource } from 'node:async_hooks';
import { makePair, type Pair } from './pair.js';
import { Wc } from '../../src/verbs/types.js';
import { VerbsError } from '../../src/verbs/errors.js';
import { loadNative } from '../../src/native.js';
import { OPC } from '../../src/roce/opcode.js';

const native = loadNative()?.rxPoll !== undefined;
let nextAddr = 10 + Math.floor(Math.random() * 60) * 2; // 127.0.83.10-139: clear of test/cli/busy-poll.test.ts (.201, .202) and multiport (.1, .2)
const udpPair = (o: Parameters<typeof makePair>[0] = {}): Promise<Pair> => {
  const a = nextAddr;
  nextAddr += 2;
  return makePair({ mode: 'udp', addrs: [`127.0.83.${a}`, `127.0.83.${a + 1}`], mtu: 1024, ...o });
};

/** The process warnings with code SOFTROCE_BUSY_POLL seen from now on. */
const warnings: string[] = [];
process.on('warning', (w: Error & { code?: string }) => {
  if (w.code === 'SOFTROCE_BUSY_POLL') warnings.push(w.message);
});

t.test('without the addon busy polling falls back to events: no spin, said once', async (t) => {
  // The in-memory network (any build) and, without the addon, Node's dgram over loopback.
  const pairs = [await makePair({ mode: 'mem' })];
  if (!native) pairs.push(await udpPair());
  for (const p of pairs) {
    const backend = p.a.dev.ports[0]!.link.caps.backend;
    t.equal(p.a.dev.canBusyPoll, false, `${backend}: canBusyPoll is false`);
    const t0 = performance.now();
    t.equal(p.a.dev.busyPoll(50_000), -1, `${backend}: busyPoll says it cannot (-1)`);
    t.ok(performance.now() - t0 < 40, `${backend}: and returns at once instead of spinning 50 ms`);
    const cq = p.a.dev.createCq({ depth: 4, busyPollUs: 50_000 });
    t.equal(cq.busyPollUs, 0, `${backend}: a CQ asked to busy-poll is created without it`);
    const t1 = performance.now();
    t.equal(cq.poll([new Wc()]), 0, `${backend}: its poll finds nothing`);
    t.ok(performance.now() - t1 < 40, `${backend}: without spinning`);
    cq.busyPollUs = 1000;
    t.equal(cq.busyPollUs, 0, `${backend}: setting busyPollUs later changes nothing`);
    cq.close();
    // The event path still carries traffic on this device.
    p.b.qp.postRecv({ wrId: 7, sg: [{ mr: p.b.mr, offset: 0, length: 64 }] });
    p.a.qp.postSend({ wrId: 8, opcode: 'SEND', sg: [{ mr: p.a.mr, offset: 0, length: 16 }] });
    const wc = [new Wc()];
    for (let i = 0; i < 2000 && p.b.rcq.length === 0; i++) {
      if (p.fake) p.fake.advance(1);
      else await new Promise((r) => setTimeout(r, 1));
    }
    t.equal(p.b.rcq.poll(wc), 1, `${backend}: a SEND still completes (events)`);
    await p.close();
  }
  await new Promise((r) => setImmediate(r)); // process.emitWarning reports on the next tick
  t.equal(warnings.length, 1, 'the fallback is reported once per process, however often it happens');
  t.match(warnings[0] ?? '', /cannot busy-poll/, 'the warning says why');
});

t.test('arguments are checked like the verbs', async (t) => {
  const p = await makePair({ mode: 'mem' });
  const bad = (f: () => unknown, arg: string, what: string): void => {
    try {
      f();
      t.fail(`${what}: no error`);
    } catch (e) {
      t.ok(e instanceof VerbsError && e.code === 'EINVAL' && e.argument === arg, `${what}: EINVAL naming ${arg} (${(e as Error).message})`);
    }
  };
  bad(() => p.a.dev.createCq({ depth: 4, busyPollUs: -1 }), 'busyPollUs', 'createCq busyPollUs -1');
  bad(() => p.a.dev.createCq({ depth: 4, busyPollUs: 100_001 }), 'busyPollUs', 'createCq busyPollUs over 100 ms');
  bad(() => p.a.dev.createCq({ depth: 4, busyPollUs: 1.5 }), 'busyPollUs', 'createCq busyPollUs 1.5');
  bad(() => p.a.dev.busyPoll(-5), 'us', 'busyPoll(-5)');
  bad(() => p.a.dev.busyPoll(Number.NaN), 'us', 'busyPoll(NaN)');
  bad(() => (p.a.rcq.busyPollUs = 1e9), 'busyPollUs', 'cq.busyPollUs = 1e9');
  await p.close();
});

t.test(
  'with the addon: completions arrive with no event-loop turn',
  { skip: native ? false : 'needs the native addon (the fallback is tested above)' },
  async (t) => {
    const p = await udpPair();
    t.equal(p.a.dev.canBusyPoll, true, 'a native device can busy-poll');
    const acq = p.a.scq,
      bcq = p.b.rcq;
    acq.busyPollUs = 200_000 / 4; // 50 ms: a bound, far above a loopback round trip
    bcq.busyPollUs = 50_000;
    const wc = [new Wc()];
    const ITERS = 600; // over the engine's 256 packets per turn: the budget must refill while spinning
    let turned = false;
    setImmediate(() => (turned = true));
    const timer = setTimeout(() => (turned = true), 0);
    let recvs = 0,
      sends = 0;
    p.b.qp.postRecv({ wrId: 0, sg: [{ mr: p.b.mr, offset: 0, length: 64 }] });
    const t0 = performance.now();
    for (let i = 0; i < ITERS; i++) {
      p.b.qp.postRecv({ wrId: i + 1, sg: [{ mr: p.b.mr, offset: 0, length: 64 }] });
      p.a.qp.postSend({ wrId: i, opcode: 'SEND', sg: [{ mr: p.a.mr, offset: 0, length: 2 }] });
      // b spins until the SEND is in its CQ: a's post went out from inside this spin's pass (a's
      // device is not polled: its packets leave by its own busyPoll below, or not at all)
      p.a.dev.busyPoll(0);
      if (bcq.poll(wc, 1) !== 1) break;
      if (wc[0]!.status !== 'SUCCESS' || wc[0]!.wrId !== i) break;
      recvs++;
      // a spins until the ACK (sent by b's spin, coalesced for the end of its batch) completes the SEND
      if (acq.poll(wc, 1) !== 1) break;
      if (wc[0]!.status !== 'SUCCESS' || wc[0]!.wrId !== i) break;
      sends++;
    }
    const ms = performance.now() - t0;
    clearTimeout(timer);
    t.equal(recvs, ITERS, `every SEND was received by a busy poll (${ITERS} in ${ms.toFixed(0)} ms)`);
    t.equal(sends, ITERS, 'every SEND completed by a busy poll of the ACK');
    t.equal(turned, false, 'and the event loop never had a turn (no setImmediate, no timer ran)');
    t.equal(p.b.qp.state, 'RTS', 'the responder is fine');
    await p.close();
  },
);

t.test(
  'with the addon: a spin is bounded, and re-entering it from a completion handler does nothing',
  { skip: native ? false : 'needs the native addon' },
  async (t) => {
    const p = await udpPair();
    const cq = p.a.dev.createCq({ depth: 4, busyPollUs: 20_000 });
    t.equal(cq.busyPollUs, 20_000, 'the CQ keeps its busyPollUs');
    let t0 = performance.now();
    t.equal(cq.poll([new Wc()]), 0, 'poll on a CQ nothing will complete into returns 0');
    let ms = performance.now() - t0;
    t.ok(ms >= 19 && ms < 2000, `after spinning its 20 ms (${ms.toFixed(1)} ms)`);
    t0 = performance.now();
    t.equal(p.a.dev.busyPoll(5000), 0, 'busyPoll with nothing arriving returns 0');
    ms = performance.now() - t0;
    t.ok(ms >= 4.5 && ms < 2000, `after its 5 ms (${ms.toFixed(1)} ms)`);
    t.equal(cq.poll([new Wc()], 0), 0, 'poll with max 0 does not spin');
    cq.close();

    // A 'notify' handler runs inside the receive of the event path: a busy poll there must not
    // read into the slots being handed over; it returns 0 at once.
    let inner = -2;
    let innerMs = -1;
    p.b.rcq.on('notify', () => {
      const s = performance.now();
      inner = p.b.dev.busyPoll(50_000);
      innerMs = performance.now() - s;
    });
    p.b.rcq.reqNotify();
    p.b.qp.postRecv({ wrId: 1, sg: [{ mr: p.b.mr, offset: 0, length: 64 }] });
    p.a.qp.postSend({ wrId: 2, opcode: 'SEND', sg: [{ mr: p.a.mr, offset: 0, length: 8 }] });
    for (let i = 0; i < 2000 && inner === -2; i++) await new Promise((r) => setTimeout(r, 1));
    t.equal(inner, 0, 'busyPoll from inside a receive returns 0');
    t.ok(innerMs >= 0 && innerMs < 40, `at once (${innerMs.toFixed(2)} ms), not after its 50 ms`);
    await p.close();
  },
);

t.test(
  'event path: the coalesced ACK leaves in the receive batch, not from a setImmediate',
  { skip: native ? false : 'needs the native addon (the dgram backend coalesces per turn)' },
  async (t) => {
    const p = await udpPair();
    const link = p.b.dev.ports[0]!.link;
    const send = link.send.bind(link);
    const from: string[] = [];
    link.send = (buf, len, ...rest) => {
      if (buf[0] === OPC.RC_ACKNOWLEDGE) from.push(executionAsyncResource()?.constructor?.name ?? 'none');
      send(buf, len, ...rest);
    };
    const wc = [new Wc()];
    for (let i = 0; i < 20; i++) {
      p.b.qp.postRecv({ wrId: i, sg: [{ mr: p.b.mr, offset: 0, length: 64 }] });
      p.a.qp.postSend({ wrId: i, opcode: 'SEND', sg: [{ mr: p.a.mr, offset: 0, length: 8 }] });
      for (let k = 0; k < 2000 && p.a.scq.poll(wc, 1) === 0; k++) await new Promise((r) => setTimeout(r, 1));
      t.equal(wc[0]!.wrId, i, `SEND ${i} completed`);
    }
    t.ok(from.length >= 20, `b acknowledged every SEND (${from.length} ACKs)`);
    t.same(
      from.filter((n) => n === 'Immediate'),
      [],
      'no ACK was sent from a setImmediate (the old per-turn coalescing: a loop phase later)',
    );
    await p.close();
  },
);
