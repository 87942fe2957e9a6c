/**
 * rdma_cm connections (issue 13 items 1-2) on the in-memory network with a fake clock: createQp and the
 * CM-driven QP states, connect / listen / accept / reject / disconnect with private data and conn params,
 * REJ 8 with no listener, REQ retries ending in UNREACHABLE, a lost RTU recovered by the first receive,
 * DREQs crossing, UD over SIDR, promise helpers with timeouts and AbortSignal, and teardown that never blocks.
 */
import t from 'tap';
import { activeId, connNet, listenerId, type ConnNet } from './conn-helpers.js';
import type { CmEvent } from '../../src/cm/event-channel.js';
import type { CmId } from '../../src/cm/cm-id.js';
import { decodeCmaHdr, serviceId, RdmaPortSpace } from '../../src/cm/cma-hdr.js';
import { flowLabelFromPorts as roceFlowLabel } from '../../src/cm/cm-defs.js';
import { flowLabelToSourcePort } from '../../src/roce/flow.js';
import { Wc } from '../../src/verbs/types.js';

const PORT = 7471;

/** The handshake up to ESTABLISHED on both sides; returns both ids and the passive side's CONNECT_REQUEST. */
async function connected(
  n: ConnNet,
  o: { pdA?: Uint8Array; pdB?: Uint8Array } = {},
): Promise<{ a: CmId; b: CmId; l: CmId; req: CmEvent; estA: CmEvent; estB: CmEvent }> {
  const l = await listenerId(n, PORT);
  const a = await activeId(n, PORT);
  a.createQp(null, { cap: { maxSendWr: 8, maxRecvWr: 8 } });
  const pa = a.connect({ privateData: o.pdA ?? Buffer.from('hello'), responderResources: 4, initiatorDepth: 2 });
  n.flush();
  const [req] = n.events(n.chB);
  const b = req!.id;
  b.createQp(null, { cap: { maxSendWr: 8, maxRecvWr: 8 } });
  const pb = b.accept({ privateData: o.pdB ?? Buffer.from('welcome') });
  n.flush();
  const estA = await pa;
  const estB = (await pb)!;
  n.events(n.chA);
  n.events(n.chB);
  return { a, b, l, req: req!, estA, estB };
}

