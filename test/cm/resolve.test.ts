/**
 * rdma_resolve_addr and rdma_resolve_route (issue 13 item 1): the source the routing table picks (or
 * the bound one), the CM device, port and v2 GID index for it, ADDR_ERROR with the kernel's errno and
 * the id back in ADDR_BOUND, the timeout, the loopback fallback to 127.0.0.2, the path record's fields
 * (roce-wire.md h.4), the RoCE mode, DEVICE_REMOVAL, and that the promise and the channel carry the
 * same event.
 *
 * Loopback only. Devices the CM opens here bind 127.0.57.0/24 (no other test file uses it) on UDP
 * 4791, or 127.0.0.1 / 127.0.0.2 / ::1 on a private UDP port (PRIVATE_UDP, through the test hook
 * setCmDeviceOpener), so other tests holding UDP 4791 on 127.0.0.1 do not matter. 198.18.0.1 is only
 * looked up in the routing table (a UDP connect(), which sends nothing); nothing is sent there.
 */
import t from 'tap';
import { hasIpv6Loopback } from './real-helpers.js';
import { createSocket } from 'node:dgram';
import { readFileSync } from 'node:fs';
import { constants } from 'node:os';
import { createEventChannel, type CmEvent } from '../../src/cm/event-channel.js';
import { createId } from '../../src/cm/cm-id.js';
import { cmDevices, cmDevicesClosed, setCmDeviceOpener } from '../../src/cm/devices.js';
import { localPortRange } from '../../src/cm/port-space.js';
import { cmPathOf, setRoceMode } from '../../src/cm/route.js';
import { flowLabelFromPorts } from '../../src/cm/cm-defs.js';
import { openDevice } from '../../src/verbs/device.js';
import { FakeScheduler } from '../../src/roce/sched.js';
import { MemNetwork } from '../../src/roce/link/link.js';

const PRIVATE_UDP = 47957;
const S1 = '127.0.57.1',
  S2 = '127.0.57.2';

/** 127.0.0.1, 127.0.0.2 and ::1 on PRIVATE_UDP, named as the device list names them; other addresses as openDevice would. */
setCmDeviceOpener((address) => {
  const name = address === '127.0.0.1' ? 'softroce0' : address === '127.0.0.2' ? 'softroce1' : address === '::1' ? 'softroce_v6' : undefined;
  return name !== undefined ? openDevice({ name, address, udpPort: PRIVATE_UDP }) : openDevice({ address });
});
t.teardown(() => setCmDeviceOpener(null));

async function cmIdle(): Promise<void> {
  for (let i = 0; i < 200 && cmDevices().length > 0; i++) await new Promise((r) => setTimeout(r, 5));
  await cmDevicesClosed();
}

/** The routing table's verdict for dst, from src when given: the local address, or the errno code. No packet is sent. */
function probeRoute(dst: string, src?: string): Promise<{ src: string } | { code: string }> {
  return new Promise((resolve) => {
    const s = createSocket('udp4');
    const done = (r: { src: string } | { code: string }): void => {
      s.close();
      resolve(r);
    };
    s.on('error', (e: NodeJS.ErrnoException) => done({ code: e.code ?? '?' }));
    const go = (): void => s.connect(9, dst, (e?: Error) => done(e ? { code: (e as NodeJS.ErrnoException).code ?? '?' } : { src: s.address().address }));
    if (src !== undefined) s.bind({ address: src, port: 0 }, go);
    else go();
  });
}

const errnoOf = (code: string): number => (constants.errno as Record<string, number>)[code]!;

