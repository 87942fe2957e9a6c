/**
 * rdma_bind_addr (issue 13 item 1): the port tables per port space with the kernel's rules
 * (cma_check_port, cma_use_port, cma_alloc_any_port), REUSEADDR and AFONLY, the wildcard bind, the
 * device a specific bind takes (shared and ref-counted, closed with its last id), ports released on
 * close, and calls in the wrong state.
 *
 * Real UDP on 127.0.56.0/24 only (no other test file uses it): a bound id opens a device on UDP 4791
 * of its address. 198.18.0.77 stands for "an address this host does not have": it is only ever
 * compared, never bound or sent to.
 */
import t from 'tap';
import { readFileSync } from 'node:fs';
import { createEventChannel } from '../../src/cm/event-channel.js';
import { createId, type CmId } from '../../src/cm/cm-id.js';
import { portTable, localPortRange } from '../../src/cm/port-space.js';
import { cmDevices, cmDevicesClosed } from '../../src/cm/devices.js';
import { openDevice } from '../../src/verbs/device.js';

const A = '127.0.56.1',
  B = '127.0.56.2';
const NOT_HOST = '198.18.0.77';

const ch = createEventChannel();
t.teardown(() => ch.close());

/** Waits until the CM has closed every device it opened (an id's close never waits for it). */
async function cmIdle(): Promise<void> {
  for (let i = 0; i < 200 && cmDevices().length > 0; i++) await new Promise((r) => setTimeout(r, 5));
  await cmDevicesClosed();
}

t.test('a specific bind takes the port and the CM device of the address; the same address and port again is EADDRINUSE', async (t) => {
  const a = createId(ch, { ps: 'TCP' });
  await a.bind({ address: A, port: 20001 });
  t.equal(a.state, 'ADDR_BOUND');
  t.equal(a.getSrcPort(), 20001);
  t.same(a.route.addr.src, { address: A, port: 20001, family: 4 });
  t.ok(a.verbs, 'the id is on a device');
  t.equal(a.verbs!.ports[a.portNum - 1]!.address, A, 'whose port is bound to the address');
  const b = createId(ch, { ps: 'TCP' });
  t.throws(() => void b.bind({ address: A, port: 20001 }), { name: 'VerbsError', code: 'EADDRINUSE', op: 'rdma_bind_addr', argument: 'addr' });
  t.equal(b.state, 'IDLE', 'a refused bind changes nothing');
  t.equal(b.getSrcPort(), 0);
  // Another address on the same port is another socket address: allowed.
  await b.bind({ address: B, port: 20001 });
  // The same port in another port space is another table.
  const u = createId(ch, { ps: 'UDP' });
  await u.bind({ address: A, port: 20001 });
  t.equal(u.qpType, 'UD');
  for (const id of [a, b, u]) id.close();
  await cmIdle();
});

t.test('REUSEADDR on both sides shares the port; on one side only it does not', async (t) => {
  const a = createId(ch),
    b = createId(ch),
    c = createId(ch);
  a.setOption({ reuseAddr: true });
  await a.bind({ address: A, port: 20002 });
  t.throws(() => void c.bind({ address: A, port: 20002 }), { code: 'EADDRINUSE' }, 'c has not set it');
  b.setOption({ reuseAddr: true });
  await b.bind({ address: A, port: 20002 });
  t.equal(portTable.owners('TCP', 20002).length, 2);
  t.throws(() => a.setOption({ reuseAddr: false }), { code: 'EINVAL', argument: 'reuseAddr' }, 'turning it off is for IDLE ids only');
  for (const id of [a, b, c]) id.close();
  await cmIdle();
});