t.test('connect / accept: events, private data with its real length, swapped conn params, QPs in RTS with the handshake values', async (t) => {
  const n = await connNet();
  const { a, b, l, req, estA, estB } = await connected(n);
  t.equal(req.event, 'CONNECT_REQUEST');
  t.equal(req.listenId, l, 'the listener it came on');
  t.not(req.id, l, 'a new id for the request');
  t.equal(req.id.channel, n.chB);
  t.same(req.param?.privateData, Buffer.from('hello'), 'the private data after the cma_hdr, 5 bytes (not 56)');
  t.equal(req.param?.rawPrivateData?.length, 56, 'the whole field as librdmacm reports it');
  t.match(req.param?.conn, { responderResources: 2, initiatorDepth: 4, retryCount: 7, rnrRetryCount: 7, qpNum: a.qp!.qpn }, 'swapped for the receiving side');
  t.equal(req.id.route.addr.dst?.address, n.ipA);
  t.equal(req.id.route.addr.dst?.port, a.getSrcPort(), "the requester's rdma_cm port, from the cma_hdr");
  t.equal(req.id.getSrcPort(), PORT);
  t.equal(estA.event, 'ESTABLISHED');
  t.same(estA.param?.privateData, Buffer.from('welcome'));
  t.equal(estB.event, 'ESTABLISHED');
  t.equal(a.state, 'ESTABLISHED');
  t.equal(b.state, 'ESTABLISHED');
  const qa = a.qp!,
    qb = b.qp!;
  t.equal(qa.state, 'RTS');
  t.equal(qb.state, 'RTS');
  t.equal(qa.destQpn, qb.qpn);
  t.equal(qb.destQpn, qa.qpn);
  t.equal(qa.rqPsn, qb.sqPsn, "A receives from B's starting PSN");
  t.equal(qb.rqPsn, qa.sqPsn);
  // Linux's cm.c reads a message's Starting PSN as the PSN its sender will receive: the passive side sends
  // from the REQ's (cm_req_handler: sq_psn), the active side from the REP's (cm_rep_handler: sq_psn). Seen
  // in the lab: a real ucmatose server sends its first SEND with the REQ's PSN.
  const psnOf = (type: string): number => (n.wire.find((w) => w.msg.type === type)!.msg as unknown as { startingPsn: number }).startingPsn;
  t.equal(qb.sqPsn, psnOf('REQ'), "the passive QP sends from the REQ's starting PSN");
  t.equal(qa.rqPsn, psnOf('REQ'), 'and the active QP expects it');
  t.equal(qa.sqPsn, psnOf('REP'), "the active QP sends from the REP's starting PSN");
  t.equal(qb.rqPsn, psnOf('REP'), 'and the passive QP expects it');
  t.equal(qa.maxRdAtomic, 2, 'A may have 2 reads at B (its initiator depth, granted by B)');
  t.equal(qb.maxDestRdAtomic, 2);
  t.equal(qb.maxRdAtomic, 4, "B's initiator depth: A's responder resources");
  t.equal(qa.maxDestRdAtomic, 4);
  t.equal(qa.retryCnt, 7);
  t.equal(qa.rnrRetry, 7);
  t.equal(qa.timeout, 19, 'cm_ack_timeout(15, 18): the REQ/REP Local ACK Timeout');
  t.equal(qb.timeout, 19);
  t.equal(qa.pathMtu, Math.min(a.route.path!.mtu, n.a.queryPort(1).activeMtu), "the path's MTU, within the port's");
  t.equal(qb.pathMtu, qa.pathMtu);
  const fl = roceFlowLabel(a.getSrcPort(), PORT);
  t.equal(qa.av?.flowLabel, fl, 'the path flow label in the AV');
  t.equal(qa.srcPort, flowLabelToSourcePort(fl), 'and so the UDP source port');
  // The REQ on the wire: the service ID and the cma_hdr before the user's data.
  const reqMad = n.wire.find((w) => w.msg.type === 'REQ')!.msg;
  t.equal((reqMad as { serviceId: bigint }).serviceId, serviceId(RdmaPortSpace.TCP, PORT));
  const hdr = decodeCmaHdr((reqMad as { privateData: Uint8Array }).privateData);
  t.match(hdr, { ipVersion: 4, port: a.getSrcPort(), src: n.ipA, dst: n.ipB });
  t.same(n.types(), ['REQ', 'REP', 'RTU'], 'no MRA on the wire (rdma_cm delays it)');

  // Data both ways over the CM-made QPs.
  const pdA = a.qp!.pd,
    pdB = b.qp!.pd;
  const bufA = Buffer.from('ping'),
    bufB = Buffer.alloc(64);
  const ma = pdA.regMr(bufA, ['LOCAL_WRITE']);
  const mb = pdB.regMr(bufB, ['LOCAL_WRITE']);
  qb.postRecv({ wrId: 1, sg: [{ mr: mb, offset: 0, length: 64 }] });
  qa.postSend({ wrId: 2, opcode: 'SEND', signaled: true, sg: [{ mr: ma, offset: 0, length: 4 }] });
  n.sched.advance(10);
  const wc = [new Wc()];
  t.equal(qb.recvCq.poll(wc, 1), 1);
  t.match(wc[0], { status: 'SUCCESS', opcode: 'RECV', byteLen: 4 });
  t.equal(bufB.subarray(0, 4).toString(), 'ping');
  t.equal(qa.sendCq.poll(wc, 1), 1);
  t.match(wc[0], { status: 'SUCCESS', opcode: 'SEND' });
  ma.close();
  mb.close();

  // disconnect from A: DREQ, DREP; DISCONNECTED on both; the QPs in ERR; TIMEWAIT_EXIT later.
  const pd = a.disconnect();
  t.equal(qa.state, 'ERR', 'rdma_disconnect moves the QP to ERR at once');
  n.flush();
  const evB = n.events(n.chB).map((e) => e.event);
  t.same(evB, ['DISCONNECTED']);
  t.equal(qb.state, 'ERR');
  t.equal(b.state, 'DISCONNECT');
  const pdb = b.disconnect();
  n.flush();
  t.equal((await pdb).event, 'DISCONNECTED', "the passive side's disconnect() resolves with the DISCONNECTED it had");
  t.equal((await pd).event, 'DISCONNECTED');
  t.same(
    n.events(n.chA).map((e) => e.event),
    ['DISCONNECTED'],
  );
  t.same(n.types().slice(3), ['DREQ', 'DREP']);
  n.sched.advance(20_000);
  t.same(
    n.events(n.chA).map((e) => e.event),
    ['TIMEWAIT_EXIT'],
  );
  a.close();
  b.close();
  l.close();
  await n.close();
});

