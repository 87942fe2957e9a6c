/**
 * UD multicast over the in-memory network with a fake clock (ibv_attach_mcast / ibv_detach_mcast,
 * rxe_mcast.c, rxe_rcv_mcast_pkt): a SEND to an MGID reaches every attached QP on every device, one
 * copy each, with its GRH; detach, close, Q_Key and limits; the typed errors.
 */
import t from 'tap';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openDevice, type Device } from '../../src/verbs/device.js';
import { VerbsError } from '../../src/verbs/errors.js';
import { Wc } from '../../src/verbs/types.js';
import type { Qp } from '../../src/verbs/qp.js';
import type { Cq } from '../../src/verbs/cq.js';
import type { Mr } from '../../src/verbs/mr.js';
import type { Pd } from '../../src/verbs/objects.js';
import { FakeScheduler } from '../../src/roce/sched.js';
import { MemNetwork } from '../../src/roce/link/link.js';
import { MCAST_LIMITS } from '../../src/verbs/mcast.js';

const QKEY = 0x01234567; // rdma_cm's RDMA_UDP_QKEY for RDMA_PS_UDP
const GROUP = '239.19.1.1';
const MGID = `::ffff:${GROUP}`;

interface Ud {
  dev: Device;
  pd: Pd;
  cq: Cq;
  qp: Qp;
  mem: Buffer;
  mr: Mr;
}

function udQp(dev: Device, pd: Pd, qkey = QKEY): Ud {
  const cq = dev.createCq({ depth: 256 });
  const qp = pd.createQp({ type: 'UD', sendCq: cq, recvCq: cq, sigAll: true, cap: { maxSendWr: 64, maxRecvWr: 64 } });
  qp.toInit({ qkey }).toRtr().toRts({ sqPsn: 0 });
  const mem = Buffer.alloc(1 << 16);
  const mr = pd.regMr(mem, ['LOCAL_WRITE']);
  return { dev, pd, cq, qp, mem, mr };
}

async function world(): Promise<{ fake: FakeScheduler; net: MemNetwork; a: Device; b: Device; close(): Promise<void> }> {
  const fake = new FakeScheduler();
  const net = new MemNetwork(fake);
  const a = await openDevice({ address: '10.0.0.1', scheduler: fake, link: net.attach('10.0.0.1') });
  const b = await openDevice({ address: '10.0.0.2', scheduler: fake, link: net.attach('10.0.0.2') });
  return {
    fake,
    net,
    a,
    b,
    async close() {
      await a.close();
      await b.close();
    },
  };
}

function polled(cq: Cq): Wc[] {
  const out: Wc[] = [];
  const wc = [new Wc()];
  while (cq.poll(wc) > 0) out.push(Object.assign(new Wc(), wc[0]!));
  return out;
}

function postRecvs(u: Ud, n: number): void {
  for (let i = 0; i < n; i++) u.qp.postRecv({ wrId: 100 + i, sg: [{ mr: u.mr, offset: i * 2048, length: 2048 }] });
}

function sendTo(s: Ud, ah: ReturnType<Pd['createAh']>, payload: Buffer, wrId = 1, qkey = QKEY): void {
  payload.copy(s.mem, 0x8000);
  s.qp.postSend({ wrId, opcode: 'SEND', sg: [{ mr: s.mr, offset: 0x8000, length: payload.length }], ud: { ah, remoteQpn: 0xffffff, remoteQkey: qkey } });
}

