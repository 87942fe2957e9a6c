/** The IB CM engine (src/cm/ib-cm.ts) over the in-memory network with a fake clock: handshakes, timers,
 *  duplicates, REJ reasons, disconnects, SIDR and what it drops. */
import t from 'tap';
import { CmAgent, CM_ETIMEDOUT, type IbCmEvent, type IbCmId, type CmRepParams } from '../../src/cm/ib-cm.js';
import { CmRejReason, kernelMadRetryTimeoutMs, kernelCmTimeoutMs, kernelMraTimeoutMs, cmAckTimeout } from '../../src/cm/cm-defs.js';
import { kernelCmTid, makeCmMsg, cmMadHeader, emitCmMad, MAD_SIZE, type CmMsgOf } from '../../src/cm/mad.js';
import { ipv4ToGid } from '../../src/roce/gid.js';
import { cmNet, pathTo, recorder, RawQp1, type CmNet } from './ib-cm-helpers.js';

const SID = 0x0000000001061d2fn;
const REQ_PERIOD = kernelMadRetryTimeoutMs(18, 20); // 6144 ms: the lab kernel's REQ retry
const REP_PERIOD = kernelCmTimeoutMs(20); // 4096 ms: conv(the REQ's local CM response timeout)
const TIMEWAIT = kernelCmTimeoutMs(cmAckTimeout(15, 18)); // 2048 ms: conv(19)

function reqParams(n: CmNet, o: { privateData?: Uint8Array; qpn?: number } = {}) {
  return {
    serviceId: SID,
    path: pathTo(n.devs[0]!, '10.0.0.2'),
    qpn: o.qpn ?? 0x11,
    qpType: 'RC' as const,
    startingPsn: 0x123456,
    responderResources: 4,
    initiatorDepth: 2,
    retryCount: 7,
    rnrRetryCount: 6,
    srq: false,
    ...(o.privateData ? { privateData: o.privateData } : {}),
  };
}
const repParams: CmRepParams = { qpn: 0x22, startingPsn: 0x654321, responderResources: 2, initiatorDepth: 4, rnrRetryCount: 7, srq: false };

/** a listener on b that remembers the new ids and answers as `answer` says */
function listenOn(n: CmNet, answer: (id: IbCmId, ev: IbCmEvent) => void = () => {}) {
  const r = recorder();
  const ids: IbCmId[] = [];
  const l = n.agents[1]!.createId((e, id) => {
    r.h(e);
    if (e.type === 'REQ_RECEIVED' || e.type === 'SIDR_REQ_RECEIVED') ids.push(e.id);
    answer(e.type === 'REQ_RECEIVED' || e.type === 'SIDR_REQ_RECEIVED' ? e.id : id, e);
  });
  l.listen(SID);
  return { l, r, ids };
}

/** a connected pair (REQ, REP, RTU); the active side calls sendRtu on REP_RECEIVED as librdmacm does. */
async function connected(n: CmNet) {
  const p = listenOn(n, (id, e) => {
    if (e.type === 'REQ_RECEIVED') id.sendRep(repParams);
  });
  const ra = recorder();
  const a = n.agents[0]!.createId((e) => {
    ra.h(e);
    if (e.type === 'REP_RECEIVED') a.sendRtu();
  });
  a.sendReq(reqParams(n));
  n.flush();
  return {
    a,
    ra,
    get b(): IbCmId {
      return p.ids[0]!;
    },
    rb: p.r,
    l: p.l,
  };
}