t.test('reject: REJ 28 with the private data; the active side gets REJECTED (status 28), its QP in ERR, the promise rejects ECONNREFUSED', async (t) => {
  const n = await connNet();
  const l = await listenerId(n, PORT);
  const a = await activeId(n, PORT);
  a.createQp();
  const p = a.connect({ privateData: Buffer.from('may I') });
  n.flush();
  const [req] = n.events(n.chB);
  t.throws(() => req!.id.reject(Buffer.alloc(149)), { code: 'EINVAL', op: 'rdma_reject', argument: 'privateData' });
  req!.id.reject(Buffer.from('no thanks'));
  n.flush();
  const err = await p.then(
    () => null,
    (e: unknown) => e as { code: string; event: CmEvent },
  );
  t.match(err, { code: 'ECONNREFUSED' });
  const [ev] = n.events(n.chA);
  t.equal(ev, err!.event, 'the error carries the event');
  t.match(ev, { event: 'REJECTED', status: 28 });
  t.same(ev!.param?.privateData, Buffer.from('no thanks'));
  t.equal(a.qp!.state, 'ERR');
  const rej = n.wire.find((w) => w.msg.type === 'REJ')!.msg as { reason: number };
  t.equal(rej.reason, 28);
  a.close();
  req!.id.close();
  l.close();
  await n.close();
});

t.test('no listener on the port: REJ 8 at once, REJECTED with status 8', async (t) => {
  const n = await connNet();
  // The CM runs on B (an id listens on another port there): its agent answers for the port nobody has.
  const l = await listenerId(n, PORT);
  const a = await activeId(n, 9999);
  a.createQp();
  const p = a.connect();
  n.flush();
  t.equal(n.sched.now(), 0, 'no time passed: the answer is immediate');
  await t.rejects(p, { code: 'ECONNREFUSED' });
  t.match(n.events(n.chA), [{ event: 'REJECTED', status: 8 }]);
  t.same(n.events(n.chB), [], 'the listener on the other port hears nothing');
  a.close();
  l.close();
  await n.close();
});

t.test('a malformed request (bad cma_hdr) is rejected with REJ 28 and reaches no listener', async (t) => {
  const n = await connNet();
  const l = await listenerId(n, PORT);
  const { CmAgent } = await import('../../src/cm/ib-cm.js');
  const { cmPathOf } = await import('../../src/cm/route.js');
  const a = await activeId(n, PORT);
  const agent = CmAgent.acquire(n.a, 1);
  const got: string[] = [];
  const ib = agent.createId((e) => got.push(e.type === 'REJ_RECEIVED' ? `REJ ${e.reason}` : e.type));
  const bad = Buffer.alloc(40, 0);
  bad[0] = 7; // cma_version 7
  ib.sendReq({
    serviceId: serviceId(RdmaPortSpace.TCP, PORT),
    path: cmPathOf(a.route.path!, 1),
    qpn: 0x1234,
    qpType: 'RC',
    startingPsn: 1,
    responderResources: 0,
    initiatorDepth: 0,
    retryCount: 7,
    rnrRetryCount: 7,
    srq: false,
    privateData: bad,
  });
  n.flush();
  t.same(got, ['REJ 28']);
  t.same(n.events(n.chB), [], 'no CONNECT_REQUEST');
  ib.destroy();
  agent.release();
  a.close();
  l.close();
  await n.close();
});

t.test("unreachable: the peer never answers; the REQ is retried as the kernel's (every 6144 ms, 15 retries) and UNREACHABLE -ETIMEDOUT ends it", async (t) => {
  const n = await connNet();
  const a = await activeId(n, PORT);
  a.createQp();
  n.blackhole = n.ipB;
  const p = a.connect();
  n.sched.advance(6144 * 16 - 1);
  t.same(n.events(n.chA), [], 'still trying');
  n.sched.advance(1);
  await t.rejects(p, { code: 'ETIMEDOUT' });
  t.match(n.events(n.chA), [{ event: 'UNREACHABLE', status: -110 }]);
  t.equal(n.wire.filter((w) => w.msg.type === 'REQ').length, 16);
  t.equal(a.qp!.state, 'ERR');
  a.close();
  await n.close();
});