t.test('a SEND to an MGID reaches two QPs attached on another device and one on the sending device, once each, byte-exact', async (t) => {
  const w = await world();
  const pa = w.a.allocPd();
  const pb = w.b.allocPd();
  const sender = udQp(w.a, pa);
  const local = udQp(w.a, pa);
  const b1 = udQp(w.b, pb);
  const b2 = udQp(w.b, pb);
  const bystander = udQp(w.b, pb); // not attached: gets nothing
  for (const u of [local, b1, b2]) u.qp.attachMcast(MGID);
  for (const u of [local, b1, b2, bystander, sender]) postRecvs(u, 4);
  await local.qp.mcastJoined(MGID);
  const ah = pa.createAh({ gid: MGID });
  const payload = Buffer.from(Array.from({ length: 700 }, (_, i) => (i * 7 + 3) & 0xff));
  sendTo(sender, ah, payload);
  w.fake.advance(20);
  const sent = polled(sender.cq);
  t.equal(sent.length, 1, 'the sender completes its one SEND (and, not attached, receives nothing)');
  t.equal(sent[0]!.status, 'SUCCESS');
  for (const [name, u] of [
    ['local', local],
    ['b1', b1],
    ['b2', b2],
  ] as const) {
    const got = polled(u.cq);
    t.equal(got.length, 1, `${name}: one copy`);
    const wc = got[0]!;
    t.equal(wc.status, 'SUCCESS', `${name}: SUCCESS`);
    t.equal(wc.opcode, 'RECV');
    t.equal(wc.byteLen, 40 + payload.length, `${name}: GRH + payload`);
    t.equal(wc.srcQp, sender.qp.qpn, `${name}: src_qp is the sender's QPN`);
    t.equal(wc.qpn, u.qp.qpn);
    t.ok(wc.grh, `${name}: GRH present`);
    const slot = u.mem.subarray((wc.wrId - 100) * 2048);
    t.same([...slot.subarray(32, 36)], [10, 0, 0, 1], `${name}: GRH source is the sender's address`);
    t.same([...slot.subarray(36, 40)], [239, 19, 1, 1], `${name}: GRH destination is the group (the MGID), not the port's address`);
    t.ok(slot.subarray(40, 40 + payload.length).equals(payload), `${name}: payload byte-exact`);
  }
  t.equal(polled(bystander.cq).length, 0, 'an unattached QP gets nothing');
  t.equal(w.b.counters()['rcvd_mcast_no_qp'], 0);
  await w.close();
});

t.test('the sending QP attached to the group gets its own copy (rxe skips no QP; IP_MULTICAST_LOOP)', async (t) => {
  const w = await world();
  const pa = w.a.allocPd();
  const s = udQp(w.a, pa);
  s.qp.attachMcast(MGID);
  postRecvs(s, 2);
  sendTo(s, pa.createAh({ gid: MGID }), Buffer.from('loop'));
  w.fake.advance(20);
  const wcs = polled(s.cq);
  t.same(wcs.map((c) => c.opcode).sort(), ['RECV', 'SEND'], 'one send completion, one receive');
  await w.close();
});

t.test('detach stops delivery; the last detach leaves the group; close detaches', async (t) => {
  const w = await world();
  const pa = w.a.allocPd();
  const pb = w.b.allocPd();
  const sender = udQp(w.a, pa);
  const b1 = udQp(w.b, pb);
  const b2 = udQp(w.b, pb);
  b1.qp.attachMcast(MGID);
  b1.qp.attachMcast(MGID); // a no-op, as rxe: still one copy, and one detach undoes it
  b2.qp.attachMcast(MGID, 0xc001);
  postRecvs(b1, 8);
  postRecvs(b2, 8);
  const ah = pa.createAh({ gid: MGID });
  const key = `${GROUP}:4791`;
  t.equal(w.net.groups.get(key)?.size, 1, 'device b joined the group once');
  b1.qp.detachMcast(MGID);
  sendTo(sender, ah, Buffer.from('one'));
  w.fake.advance(20);
  t.equal(polled(b1.cq).length, 0, 'detached b1: nothing');
  t.equal(polled(b2.cq).length, 1, 'b2 still gets it');
  t.throws(() => b1.qp.detachMcast(MGID), { code: 'EINVAL', argument: 'gid' }, 'detach of a group the QP is not in: EINVAL');
  t.equal(w.net.groups.get(key)?.size, 1, 'b2 keeps the membership');
  b2.qp.close();
  t.equal(w.net.groups.get(key), undefined, 'closing the last QP left the group');
  t.same(w.b.mcast.counts, { groups: 0, attachments: 0 });
  sendTo(sender, ah, Buffer.from('two'), 2);
  w.fake.advance(20);
  t.equal(w.b.counters()['rcvd_mcast_no_qp'], 0, 'device b is no longer a member: the datagram does not reach it');
  await w.close();
});