t.test('REQ / REP / RTU, then DREQ / DREP and TimeWait on both sides', async (t) => {
  const n = await cmNet();
  const pd = Buffer.from('hello from a');
  const p = listenOn(n);
  const ra = recorder();
  const a = n.agents[0]!.createId(ra.h);
  t.equal(a.state, 'IDLE');
  a.sendReq(reqParams(n, { privateData: pd }));
  t.equal(a.state, 'REQ_SENT');
  t.not(a.localCommId, 0, 'a random non-zero comm ID');
  n.flush();
  t.same(p.r.types(), ['REQ_RECEIVED']);
  const ev = p.r.events[0] as Extract<IbCmEvent, { type: 'REQ_RECEIVED' }>;
  const b = ev.id;
  t.equal(ev.listenId, p.l);
  t.equal(b.state, 'REQ_RCVD');
  t.equal(b.remoteCommId, a.localCommId);
  t.same(Buffer.from(ev.privateData.subarray(0, pd.length)), pd);
  t.equal(ev.privateData.length, 92, 'the REQ private-data field');
  t.same(
    [ev.param.responderResources, ev.param.initiatorDepth, ev.param.remoteQpn, ev.param.startingPsn, ev.param.retryCount, ev.param.rnrRetryCount],
    [2, 4, 0x11, 0x123456, 7, 6],
    "the receiver's view: responder resources and initiator depth swapped",
  );
  t.same([ev.req.responderResources, ev.req.initiatorDepth], [4, 2], 'the REQ as sent');
  t.same(ev.path.sgid, ipv4ToGid('10.0.0.2'), "the passive path's source is its own GID");
  t.same(ev.path.dgid, ipv4ToGid('10.0.0.1'));
  t.same([ev.path.packetLifeTime, ev.path.mtu, ev.path.hopLimit, ev.path.pkey], [18, 3, 64, 0xffff]);

  const [req] = n.sent('REQ');
  t.equal(req!.msg.hdr.transactionId, kernelCmTid(n.agents[0]!.hiTid, a.localCommId), 'REQ TID = hi_tid | bswap(comm ID)');
  const r = req!.msg as CmMsgOf<'REQ'>;
  t.same(
    [
      r.primaryLocalLid,
      r.primaryRemoteLid,
      r.primarySubnetLocal,
      r.primaryLocalAckTimeout,
      r.remoteCmResponseTimeout,
      r.localCmResponseTimeout,
      r.maxCmRetries,
    ],
    [0xffff, 0xffff, 0, 19, 20, 20, 15],
    'REQ fields as rdma_cm fills them on RoCE',
  );
  t.equal(r.localCaGuid, n.devs[0]!.attr.nodeGuid);

  b.sendRep(repParams);
  t.equal(b.state, 'REP_SENT');
  n.flush();
  t.same(ra.types(), ['REP_RECEIVED']);
  const rep = ra.events[0] as Extract<IbCmEvent, { type: 'REP_RECEIVED' }>;
  t.equal(a.state, 'REP_RCVD');
  t.equal(a.remoteCommId, b.localCommId);
  t.same([rep.param.remoteQpn, rep.param.responderResources, rep.param.initiatorDepth, rep.param.rnrRetryCount], [0x22, 4, 2, 7], 'REP swapped too');
  t.equal(n.sent('REP')[0]!.msg.hdr.transactionId, req!.msg.hdr.transactionId, "REP reuses the REQ's TID");
  a.sendRtu(Buffer.from('rtu'));
  t.equal(a.state, 'ESTABLISHED');
  n.flush();
  t.equal(b.state, 'ESTABLISHED');
  t.same(p.r.types(), ['REQ_RECEIVED', 'RTU_RECEIVED']);
  t.equal(n.sent('RTU')[0]!.msg.hdr.transactionId, req!.msg.hdr.transactionId, "RTU reuses the REQ's TID");

  // b disconnects: its DREQ carries a TID from its own comm ID, the DREP the DREQ's.
  b.sendDreq(Buffer.from('bye'));
  t.equal(b.state, 'DREQ_SENT');
  n.flush();
  t.equal(a.state, 'DREQ_RCVD');
  t.same(ra.types(), ['REP_RECEIVED', 'DREQ_RECEIVED']);
  const dreq = n.sent('DREQ')[0]!.msg as CmMsgOf<'DREQ'>;
  t.equal(dreq.hdr.transactionId, kernelCmTid(n.agents[1]!.hiTid, b.localCommId), 'DREQ: a TID of the sender');
  t.equal(dreq.remoteQpn, 0x11, "DREQ carries the peer's QPN");
  a.sendDrep();
  t.equal(a.state, 'TIMEWAIT');
  n.flush();
  t.equal(b.state, 'TIMEWAIT');
  t.equal(n.sent('DREP')[0]!.msg.hdr.transactionId, dreq.hdr.transactionId, "DREP reuses the DREQ's TID");
  t.same(p.r.types(), ['REQ_RECEIVED', 'RTU_RECEIVED', 'DREP_RECEIVED']);
  n.sched.advance(TIMEWAIT - 1);
  t.equal(a.state, 'TIMEWAIT', 'TimeWait lasts conv(AV timeout 19) = 2048 ms');
  n.sched.advance(1);
  t.same([a.state, b.state], ['IDLE', 'IDLE']);
  t.same(ra.types().slice(-1), ['TIMEWAIT_EXIT']);
  t.same(p.r.types().slice(-1), ['TIMEWAIT_EXIT']);
  t.equal(n.sent('DREQ', true).length, 1, 'no DREQ retry after the DREP');
  t.same([n.agents[0]!.counters['sent_REQ'], n.agents[0]!.counters['rcvd_REP'], n.agents[1]!.counters['sent_REP']], [1, 1, 1]);
  await n.close();
});

t.test('no listener: REJ 8 (invalid service ID), the active id back to IDLE at once', async (t) => {
  const n = await cmNet();
  const ra = recorder();
  const a = n.agents[0]!.createId(ra.h);
  a.sendReq(reqParams(n));
  n.flush();
  t.same(ra.types(), ['REJ_RECEIVED']);
  const e = ra.events[0] as Extract<IbCmEvent, { type: 'REJ_RECEIVED' }>;
  t.equal(e.reason, CmRejReason.INVALID_SERVICE_ID);
  t.equal(a.state, 'IDLE');
  const rej = n.sent('REJ')[0]!.msg as CmMsgOf<'REJ'>;
  t.same([rej.localCommId, rej.remoteCommId, rej.messageRejected], [0, a.localCommId, 0], 'cm_issue_rej: answers the REQ');
  t.equal(rej.hdr.transactionId, n.sent('REQ')[0]!.msg.hdr.transactionId);
  t.equal(n.sched.now(), 0, 'in no time (not after a retry)');
  await n.close();
});

