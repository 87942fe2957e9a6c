/**
 * An rdma_cm connection over IPv6 loopback (issue 13 hardening, item 4): resolveAddr, resolveRoute,
 * connect, accept, a SEND each way, disconnect, on whichever backend the run uses (IPv6 links are Node
 * dgram on both; with the addon the socket gets UDP_NO_CHECK6_RX). Both ends are on ::1, so the CM's
 * one device on ::1 carries both (a connection to itself through its QP1, as rdma_cm allows on Linux).
 *
 * Skips, saying so, when the host has no IPv6 loopback.
 */
import t from 'tap';
import { hasIpv6Loopback, nextEvent, pollCq as poll } from './real-helpers.js';
import { createEventChannel } from '../../src/cm/event-channel.js';
import { createId, type CmId } from '../../src/cm/cm-id.js';
import { cmDevices, cmDevicesClosed, setCmDeviceOpener } from '../../src/cm/devices.js';
import { openDevice } from '../../src/verbs/device.js';
import { VerbsError } from '../../src/verbs/errors.js';

/**
 * [::1]:4791, as the CM's QP1 and the QPs send to UDP 4791 (the RoCEv2 port; a device on a private
 * port would get none of it). Other test files bind it for a moment (test/transport/trust.test.ts):
 * while it is taken, the open waits and tries again (bounded).
 */
setCmDeviceOpener(async (address) => {
  for (let i = 0; ; i++) {
    try {
      return await openDevice({ address });
    } catch (e) {
      if (!(e instanceof VerbsError) || e.code !== 'EADDRINUSE' || i >= 200) throw e;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
});
t.teardown(() => setCmDeviceOpener(null));

const v6 = await hasIpv6Loopback();
if (!v6) console.log('# skip: this host has no IPv6 loopback (::1)');

t.test(
  '::1 to ::1: resolve, connect / accept, a SEND each way, disconnect on both sides',
  { skip: v6 ? false : 'this host has no IPv6 loopback (::1)' },
  async (t) => {
    const chS = createEventChannel();
    const chC = createEventChannel();
    const ids: CmId[] = [];
    t.teardown(async () => {
      for (const id of ids) id.close();
      chS.close();
      chC.close();
      for (let i = 0; i < 400 && cmDevices().length > 0; i++) await new Promise((r) => setTimeout(r, 5));
      await cmDevicesClosed();
    });
    const port = 7800 + Math.floor(Math.random() * 100);
    const l = createId(chS);
    ids.push(l);
    await l.bind({ address: '::1', port });
    await l.listen();
    const a = createId(chC);
    ids.push(a);
    const ar = await a.resolveAddr({ dst: { address: '::1', port }, timeoutMs: 2000 });
    t.equal(ar.event, 'ADDR_RESOLVED');
    t.equal(a.route.addr.src?.address, '::1');
    t.equal(a.route.addr.src?.family, 6);
    await a.resolveRoute({ timeoutMs: 2000 });
    while (chC.tryGetEvent() !== null);
    t.equal(a.route.path?.sgid, '::1');
    t.equal(a.route.path?.dgid, '::1');
    t.equal(a.route.path?.gidType, 'RoCE v2');
    t.equal(a.verbs, l.verbs, 'one CM device on ::1 for both ends');
    t.equal(a.verbs!.ports[0]!.link.caps.family, 6);
    a.createQp(null, { cap: { maxSendWr: 4, maxRecvWr: 4 } });
    const pa = a.connect({ privateData: Buffer.from('over ::1') });
    const req = await nextEvent(chS, 'CONNECT_REQUEST');
    t.same(req.param?.privateData, Buffer.from('over ::1'));
    t.equal(req.id.route.addr.dst?.port, a.getSrcPort(), "the requester's rdma_cm port, from the IPv6 cma_hdr");
    const b = req.id;
    ids.push(b);
    t.equal(b.route.addr.dst?.address, '::1');
    t.equal(b.route.addr.dst?.family, 6);
    b.createQp(null, { cap: { maxSendWr: 4, maxRecvWr: 4 } });
    const pb = b.accept({ privateData: Buffer.from('welcome') });
    const est = await pa;
    t.equal(est.event, 'ESTABLISHED');
    t.same(est.param?.privateData, Buffer.from('welcome'));
    await pb;
    await nextEvent(chS, 'ESTABLISHED');
    const qa = a.qp!,
      qb = b.qp!;
    t.equal(qa.state, 'RTS');
    t.equal(qb.state, 'RTS');
    const ma = qa.pd.regMr(Buffer.alloc(64), ['LOCAL_WRITE']);
    const mb = qb.pd.regMr(Buffer.alloc(64), ['LOCAL_WRITE']);
    qb.postRecv({ wrId: 1, sg: [{ mr: mb, offset: 0, length: 64 }] });
    qa.postRecv({ wrId: 1, sg: [{ mr: ma, offset: 0, length: 64 }] });
    ma.buffer.write('ping6');
    qa.postSend({ wrId: 2, opcode: 'SEND', signaled: true, sg: [{ mr: ma, offset: 0, length: 5 }] });
    const rb = await poll(qb.recvCq);
    t.equal(rb.status, 'SUCCESS');
    t.equal(mb.buffer.toString('utf8', 0, rb.byteLen), 'ping6', 'the client SEND arrived');
    t.equal((await poll(qa.sendCq)).status, 'SUCCESS', 'and was acknowledged');
    mb.buffer.write('pong6');
    qb.postSend({ wrId: 2, opcode: 'SEND', signaled: true, sg: [{ mr: mb, offset: 0, length: 5 }] });
    const ra = await poll(qa.recvCq);
    t.equal(ma.buffer.toString('utf8', 0, ra.byteLen), 'pong6', 'the server SEND arrived');
    t.equal((await poll(qb.sendCq)).status, 'SUCCESS');
    const pd = a.disconnect();
    await nextEvent(chS, 'DISCONNECTED');
    t.equal((await b.disconnect()).event, 'DISCONNECTED');
    t.equal((await pd).event, 'DISCONNECTED', 'DISCONNECTED on both sides');
    t.equal(qa.state, 'ERR');
    t.equal(qb.state, 'ERR');
  },
);
