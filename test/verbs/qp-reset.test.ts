/**
 * A move to RESET returns the transport state of the three roles (qp.req, qp.comp, qp.resp) to
 * what a new QP starts from (IBA 10.3.1: RESET clears the QP). Issue 11: the state was re-set by
 * a hand-written list that missed the responder's oosMax, oosCount, writeLen and resNext; the
 * state classes now own their reset(). The fields a reset leaves on purpose are named here.
 */
import t from 'tap';
import { makePair, waitWc } from './pair.js';
import type { Qp } from '../../src/verbs/qp.js';

/** Fields a reset keeps, and why. */
const KEPT: Record<'req' | 'comp' | 'resp', readonly string[]> = {
  // run-queue membership: a queued QP stays queued (its run finds nothing to send)
  req: ['scheduled', 'waitingDrain'],
  // retry budgets are attributes (set by the modify that sets retry_cnt / rnr_retry); the round-trip
  // estimate is of the path; the QP stops its timers (lazy-timer.ts), which keep only whom they call
  comp: ['retryCnt', 'rnrRetry', 'srtt', 'sampleT'],
  // READ/ATOMIC resources are allocated on RESET -> INIT; the coalesced-ACK machinery and the
  // drain flag are per event-loop turn
  resp: ['res', 'scheduled', 'waitingDrain', 'ackPending', 'ackPsn', 'ackMsn', 'ackFlush'],
};

function fields(qp: Qp, role: 'req' | 'comp' | 'resp'): Record<string, unknown> {
  const o = qp[role] as unknown as Record<string, unknown>;
  const out: Record<string, unknown> = {};
  for (const k of Object.keys(o)) {
    if (KEPT[role].includes(k)) continue;
    const v = o[k];
    out[k] = v instanceof Map ? [...v.entries()] : v;
  }
  return out;
}

t.test('RESET clears every role field a new QP starts without (oosMax, oosCount, writeLen, resNext included)', async (t) => {
  const p = await makePair({ maxRdAtomic: 4 });
  const { a, b } = p;
  a.qp.postSend([
    { wrId: 1, opcode: 'RDMA_WRITE', sg: [{ mr: a.mr, offset: 0, length: 3000 }], remote: { addr: b.mr.addr, rkey: b.mr.rkey } },
    { wrId: 2, opcode: 'RDMA_READ', sg: [{ mr: a.mr, offset: 4096, length: 100 }], remote: { addr: b.mr.addr, rkey: b.mr.rkey } },
  ]);
  const wc = await waitWc(p, a.scq, 2);
  t.same(
    wc.map((w) => w.status),
    ['SUCCESS', 'SUCCESS'],
  );
  // The traffic moved the responder's state off its initial values (else the test proves nothing).
  t.equal(b.qp.resp.writeLen, 3000, 'the WRITE set writeLen');
  t.ok(b.qp.resp.resNext > 0, 'the READ took a responder resource');
  t.ok(b.qp.resp.psn !== 0 && a.qp.req.psn !== 0, 'PSNs moved');
  // What an out-of-sequence arrival leaves behind (responder.ts: the highest PSN past a gap, and the count).
  b.qp.resp.oosMax = 123;
  b.qp.resp.oosCount = 2;

  const fresh = b.pd.createQp({ type: 'RC', sendCq: b.scq, recvCq: b.rcq, cap: { maxSendWr: 4, maxRecvWr: 4 } });
  for (const s of [a, b]) s.qp.modify({ state: 'RESET' });
  for (const s of [a, b]) {
    for (const role of ['req', 'comp', 'resp'] as const) {
      t.same(fields(s.qp, role), fields(fresh, role), `${s === a ? 'requester side' : 'responder side'}: qp.${role} after RESET is a new QP's`);
    }
  }
  t.equal(b.qp.resp.oosMax, 0);
  t.equal(b.qp.resp.oosCount, 0);
  t.equal(b.qp.resp.writeLen, 0);
  t.equal(b.qp.resp.resNext, 0);
  fresh.close();
  await p.close();
});