t.test(
  'the active side vanishes after its REQ: the REP is retried (every 4096 ms, 16 sends) and the passive id ends in UNREACHABLE -ETIMEDOUT, its QP in ERR',
  async (t) => {
    const n = await connNet();
    const l = await listenerId(n, PORT);
    const a = await activeId(n, PORT);
    a.createQp();
    void a.connect().catch(() => undefined);
    n.flush();
    const b = n.events(n.chB).find((e) => e.event === 'CONNECT_REQUEST')!.id;
    b.createQp();
    n.blackhole = n.ipA; // A is gone: nothing of it reaches B any more (no RTU, no REJ)
    void b.accept().catch(() => undefined);
    n.sched.advance(4096 * 16 - 1);
    t.same(
      n.events(n.chB).map((e) => e.event),
      [],
      'still trying',
    );
    n.sched.advance(1);
    // cma_ib_handler: IB_CM_REP_ERROR is UNREACHABLE with -ETIMEDOUT for the passive id
    t.match(n.events(n.chB), [{ event: 'UNREACHABLE', status: -110 }]);
    t.equal(n.wire.filter((w) => w.msg.type === 'REP').length, 16, 'the REP and its 15 retries');
    t.equal(b.qp!.state, 'ERR');
    for (const id of [a, b, l]) id.close();
    await n.close();
  },
);

t.test('connect({ timeoutMs }) gives up sooner: UNREACHABLE, ETIMEDOUT, and the peer is told (REJ 4 "timeout")', async (t) => {
  const n = await connNet();
  const l = await listenerId(n, PORT);
  const a = await activeId(n, PORT);
  a.createQp();
  const p = a.connect(undefined, { timeoutMs: 500 });
  n.flush();
  const [req] = n.events(n.chB);
  t.equal(req?.event, 'CONNECT_REQUEST', 'the listener has it and does not answer');
  n.sched.advance(500);
  await t.rejects(p, { code: 'ETIMEDOUT', argument: 'timeoutMs', op: 'rdma_connect' });
  t.match(n.events(n.chA), [{ event: 'UNREACHABLE', status: -110 }]);
  n.flush();
  t.match(n.wire.at(-1)?.msg, { type: 'REJ', reason: 4 });
  t.match(n.events(n.chB), [{ event: 'REJECTED', status: 4 }], "the request's id hears of it");
  const ac = new AbortController();
  const a2 = await activeId(n, PORT);
  a2.createQp();
  const p2 = a2.connect(undefined, { signal: ac.signal });
  ac.abort(new Error('user'));
  await t.rejects(p2, { name: 'AbortError' });
  a.close();
  a2.close();
  req!.id.close();
  l.close();
  await n.close();
});

t.test("lost RTU: the passive QP's first receive establishes the connection (no REP retry needed)", async (t) => {
  const n = await connNet();
  n.drop = (m) => m.msg.type === 'RTU';
  const l = await listenerId(n, PORT);
  const a = await activeId(n, PORT);
  a.createQp();
  const pa = a.connect();
  n.flush();
  const [req] = n.events(n.chB);
  const b = req!.id;
  b.createQp();
  const pb = b.accept();
  n.flush();
  await pa;
  t.equal(a.state, 'ESTABLISHED');
  t.equal(b.state, 'CONNECT', 'the RTU was lost');
  n.sched.advance(1000);
  t.equal(b.state, 'CONNECT', 'nothing received yet');
  const mem = Buffer.alloc(8);
  const mb = b.qp!.pd.regMr(mem, ['LOCAL_WRITE']);
  const ma = a.qp!.pd.regMr(Buffer.from('x'), ['LOCAL_WRITE']);
  b.qp!.postRecv({ wrId: 1, sg: [{ mr: mb, offset: 0, length: 8 }] });
  a.qp!.postSend({ wrId: 1, opcode: 'SEND', sg: [{ mr: ma, offset: 0, length: 1 }] });
  n.sched.advance(100);
  t.equal(b.state, 'ESTABLISHED');
  t.equal((await pb)?.event, 'ESTABLISHED');
  t.equal(n.wire.filter((w) => w.msg.type === 'REP').length, 1, 'established before the REP was resent');
  n.sched.advance(20_000);
  t.equal(n.wire.filter((w) => w.msg.type === 'REP').length, 1, 'and the REP retries stopped');
  ma.close();
  mb.close();
  a.close();
  b.close();
  l.close();
  await n.close();
});