t.test('the Q_Key is checked per QP; a packet for a group with no QP here is dropped and counted', async (t) => {
  const w = await world();
  const pa = w.a.allocPd();
  const pb = w.b.allocPd();
  const sender = udQp(w.a, pa);
  const good = udQp(w.b, pb);
  const other = udQp(w.b, pb, 0x7777);
  good.qp.attachMcast(MGID);
  other.qp.attachMcast(MGID);
  postRecvs(good, 2);
  postRecvs(other, 2);
  sendTo(sender, pa.createAh({ gid: MGID }), Buffer.from('qkey'));
  w.fake.advance(20);
  t.equal(polled(good.cq).length, 1, 'the QP whose Q_Key matches receives');
  t.equal(polled(other.cq).length, 0, 'the other QP drops its copy');
  t.equal(w.b.counters()['rcvd_bad_qkey'], 1, 'counted once, for that QP');
  // a datagram to the group's QPN sent to device b's unicast address: no group there (rxe: the MGID is the IP destination)
  sendTo(sender, pa.createAh({ gid: '10.0.0.2' }), Buffer.from('unicast'), 3);
  w.fake.advance(20);
  t.equal(w.b.counters()['rcvd_mcast_no_qp'], 1, 'QPN 0xFFFFFF to a unicast address: dropped, rcvd_mcast_no_qp');
  t.equal(w.b.counters()['rcvd_unknown_qp'], 0);
  t.equal(polled(good.cq).length, 0);
  await w.close();
});

t.test('typed errors: QP type, GID, LID, closed QP', async (t) => {
  const w = await world();
  const pa = w.a.allocPd();
  const ud = udQp(w.a, pa);
  const cq = w.a.createCq({ depth: 4 });
  const rc = pa.createQp({ type: 'RC', sendCq: cq, recvCq: cq, cap: { maxSendWr: 1, maxRecvWr: 1 } });
  const err = (f: () => void, code: string, argument: string, msg: string): void => {
    try {
      f();
      t.fail(`${msg}: no error`);
    } catch (e) {
      t.ok(e instanceof VerbsError, `${msg}: VerbsError`);
      t.match(e, { code, argument }, msg);
    }
  };
  err(() => rc.attachMcast(MGID), 'EINVAL', 'qp', 'RC QP');
  err(() => rc.detachMcast(MGID), 'EINVAL', 'qp', 'RC QP detach');
  err(() => ud.qp.attachMcast('::ffff:10.0.0.9'), 'EINVAL', 'gid', 'a unicast IPv4-mapped GID');
  err(() => ud.qp.attachMcast('::ffff:240.0.0.1'), 'EINVAL', 'gid', '240/4 is not multicast');
  err(() => ud.qp.attachMcast('fe80::1'), 'EINVAL', 'gid', 'a unicast IPv6 GID');
  err(() => ud.qp.attachMcast('not a gid'), 'EINVAL', 'gid', 'not a GID');
  err(() => ud.qp.attachMcast(new Uint8Array(4)), 'EINVAL', 'gid', 'a 4-byte GID');
  err(() => ud.qp.attachMcast(MGID, 0x10000), 'EINVAL', 'lid', 'a LID over 16 bits');
  err(() => ud.qp.detachMcast(MGID), 'EINVAL', 'gid', 'detach before any attach');
  ud.qp.attachMcast('::ffff:224.0.0.251');
  // An IPv6 MGID on an IPv4 port: the link cannot join it (no such group in its family), and nothing is left attached.
  err(() => ud.qp.attachMcast('ff0e::1234'), 'EINVAL', 'gid', 'an IPv6 group on an IPv4 port');
  t.same(w.a.mcast.counts, { groups: 1, attachments: 1 }, 'only the IPv4 group is attached');
  ud.qp.close();
  err(() => ud.qp.attachMcast(MGID), 'EBADF', 'qp', 'closed QP');
  t.same(w.a.mcast.counts, { groups: 0, attachments: 0 }, 'close detached');
  await w.close();
});

