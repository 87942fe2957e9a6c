/**
 * Issue 10 item 1: the requester's bookkeeping under loss, reordering,
 * duplication and delay, with every kind of operation mixed, on the fake clock.
 * READs are resent thousands of times; every WR must complete with SUCCESS, in
 * order, every READ must bring back exactly the remote bytes (a READ restarted
 * one packet off would shift them), every WRITE and SEND must land, and the
 * atomics must add up. Before the fix, READs ended in BAD_RESP_ERR.
 */
import t from 'tap';
import { makePair, waitWc, fill } from '../verbs/pair.js';
import { Rng } from '../helpers.js';
import type { SendWr, Wc } from '../../src/verbs/types.js';

const REGION = 256 * 1024; // B's READ source: a fixed pattern
const seedBase = Number(process.env['SOFTROCE_SEED'] ?? 1000);

for (const timeout of [8, 11, 14]) {
  t.test(`mixed traffic, loss + reordering + duplicates + delays, timeout ${timeout}: no BAD_RESP_ERR, every byte right`, async (t) => {
    const seed = seedBase + timeout;
    t.comment(`seed ${seed}`);
    const p = await makePair({
      mtu: 1024,
      memSize: 4 << 20,
      timeout,
      retryCnt: 7,
      sendWr: 256,
      recvWr: 256,
      maxRdAtomic: 16,
      faults: { seed, dropPct: 3, reorderPct: 3, dupPct: 1, delayMs: 3, delayPct: 3 },
    });
    const { a, b } = p;
    const rng = new Rng(seed);
    for (let i = 0; i < REGION; i++) b.mem[i] = (i * 7 + (i >> 10)) & 0xff;
    b.mem.writeBigUInt64LE(0n, 3 << 20);
    let readReqs = 0,
      readWrs = 0;
    p.net!.filter = (pkt, src) => {
      if (src === '10.0.0.1' && pkt[0] === 0x0c) readReqs++;
      return true;
    };
    const TARGET_RESENDS = Number(process.env['RECOVERY_RESENDS'] ?? 1500);
    const expect: Array<{ wrId: number; check: () => boolean }> = [];
    let next = 0,
      done = 0,
      adds = 0n,
      bad = 0,
      sends = 0;
    const out: Wc[] = [];
    // Receive slots for SENDs: 64 of 16 KiB at 2 MiB in B.
    for (let i = 0; i < 64; i++) b.qp.postRecv({ wrId: i, sg: [{ mr: b.mr, offset: (2 << 20) + i * 16384, length: 16384 }] });
    const deadline = 60_000; // fake ms (the slowest case, timeout 14, needs ~12,000)
    let tms = 0;
    while ((readReqs - readWrs < TARGET_RESENDS || done < next) && tms < deadline) {
      while (next - done < 32 && readReqs - readWrs < TARGET_RESENDS) {
        const id = next++;
        const kind = rng.int(5);
        const len = 1 + rng.int(20000);
        const slot = (id % 32) * 65536;
        let wr: SendWr;
        if (kind === 0) {
          const off = rng.int(REGION - len);
          a.mem.fill(0, slot, slot + len);
          wr = { wrId: id, opcode: 'RDMA_READ', sg: [{ mr: a.mr, offset: slot, length: len }], remote: { addr: b.mr.addr + BigInt(off), rkey: b.mr.rkey } };
          readWrs++;
          expect.push({ wrId: id, check: () => a.mem.subarray(slot, slot + len).equals(b.mem.subarray(off, off + len)) });
        } else if (kind === 1) {
          const n = Math.min(len, 16384);
          for (let i = 0; i < n; i++) a.mem[slot + i] = (id + i) & 0xff;
          const k = sends++;
          wr = { wrId: id, opcode: 'SEND', sg: [{ mr: a.mr, offset: slot, length: n }] };
          expect.push({ wrId: id, check: () => true });
          void k;
        } else if (kind === 2) {
          for (let i = 0; i < len; i++) a.mem[slot + i] = (id * 3 + i) & 0xff;
          const dst = (1 << 20) + (id % 8) * 65536;
          wr = { wrId: id, opcode: 'RDMA_WRITE', sg: [{ mr: a.mr, offset: slot, length: len }], remote: { addr: b.mr.addr + BigInt(dst), rkey: b.mr.rkey } };
          expect.push({ wrId: id, check: () => true });
        } else {
          adds += 1n;
          wr = {
            wrId: id,
            opcode: 'ATOMIC_FETCH_AND_ADD',
            compareAdd: 1n,
            sg: [{ mr: a.mr, offset: (3 << 20) + (id % 32) * 8, length: 8 }],
            remote: { addr: b.mr.addr + BigInt(3 << 20), rkey: b.mr.rkey },
          };
          expect.push({ wrId: id, check: () => true });
        }
        a.qp.postSend(wr);
      }
      p.fake!.advance(1);
      tms++;
      // Keep B's receive queue topped up.
      const rw = await waitWc(p, b.rcq, 0, 0);
      for (const w of rw) {
        if (w.status !== 'SUCCESS') bad++;
        b.qp.postRecv({ wrId: w.wrId, sg: [{ mr: b.mr, offset: (2 << 20) + (w.wrId % 64) * 16384, length: 16384 }] });
      }
      out.length = 0;
      for (const w of await waitWc(p, a.scq, 0, 0)) {
        const e = expect[done]!;
        if (w.status !== 'SUCCESS' || w.wrId !== e.wrId || !e.check()) {
          bad++;
          if (bad < 5) t.fail(`WR ${w.wrId} (expected ${e.wrId}): ${w.status}${w.status === 'SUCCESS' ? ', data wrong' : ''}`);
        }
        done++;
      }
    }
    t.equal(bad, 0, 'every WR completed with SUCCESS, in order, data right');
    t.equal(done, next, `all ${next} WRs completed (${tms} fake ms)`);
    t.ok(readReqs - readWrs >= TARGET_RESENDS, `READ requests resent ${readReqs - readWrs} times for ${readWrs} READs`);
    t.equal(b.mem.readBigUInt64LE(3 << 20), adds, 'every FETCH_ADD ran exactly once');
    t.equal(a.qp.state, 'RTS');
    await p.close();
  });
}