t.test('DREQs crossing: both sides disconnect at once; each gets DISCONNECTED once and both reach TimeWait', async (t) => {
  const n = await connNet();
  const { a, b, l } = await connected(n);
  const pa = a.disconnect();
  const pb = b.disconnect();
  n.flush();
  t.equal((await pa).event, 'DISCONNECTED');
  t.equal((await pb).event, 'DISCONNECTED');
  t.same(
    n.events(n.chA).map((e) => e.event),
    ['DISCONNECTED'],
  );
  t.same(
    n.events(n.chB).map((e) => e.event),
    ['DISCONNECTED'],
  );
  t.equal(n.wire.filter((w) => w.msg.type === 'DREQ').length, 2);
  n.sched.advance(20_000);
  t.same(
    n.events(n.chA).map((e) => e.event),
    ['TIMEWAIT_EXIT'],
  );
  t.same(
    n.events(n.chB).map((e) => e.event),
    ['TIMEWAIT_EXIT'],
  );
  a.close();
  b.close();
  l.close();
  await n.close();
});

t.test('close() on a connected id sends the DREQ; the peer gets DISCONNECTED and its QP goes to ERR', async (t) => {
  const n = await connNet();
  const { a, b, l } = await connected(n);
  a.close();
  t.equal(a.qp, null, 'the QP the id made went with it');
  n.flush();
  t.same(
    n.events(n.chB).map((e) => e.event),
    ['DISCONNECTED'],
  );
  t.equal(b.qp!.state, 'ERR');
  t.same(n.events(n.chA), [], 'no event for a closed id');
  b.close();
  n.flush();
  t.match(n.wire.at(-1)?.msg, { type: 'DREP' }, "b's close answers the DREQ");
  l.close();
  await n.close();
});

t.test('an id without a QP: CONNECT_RESPONSE with the REP, establish() sends the RTU', async (t) => {
  const n = await connNet();
  const l = await listenerId(n, PORT);
  const a = await activeId(n, PORT);
  t.throws(() => a.connect(), { code: 'EINVAL', argument: 'qpNum' });
  const pa = a.connect({ qpNum: 0x77 });
  n.flush();
  const [req] = n.events(n.chB);
  t.equal(req?.param?.conn?.qpNum, 0x77);
  const pb = req!.id.accept({ qpNum: 0x99 });
  n.flush();
  const ev = await pa;
  t.equal(ev.event, 'CONNECT_RESPONSE');
  t.equal(ev.param?.conn?.qpNum, 0x99);
  t.equal(a.state, 'CONNECT');
  a.establish();
  t.equal(a.state, 'ESTABLISHED');
  n.flush();
  t.equal((await pb)?.event, 'ESTABLISHED');
  t.throws(() => a.establish(), { code: 'EINVAL', op: 'rdma_establish' });
  a.close();
  req!.id.close();
  l.close();
  await n.close();
});

t.test('argument checks: EINVAL naming the argument and the call; calls in the wrong state', async (t) => {
  const n = await connNet();
  const a = await activeId(n, PORT);
  t.throws(() => a.accept(), { code: 'EINVAL', op: 'rdma_accept', argument: 'id' });
  a.createQp();
  t.throws(() => a.createQp(), { code: 'EINVAL', op: 'rdma_create_qp' });
  t.throws(() => a.connect({ privateData: Buffer.alloc(57) }), { code: 'EINVAL', op: 'rdma_connect', argument: 'privateData' });
  t.throws(() => a.connect({ retryCount: 8 }), { code: 'EINVAL', argument: 'retryCount' });
  t.throws(() => a.connect({ initiatorDepth: 200 }), { code: 'EINVAL', argument: 'initiatorDepth' });
  t.equal(a.state, 'ROUTE_RESOLVED', 'a refused connect changes nothing');
  t.doesNotThrow(() => a.connect({ privateData: Buffer.alloc(56), initiatorDepth: 0xff, responderResources: 0xff }), '56 bytes and 0xFF (device max) are fine');
  t.throws(() => a.connect(), { code: 'EINVAL', op: 'rdma_connect', argument: 'id' });
  const req = n.wire.find((w) => w.msg.type === 'REQ');
  t.equal(req, undefined, 'not sent yet (the clock has not run)');
  n.flush();
  t.match(n.wire[0]?.msg, { type: 'REQ', initiatorDepth: n.a.attr.maxQpInitRdAtom, responderResources: n.a.attr.maxQpRdAtom });
  const idle = (await import('../../src/cm/cm-id.js')).createId(n.chA, { device: n.a });
  t.throws(() => idle.createQp(), { code: 'EINVAL', op: 'rdma_create_qp', argument: 'id' });
  t.throws(() => idle.disconnect(), { code: 'EINVAL', op: 'rdma_disconnect' });
  idle.close();
  a.close();
  await n.close();
});

