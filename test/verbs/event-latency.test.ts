/**
 * The event path of a ping-pong (issue 15, ib_send_lat): what one round trip costs in event-loop
 * work and in send calls, independent of timing.
 * - An ACK for a QP that has nothing left to send schedules no deferred requester run (a
 *   setImmediate, and a loop phase, per round trip before), and a single post's packet budget
 *   needs no refill turn either.
 * - The coalesced ACK for a request and the application's answer to it, posted from an awaiting
 *   continuation in the same turn, leave in one send call (sendmmsg / GSO): the link flushes at
 *   the end of the turn (process.nextTick, after every promise continuation), not in the first
 *   microtask, which came before the application's post (two calls per round trip before).
 * Loopback only, in 127.0.88.0/24.
 */
import t from 'tap';
import { makePair, type Pair } from './pair.js';
import { Wc } from '../../src/verbs/types.js';
import { loadNative } from '../../src/native.js';
import type { Cq } from '../../src/verbs/cq.js';

const native = loadNative() !== null && process.env['SOFTROCE_NO_NATIVE'] !== '1';

/** The engine's deferred-run callbacks of a device (private fields, read for the count only). */
function engineFns(p: Pair['a']): unknown[] {
  const e = (p.dev as unknown as { engine: { pumpFn: unknown; refillFn: unknown } }).engine;
  return [e.pumpFn, e.refillFn];
}

t.test('an ACK that leaves nothing to send defers no requester run', async (t) => {
  const p = await makePair({ mode: 'mem' });
  const fake = p.fake!;
  const mine = engineFns(p.a);
  let deferred = 0;
  const defer = fake.defer.bind(fake);
  fake.defer = (fn: () => void): void => {
    if (mine.includes(fn)) deferred++;
    defer(fn);
  };
  const wc = [new Wc()];
  const N = 40;
  let done = 0;
  for (let i = 0; i < N; i++) {
    p.b.qp.postRecv({ wrId: i, sg: [{ mr: p.b.mr, offset: 0, length: 64 }] });
    p.a.qp.postSend({ wrId: i, opcode: 'SEND', sg: [{ mr: p.a.mr, offset: 0, length: 2 }] });
    for (let k = 0; k < 1000 && p.a.scq.poll(wc, 1) === 0; k++) fake.advance(0.01);
    if (wc[0]!.wrId === i && wc[0]!.status === 'SUCCESS') done++;
  }
  t.equal(done, N, `all ${N} SENDs completed one at a time`);
  // Before: one pump per ACK (madeProgress kicks the QP) and one budget refill per post, 2 per SEND.
  t.equal(deferred, 0, 'the requester side deferred no engine run (no setImmediate per ACK or per post)');
  t.equal(p.a.qp.state, 'RTS');
  await p.close();
});

t.test(
  'event ping-pong: the coalesced ACK and the answer leave in one send call',
  { skip: native ? false : 'needs the native addon (the dgram backend sends each packet by itself)' },
  async (t) => {
    const a = 10 + Math.floor(Math.random() * 100) * 2; // 127.0.88.10-209 (the latency tools use .1-.3 by hand)
    const p = await makePair({ mode: 'udp', addrs: [`127.0.88.${a}`, `127.0.88.${a + 1}`], mtu: 1024 });
    const N = 200;
    for (const s of [p.a, p.b]) for (let i = 0; i < N + 2; i++) s.qp.postRecv({ wrId: i, sg: [{ mr: s.mr, offset: 0, length: 64 }] });
    const wc = [new Wc()];
    /** perftest's wait: arm the CQ, sleep until its event, on the event loop */
    const next = async (cq: Cq): Promise<boolean> => {
      for (let k = 0; k < 1000; k++) {
        if (cq.poll(wc, 1) === 1) return wc[0]!.status === 'SUCCESS';
        await new Promise<void>((r) => {
          const tm = setTimeout(r, 20);
          cq.once('notify', () => {
            clearTimeout(tm);
            r();
          });
          cq.reqNotify();
        });
      }
      return false;
    };
    const sendWr = { wrId: 0, opcode: 'SEND' as const, sg: [{ mr: p.a.mr, offset: 0, length: 2 }] };
    // b answers each SEND from the continuation of its wait, as ib_send_lat's server does.
    const server = (async (): Promise<number> => {
      let n = 0;
      for (; n < N; n++) {
        if (!(await next(p.b.rcq))) break;
        p.b.qp.postSend({ ...sendWr, sg: [{ mr: p.b.mr, offset: 0, length: 2 }] });
      }
      return n;
    })();
    const stB = p.b.dev.ports[0]!.link.batchStats!;
    let rounds = 0;
    let calls0 = 0;
    for (; rounds < N; rounds++) {
      // The first rounds set the pattern going (a's first SEND carries no ACK); count from round 10.
      if (rounds === 10) calls0 = stB.gsoCalls + stB.mmsgCalls;
      p.a.qp.postSend(sendWr);
      if (!(await next(p.a.rcq))) break;
      while (p.a.scq.poll(wc, 1) === 1);
    }
    t.equal(rounds, N, `${N} round trips`);
    t.equal(await server, N, 'b answered every SEND');
    // Wait for b's last ACK to leave and be counted.
    await new Promise((r) => setTimeout(r, 50));
    const calls = stB.gsoCalls + stB.mmsgCalls - calls0;
    const counted = N - 10;
    // Each round b sends 2 packets (the ACK of a's SEND and its answer): one call with the change,
    // two before. A little slack for a round whose ACK or answer came apart on a loaded machine.
    t.ok(calls <= counted * 1.2 + 2, `b's send calls over ${counted} rounds: ${calls} (one per round, not two)`);
    t.equal(p.a.qp.state, 'RTS');
    t.equal(p.b.qp.state, 'RTS');
    await p.close();
  },
);