t.test('tail-loss probe: a lost last packet or a lost ACK costs a few round trips, not an ACK timeout', async (t) => {
  for (const what of ['the last request packet', 'the ACK'] as const) {
    const p = await makePair({ timeout: 14, mtu: 1024 }); // ACK timeout 67 ms
    const { a, b } = p;
    p.net!.latencyMs = 0.05; // 100 µs round trips
    // Warm up the round-trip estimate.
    a.qp.postSend({ wrId: 0, opcode: 'RDMA_WRITE', sg: [{ mr: a.mr, offset: 0, length: 100 }], remote: { addr: b.mr.addr, rkey: b.mr.rkey } });
    t.equal((await waitWc(p, a.scq, 1, 5)).length, 1);
    let dropped = false;
    p.net!.filter = (pkt, src) => {
      const isAck = pkt[0] === 0x11;
      const hit = what === 'the ACK' ? src === '10.0.0.2' && isAck : src === '10.0.0.1' && (pkt[0] === 0x08 || pkt[0] === 0x0a);
      if (hit && !dropped) {
        dropped = true;
        return false;
      }
      return true;
    };
    const t0 = p.fake!.now();
    a.qp.postSend({ wrId: 1, opcode: 'RDMA_WRITE', sg: [{ mr: a.mr, offset: 0, length: 3000 }], remote: { addr: b.mr.addr, rkey: b.mr.rkey } });
    const w = await waitWc(p, a.scq, 1, 60);
    const ms = p.fake!.now() - t0;
    t.ok(dropped, `${what} was lost`);
    t.same(
      w.map((x) => x.status),
      ['SUCCESS'],
      'the WRITE completed',
    );
    t.ok(ms < 5, `in ${ms.toFixed(2)} ms (the ACK timer is 67 ms)`);
    t.equal(a.dev.counters()['timeouts'], 0, 'no ACK timeout');
    t.ok(a.dev.counters()['tail_probes']! >= 1, 'a probe found it');
    await p.close();
  }
});

/**
 * A 256 KiB READ of a pattern from B, path MTU 1024, losing the nth response packets in `lose`;
 * `onRequest` sees each READ request A sends (its DMA length) and says whether it arrives. Returns
 * the READ's completions, the response packets B sent, and whether every byte arrived.
 */