t.test('loopback: 127.0.0.1 resolves to softroce0, port 1, the RoCE v2 GID index of 127.0.0.1; promise and channel carry the same event', async (t) => {
  const ch = createEventChannel();
  const id = createId(ch, { ps: 'TCP', context: { mine: 1 } });
  const p = id.resolveAddr({ dst: { address: '127.0.0.1', port: 7471 }, timeoutMs: 2000 });
  t.equal(id.state, 'ADDR_QUERY', 'querying until the event');
  const [lo, hi] = localPortRange();
  t.ok(id.getSrcPort() >= lo && id.getSrcPort() <= hi, 'an IDLE id is bound to an ephemeral port first');
  const ev = await p;
  const fromChannel = await ch.getEvent();
  t.equal(fromChannel, ev, 'the same event object');
  t.match(ev, { event: 'ADDR_RESOLVED', status: 0 });
  t.equal(ev.id, id);
  t.same(id.context, { mine: 1 });
  t.equal(id.state, 'ADDR_RESOLVED');
  const dev = id.verbs!;
  t.equal(dev.name, 'softroce0');
  t.equal(id.portNum, 1);
  t.equal(id.route.addr.src?.address, '127.0.0.1', 'the routing table picks 127.0.0.1 for a loopback destination');
  t.same(id.route.addr.dst, { address: '127.0.0.1', port: 7471, family: 4 });
  t.equal(id.getDstPort(), 7471);
  t.equal(id.route.sgidIndex, dev.defaultSgidIndex(1), "the device's v2 GID of 127.0.0.1");
  t.equal(dev.queryGid(id.route.sgidIndex!, 1)?.type, 'RoCE v2');
  t.equal(id.route.sgid, '::ffff:127.0.0.1');
  t.equal(id.route.dgid, '::ffff:127.0.0.1');
  t.equal(id.route.path, null, 'no path before resolveRoute');
  t.equal(ch.pending, 0);
  id.close();
  await cmIdle();
  t.equal(dev.closed, true, 'the CM device closed with its only id');
  ch.close();
});

t.test('a bound source wins over the routing table; resolveAddr({ src }) binds an IDLE id first', async (t) => {
  const ch = createEventChannel();
  const a = createId(ch);
  await a.bind({ address: S1, port: 20101 });
  await a.resolveAddr({ dst: S2, timeoutMs: 2000 });
  t.same(a.route.addr.src, { address: S1, port: 20101, family: 4 }, 'not 127.0.0.1');
  t.equal(a.verbs!.ports[a.portNum - 1]!.address, S1);
  const b = createId(ch);
  await b.resolveAddr({ src: { address: S1, port: 20102 }, dst: S2, timeoutMs: 2000 });
  t.same(b.route.addr.src, { address: S1, port: 20102, family: 4 });
  t.equal(b.verbs, a.verbs, "the address's one CM device");
  t.equal(cmDevices().find((d) => d.device === a.verbs)?.refs, 2);
  t.throws(() => void createId(ch).resolveAddr({ src: '::1', dst: S2, timeoutMs: 100 }), { code: 'EINVAL', argument: 'src' }, 'families differ');
  t.throws(() => void createId(ch).resolveAddr({ dst: 'nowhere', timeoutMs: 100 }), { code: 'EINVAL', argument: 'dst' });
  t.throws(() => void createId(ch).resolveAddr({ dst: S2, timeoutMs: -5 }), { code: 'EINVAL', argument: 'timeoutMs' });
  t.throws(() => void a.resolveAddr({ dst: S2, timeoutMs: 100 }), { code: 'EINVAL', op: 'rdma_resolve_addr', argument: 'id' }, 'resolved already');
  // A wildcard destination is this host: the bound address (cma_resolve_loopback).
  const c = createId(ch);
  await c.resolveAddr({ src: S1, dst: '0.0.0.0', timeoutMs: 2000 });
  t.equal(c.route.addr.dst?.address, S1);
  for (const id of [a, b, c]) id.close();
  await cmIdle();
  ch.close();
});

t.test('an unroutable destination: ADDR_ERROR with the errno of the route lookup, the id ADDR_BOUND again and usable', async (t) => {
  const ch = createEventChannel();
  const id = createId(ch);
  // With no route to 198.18.0.1 the lookup alone fails (ENETUNREACH); with one (a default route), a
  // loopback source cannot reach it (the kernel's EINVAL for a 127/8 source leaving lo). Either way
  // the expected errno is what the routing table says now.
  const open = await probeRoute('198.18.0.1');
  const src = 'code' in open ? undefined : S1;
  const probe = src === undefined ? open : await probeRoute('198.18.0.1', S1);
  if (!('code' in probe)) {
    t.fail(`198.18.0.1 is reachable from ${S1} (${JSON.stringify(probe)}): cannot test an unroutable destination here`);
    return;
  }
  t.comment(`host route to 198.18.0.1: ${'code' in open ? open.code : `via ${open.src}`}; expecting ${probe.code}${src ? ` from ${src}` : ''}`);
  if (src !== undefined) await id.bind(src);
  const seen: CmEvent[] = [];
  ch.on('ADDR_ERROR', (e: CmEvent) => seen.push(e));
  await t.rejects(id.resolveAddr({ dst: { address: '198.18.0.1', port: 7471 }, timeoutMs: 2000 }), {
    name: 'VerbsError',
    code: probe.code,
    op: 'rdma_resolve_addr',
    argument: 'dst',
  });
  t.equal(seen.length, 1);
  t.match(seen[0], { event: 'ADDR_ERROR', status: -errnoOf(probe.code) });
  t.equal(id.state, 'ADDR_BOUND', 'back to ADDR_BOUND (addr_handler)');
  t.equal(id.route.sgidIndex, null);
  // The same id may try again, to a destination it can reach.
  const ok = await id.resolveAddr({ dst: src ?? '127.0.57.9', timeoutMs: 2000 });
  t.equal(ok.event, 'ADDR_RESOLVED');
  id.close();
  await cmIdle();
  ch.close();
});