t.test('the wildcard: 0.0.0.0 holds the port against every address (EADDRNOTAVAIL, as cma_check_port); IPv6 :: too, unless AFONLY', async (t) => {
  const w = createId(ch);
  await w.bind({ address: '0.0.0.0', port: 20003 });
  t.equal(w.state, 'ADDR_BOUND');
  t.equal(w.verbs, null, 'a wildcard bind takes no device');
  t.equal(w.portNum, 0);
  t.throws(() => void createId(ch).bind({ address: A, port: 20003 }), { code: 'EADDRNOTAVAIL', argument: 'addr' });
  t.throws(() => void createId(ch).bind({ address: '0.0.0.0', port: 20003 }), { code: 'EADDRNOTAVAIL' });
  // An IPv6 wildcard without AFONLY (net.ipv6.bindv6only = 0) also takes the IPv4 port.
  t.throws(() => void createId(ch).bind({ address: '::', port: 20003 }), { code: 'EADDRNOTAVAIL' });
  const v6 = createId(ch);
  v6.setOption({ afOnly: true });
  await v6.bind({ address: '::', port: 20003 });
  t.equal(v6.afOnly, true);
  t.equal(w.afOnly, true, 'an IPv4 id is AF-only');
  v6.close();
  w.close();
  // Both released: the port is free for a specific bind now.
  const s = createId(ch);
  await s.bind({ address: A, port: 20003 });
  s.close();
  await cmIdle();
});

t.test('port 0: an ephemeral port from net.ipv4.ip_local_port_range; the range exhausted is EADDRNOTAVAIL; close frees it', async (t) => {
  const [lo, hi] = localPortRange();
  const sys = readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/).map(Number);
  t.same([lo, hi], sys, 'the range is the sysctl');
  const e = createId(ch);
  await e.bind({ address: '0.0.0.0', port: 0 });
  t.ok(e.getSrcPort() >= lo && e.getSrcPort() <= hi, `ephemeral port ${e.getSrcPort()} in ${lo}..${hi}`);
  e.close();
  portTable.rangeOverride = [40100, 40102];
  t.teardown(() => (portTable.rangeOverride = null));
  const ids: CmId[] = [];
  for (let i = 0; i < 3; i++) {
    const id = createId(ch);
    await id.bind('0.0.0.0');
    ids.push(id);
  }
  t.same(ids.map((i) => i.getSrcPort()).sort(), [40100, 40101, 40102], 'three different ports, all in range');
  const more = createId(ch);
  t.throws(() => void more.bind('0.0.0.0'), { code: 'EADDRNOTAVAIL', argument: 'addr' }, 'none left');
  const freed = ids[0]!.getSrcPort();
  ids[0]!.close();
  if (freed !== ids[2]!.getSrcPort()) {
    await more.bind('0.0.0.0');
    t.equal(more.getSrcPort(), freed, 'the freed port is handed out again');
    more.close();
  }
  for (const id of ids) id.close();
});

t.test('an address this host does not have is EADDRNOTAVAIL; a privileged port needs CAP_NET_BIND_SERVICE', async (t) => {
  const id = createId(ch);
  t.throws(() => void id.bind({ address: NOT_HOST, port: 20004 }), { code: 'EADDRNOTAVAIL', argument: 'addr' });
  t.equal(id.state, 'IDLE');
  const cap = /^CapEff:\s*([0-9a-f]+)/im.exec(readFileSync('/proc/self/status', 'utf8'));
  const can = cap !== null && (BigInt(`0x${cap[1]!}`) & (1n << 10n)) !== 0n;
  if (can) {
    await id.bind({ address: '0.0.0.0', port: 999 });
    t.equal(id.getSrcPort(), 999, 'with CAP_NET_BIND_SERVICE, port 999 is allowed');
  } else {
    t.throws(() => void id.bind({ address: '0.0.0.0', port: 999 }), { code: 'EACCES', argument: 'addr' });
  }
  t.throws(() => void createId(ch).bind({ address: 'localhost' }), { code: 'EINVAL', argument: 'addr' });
  t.throws(() => void createId(ch).bind({ address: 'fe80::1%lo' }), { code: 'EINVAL', argument: 'addr' }, 'a scoped IPv6 address: EINVAL, not a TypeError');
  t.throws(() => void createId(ch).bind({ address: A, port: 70000 }), { code: 'EINVAL', argument: 'addr.port' });
  id.close();
});

t.test('the CM device is shared by the ids on its address and closed with the last one; the port is free after close', async (t) => {
  const a = createId(ch),
    b = createId(ch);
  await Promise.all([a.bind({ address: A, port: 20005 }), b.bind({ address: A, port: 20006 })]);
  t.equal(a.verbs, b.verbs, 'one device for the address');
  const dev = a.verbs!;
  t.same(
    cmDevices().map((d) => d.refs),
    [2],
  );
  a.close();
  t.equal(dev.closed, false, 'still used by b');
  t.equal(a.verbs, null);
  b.close();
  t.equal(dev.closed, true, 'closed with its last id');
  await cmIdle();
  t.equal(cmDevices().length, 0);
  // The port and UDP 4791 of the address are free again: the same bind works.
  const c = createId(ch);
  await c.bind({ address: A, port: 20005 });
  t.not(c.verbs, dev, 'a new device');
  c.close();
  await cmIdle();
});