async function lossyRead(
  p: Awaited<ReturnType<typeof makePair>>,
  seed: number,
  lose: Set<number>,
  onRequest: (dmaLen: number) => boolean = () => true,
): Promise<{ w: Wc[]; responses: number; same: boolean }> {
  const { a, b } = p;
  for (let i = 0; i < 256 * 1024; i++) b.mem[i] = (i * seed + (i >> 9)) & 0xff;
  let responses = 0,
    seen = 0;
  p.net!.filter = (pkt, src) => {
    if (src === '10.0.0.1' && pkt[0] === 0x0c) return onRequest(pkt.readUInt32BE(24)); // BTH 12 + RETH: VA 8, R_Key 4, DMA length
    if (src !== '10.0.0.2' || pkt[0]! < 0x0d || pkt[0]! > 0x10) return true;
    responses++;
    return !lose.has(++seen);
  };
  a.qp.postSend({ wrId: 1, opcode: 'RDMA_READ', sg: [{ mr: a.mr, offset: 0, length: 256 * 1024 }], remote: { addr: b.mr.addr, rkey: b.mr.rkey } });
  const w = await waitWc(p, a.scq, 1, 1000);
  return { w, responses, same: a.mem.subarray(0, 256 * 1024).equals(b.mem.subarray(0, 256 * 1024)) };
}

t.test('a READ that loses responses asks again only for the holes, not for the rest of the stream', async (t) => {
  const p = await makePair({ timeout: 14, mtu: 1024, memSize: 1 << 20 });
  const { w, responses, same } = await lossyRead(p, 13, new Set([10, 11, 100, 200]));
  t.same(
    w.map((x) => x.status),
    ['SUCCESS'],
  );
  t.ok(same, 'every byte right');
  t.ok(responses <= 256 + 4 + 2, `${responses} response packets for 256 needed and 4 lost`);
  const holes = p.a.dev.counters()['read_hole_requests']!;
  t.ok(holes >= 3 && holes <= 4, `${holes} hole requests for 4 lost responses in 3 places`);
  t.equal(p.a.dev.counters()['timeouts'], 0);
  await p.close();
});

t.test('the ACK timer never fires before its deadline, though a later packet moved it by less than half a millisecond', async (t) => {
  const p = await makePair({ timeout: 8, mtu: 1024 }); // 4.096 us x 2^8 = 1.048576 ms
  const { a, b } = p;
  p.net!.filter = (_pkt, src) => src !== '10.0.0.1'; // nothing from A arrives: no ACK ever
  const wr = (id: number): SendWr => ({
    wrId: id,
    opcode: 'RDMA_WRITE',
    sg: [{ mr: a.mr, offset: 0, length: 64 }],
    remote: { addr: b.mr.addr, rkey: b.mr.rkey },
  });
  a.qp.postSend(wr(1));
  p.fake!.advance(0.3);
  a.qp.postSend(wr(2)); // sent at 0.3 ms: the deadline is now 1.349 ms
  p.fake!.advance(0.9); // 1.2 ms: past the first packet's timeout, not the second's
  t.equal(a.dev.counters()['timeouts'], 0, 'no timeout at 1.2 ms (the deadline is 1.349 ms)');
  p.fake!.advance(0.3); // 1.5 ms
  t.equal(a.dev.counters()['timeouts'], 1, 'the timeout comes once the deadline has passed');
  await p.close();
});

t.test('a READ retried by its ACK timer asks for each hole, not for the whole rest again', async (t) => {
  // Timeout 8 (1 ms): the hole probe (at least 1 ms) would not come before half the ACK timeout, so it is not armed.
  const p = await makePair({ timeout: 8, mtu: 1024, memSize: 1 << 20 });
  const asked: number[] = []; // DMA length of each READ request on the wire
  const { w, responses, same } = await lossyRead(p, 7, new Set([10, 100, 200]), (len) => {
    asked.push(len);
    return asked.length !== 2; // the first hole request is lost: only the ACK timer finds the holes
  });
  t.same(
    w.map((x) => x.status),
    ['SUCCESS'],
  );
  t.ok(same, 'every byte right');
  t.ok(p.a.dev.counters()['timeouts']! >= 1, 'the ACK timer fired');
  t.same(asked.slice(2), [1024, 1024, 1024], 'the retry asked for the three holes, one response each');
  t.ok(responses <= 256 + 3 + 3, `${responses} response packets for 256 needed and 3 lost (the rest of the stream is not sent again)`);
  await p.close();
});