t.test('timeout: ADDR_ERROR -ETIMEDOUT at timeoutMs (channel clock); the late result is dropped and its device reference given back', async (t) => {
  const fake = new FakeScheduler();
  const ch = createEventChannel({ scheduler: fake });
  const id = createId(ch);
  const p = id.resolveAddr({ src: '127.0.57.3', dst: S2, timeoutMs: 100 });
  fake.advance(99);
  t.equal(id.state, 'ADDR_QUERY');
  fake.advance(1);
  await t.rejects(p, { code: 'ETIMEDOUT', argument: 'timeoutMs', op: 'rdma_resolve_addr' });
  const ev = await ch.getEvent();
  t.match(ev, { event: 'ADDR_ERROR', status: -errnoOf('ETIMEDOUT') });
  t.equal(id.state, 'ADDR_BOUND');
  t.equal(id.verbs, null, 'not on a device');
  // The lookup and the device open finish later, for nothing: the reference they took goes back.
  await cmIdle();
  t.equal(cmDevices().length, 0, 'no CM device left open');
  t.equal(ch.pending, 0, 'and no second event');
  // Without the clock moving, the real work wins.
  const again = await id.resolveAddr({ dst: S2, timeoutMs: 100 });
  t.equal(again.event, 'ADDR_RESOLVED');
  t.equal(fake.pendingTimers(), 0, 'its timer was cleared');
  id.close();
  await cmIdle();
  ch.close();
});

t.test("loopback fallback: 127.0.0.1's UDP port taken by another process, the active side uses 127.0.0.2 and says so", async (t) => {
  const squatter = createSocket({ type: 'udp4', reuseAddr: false });
  await new Promise<void>((r) => squatter.bind({ address: '127.0.0.1', port: PRIVATE_UDP, exclusive: true }, r));
  t.teardown(() => squatter.close());
  const ch = createEventChannel();
  const id = createId(ch);
  await id.resolveAddr({ dst: { address: '127.0.0.1', port: 7471 }, timeoutMs: 2000 });
  t.equal(id.route.addr.src?.address, '127.0.0.2');
  t.equal(id.route.sgid, '::ffff:127.0.0.2');
  t.equal(id.verbs!.name, 'softroce1');
  t.equal(id.route.sgidIndex, id.verbs!.defaultSgidIndex(1));
  // A bound source is the caller's choice: no fallback.
  const bound = createId(ch);
  await t.rejects(bound.bind({ address: '127.0.0.1', port: 20103 }), { code: 'EADDRINUSE' });
  t.equal(bound.state, 'IDLE', 'the failed bind left the id IDLE');
  await t.rejects(bound.resolveAddr({ src: '127.0.0.1', dst: '127.0.0.1', timeoutMs: 2000 }), { code: 'EADDRINUSE' }, 'nor for resolveAddr({ src })');
  t.match(await ch.getEvent(), { event: 'ADDR_RESOLVED', id }, "the first id's event");
  t.match(await ch.getEvent(), { event: 'ADDR_ERROR', id: bound, status: -errnoOf('EADDRINUSE') });
  id.close();
  bound.close();
  await cmIdle();
  ch.close();
});