t.test('consumer REJ 28 with private data of its real length', async (t) => {
  const n = await cmNet();
  const p = listenOn(n, (id, e) => {
    if (e.type === 'REQ_RECEIVED') id.sendRej(CmRejReason.CONSUMER_DEFINED, { privateData: Uint8Array.of(1, 2, 3, 4, 5) });
  });
  const ra = recorder();
  const a = n.agents[0]!.createId(ra.h);
  a.sendReq(reqParams(n));
  n.flush();
  const e = ra.events[0] as Extract<IbCmEvent, { type: 'REJ_RECEIVED' }>;
  t.equal(e.type, 'REJ_RECEIVED');
  t.equal(e.reason, 28);
  t.same(Array.from(e.privateData.subarray(0, 5)), [1, 2, 3, 4, 5]);
  t.ok(
    e.privateData.subarray(5).every((x) => x === 0),
    'zero after the 5 bytes given',
  );
  const rej = n.sent('REJ')[0]!.msg as CmMsgOf<'REJ'>;
  t.same([rej.localCommId, rej.messageRejected], [0, 0], 'cm_format_rej in REQ_RCVD: Local Comm ID 0, REQ rejected');
  t.same([a.state, p.ids[0]!.state], ['IDLE', 'IDLE']);
  t.throws(() => p.ids[0]!.sendRej(28, { privateData: new Uint8Array(149) }), { code: 'EINVAL' });
  await n.close();
});

t.test('REQ retried every 6144 ms (packet life 18), REQ_ERROR -ETIMEDOUT after 16 sends', async (t) => {
  const n = await cmNet();
  n.drop = () => true;
  const ra = recorder();
  const a = n.agents[0]!.createId(ra.h);
  a.sendReq(reqParams(n));
  t.equal(a.retryTimeoutMs, 6144);
  n.sched.advance(16 * REQ_PERIOD - 1);
  const times = n.sent('REQ', true).map((w) => w.at);
  t.same(
    times,
    Array.from({ length: 16 }, (_, i) => i * REQ_PERIOD),
    'sent at 0, 6144, ..., 15 x 6144',
  );
  t.same(ra.types(), [], 'still waiting for the last one');
  n.sched.advance(1);
  t.same(ra.events, [{ type: 'REQ_ERROR', status: CM_ETIMEDOUT }]);
  t.equal(a.state, 'IDLE');
  t.equal(n.agents[0]!.counters['retry_REQ'], 15);
  t.equal(n.agents[0]!.counters['timeout_REQ'], 1);
  n.sched.advance(10 * REQ_PERIOD);
  t.equal(n.sent('REQ', true).length, 16, 'nothing after');
  await n.close();
});

t.test('REP retried every 4096 ms x 15 when no RTU comes, then REP_ERROR', async (t) => {
  const n = await cmNet();
  const p = listenOn(n, (id, e) => {
    if (e.type === 'REQ_RECEIVED') id.sendRep(repParams);
  });
  const ra = recorder();
  const a = n.agents[0]!.createId(ra.h); // never sends the RTU
  a.sendReq(reqParams(n));
  n.flush();
  const b = p.ids[0]!;
  t.equal(b.state, 'REP_SENT');
  n.sched.advance(16 * REP_PERIOD - 1);
  t.same(
    n.sent('REP').map((w) => w.at),
    Array.from({ length: 16 }, (_, i) => i * REP_PERIOD),
  );
  t.equal(a.state, 'REP_RCVD');
  t.ok(n.agents[0]!.counters['drop_dup_REP']! >= 15, 'the duplicate REPs are dropped while the consumer has not sent the RTU');
  n.sched.advance(1);
  t.same(p.r.events.slice(-1), [{ type: 'REP_ERROR', status: CM_ETIMEDOUT }]);
  t.equal(b.state, 'IDLE');
  await n.close();
});

t.test('a dropped REQ, REP or RTU is recovered', async (t) => {
  for (const lost of ['REQ', 'REP', 'RTU']) {
    const n = await cmNet();
    let dropped = 0;
    n.drop = (m) => m.msg.type === lost && dropped++ === 0;
    const c = await connected(n);
    n.sched.advance(REQ_PERIOD + 1);
    t.same([c.a.state, c.b.state], ['ESTABLISHED', 'ESTABLISHED'], `lost ${lost}`);
    t.same(c.rb.types(), ['REQ_RECEIVED', 'RTU_RECEIVED'], `lost ${lost}: one REQ_RECEIVED, one RTU_RECEIVED`);
    t.same(c.ra.types(), ['REP_RECEIVED'], `lost ${lost}: one REP_RECEIVED`);
    if (lost === 'RTU') t.equal(n.agents[0]!.counters['dup_REP'], 1, 'the REP again brings the RTU again');
    n.sched.advance(20 * REQ_PERIOD);
    t.equal(c.a.state, 'ESTABLISHED', 'nothing more');
    await n.close();
  }
});