t.test('UD over SIDR: connect sends SIDR_REQ, accept answers with the QP and Q_Key 0x01234567, ESTABLISHED carries an AH that works', async (t) => {
  const n = await connNet();
  const l = await listenerId(n, PORT, 'UDP');
  const a = await activeId(n, PORT, 'UDP');
  const qa = a.createQp(null, { cap: { maxSendWr: 4, maxRecvWr: 4 } });
  t.equal(qa.state, 'RTS', 'a UD QP is ready at once (ucma_init_ud_qp)');
  t.equal(qa.qkey, 0x01234567);
  t.throws(() => a.connect({ privateData: Buffer.alloc(181) }), { code: 'EINVAL', argument: 'privateData' });
  const pa = a.connect({ privateData: Buffer.from('ud?') });
  n.flush();
  t.same(n.types(), ['SIDR_REQ']);
  const [req] = n.events(n.chB);
  t.match(req, { event: 'CONNECT_REQUEST', listenId: l });
  t.same(req!.param?.privateData, Buffer.from('ud?'));
  const b = req!.id;
  const qb = b.createQp(null, { cap: { maxSendWr: 4, maxRecvWr: 4 } });
  t.equal(await b.accept({ privateData: Buffer.from('ok') }), null, 'no event on the passive side of UD');
  n.flush();
  const ev = await pa;
  t.equal(ev.event, 'ESTABLISHED');
  t.same(ev.param?.privateData, Buffer.from('ok'));
  const ud = ev.param!.ud!;
  t.match(ud, { qpNum: qb.qpn, qkey: 0x01234567, ahAttr: { dgid: a.route.path!.dgid, sgidIndex: a.route.sgidIndex } });
  t.ok(ud.ah, "an AH on the QP's PD");
  const mem = Buffer.alloc(64 + 40);
  const mb = qb.pd.regMr(mem, ['LOCAL_WRITE']);
  qb.postRecv({ wrId: 5, sg: [{ mr: mb, offset: 0, length: mem.length }] });
  const ma = qa.pd.regMr(Buffer.from('datagram'), ['LOCAL_WRITE']);
  qa.postSend({ wrId: 1, opcode: 'SEND', sg: [{ mr: ma, offset: 0, length: 8 }], ud: { ah: ud.ah!, remoteQpn: ud.qpNum, remoteQkey: ud.qkey } });
  n.sched.advance(10);
  const wc = [new Wc()];
  t.equal(qb.recvCq.poll(wc, 1), 1);
  t.match(wc[0], { status: 'SUCCESS', byteLen: 48, srcQp: qa.qpn });
  t.equal(mem.subarray(40, 48).toString(), 'datagram');
  ma.close();
  mb.close();
  // A reject: the active side hears UNREACHABLE with the SIDR_REP status (2, rejected).
  const a2 = await activeId(n, PORT, 'UDP');
  a2.createQp();
  const p2 = a2.connect();
  n.flush();
  n.events(n.chB)[0]!.id.reject();
  n.flush();
  await t.rejects(p2, { code: 'EHOSTUNREACH' });
  t.match(n.events(n.chA), [{ event: 'UNREACHABLE', status: 2 }]);
  // No listener on a port: SIDR_REP "unsupported" (1).
  const a3 = await activeId(n, PORT + 1, 'UDP');
  const p3 = a3.connect();
  n.flush();
  await t.rejects(p3, { code: 'EHOSTUNREACH' });
  t.match(n.events(n.chA), [{ event: 'UNREACHABLE', status: 1 }]);
  for (const id of [a, a2, a3, b, l]) id.close();
  await n.close();
});