t.test('resolveRoute: the path record as cma_resolve_iboe_route builds it', async (t) => {
  const ch = createEventChannel();
  const id = createId(ch);
  id.setOption({ tos: 0x48 });
  await id.resolveAddr({ src: { address: S1, port: 20104 }, dst: { address: S2, port: 7471 }, timeoutMs: 2000 });
  const p = id.resolveRoute({ timeoutMs: 2000 });
  t.equal(id.state, 'ROUTE_QUERY');
  const ev = await p;
  t.match(ev, { event: 'ROUTE_RESOLVED', status: 0 });
  t.equal(id.state, 'ROUTE_RESOLVED');
  const events = [await ch.getEvent(), await ch.getEvent()];
  t.same(
    events.map((e) => e.event),
    ['ADDR_RESOLVED', 'ROUTE_RESOLVED'],
  );
  t.equal(events[1], ev);
  const path = id.route.path!;
  t.equal(id.route.numPaths, 1);
  t.equal(path.sgid, '::ffff:127.0.57.1');
  t.equal(path.dgid, '::ffff:127.0.57.2');
  t.equal(path.sgidIndex, id.route.sgidIndex);
  t.equal(path.gidType, 'RoCE v2');
  t.equal(path.flowLabel, (20104 * 31 + 7471) & 0xfffff, 'flow label (sport*31 + dport) & 0xFFFFF over the rdma_cm ports');
  t.equal(path.flowLabel, 630695);
  t.equal(path.hopLimit, Number(readFileSync('/proc/sys/net/ipv4/ip_default_ttl', 'utf8')), 'hop limit: ip_default_ttl');
  t.equal(path.trafficClass, 0x48, 'traffic class = TOS');
  t.equal(path.sl, 0, 'SL 0 on a netdev with no priority map');
  t.equal(path.pkey, 0xffff);
  const loMtu = Number(readFileSync('/sys/class/net/lo/mtu', 'utf8'));
  t.equal(path.mtu, loMtu - 96 >= 4096 ? 4096 : loMtu - 96 >= 2048 ? 2048 : 1024, 'iboe_get_mtu(lo MTU)');
  t.equal(path.packetLifeTime, 18, 'CMA_IBOE_PACKET_LIFETIME without ACK_TIMEOUT');
  // What the IB CM engine takes for the REQ (ib-cm.ts CmPath): the same path, GIDs as bytes, the MTU as the IB enum.
  const cp = cmPathOf(path, id.portNum);
  t.same([...cp.sgid], [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 0, 57, 1]);
  t.same([...cp.dgid.subarray(12)], [127, 0, 57, 2]);
  t.equal(cp.mtu, path.mtu === 4096 ? 5 : path.mtu === 2048 ? 4 : 3, 'the IB MTU enum');
  t.match(cp, { port: 1, sgidIndex: path.sgidIndex, flowLabel: 630695, trafficClass: 0x48, hopLimit: path.hopLimit, sl: 0, pkey: 0xffff, packetLifeTime: 18 });
  t.throws(() => void id.resolveRoute({ timeoutMs: 100 }), { code: 'EINVAL', op: 'rdma_resolve_route' }, 'resolved already');
  id.close();

  // ACK_TIMEOUT: packet life time = ackTimeout - 1; 0 means "not set" (the kernel's timeout_set && timeout).
  for (const [ack, life] of [
    [14, 13],
    [0, 18],
    [31, 30],
  ] as const) {
    const r = createId(ch);
    r.setOption({ ackTimeout: ack });
    await r.resolveAddr({ src: S1, dst: S2, timeoutMs: 2000 });
    await r.resolveRoute({ timeoutMs: 2000 });
    t.equal(r.route.path?.packetLifeTime, life, `ackTimeout ${ack} -> packet life ${life}`);
    t.equal(r.route.path?.trafficClass, 0, 'TOS 0 unless set');
    r.close();
  }
  t.equal(flowLabelFromPorts(60000, 65535), 876959, 'the flow label wraps at 20 bits');
  const ud = createId(ch, { ps: 'UDP' });
  t.throws(() => ud.setOption({ ackTimeout: 14 }), { code: 'EINVAL', argument: 'ackTimeout' }, 'ACK_TIMEOUT is for RC ids');
  const rc = createId(ch);
  t.throws(() => rc.setOption({ ackTimeout: 32 }), { code: 'EINVAL', argument: 'ackTimeout' });
  t.throws(() => rc.setOption({ tos: 256 }), { code: 'EINVAL', argument: 'tos' });
  t.throws(() => rc.setOption({ tos: 1, ackTimeout: -1 }), { code: 'EINVAL', argument: 'ackTimeout' });
  t.equal(rc.tos, null, 'a refused setOption sets nothing');
  t.throws(() => rc.setOption({ bogus: 1 } as never), { code: 'EINVAL', argument: 'bogus' });
  await cmIdle();
  ch.close();
});