t.test('duplicate REQ: dropped in REQ_RCVD, MRA (24) after a delayed MRA, the REP again after a REP', async (t) => {
  const n = await cmNet();
  const p = listenOn(n);
  const ra = recorder();
  const a = n.agents[0]!.createId(ra.h);
  a.sendReq(reqParams(n));
  n.flush();
  const b = p.ids[0]!;
  const req = n.sent('REQ')[0]!;
  n.replay(req);
  t.same(p.r.types(), ['REQ_RECEIVED'], 'one event');
  t.equal(n.agents[1]!.counters['drop_dup_REQ'], 1, 'dropped while the consumer has it');
  t.same(
    n.wire.map((w) => w.msg.type),
    ['REQ', 'REQ'],
    'nothing sent',
  );

  b.sendMra(24, { delay: true });
  t.equal(b.state, 'MRA_REQ_SENT');
  n.flush();
  t.equal(n.sent('MRA').length, 0, 'a delayed MRA is not sent');
  n.replay(req);
  n.flush();
  const mra = n.sent('MRA');
  t.equal(mra.length, 1, 'the duplicate REQ gets the MRA');
  t.same([(mra[0]!.msg as CmMsgOf<'MRA'>).serviceTimeout, (mra[0]!.msg as CmMsgOf<'MRA'>).messageMraed], [24, 0]);
  t.same(ra.events, [{ type: 'MRA_RECEIVED', serviceTimeout: 24 }]);
  t.equal(a.state, 'MRA_REQ_RCVD');
  t.equal(a.retryTimeoutMs, kernelMraTimeoutMs(24, 19), 'the retry wait becomes conv(24) + conv(19) = 67584 ms');

  b.sendRep(repParams);
  n.flush();
  t.equal(a.state, 'REP_RCVD');
  n.replay(req);
  n.flush();
  t.equal(n.sent('REP').length, 2, 'the REP again');
  await n.close();
});

t.test('MRA extends the REQ timer: the next REQ after conv(service timeout) + conv(AV timeout)', async (t) => {
  const n = await cmNet();
  listenOn(n, (id, e) => {
    if (e.type === 'REQ_RECEIVED') id.sendMra(10); // 4 ms + conv(19) 2048 = 2052 ms
  });
  const a = n.agents[0]!.createId(() => {});
  a.sendReq(reqParams(n));
  n.flush();
  t.equal(a.state, 'MRA_REQ_RCVD');
  n.sched.advance(2051);
  t.equal(n.sent('REQ').length, 1);
  n.sched.advance(1);
  t.equal(n.sent('REQ').length, 2, 'the REQ again at 2052 ms, not 6144');
  t.equal(n.agents[1]!.counters['dup_REQ'], 1);
  await n.close();
});

t.test('a REQ matching a connection in TimeWait gets REJ 10 (stale connection)', async (t) => {
  const n = await cmNet();
  const c = await connected(n);
  c.a.sendDreq();
  n.flush();
  c.b.sendDrep();
  n.flush();
  t.same([c.a.state, c.b.state], ['TIMEWAIT', 'TIMEWAIT']);
  n.replay(n.sent('REQ')[0]!);
  n.flush();
  const rej = n.sent('REJ');
  t.equal(rej.length, 1);
  t.equal((rej[0]!.msg as CmMsgOf<'REJ'>).reason, CmRejReason.STALE_CONN);
  t.equal(rej[0]!.src, '10.0.0.2');
  t.same(c.rb.types(), ['REQ_RECEIVED', 'RTU_RECEIVED', 'DREQ_RECEIVED'], 'no new REQ_RECEIVED');
  n.sched.advance(TIMEWAIT);
  n.replay(n.sent('REQ')[0]!);
  n.flush();
  t.equal(c.rb.types().filter((x) => x === 'REQ_RECEIVED').length, 2, 'after TimeWait the same REQ is a new connection');
  await n.close();
});

t.test('a REJ 10 received sends the active id to TimeWait (cm_rej_handler)', async (t) => {
  const n = await cmNet();
  listenOn(n, (id, e) => {
    if (e.type === 'REQ_RECEIVED') id.sendRej(CmRejReason.STALE_CONN);
  });
  const ra = recorder();
  const a = n.agents[0]!.createId(ra.h);
  a.sendReq(reqParams(n));
  n.flush();
  t.equal(a.state, 'TIMEWAIT');
  n.sched.advance(TIMEWAIT);
  t.same(ra.types(), ['REJ_RECEIVED', 'TIMEWAIT_EXIT']);
  await n.close();
});

t.test('DREQ: unmatched gets a DREP anyway; a wrong remote QPN is ignored; a lost DREP is answered again', async (t) => {
  const n = await cmNet();
  const c = await connected(n);
  const raw = await RawQp1.open(n, '10.0.0.3');
  const dreq = (local: number, remote: number, qpn: number) =>
    emitCmMad(makeCmMsg('DREQ', { hdr: cmMadHeader('DREQ', 0x1234n), localCommId: local, remoteCommId: remote, remoteQpn: qpn }));
  raw.send(dreq(0xabc, 0xdef, 5), '10.0.0.2');
  n.flush();
  const got = raw.received();
  t.equal(got.length, 1);
  const drep = got[0] as CmMsgOf<'DREP'>;
  t.same([drep.type, drep.localCommId, drep.remoteCommId, drep.hdr.transactionId], ['DREP', 0xdef, 0xabc, 0x1234n], 'DREP from the GRH');
  t.equal(n.agents[1]!.counters['drep_unmatched_dreq'], 1);

  raw.send(dreq(c.a.localCommId, c.b.localCommId, 0x99), '10.0.0.2');
  n.flush();
  t.equal(c.b.state, 'ESTABLISHED', 'a DREQ not naming our QPN is dropped');
  t.equal(n.agents[1]!.counters['drop_dreq_qpn'], 1);
  t.same(raw.received(), [], 'and not answered');

  n.drop = (m) => m.msg.type === 'DREP';
  c.a.sendDreq();
  n.flush();
  c.b.sendDrep();
  n.flush();
  t.equal(c.a.state, 'DREQ_SENT', 'the DREP was lost');
  n.drop = null;
  // The DREQ again while b is in TimeWait (2048 ms; a's own retry would come at 6144, after it: then the
  // IDLE id drops it as cm_dreq_handler does, and a ends with DREQ_ERROR).
  n.replay(n.sent('DREQ', true).filter((w) => w.src === '10.0.0.1')[0]!);
  n.flush();
  t.equal(n.agents[1]!.counters['dup_DREQ'], 1, 'in TimeWait');
  t.equal(c.a.state, 'TIMEWAIT', 'answered by a DREP again');
  t.equal(n.sent('DREP').filter((w) => w.dst === '10.0.0.1').length, 1, 'one DREP delivered to a');
  await n.close();
});