t.test('1,000 connections opened and closed in a loop: no growth in CM ids, agents, timers, QPs or listeners', async (t) => {
  const n = await connNet();
  const l = await listenerId(n, PORT);
  const { CmAgent } = await import('../../src/cm/ib-cm.js');
  const agentA = CmAgent.acquire(n.a, 1),
    agentB = CmAgent.acquire(n.b, 1);
  let base: number[] = [];
  const measure = (): number[] => [
    agentA.ids.size,
    agentB.ids.size,
    agentB.remoteIds.size,
    n.a.qps.size,
    n.b.qps.size,
    n.a.cqs.size,
    n.b.pds.size,
    n.sched.pendingTimers(),
    n.chA.listenerCount('event'),
    n.a.listenerCount('close'),
    n.b.listenerCount('close'),
  ];
  for (let i = 0; i < 1000; i++) {
    const a = await activeId(n, PORT);
    a.createQp();
    const pa = a.connect();
    n.flush();
    const b = n.events(n.chB)[0]!.id;
    b.createQp();
    const pb = b.accept();
    n.flush();
    await pa;
    await pb;
    if (i % 2 === 0) a.close();
    else b.close();
    n.flush();
    if (i % 2 === 0) b.close();
    else a.close();
    n.sched.advance(20_000); // TimeWait and the close linger
    n.events(n.chA);
    n.events(n.chB);
    if (i === 9) base = measure();
  }
  t.same(measure(), base, 'the same counts after 1,000 as after 10');
  t.equal(agentA.ids.size, 0, 'no CM id left on either side');
  t.equal(agentB.ids.size, 0);
  t.equal(agentB.listeners.size, 1, 'only the listener');
  agentA.release();
  agentB.release();
  l.close();
  await n.close();
});

t.test(
  'joinMulticast: UD ids join 239.19.59.1 (MGID ::ffff:239.19.59.1); MULTICAST_JOIN carries an AH to the group; a datagram to it reaches the other member; leave detaches',
  async (t) => {
    const n = await connNet();
    const { createId } = await import('../../src/cm/cm-id.js');
    const ida = createId(n.chA, { device: n.a, ps: 'UDP' });
    const idb = createId(n.chB, { device: n.b, ps: 'UDP' });
    await ida.bind({ address: n.ipA, port: 0 });
    await idb.bind({ address: n.ipB, port: 0 });
    const qa = ida.createQp(null, { cap: { maxSendWr: 4, maxRecvWr: 4 } });
    const qb = idb.createQp(null, { cap: { maxSendWr: 4, maxRecvWr: 4 } });
    const tcp = createId(n.chA, { device: n.a });
    await tcp.bind({ address: n.ipA, port: 0 });
    t.throws(() => tcp.joinMulticast('239.19.59.1'), { code: 'EINVAL', op: 'rdma_join_multicast', argument: 'id' });
    t.throws(() => ida.joinMulticast('10.1.2.3'), { code: 'EINVAL', argument: 'address' });
    const ja = ida.joinMulticast('239.19.59.1', { context: 'ctx-a' });
    const jb = idb.joinMulticast('239.19.59.1');
    t.throws(() => ida.joinMulticast('239.19.59.1'), { code: 'EADDRINUSE', argument: 'address' });
    n.flush();
    const [eva, evb] = await Promise.all([ja, jb]);
    t.match(eva, {
      event: 'MULTICAST_JOIN',
      status: 0,
      param: { context: 'ctx-a', ud: { qpNum: 0xffffff, qkey: 0x01234567, ahAttr: { dgid: '::ffff:239.19.59.1' } } },
    });
    t.match(n.events(n.chA), [{ event: 'MULTICAST_JOIN' }]);
    t.ok(evb.param?.ud?.ah);
    const mem = Buffer.alloc(40 + 16);
    const mb = qb.pd.regMr(mem, ['LOCAL_WRITE']);
    qb.postRecv({ wrId: 1, sg: [{ mr: mb, offset: 0, length: mem.length }] });
    const ma = qa.pd.regMr(Buffer.from('to the group'), ['LOCAL_WRITE']);
    const ud = eva.param!.ud!;
    qa.postSend({ wrId: 1, opcode: 'SEND', sg: [{ mr: ma, offset: 0, length: 12 }], ud: { ah: ud.ah!, remoteQpn: ud.qpNum, remoteQkey: ud.qkey } });
    n.sched.advance(10);
    const wc = [new Wc()];
    t.equal(qb.recvCq.poll(wc, 1), 1, "B's QP got the group's datagram");
    t.match(wc[0], { status: 'SUCCESS', byteLen: 52, srcQp: qa.qpn });
    t.equal(mem.subarray(40, 52).toString(), 'to the group');
    idb.leaveMulticast('239.19.59.1');
    t.throws(() => idb.leaveMulticast('239.19.59.1'), { code: 'EINVAL', op: 'rdma_leave_multicast' });
    qb.postRecv({ wrId: 2, sg: [{ mr: mb, offset: 0, length: mem.length }] });
    qa.postSend({ wrId: 2, opcode: 'SEND', sg: [{ mr: ma, offset: 0, length: 12 }], ud: { ah: ud.ah!, remoteQpn: ud.qpNum, remoteQkey: ud.qkey } });
    n.sched.advance(10);
    t.equal(qb.recvCq.poll(wc, 1), 0, 'after leaving: nothing');
    ma.close();
    mb.close();
    for (const id of [ida, idb, tcp]) id.close();
    await n.close();
  },
);

