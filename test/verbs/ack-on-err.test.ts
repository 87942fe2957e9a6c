/**
 * A QP moved to ERR (or RESET) by the app still sends the ACK it was coalescing for requests it has
 * already executed. rxe acknowledges as it receives (rxe_resp.c sends the ACK in the same pass as the
 * receive completion), so by the time an app that saw the completion moves the QP to ERR, the peer
 * has its ACK. softroce coalesces ACKs until the end of the event-loop turn (responder-answers.ts
 * queueAck): without a flush on the move, the peer's SEND that completed here was never acknowledged
 * and ended in retries and RETRY_EXC_ERR (found by the rdma_cm work: a DREQ handler moving the QP to ERR).
 */
import t from 'tap';
import { makePair, waitWc } from './pair.js';

for (const to of ['ERR', 'RESET'] as const) {
  t.test(`the coalesced ACK leaves before a move to ${to}: the peer's SEND completes SUCCESS`, async (t) => {
    const p = await makePair({ timeout: 8, retryCnt: 2 });
    const { a, b } = p;
    b.qp.postRecv({ wrId: 7, sg: [{ mr: b.mr, offset: 0, length: 256 }] });
    a.qp.postSend({ wrId: 1, opcode: 'SEND', sg: [{ mr: a.mr, offset: 0, length: 64 }] });
    // B moves its QP in the turn its receive completes: in the completion notification, as an app (or
    // the CM handling a DREQ that arrived in the same batch) would.
    let pending: boolean | null = null;
    b.rcq.reqNotify();
    // Deferred from the completion: it runs later in the same turn, after the responder queued its ACK
    // (queueAck comes after the completion) and before that ACK's own deferred flush, which is where a
    // DREQ handled in the same receive batch moves the QP.
    b.rcq.once('notify', () => {
      b.dev.sched.defer(() => {
        pending = b.qp.resp.ackPending;
        b.qp.modify({ state: to });
      });
    });
    const done = await waitWc(p, a.scq, 1, 5000);
    t.equal(pending, true, "B's ACK was still coalescing when B moved (else this test proves nothing)");
    t.same(
      done.map((w) => w.status),
      ['SUCCESS'],
      `A's SEND is acknowledged although B moved to ${to} in that turn`,
    );
    t.equal(a.dev.counters().retry_exceeded_err ?? 0, 0, 'no retries exhausted');
    await p.close();
  });
}