t.test('DREQ unanswered: retried, then DREQ_ERROR and TimeWait', async (t) => {
  const n = await cmNet();
  const c = await connected(n);
  n.drop = (m) => m.msg.type === 'DREQ';
  c.a.sendDreq();
  n.sched.advance(16 * REQ_PERIOD);
  t.equal(n.sent('DREQ', true).length, 16);
  t.same(c.ra.events.slice(-1), [{ type: 'DREQ_ERROR', status: CM_ETIMEDOUT }]);
  t.equal(c.a.state, 'TIMEWAIT');
  n.sched.advance(TIMEWAIT);
  t.same(c.ra.types().slice(-1), ['TIMEWAIT_EXIT']);
  await n.close();
});

t.test('simultaneous DREQs (ib_write_bw_rdma_cm.pcap frames 121-122): both end in TimeWait', async (t) => {
  const n = await cmNet();
  const c = await connected(n);
  c.a.sendDreq();
  c.b.sendDreq();
  n.flush();
  t.same([c.a.state, c.b.state], ['DREQ_RCVD', 'DREQ_RCVD'], 'a DREQ in DREQ_SENT is taken (its retry cancelled)');
  t.same([c.ra.types().slice(-1), c.rb.types().slice(-1)], [['DREQ_RECEIVED'], ['DREQ_RECEIVED']]);
  c.a.destroy(); // ib_destroy_cm_id in DREQ_RCVD sends the DREP
  c.b.sendDrep();
  n.flush();
  t.equal(c.b.state, 'TIMEWAIT');
  t.equal(n.sent('DREP').length, 2);
  n.sched.advance(20 * REQ_PERIOD);
  t.equal(n.sent('DREQ', true).length, 2, 'no DREQ retries');
  t.equal(c.b.state, 'IDLE');
  t.equal(n.agents[0]!.ids.size, 0, 'the destroyed id is gone after its TimeWait');
  await n.close();
});

t.test("establish(): the passive QP's first packet stands in for a lost RTU (ib_cm_notify COMM_EST)", async (t) => {
  const n = await cmNet();
  n.drop = (m) => m.msg.type === 'RTU';
  const c = await connected(n);
  t.equal(c.b.state, 'REP_SENT');
  t.equal(c.b.establish(), true);
  t.equal(c.b.state, 'ESTABLISHED');
  t.equal(c.b.establish(), false, 'again: nothing to do');
  n.flush();
  t.same(c.rb.types(), ['REQ_RECEIVED', 'USER_ESTABLISHED']);
  n.sched.advance(5 * REP_PERIOD);
  t.equal(n.sent('REP', true).length, 1, 'the REP retries stopped');
  const idle = n.agents[0]!.createId(() => {});
  t.throws(() => idle.establish(), { code: 'EINVAL', argument: 'state' });
  await n.close();
});

t.test('sends in a wrong state throw EINVAL naming the state and send nothing; listen twice is EADDRINUSE', async (t) => {
  const n = await cmNet();
  const id = n.agents[0]!.createId(() => {});
  const before = n.wire.length;
  t.throws(() => id.sendRep(repParams), { code: 'EINVAL', op: 'ib_send_cm_rep', argument: 'state' });
  t.throws(() => id.sendRtu(), { code: 'EINVAL', op: 'ib_send_cm_rtu', argument: 'state' });
  t.throws(() => id.sendRej(28), { code: 'EINVAL', op: 'ib_send_cm_rej', argument: 'state' });
  t.throws(() => id.sendDreq(), { code: 'EINVAL', op: 'ib_send_cm_dreq', argument: 'state' });
  t.throws(() => id.sendDrep(), { code: 'EINVAL', op: 'ib_send_cm_drep', argument: 'state' });
  t.throws(() => id.sendMra(), { code: 'EINVAL', op: 'ib_send_cm_mra', argument: 'state' });
  t.throws(() => id.sendSidrRep({ status: 0, qpn: 1, qkey: 1 }), { code: 'EINVAL', op: 'ib_send_cm_sidr_rep', argument: 'state' });
  t.throws(() => id.sendReq({ ...reqParams(n), privateData: new Uint8Array(93) }), { code: 'EINVAL', argument: 'privateData' });
  t.equal(id.state, 'IDLE', 'a refused REQ leaves the id IDLE');
  id.sendReq(reqParams(n));
  t.throws(() => id.sendReq(reqParams(n)), { code: 'EINVAL', op: 'ib_send_cm_req', argument: 'state' });
  n.sched.run();
  t.same(
    n.wire.slice(before).map((w) => w.msg.type),
    ['REQ', 'REJ'],
    'only the one REQ (no listener: REJ 8)',
  );
  const l1 = n.agents[1]!.createId(() => {});
  l1.listen(7n);
  t.throws(() => n.agents[1]!.createId(() => {}).listen(7n), { code: 'EADDRINUSE', argument: 'serviceId' });
  t.doesNotThrow(() => n.agents[0]!.createId(() => {}).listen(7n), 'another agent: its own table');
  l1.destroy();
  t.doesNotThrow(() => n.agents[1]!.createId(() => {}).listen(7n), 'free again once destroyed');
  await n.close();
});