t.test("createId({ device }): the application's device; its ports' addresses only; the CM never closes it", async (t) => {
  const dev = await openDevice({ address: '127.0.56.3' });
  t.teardown(() => dev.close());
  const id = createId(ch, { device: dev });
  t.throws(() => void id.bind({ address: A, port: 20007 }), { code: 'ENODEV', argument: 'addr' }, "a host address the device's ports do not have");
  t.throws(() => void id.bind({ address: NOT_HOST, port: 20007 }), { code: 'EADDRNOTAVAIL', argument: 'addr' });
  await id.bind({ address: '127.0.56.3', port: 20007 });
  t.equal(id.verbs, dev);
  t.equal(id.portNum, 1);
  id.close();
  t.equal(dev.closed, false, "the application's device stays open");
  t.equal(cmDevices().length, 0, 'and was never the CM’s');
  const closed = await openDevice({ address: '127.0.56.4' });
  await closed.close();
  t.throws(() => createId(ch, { device: closed }), { code: 'ENODEV', argument: 'device' });
});

t.test('calls in the wrong state are EINVAL naming the call; bind() in progress holds the others off', async (t) => {
  const id = createId(ch);
  t.throws(() => id.resolveRoute({ timeoutMs: 100 }), { code: 'EINVAL', op: 'rdma_resolve_route', argument: 'id' }, 'no address resolved yet');
  const p = id.bind({ address: A, port: 20008 });
  t.throws(() => void id.resolveAddr({ dst: B, timeoutMs: 100 }), { code: 'EINVAL', op: 'rdma_resolve_addr' }, 'while binding');
  await p;
  t.throws(() => void id.bind({ address: A, port: 20009 }), { code: 'EINVAL', op: 'rdma_bind_addr', argument: 'id' }, 'bound already');
  id.close();
  t.throws(() => void id.bind('0.0.0.0'), { code: 'EINVAL', op: 'rdma_bind_addr' }, 'closed');
  t.throws(() => id.setOption({ tos: 1 }), { code: 'EINVAL', op: 'rdma_set_option' }, 'closed');
  id.close(); // idempotent
  t.throws(() => createId(ch, { ps: 'SDP' as 'TCP' }), { code: 'EINVAL', argument: 'ps' });
  t.throws(() => createId(ch, { ps: 'TCP', qpType: 'UD' }), { code: 'EINVAL', argument: 'qpType' });
  t.equal(createId(ch, { ps: 'IB', qpType: 'UD' }).qpType, 'UD');
  await cmIdle();
});

t.test('close() during bind(): the bind rejects, the device reference and the port are given back', async (t) => {
  const id = createId(ch);
  const p = id.bind({ address: A, port: 20010 });
  id.close();
  await t.rejects(p, { code: 'EBADF', op: 'rdma_destroy_id' });
  t.equal(portTable.owners('TCP', 20010).length, 0);
  await cmIdle();
  t.equal(cmDevices().length, 0);
});

t.test('the CM opens a device by its name in the device list when the list has the address (as 127.0.0.1 is softroce0)', async (t) => {
  const saved = process.env['SOFTROCE_DEVICES'];
  process.env['SOFTROCE_DEVICES'] = 'cmtest0=lo:127.0.56.9';
  t.teardown(() => {
    if (saved === undefined) delete process.env['SOFTROCE_DEVICES'];
    else process.env['SOFTROCE_DEVICES'] = saved;
  });
  const id = createId(ch);
  await id.bind({ address: '127.0.56.9', port: 20011 });
  t.equal(id.verbs?.name, 'cmtest0');
  const other = createId(ch);
  await other.bind({ address: '127.0.56.8', port: 20011 });
  t.equal(other.verbs?.name, 'softroce_127.0.56.8', 'an address the list does not have: opened by address');
  id.close();
  other.close();
  await cmIdle();
});