t.test('a lost hole request is asked for again by the hole probe, not one ACK timeout later', async (t) => {
  const p = await makePair({ timeout: 14, mtu: 1024, memSize: 1 << 20 });
  const asked: number[] = [];
  const at: number[] = [];
  const { w, responses, same } = await lossyRead(p, 7, new Set([10, 100, 200]), (len) => {
    asked.push(len);
    at.push(p.sched.now());
    return asked.length !== 2; // the first hole request is lost
  });
  t.same(
    w.map((x) => x.status),
    ['SUCCESS'],
  );
  t.ok(same, 'every byte right');
  t.equal(p.a.dev.counters()['timeouts'], 0, 'no ACK timeout (67 ms at timeout 14)');
  t.same(asked.slice(1), [1024, 1024, 1024, 1024], 'the hole asked for twice (the first ask lost), then the next two holes');
  t.ok(at[2]! - at[1]! >= 1 && at[2]! - at[1]! < 10, `asked again ${(at[2]! - at[1]!).toFixed(2)} ms after the lost ask (at least 1 ms, far below 67)`);
  t.equal(p.a.dev.counters()['read_hole_requests'], 4);
  t.ok(responses <= 256 + 3 + 3, `${responses} response packets for 256 needed and 3 lost`);
  await p.close();
});

t.test('a hole whose every ask is lost is left to the ACK timer after HOLE_ASKS_MAX asks, and the READ still completes', async (t) => {
  const p = await makePair({ timeout: 14, mtu: 1024, memSize: 1 << 20 });
  let holeAsks = 0;
  const { w, same } = await lossyRead(p, 5, new Set([10]), (len) => {
    if (len !== 1024) return true;
    return ++holeAsks > 4; // the first ask and three re-asks are lost
  });
  t.same(
    w.map((x) => x.status),
    ['SUCCESS'],
  );
  t.ok(same, 'every byte right');
  t.ok(p.a.dev.counters()['timeouts']! >= 1, 'the ACK timer took over');
  t.ok(holeAsks >= 5, `${holeAsks} asks for the hole`);
  await p.close();
});

/**
 * A 256 KiB READ like lossyRead's, losing response arrivals by their index in the READ: `drops`
 * maps a response index to how many of its arrivals are lost (the original, then replays).
 */
async function burstRead(p: Awaited<ReturnType<typeof makePair>>, drops: Map<number, number>): Promise<{ w: Wc[]; responses: number; same: boolean }> {
  const { a, b } = p;
  for (let i = 0; i < 256 * 1024; i++) b.mem[i] = (i * 11 + (i >> 9)) & 0xff;
  let responses = 0;
  let first = -1;
  p.net!.filter = (pkt, src) => {
    const psn = pkt.readUInt32BE(8) & 0xffffff;
    if (src === '10.0.0.1' && pkt[0] === 0x0c && first < 0) first = psn;
    if (src !== '10.0.0.2' || pkt[0]! < 0x0d || pkt[0]! > 0x10) return true;
    responses++;
    const idx = (psn - first) & 0xffffff;
    const left = drops.get(idx) ?? 0;
    if (left === 0) return true;
    drops.set(idx, left - 1);
    return false;
  };
  a.qp.postSend({ wrId: 1, opcode: 'RDMA_READ', sg: [{ mr: a.mr, offset: 0, length: 256 * 1024 }], remote: { addr: b.mr.addr, rkey: b.mr.rkey } });
  const w = await waitWc(p, a.scq, 1, 1000);
  return { w, responses, same: a.mem.subarray(0, 256 * 1024).equals(b.mem.subarray(0, 256 * 1024)) };
}