t.test('SIDR: a listener answers with its QPN and Q_Key; no listener gives status 1; no answer gives SIDR_REQ_ERROR', async (t) => {
  const n = await cmNet();
  const udSid = 0x0000000001111c06n;
  const rb = recorder();
  const l = n.agents[1]!.createId((e) => {
    rb.h(e);
    if (e.type === 'SIDR_REQ_RECEIVED') e.id.sendSidrRep({ status: 0, qpn: 0x18, qkey: 0x01234567, privateData: Uint8Array.of(9) });
  });
  l.listen(udSid);
  const ra = recorder();
  const a = n.agents[0]!.createId(ra.h);
  a.sendSidrReq({ serviceId: udSid, path: pathTo(n.devs[0]!, '10.0.0.2'), privateData: Uint8Array.of(7, 7) });
  t.equal(a.state, 'SIDR_REQ_SENT');
  n.flush();
  t.same(rb.types(), ['SIDR_REQ_RECEIVED']);
  const req = rb.events[0] as Extract<IbCmEvent, { type: 'SIDR_REQ_RECEIVED' }>;
  t.same([req.sidrReq.serviceId, req.privateData[0], req.privateData[1]], [udSid, 7, 7]);
  t.same(req.path.dgid, ipv4ToGid('10.0.0.1'));
  t.equal(req.id.state, 'IDLE', 'answered');
  const e = ra.events[0] as Extract<IbCmEvent, { type: 'SIDR_REP_RECEIVED' }>;
  t.same([e.type, e.status, e.qpn, e.qkey, e.privateData[0]], ['SIDR_REP_RECEIVED', 0, 0x18, 0x01234567, 9]);
  t.equal(a.state, 'IDLE');
  const rep = n.sent('SIDR_REP')[0]!.msg as CmMsgOf<'SIDR_REP'>;
  t.same([rep.requestId, rep.serviceId, rep.hdr.transactionId], [a.localCommId, udSid, n.sent('SIDR_REQ')[0]!.msg.hdr.transactionId]);

  const a2 = n.agents[0]!.createId(ra.h);
  a2.sendSidrReq({ serviceId: udSid + 1n, path: pathTo(n.devs[0]!, '10.0.0.2') });
  n.flush();
  t.same(ra.events[1], { type: 'SIDR_REP_RECEIVED', status: 1, qpn: 0, qkey: 0, privateData: new Uint8Array(136) }, 'status 1: SID not supported');

  n.drop = () => true;
  const a3 = n.agents[0]!.createId(ra.h);
  a3.sendSidrReq({ serviceId: udSid, path: pathTo(n.devs[0]!, '10.0.0.2') });
  n.sched.advance(16 * 4096);
  t.same(
    n
      .sent('SIDR_REQ', true)
      .slice(2)
      .map((w) => w.at - n.sent('SIDR_REQ', true)[2]!.at),
    Array.from({ length: 16 }, (_, i) => i * 4096),
    'every 4096 ms, 16 sends',
  );
  t.same(ra.events[2], { type: 'SIDR_REQ_ERROR', status: CM_ETIMEDOUT });
  t.equal(a3.state, 'IDLE');
  await n.close();
});