t.test('RoCE mode v1 on a device port: the id takes the v1 GID of its source', async (t) => {
  const ch = createEventChannel();
  const name = 'softroce_127.0.57.4';
  setRoceMode(name, 1, 'v1');
  t.teardown(() => setRoceMode(name, 1, 'v2'));
  const id = createId(ch);
  await id.resolveAddr({ src: '127.0.57.4', dst: S2, timeoutMs: 2000 });
  const dev = id.verbs!;
  t.equal(dev.name, name);
  t.equal(id.route.gidType, 'RoCE v1');
  const e = dev.queryGid(id.route.sgidIndex!, 1)!;
  t.equal(e.type, 'RoCE v1');
  t.not(id.route.sgidIndex, dev.defaultSgidIndex(1), 'not the v2 index');
  await id.resolveRoute({ timeoutMs: 1000 });
  t.equal(id.route.path?.gidType, 'RoCE v1');
  t.throws(() => setRoceMode(name, 1, 'v3' as 'v1'), { code: 'EINVAL', argument: 'mode' });
  id.close();
  await cmIdle();
  ch.close();
});

t.test('DEVICE_REMOVAL: the device of a resolved id closes; the id hears it, refuses calls, and closes cleanly', async (t) => {
  const ch = createEventChannel();
  const own = await openDevice({ address: '127.0.57.5' });
  const a = createId(ch, { device: own });
  const b = createId(ch); // on a CM device
  await a.resolveAddr({ src: '127.0.57.5', dst: S2, timeoutMs: 2000 });
  await b.resolveAddr({ src: S1, dst: S2, timeoutMs: 2000 });
  await b.resolveRoute({ timeoutMs: 1000 });
  while (ch.tryGetEvent() !== null);
  await own.close();
  const ev = await ch.getEvent({ timeoutMs: 1000 });
  t.match(ev, { event: 'DEVICE_REMOVAL', status: 0 });
  t.equal(ev.id, a);
  t.equal(a.state, 'DEVICE_REMOVAL');
  t.equal(b.state, 'ROUTE_RESOLVED', 'an id on another device is not touched');
  t.throws(() => void a.resolveRoute({ timeoutMs: 100 }), { code: 'EINVAL', op: 'rdma_resolve_route', argument: 'id' });
  a.close();
  t.equal(a.state, 'DESTROYING');
  // The CM's own device closed under its id (someone closed id.verbs).
  await b.verbs!.close();
  const ev2 = await ch.getEvent({ timeoutMs: 1000 });
  t.match(ev2, { event: 'DEVICE_REMOVAL' });
  t.equal(ev2.id, b);
  b.close();
  t.equal(cmDevices().length, 0, 'the registry forgot the closed device');
  // A new id on the same address opens a new device.
  const c = createId(ch);
  await c.resolveAddr({ src: S1, dst: S2, timeoutMs: 2000 });
  t.equal(c.verbs!.closed, false);
  c.close();
  await cmIdle();
  ch.close();
});

t.test('a createId device that has no port with the routed source: ADDR_ERROR -ENODEV', async (t) => {
  const ch = createEventChannel();
  const own = await openDevice({ address: '127.0.57.6' });
  t.teardown(() => own.close());
  const id = createId(ch, { device: own });
  // The routing table picks 127.0.0.1 for 127.0.57.2: not a port of this device.
  await t.rejects(id.resolveAddr({ dst: S2, timeoutMs: 2000 }), { code: 'ENODEV' });
  t.match(await ch.getEvent(), { event: 'ADDR_ERROR', status: -errnoOf('ENODEV') });
  id.close();
  ch.close();
});

t.test('in-memory devices (fake addresses, fake clock): the bound address is the source, no host route lookup', async (t) => {
  const fake = new FakeScheduler();
  const net = new MemNetwork(fake);
  const d1 = await openDevice({ scheduler: fake, link: net.attach('10.57.0.1') });
  const d2 = await openDevice({ scheduler: fake, link: net.attach('10.57.0.2') });
  t.teardown(async () => {
    await d1.close();
    await d2.close();
  });
  const ch = createEventChannel({ scheduler: fake });
  const id = createId(ch, { device: d1 });
  await id.resolveAddr({ dst: { address: '10.57.0.2', port: 7471 }, timeoutMs: 1000 });
  t.equal(id.route.addr.src?.address, '10.57.0.1');
  t.equal(id.route.sgidIndex, d1.defaultSgidIndex(1));
  t.equal(id.verbs, d1);
  id.close();
  ch.close();
});

const v6 = await hasIpv6Loopback();

