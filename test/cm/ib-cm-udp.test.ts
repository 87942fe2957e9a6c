/** The IB CM engine over real UDP on loopback (127.0.58.1 and 127.0.58.2, a block no other test uses): a
 *  connection and a disconnect through two devices' QP1s, on the real clock. */
import t from 'tap';
import { openDevice } from '../../src/verbs/device.js';
import { CmAgent, type IbCmEvent, type IbCmId } from '../../src/cm/ib-cm.js';
import { pathTo } from './ib-cm-helpers.js';

const A = '127.0.58.1';
const B = '127.0.58.2';

function waitFor(pred: () => boolean, ms = 5000): Promise<boolean> {
  const end = Date.now() + ms;
  return new Promise((resolve) => {
    const tick = (): void => {
      if (pred()) resolve(true);
      else if (Date.now() > end) resolve(false);
      else setTimeout(tick, 5);
    };
    tick();
  });
}

t.test('REQ / REP / RTU and DREQ / DREP over UDP loopback', async (t) => {
  const da = await openDevice({ address: A });
  const db = await openDevice({ address: B });
  const aa = CmAgent.acquire(da, 1);
  const ab = CmAgent.acquire(db, 1);
  t.teardown(async () => {
    aa.release();
    ab.release();
    await da.close();
    await db.close();
  });
  const evB: IbCmEvent[] = [];
  let b: IbCmId | undefined;
  const l = ab.createId((e) => {
    evB.push(e);
    if (e.type === 'REQ_RECEIVED') {
      b = e.id;
      e.id.sendRep({ qpn: 0x22, startingPsn: 2, responderResources: 1, initiatorDepth: 1, rnrRetryCount: 7, srq: false, privateData: Buffer.from('rep') });
    }
  });
  l.listen(0x1061d2fn);
  const evA: IbCmEvent[] = [];
  const a: IbCmId = aa.createId((e) => {
    evA.push(e);
    if (e.type === 'REP_RECEIVED') a.sendRtu();
  });
  a.sendReq({
    serviceId: 0x1061d2fn,
    path: pathTo(da, B),
    qpn: 0x11,
    qpType: 'RC',
    startingPsn: 1,
    responderResources: 1,
    initiatorDepth: 1,
    retryCount: 7,
    rnrRetryCount: 7,
    srq: false,
  });
  t.ok(await waitFor(() => a.state === 'ESTABLISHED' && b?.state === 'ESTABLISHED'), 'both ESTABLISHED');
  const rep = evA.find((e) => e.type === 'REP_RECEIVED');
  t.equal(rep && Buffer.from(rep.privateData.subarray(0, 3)).toString(), 'rep');
  a.sendDreq();
  t.ok(await waitFor(() => b?.state === 'DREQ_RCVD'), 'DREQ arrived');
  b!.sendDrep();
  t.ok(await waitFor(() => a.state === 'TIMEWAIT'), 'DREP arrived');
  t.same(
    evB.map((e) => e.type),
    ['REQ_RECEIVED', 'RTU_RECEIVED', 'DREQ_RECEIVED'],
  );
  t.equal(aa.counters['sent_REQ'], 1, 'no retry needed');
  a.destroy();
  b!.destroy();
  l.destroy();
});