t.test('malformed and unwanted MADs are dropped and counted, never thrown', async (t) => {
  const n = await cmNet();
  const raw = await RawQp1.open(n, '10.0.0.3');
  const good = () => emitCmMad(makeCmMsg('RTU', { hdr: cmMadHeader('RTU', 1n), localCommId: 1, remoteCommId: 2 }));
  const cases: Array<[string, Buffer]> = [];
  cases.push(['drop_short', good().subarray(0, 100)]);
  let b = good();
  b[1] = 0x04;
  cases.push(['drop_mgmt-class', b]);
  b = good();
  b[2] = 1;
  cases.push(['drop_class-version', b]);
  b = good();
  b[0] = 2;
  cases.push(['drop_base-version', b]);
  b = good();
  b.writeUInt16BE(0x0001, 16);
  b[3] = 0x01;
  cases.push(['drop_unknown-attribute', b]); // ClassPortInfo Get: dropped, not answered
  b = good();
  b.writeUInt16BE(0x0050, 16);
  cases.push(['drop_unknown-attribute', b]);
  cases.push(['drop_LAP', emitCmMad(makeCmMsg('LAP', { hdr: cmMadHeader('LAP', 1n) }))]);
  cases.push(['drop_APR', emitCmMad(makeCmMsg('APR', { hdr: cmMadHeader('APR', 1n) }))]);
  b = emitCmMad(makeCmMsg('REQ', { hdr: cmMadHeader('REQ', 1n), serviceId: SID, primaryRemoteGid: ipv4ToGid('10.0.0.2') }));
  b[3] = 0x01;
  cases.push(['drop_method', b]);
  cases.push(['drop_no_id_RTU', good()]);
  cases.push(['drop_req_gid', emitCmMad(makeCmMsg('REQ', { hdr: cmMadHeader('REQ', 1n), serviceId: SID, primaryRemoteGid: ipv4ToGid('10.9.9.9') }))]);
  cases.push(['drop_no_id_REJ', emitCmMad(makeCmMsg('REJ', { hdr: cmMadHeader('REJ', 1n), remoteCommId: 77, messageRejected: 0, reason: 8 }))]);
  const random = Buffer.alloc(MAD_SIZE);
  for (let i = 0; i < MAD_SIZE; i++) random[i] = (i * 131 + 7) & 0xff;
  cases.push(['drop_base-version', random]);
  const want: Record<string, number> = {};
  for (const [name, mad] of cases) {
    raw.send(mad, '10.0.0.2');
    want[name] = (want[name] ?? 0) + 1;
    n.flush();
  }
  const c = n.agents[1]!.counters;
  for (const [name, k] of Object.entries(want)) t.equal(c[name], k, name);
  t.same(raw.received(), [], 'nothing answered');
  // still working
  const r = await connected(n);
  t.equal(r.a.state, 'ESTABLISHED');
  await n.close();
});

t.test('two ids on one agent and two agents (three devices) at once', async (t) => {
  const n = await cmNet(['10.0.0.1', '10.0.0.2', '10.0.0.3']);
  const rb = recorder();
  const l = n.agents[1]!.createId((e) => {
    rb.h(e);
    if (e.type === 'REQ_RECEIVED') e.id.sendRep({ ...repParams, qpn: e.req.localQpn + 0x100 });
  });
  l.listen(SID);
  const actives: IbCmId[] = [];
  const mk = (agent: CmAgent, dev: number, qpn: number) => {
    const id: IbCmId = agent.createId((e) => {
      if (e.type === 'REP_RECEIVED') id.sendRtu();
    });
    id.sendReq({ ...reqParams(n, { qpn }), path: pathTo(n.devs[dev]!, '10.0.0.2') });
    actives.push(id);
  };
  mk(n.agents[0]!, 0, 0x30);
  mk(n.agents[0]!, 0, 0x31);
  mk(n.agents[2]!, 2, 0x32);
  n.flush();
  t.same(
    actives.map((a) => a.state),
    ['ESTABLISHED', 'ESTABLISHED', 'ESTABLISHED'],
  );
  t.equal(rb.types().filter((x) => x === 'REQ_RECEIVED').length, 3);
  const passive = (rb.events.filter((e) => e.type === 'REQ_RECEIVED') as Array<Extract<IbCmEvent, { type: 'REQ_RECEIVED' }>>).map((e) => e.id);
  t.same(
    passive.map((p) => p.state),
    ['ESTABLISHED', 'ESTABLISHED', 'ESTABLISHED'],
  );
  t.equal(new Set(passive.map((p) => p.localCommId)).size, 3, 'distinct comm IDs');
  t.not(n.agents[0]!.hiTid, n.agents[2]!.hiTid, 'each agent its own hi_tid');
  actives[1]!.destroy(); // a connected id sends a DREQ
  n.flush();
  t.same(
    passive.map((p) => p.state),
    ['ESTABLISHED', 'DREQ_RCVD', 'ESTABLISHED'],
  );
  t.equal(actives[1]!.state, 'TIMEWAIT');
  await n.close();
});

t.test('release: the last reference destroys ids, timers and QP1', async (t) => {
  const n = await cmNet();
  const dev = n.devs[0]!;
  const again = CmAgent.acquire(dev, 1);
  t.equal(again, n.agents[0], 'one agent per (device, port)');
  t.ok(dev.gsiOn(1), 'QP1 open');
  n.drop = () => true;
  const timers0 = n.sched.pendingTimers();
  n.agents[0]!.createId(() => {}).sendReq(reqParams(n));
  t.equal(n.sched.pendingTimers(), timers0 + 1, 'the REQ timer');
  again.release();
  t.ok(dev.gsiOn(1), 'still referenced');
  n.agents[0]!.release();
  t.equal(dev.gsiOn(1), null, 'QP1 closed');
  t.equal(n.sched.pendingTimers(), timers0, 'timer gone');
  t.throws(() => n.agents[0]!.createId(() => {}), { code: 'ENODEV' });
  const fresh = CmAgent.acquire(dev, 1);
  t.not(fresh, n.agents[0], 'a new agent after the last release');
  n.agents[0] = fresh;
  t.throws(() => CmAgent.acquire(dev, 2), { code: 'EINVAL', argument: 'port' });
  await n.close();
});