t.test("setOption({ tos }) reaches the QP's AV (IP TOS of the data packets) and the REQ's traffic class; the SL stays 0", async (t) => {
  const n = await connNet();
  const l = await listenerId(n, PORT);
  const { createId } = await import('../../src/cm/cm-id.js');
  const a = createId(n.chA, { device: n.a });
  a.setOption({ tos: 0x48 });
  await a.resolveAddr({ dst: { address: n.ipB, port: PORT }, timeoutMs: 1000 });
  await a.resolveRoute({ timeoutMs: 1000 });
  a.createQp();
  const pa = a.connect();
  n.flush();
  const b = n.events(n.chB).find((e) => e.event === 'CONNECT_REQUEST')!.id;
  b.createQp();
  void b.accept();
  n.flush();
  await pa;
  t.match(n.wire[0]?.msg, { type: 'REQ', primaryTrafficClass: 0x48, primarySl: 0 });
  t.equal(a.qp!.av?.trafficClass, 0x48);
  t.equal(a.qp!.av?.sl, 0);
  t.equal(b.qp!.av?.trafficClass, 0x48, "the passive side's AV from the REQ's path");
  // cm_req_handler builds the passive id's AV from the REQ's primary path (cm_init_av_by_path), so the REP and
  // everything after it go with the requested TOS too: a real ucmatose -t 96 client's REP from rxe has DSCP 0x60.
  t.same(
    n.sentTos.map((m) => `${m.src === n.ipA ? 'A' : 'B'} ${m.type} ${m.tos}`),
    ['A REQ 72', 'B REP 72', 'A RTU 72'],
    'every CM MAD of the connection with the TOS, both ways',
  );
  for (const id of [a, b, l]) id.close();
  await n.close();
});

t.test('listen() on an IDLE id: the wildcard on every port of the createId device, an ephemeral port; a request for it is taken', async (t) => {
  const n = await connNet();
  const { createId } = await import('../../src/cm/cm-id.js');
  const l = createId(n.chB, { device: n.b });
  await l.listen(8);
  t.equal(l.state, 'LISTEN');
  t.equal(l.route.addr.src?.address, '0.0.0.0');
  const port = l.getSrcPort();
  t.ok(port > 0);
  const a = await activeId(n, port);
  a.createQp();
  const pa = a.connect();
  n.flush();
  const [req] = n.events(n.chB);
  t.match(req, { event: 'CONNECT_REQUEST', listenId: l });
  t.equal(req!.id.route.addr.src?.address, n.ipB, "the new id's source is the request's destination");
  req!.id.createQp();
  void req!.id.accept();
  n.flush();
  t.equal((await pa).event, 'ESTABLISHED');
  for (const id of [a, req!.id, l]) id.close();
  await n.close();
});

t.test('the device closes under a connected id: DEVICE_REMOVAL, and a pending disconnect() rejects ENODEV', async (t) => {
  const n = await connNet();
  const { a, b, l } = await connected(n);
  n.blackhole = n.ipB; // B will not answer the DREQ
  const pd = a.disconnect();
  await n.a.close();
  await t.rejects(pd, { code: 'ENODEV' });
  t.match(n.events(n.chA), [{ event: 'DEVICE_REMOVAL' }]);
  t.equal(a.state, 'DEVICE_REMOVAL');
  a.close();
  b.close();
  l.close();
  n.chA.close();
  n.chB.close();
  await n.b.close();
});
