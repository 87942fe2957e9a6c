/**
 * UD multicast through the real kernel, on loopback: two devices (127.0.77.1, 127.0.77.2) on UDP
 * 4791; QPs attached to ::ffff:239.19.77.1 make each device's link join 239.19.77.1 on lo
 * (IP_ADD_MEMBERSHIP; Linux delivers multicast on lo without its MULTICAST flag), and a UD SEND to
 * the MGID goes out as one datagram to 239.19.77.1:4791 that the kernel hands to both devices'
 * group sockets (the sender's own through IP_MULTICAST_LOOP). Runs on the backend the suite picks
 * (the addon's socket, or Node's dgram with SOFTROCE_NO_NATIVE=1).
 */
import t from 'tap';
import { openDevice, type Device } from '../../src/verbs/device.js';
import { Wc } from '../../src/verbs/types.js';
import type { Qp } from '../../src/verbs/qp.js';
import type { Cq } from '../../src/verbs/cq.js';
import type { Mr } from '../../src/verbs/mr.js';
import type { Pd } from '../../src/verbs/objects.js';

const QKEY = 0x01234567;
const GROUP = '239.19.77.1';
const MGID = `::ffff:${GROUP}`;

interface Ud {
  cq: Cq;
  qp: Qp;
  mem: Buffer;
  mr: Mr;
}
function udQp(dev: Device, pd: Pd): Ud {
  const cq = dev.createCq({ depth: 64 });
  const qp = pd.createQp({ type: 'UD', sendCq: cq, recvCq: cq, sigAll: true, cap: { maxSendWr: 16, maxRecvWr: 16 } });
  qp.toInit({ qkey: QKEY }).toRtr().toRts({ sqPsn: 0 });
  const mem = Buffer.alloc(1 << 15);
  return { cq, qp, mem, mr: pd.regMr(mem, ['LOCAL_WRITE']) };
}

/** Completions of `cq` until `n` came or `ms` passed (real clock, bounded). */
async function drain(cq: Cq, n: number, ms: number): Promise<Wc[]> {
  const out: Wc[] = [];
  const wc = [new Wc()];
  const end = performance.now() + ms;
  while (performance.now() < end) {
    while (cq.poll(wc) > 0) out.push(Object.assign(new Wc(), wc[0]!));
    if (out.length >= n) break;
    await new Promise((r) => setTimeout(r, 2));
  }
  return out;
}

t.test('a multicast UD SEND through the kernel reaches the QPs attached on both devices, one copy each', async (t) => {
  const a = await openDevice({ address: '127.0.77.1' });
  const b = await openDevice({ address: '127.0.77.2' });
  t.teardown(async () => {
    await a.close();
    await b.close();
  });
  const pa = a.allocPd();
  const pb = b.allocPd();
  const sender = udQp(a, pa);
  const local = udQp(a, pa);
  const b1 = udQp(b, pb);
  const b2 = udQp(b, pb);
  for (const u of [local, b1, b2]) {
    u.qp.attachMcast(MGID);
    for (let i = 0; i < 4; i++) u.qp.postRecv({ wrId: i, sg: [{ mr: u.mr, offset: i * 4096, length: 4096 }] });
  }
  await Promise.all([local.qp.mcastJoined(MGID), b1.qp.mcastJoined(MGID)]);
  const payload = Buffer.from(Array.from({ length: 1000 }, (_, i) => (i * 13 + 5) & 0xff));
  payload.copy(sender.mem, 0x4000);
  const ah = pa.createAh({ gid: MGID });
  sender.qp.postSend({
    wrId: 9,
    opcode: 'SEND',
    sg: [{ mr: sender.mr, offset: 0x4000, length: payload.length }],
    ud: { ah, remoteQpn: 0xffffff, remoteQkey: QKEY },
  });
  const sent = await drain(sender.cq, 1, 5000);
  t.same(
    sent.map((w) => w.status),
    ['SUCCESS'],
    'the SEND completes',
  );
  for (const [name, u] of [
    ['a (the sending device)', local],
    ['b1', b1],
    ['b2', b2],
  ] as const) {
    const got = await drain(u.cq, 1, 5000);
    t.equal(got.length, 1, `${name}: one completion`);
    const wc = got[0];
    if (wc === undefined) continue;
    t.equal(wc.status, 'SUCCESS', `${name}: SUCCESS`);
    t.equal(wc.byteLen, 40 + payload.length, `${name}: GRH + payload`);
    t.equal(wc.srcQp, sender.qp.qpn, `${name}: src_qp`);
    const slot = u.mem.subarray(wc.wrId * 4096);
    t.same([...slot.subarray(32, 40)], [127, 0, 77, 1, 239, 19, 77, 1], `${name}: GRH source and group`);
    t.ok(slot.subarray(40, 40 + payload.length).equals(payload), `${name}: payload byte-exact`);
  }
  // No second copy arrives later (a group socket that also took another socket's datagrams would show here).
  await new Promise((r) => setTimeout(r, 100));
  for (const u of [local, b1, b2]) t.equal((await drain(u.cq, 1, 1)).length, 0, 'no duplicate');
  t.equal(b.counters()['rcvd_icrc_err'], 0, 'the ICRC over the group address checks out');
  // Detach both of b's QPs: b's link leaves the group, so the next SEND reaches only a.
  b1.qp.detachMcast(MGID);
  b2.qp.detachMcast(MGID);
  const before = b.counters()['rcvd_pkts']!;
  sender.qp.postSend({ wrId: 10, opcode: 'SEND', sg: [{ mr: sender.mr, offset: 0x4000, length: 8 }], ud: { ah, remoteQpn: 0xffffff, remoteQkey: QKEY } });
  t.equal((await drain(local.cq, 1, 5000)).length, 1, 'a still receives');
  await new Promise((r) => setTimeout(r, 50));
  t.equal(b.counters()['rcvd_pkts'], before, 'b left the IP group: the datagram does not reach it');
});
