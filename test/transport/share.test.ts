/**
 * The device's share of unacknowledged RC packets (engine.ts holdNew / releaseHeld) with more QPs
 * waiting than the share holds: every WRITE completes, and a QP the share held is woken only when
 * the freed part can take it. Waking every held QP at each ACK made most of them run only to be
 * held again (issue 15's 1,000-QP case: the turn's packet budget went on runs that sent nothing).
 */
import t from 'tap';
import { openDevice } from '../../src/verbs/device.js';
import { connectQp } from '../../src/verbs/connect.js';
import { Wc } from '../../src/verbs/types.js';
import type { Qp } from '../../src/verbs/qp.js';

/** 16 packets at MTU 1024: 600 QPs x 2 WRITEs in flight = 19,200 packets against a share of 512 */
const MSG = 16 * 1024;
const N = 600;
const DEPTH = 2;
/** WRITEs per QP: each completion posts the next (as an application streaming would) */
const PER_QP = 4;

t.test('600 QPs over the device share: all WRITEs complete, held QPs are not woken to be held again', async (t) => {
  const a = await openDevice({ address: '127.0.98.1' });
  const b = await openDevice({ address: '127.0.98.2' });
  t.teardown(async () => {
    await a.close();
    await b.close();
  });
  const pdA = a.allocPd(),
    pdB = b.allocPd();
  const cqA = a.createCq({ depth: N * DEPTH + 16 }),
    cqB = b.createCq({ depth: 64 });
  const src = Buffer.alloc(MSG, 0x5a);
  const mrA = pdA.regMr(src, ['LOCAL_WRITE']);
  const dst = Buffer.alloc(N * MSG);
  const mrB = pdB.regMr(dst, ['LOCAL_WRITE', 'REMOTE_WRITE']);
  const qa: Qp[] = [];
  for (let i = 0; i < N; i++) {
    const x = pdA.createQp({ type: 'RC', sendCq: cqA, recvCq: cqA, cap: { maxSendWr: DEPTH, maxRecvWr: 1 } });
    const y = pdB.createQp({ type: 'RC', sendCq: cqB, recvCq: cqB, cap: { maxSendWr: 1, maxRecvWr: 1 } });
    connectQp(x, { psn: 1, pathMtu: 1024, timeout: 14, retryCnt: 7 }, { qpn: y.qpn, psn: 2, gid: '127.0.98.2' });
    connectQp(y, { psn: 2, pathMtu: 1024, accessFlags: ['LOCAL_WRITE', 'REMOTE_WRITE'] }, { qpn: x.qpn, psn: 1, gid: '127.0.98.1' });
    qa.push(x);
  }
  for (let i = 0; i < N; i++)
    for (let k = 0; k < DEPTH; k++)
      qa[i]!.postSend({
        wrId: i,
        signaled: true,
        opcode: 'RDMA_WRITE',
        sg: [{ mr: mrA, offset: 0, length: MSG }],
        remote: { addr: mrB.addr + BigInt(i * MSG), rkey: mrB.rkey },
      });
  const wc = Array.from({ length: 64 }, () => new Wc());
  let done = 0,
    bad = 0;
  for (const end = performance.now() + 30_000; done < N * DEPTH && performance.now() < end;) {
    const k = cqA.poll(wc);
    for (let j = 0; j < k; j++) if (wc[j]!.status !== 'SUCCESS') bad++;
    done += k;
    if (k === 0) await new Promise((r) => setTimeout(r, 1));
  }
  t.equal(done, N * DEPTH, 'every WRITE completed');
  t.equal(bad, 0, 'all with SUCCESS');
  t.ok(
    dst.every((v) => v === 0x5a),
    'every byte arrived',
  );
  // Holds, as the requesters recorded them (consecutive identical decisions fold into one entry
  // with a count): at most one hold per WRITE that had to wait, plus the re-check of a QP woken
  // with a share a neighbour then took (bounded by the WRITEs too).
  let holds = 0,
    heldQps = 0;
  for (const q of qa) {
    const h = q
      .trace()
      .filter((e) => e.reason === 'device_hold')
      .reduce((s, e) => s + e.count, 0);
    holds += h;
    if (h > 0) heldQps++;
  }
  t.comment(`${heldQps} of ${N} QPs held by the device share, ${holds} holds in all for ${N * PER_QP} WRITEs`);
  t.ok(heldQps > 0, 'the share held some QPs (the case tests what it means to)');
  t.ok(holds <= 2 * N * PER_QP, `${holds} holds <= 2 per WRITE`);
});