t.test('a handler that throws does not break the engine', async (t) => {
  const n = await cmNet();
  const errs: unknown[] = [];
  const onErr = (e: unknown) => errs.push(e);
  process.on('uncaughtException', onErr);
  t.teardown(() => {
    process.off('uncaughtException', onErr);
  });
  listenOn(n, (id, e) => {
    if (e.type === 'REQ_RECEIVED') {
      id.sendRep(repParams);
      throw new Error('handler bug');
    }
  });
  const a = n.agents[0]!.createId((e) => {
    if (e.type === 'REP_RECEIVED') a.sendRtu();
  });
  a.sendReq(reqParams(n));
  n.flush();
  await new Promise((r) => setImmediate(r));
  t.equal(a.state, 'ESTABLISHED');
  t.equal(errs.length, 1);
  await n.close();
});

t.test('a REQ from a QP that is still connected here gets REJ 10 (stale, cm_insert_remote_qpn)', async (t) => {
  const n = await cmNet();
  const c = await connected(n);
  const ra = recorder();
  const a2 = n.agents[0]!.createId(ra.h);
  a2.sendReq(reqParams(n)); // the same local QPN 0x11 and CA GUID as the live connection
  n.flush();
  t.same(ra.types(), ['REJ_RECEIVED']);
  t.equal((ra.events[0] as Extract<IbCmEvent, { type: 'REJ_RECEIVED' }>).reason, CmRejReason.STALE_CONN);
  t.equal(a2.state, 'TIMEWAIT', 'a REJ 10 sends the requester to TimeWait');
  t.equal(c.rb.types().filter((x) => x === 'REQ_RECEIVED').length, 1, 'the listener never saw it');
  t.equal(c.b.state, 'ESTABLISHED');
  t.equal(n.agents[1]!.counters['rej_stale_qpn'], 1);
  await n.close();
});

t.test('destroy in REQ_SENT: REJ 4 (timeout) with our GUID as ARI reaches the passive id that has the REQ', async (t) => {
  const n = await cmNet();
  const p = listenOn(n);
  const a = n.agents[0]!.createId(() => {});
  a.sendReq(reqParams(n));
  n.flush();
  const b = p.ids[0]!;
  t.equal(b.state, 'REQ_RCVD');
  a.destroy();
  n.flush();
  const rej = n.sent('REJ')[0]!.msg as CmMsgOf<'REJ'>;
  t.same([rej.reason, rej.rejectInfoLength, rej.messageRejected, rej.remoteCommId], [CmRejReason.TIMEOUT, 8, 2, 0]);
  t.equal(Buffer.from(rej.ari.subarray(0, 8)).readBigUInt64BE(0), n.devs[0]!.attr.nodeGuid);
  const e = p.r.events.at(-1) as Extract<IbCmEvent, { type: 'REJ_RECEIVED' }>;
  t.same([e.type, e.reason, Buffer.from(e.ari).readBigUInt64BE(0)], ['REJ_RECEIVED', 4, n.devs[0]!.attr.nodeGuid]);
  t.equal(b.state, 'IDLE');
  t.equal(n.agents[0]!.ids.size, 0, 'the destroyed id is gone');
  t.throws(() => a.sendReq(reqParams(n)), { code: 'EINVAL', argument: 'id' });
  await n.close();
});

t.test('an id that went back to IDLE can connect again with a new comm ID', async (t) => {
  const n = await cmNet();
  const ra = recorder();
  const a = n.agents[0]!.createId((e) => {
    ra.h(e);
    if (e.type === 'REP_RECEIVED') a.sendRtu();
  });
  a.sendReq(reqParams(n)); // no listener yet: REJ 8
  n.flush();
  t.equal(a.state, 'IDLE');
  const first = a.localCommId;
  listenOn(n, (id, e) => {
    if (e.type === 'REQ_RECEIVED') id.sendRep(repParams);
  });
  a.sendReq(reqParams(n));
  n.flush();
  t.equal(a.state, 'ESTABLISHED');
  t.not(a.localCommId, first);
  t.notOk(n.agents[0]!.ids.has(first), 'the old comm ID released');
  await n.close();
});

t.test('300 connections opened, closed and destroyed leave no ids, table entries or timers behind', async (t) => {
  const n = await cmNet();
  const timers0 = n.sched.pendingTimers();
  const p = listenOn(n, (id, e) => {
    if (e.type === 'REQ_RECEIVED') id.sendRep(repParams);
    if (e.type === 'DREQ_RECEIVED') id.sendDrep();
    if (e.type === 'TIMEWAIT_EXIT') id.destroy();
  });
  for (let i = 0; i < 300; i++) {
    const a: IbCmId = n.agents[0]!.createId((e) => {
      if (e.type === 'REP_RECEIVED') a.sendRtu();
    });
    a.sendReq(reqParams(n, { qpn: 0x100 + i }));
    n.flush();
    if (a.state !== 'ESTABLISHED') return t.fail(`connection ${i}: ${a.state}`);
    a.destroy(); // DREQ, then TimeWait while destroyed
    n.flush();
  }
  n.sched.advance(TIMEWAIT + 1);
  for (const ag of n.agents) {
    t.same([ag.ids.size, ag.remoteIds.size, ag.remoteQpns.size, ag.remoteSidr.size], [0, 0, 0, 0]);
  }
  t.equal(n.agents[1]!.ids.size, 0);
  t.equal(n.sched.pendingTimers(), timers0, 'no timer left');
  t.equal(p.ids.length, 300);
  t.equal(n.agents[1]!.listeners.size, 1, 'the listener stays');
  await n.close();
});