// Responses 50..89 lost once; `again` lost a second time, in the replay. Before the fix each replayed
// response re-asked for the rest of the hole: 40 requests, and the responder restarted the replay for
// each (about 256 + 40 x 41 / 2 responses).
for (const [name, again, holes, what] of [
  ['a burst of 40 lost responses is asked for once: its replay, arriving in order, is not asked for again per response', -1, 1, 'one hole request'],
  ['a burst hole whose replay stops short is asked for again from where it stopped, by the hole probe', 70, 2, 'the burst, then response 70 alone'],
] as const) {
  t.test(name, async (t) => {
    const p = await makePair({ timeout: 14, mtu: 1024, memSize: 1 << 20 });
    const drops = new Map<number, number>();
    for (let i = 50; i < 90; i++) drops.set(i, 1);
    if (again >= 0) drops.set(again, 2);
    const lost = again >= 0 ? 41 : 40;
    const { w, responses, same } = await burstRead(p, drops);
    t.same(
      w.map((x) => x.status),
      ['SUCCESS'],
    );
    t.ok(same, 'every byte right');
    t.equal(p.a.dev.counters()['read_hole_requests'], holes, what);
    t.ok(responses <= 256 + lost + 2, `${responses} response packets for 256 needed and ${lost} lost`);
    t.equal(p.a.dev.counters()['timeouts'], 0, 'no ACK timeout');
    await p.close();
  });
}

t.test('a request reordered by a couple of packets costs no NAK and no resend (the responder keeps what came ahead)', async (t) => {
  const p = await makePair({ timeout: 14, mtu: 1024 });
  const { a, b } = p;
  fill(a.mem, 31);
  let held: Buffer | null = null,
    n = 0,
    sent = 0;
  p.net!.filter = (pkt, src) => {
    if (src !== '10.0.0.1') return true;
    sent++;
    n++;
    if (n === 1) {
      held = Buffer.from(pkt);
      return false;
    } // the first packet of the WRITE arrives last
    if (n === 3 && held) {
      p.net!.inject('10.0.0.1', a.qp.srcPort, '10.0.0.2', 4791, held); // from the QP's flow port: its ICRC covers it
      held = null;
    }
    return true;
  };
  a.qp.postSend({ wrId: 1, opcode: 'RDMA_WRITE', sg: [{ mr: a.mr, offset: 0, length: 3000 }], remote: { addr: b.mr.addr, rkey: b.mr.rkey } });
  const w = await waitWc(p, a.scq, 1, 50);
  t.same(
    w.map((x) => x.status),
    ['SUCCESS'],
  );
  t.ok(b.mem.subarray(0, 3000).equals(a.mem.subarray(0, 3000)), 'landed in order');
  t.equal(sent, 3, 'three packets sent, none resent');
  t.equal(a.dev.counters()['rcvd_seq_err'], 0, 'no sequence NAK');
  t.equal(b.dev.counters()['out_of_sequence'], 2, 'two packets arrived ahead of the first and waited');
  await p.close();
});

t.test('a SEND whose ACK is lost counts once in rdma_sends, though a probe resends its last packet', async (t) => {
  const p = await makePair({ timeout: 14, mtu: 1024 });
  const { a, b } = p;
  p.net!.latencyMs = 0.05;
  // Warm up the round-trip estimate the probe timer is set from (a WRITE: no rdma_sends).
  a.qp.postSend({ wrId: 0, opcode: 'RDMA_WRITE', sg: [{ mr: a.mr, offset: 0, length: 100 }], remote: { addr: b.mr.addr, rkey: b.mr.rkey } });
  t.equal((await waitWc(p, a.scq, 1, 5)).length, 1);
  b.qp.postRecv({ wrId: 7, sg: [{ mr: b.mr, offset: 0, length: 4096 }] });
  let dropped = false;
  p.net!.filter = (pkt, src) => {
    if (src === '10.0.0.2' && pkt[0] === 0x11 && !dropped) {
      dropped = true;
      return false;
    }
    return true;
  };
  a.qp.postSend({ wrId: 1, opcode: 'SEND', sg: [{ mr: a.mr, offset: 0, length: 500 }] }); // one packet: the probe resends it, the message's last
  const w = await waitWc(p, a.scq, 1, 60);
  t.ok(dropped, 'the ACK was lost');
  t.same(
    w.map((x) => x.status),
    ['SUCCESS'],
    'the SEND completed',
  );
  t.ok(a.dev.counters()['tail_probes']! >= 1, 'a probe resent its last packet');
  // Before the fix the probe's resend went through the end-of-message step again: rdma_sends 2.
  t.equal(a.dev.counters()['rdma_sends'], 1, 'rdma_sends counts the SEND once');
  await p.close();
});
