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
import { roceFlowLabel } from '../../src/cm/route.js';
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