t.test('IPv6 loopback: ::1 resolves to a device on ::1 with the GID ::1', { skip: v6 ? false : 'this host has no IPv6 loopback (::1)' }, async (t) => {
  const ch = createEventChannel();
  const id = createId(ch);
  await id.resolveAddr({ dst: { address: '::1', port: 7471 }, timeoutMs: 2000 });
  t.equal(id.route.addr.src?.address, '::1');
  t.equal(id.route.addr.src?.family, 6);
  t.equal(id.route.sgid, '::1');
  t.equal(id.route.sgidIndex, id.verbs!.defaultSgidIndex(1));
  await id.resolveRoute({ timeoutMs: 1000 });
  t.equal(id.route.path?.flowLabel, flowLabelFromPorts(id.getSrcPort(), 7471), 'IPv6 without a flow label of its own: the same formula');
  t.equal(id.afOnly, false, 'an IPv6 id shares its port with IPv4 unless AFONLY (bindv6only 0)');
  id.close();
  await cmIdle();
  ch.close();
});

t.test('event-driven use: the promises may be ignored (no unhandled rejection), the channel has everything', async (t) => {
  const unhandled: unknown[] = [];
  const onUnhandled = (e: unknown): void => void unhandled.push(e);
  process.on('unhandledRejection', onUnhandled);
  t.teardown(() => void process.off('unhandledRejection', onUnhandled));
  const ch = createEventChannel();
  const ok = createId(ch);
  const bad = createId(ch);
  await bad.bind(S1);
  void ok.resolveAddr({ src: S1, dst: S2, timeoutMs: 2000 });
  void bad.resolveAddr({ dst: '198.18.0.1', timeoutMs: 2000 }); // a 127/8 source: refused by the routing table
  const got = new Map<unknown, string>();
  for await (const ev of ch) {
    got.set(ev.id, ev.event);
    if (ev.id === ok && ev.event === 'ADDR_RESOLVED') void ok.resolveRoute({ timeoutMs: 1000 });
    if (got.get(ok) === 'ROUTE_RESOLVED' && got.get(bad) === 'ADDR_ERROR') break;
  }
  await new Promise((r) => setImmediate(r));
  t.same(unhandled, [], 'the rejected promise nobody awaited was not reported');
  ok.close();
  bad.close();
  await cmIdle();
  ch.close();
});

t.test('500 ids resolved and closed on one device: no growth in listeners, ports, queued events, timers or devices', async (t) => {
  const fake = new FakeScheduler();
  const ch = createEventChannel({ scheduler: fake });
  const holder = createId(ch);
  await holder.bind(S1);
  const dev = holder.verbs!;
  const base = { close: dev.listenerCount('close'), refs: cmDevices()[0]!.refs };
  for (let i = 0; i < 500; i++) {
    const id = createId(ch);
    await id.resolveAddr({ src: S1, dst: { address: S2, port: 7471 }, timeoutMs: 1000 });
    await id.resolveRoute({ timeoutMs: 1000 });
    if (i === 0) t.equal(dev.listenerCount('close'), base.close, "one close listener per device (devices.ts): the holder's covers the new id");
    id.close();
  }
  t.equal(dev.listenerCount('close'), base.close, "every id's listener is gone");
  t.equal(cmDevices().length, 1);
  t.equal(cmDevices()[0]!.refs, base.refs, 'every reference given back');
  t.equal(ch.pending, 0, "closed ids' events were dropped");
  t.equal(fake.pendingTimers(), 0, 'every resolution timer cleared');
  holder.close();
  await cmIdle();
  t.equal(dev.closed, true);
  ch.close();
});

t.test('a two-port device given at createId: an id bound to port 2’s address is on port 2, with its GID', async (t) => {
  const fake = new FakeScheduler();
  const net = new MemNetwork(fake);
  const dev = await openDevice({ scheduler: fake, links: [net.attach('10.57.1.1'), net.attach('10.57.2.1')] });
  t.teardown(() => dev.close());
  const ch = createEventChannel({ scheduler: fake });
  const id = createId(ch, { device: dev });
  await id.bind({ address: '10.57.2.1', port: 7000 });
  t.equal(id.portNum, 2);
  await id.resolveAddr({ dst: '10.57.2.9', timeoutMs: 1000 });
  t.equal(id.portNum, 2);
  t.equal(id.route.sgidIndex, dev.defaultSgidIndex(2));
  t.equal(id.route.sgid, '::ffff:10.57.2.1');
  id.close();
  ch.close();
});