t.test('limits as rxe reports them: max_mcast_qp_attach per group, max_mcast_grp groups', async (t) => {
  const w = await world();
  const q = w.a.query();
  t.equal(q.maxMcastGrp, 8192);
  t.equal(q.maxMcastQpAttach, 56);
  t.equal(q.maxTotalMcastQpAttach, 0x70000);
  const pa = w.a.allocPd();
  const cq = w.a.createCq({ depth: 4 });
  const mk = (): Qp => pa.createQp({ type: 'UD', sendCq: cq, recvCq: cq, cap: { maxSendWr: 1, maxRecvWr: 1 } });
  const qps = Array.from({ length: MCAST_LIMITS.maxMcastQpAttach }, mk);
  for (const qp of qps) qp.attachMcast(MGID);
  const extra = mk();
  t.throws(() => extra.attachMcast(MGID), { code: 'EINVAL', argument: 'qp' }, 'the 57th QP of a group: EINVAL (rxe_attach_mcg)');
  qps[0]!.detachMcast(MGID);
  extra.attachMcast(MGID);
  t.pass('after a detach there is room again');
  // groups: one QP in 8192 groups, then the 8193rd
  const g = mk();
  for (let i = 1; i < MCAST_LIMITS.maxMcastGrp; i++) g.attachMcast(`::ffff:239.20.${i >> 8}.${i & 0xff}`);
  t.equal(w.a.mcast.counts.groups, MCAST_LIMITS.maxMcastGrp);
  t.throws(() => g.attachMcast('::ffff:239.21.0.1'), { code: 'ENOMEM', argument: 'gid' }, 'group 8193: ENOMEM (rxe_get_mcg)');
  t.doesNotThrow(() => g.attachMcast('::ffff:239.20.0.1'), 'an existing group still takes a QP');
  await w.close();
});

t.test('the group reaches the receive path through the link wrappers (fault injector, pcap recorder)', async (t) => {
  const fake = new FakeScheduler();
  const net = new MemNetwork(fake);
  const dir = mkdtempSync(join(tmpdir(), 'mcast-'));
  const pcap = join(dir, 'b.pcap');
  const a = await openDevice({ address: '10.0.0.1', scheduler: fake, link: net.attach('10.0.0.1') });
  const b = await openDevice({ address: '10.0.0.2', scheduler: fake, link: net.attach('10.0.0.2'), faults: { seed: 7 }, pcap });
  const pa = a.allocPd();
  const pb = b.allocPd();
  const sender = udQp(a, pa);
  const r = udQp(b, pb);
  r.qp.attachMcast(MGID);
  await r.qp.mcastJoined(MGID);
  postRecvs(r, 2);
  sendTo(sender, pa.createAh({ gid: MGID }), Buffer.from('wrapped'));
  fake.advance(20);
  t.equal(polled(r.cq).length, 1, 'delivered through both wrappers');
  t.equal(b.counters()['rcvd_icrc_err'], 0, 'the ICRC was checked against the group (the wrappers passed it on)');
  await a.close();
  await b.close();
  const f = readFileSync(pcap);
  t.ok(f.length > 24 + 16 + 20, 'one packet recorded');
  t.same([...f.subarray(24 + 16 + 16, 24 + 16 + 20)], [239, 19, 1, 1], 'recorded with the group as its IPv4 destination');
  rmSync(dir, { recursive: true, force: true });
});
