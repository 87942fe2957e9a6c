/**
 * Devices with several ports (issue 12 item 2), over the in-memory network with a fake clock: each
 * port its own link, GID table and counters; a QP's port set at RESET -> INIT and honoured by the
 * receive path; QP1 per port; AHs per port; the device list's multi-port syntax; the tools list every port.
 */
import t from 'tap';
import { openDevice, getDeviceList, interfaceDevices, portsOf, type Device } from '../../src/verbs/device.js';
import { connectQp, remoteOf } from '../../src/verbs/connect.js';
import { Wc } from '../../src/verbs/types.js';
import { FakeScheduler } from '../../src/roce/sched.js';
import { MemNetwork } from '../../src/roce/link/link.js';
import { ibdev2netdev, ibvDevinfo, showGids } from '../../src/cli/devtools.js';
import { spawn, spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { ROOT, Rng } from '../helpers.js';

const A = ['10.12.1.1', '10.12.2.1'];
const B = ['10.12.1.2', '10.12.2.2'];

async function twoPortPair(): Promise<{ sched: FakeScheduler; a: Device; b: Device }> {
  const sched = new FakeScheduler();
  const net = new MemNetwork(sched);
  const open = (name: string, addrs: string[]): Promise<Device> =>
    openDevice({ name, scheduler: sched, ports: addrs.map((address, i) => ({ address, netdev: `veth${i}` })), links: addrs.map((ip) => net.attach(ip)) });
  return { sched, a: await open('mpa', A), b: await open('mpb', B) };
}

t.test('two ports per device: RC and UD on QPs of both ports at once, bytes checked, per-port counters', async (t) => {
  const { sched, a, b } = await twoPortPair();
  t.equal(a.query().physPortCnt, 2);
  t.same(
    [1, 2].map((p) => [a.queryPort(p).address, a.queryPort(p).netdev]),
    [
      [A[0], 'veth0'],
      [A[1], 'veth1'],
    ],
    'each port has its address and netdev',
  );
  t.ok(
    a.gidTable(2).some((g) => g.type === 'RoCE v2' && g.gid.join('.').endsWith('.255.255.10.12.2.1')),
    "port 2's GID table holds port 2's address",
  );
  t.notOk(
    a.gidTable(1).some((g) => g.gid.join('.').endsWith('.255.255.10.12.2.1')),
    "port 1's does not",
  );

  const rng = new Rng(0x12f0);
  const side = (d: Device) => {
    const pd = d.allocPd();
    const cq = d.createCq({ depth: 64 });
    const mem = Buffer.alloc(1 << 20);
    const mr = pd.regMr(mem, ['LOCAL_WRITE', 'REMOTE_WRITE', 'REMOTE_READ']);
    return { pd, cq, mem, mr };
  };
  const sa = side(a),
    sb = side(b);
  // RC: one QP per port on each side, port 1's in the first half of memory, port 2's in the second.
  const rc = [1, 2].map((port) => {
    const qa = sa.pd.createQp({ type: 'RC', sendCq: sa.cq, recvCq: sa.cq, cap: { maxSendWr: 16, maxRecvWr: 16 } });
    const qb = sb.pd.createQp({ type: 'RC', sendCq: sb.cq, recvCq: sb.cq, cap: { maxSendWr: 16, maxRecvWr: 16 } });
    const ea = qa.endpoint({ mr: sa.mr, port });
    const eb = qb.endpoint({ mr: sb.mr, port });
    t.equal(eb.gid, `::ffff:${B[port - 1]!}`, `port ${port}: the endpoint carries the port's GID`);
    connectQp(qa, { port, pathMtu: 1024 }, eb);
    connectQp(qb, { port, pathMtu: 1024 }, ea);
    t.equal(qa.port, port, `RC QP on port ${port}`);
    return { qa, qb, eb };
  });
  // UD: one QP per port on each side.
  const ud = [1, 2].map((port) => {
    const mk = (s: typeof sa) =>
      s.pd
        .createQp({ type: 'UD', sendCq: s.cq, recvCq: s.cq, cap: { maxSendWr: 16, maxRecvWr: 16 } })
        .toInit({ port, qkey: 0x1234 })
        .toRtr()
        .toRts();
    return { qa: mk(sa), qb: mk(sb) };
  });

  const before = [1, 2].map((p) => a.counters(p)['sent_pkts']!);
  const sizes = [200_000, 120_000];
  const data = sizes.map((n) => rng.bytes(n));
  for (const [i, { qa, eb }] of rc.entries()) {
    Buffer.from(data[i]!).copy(sa.mem, i << 19);
    qa.postSend({ wrId: 10 + i, opcode: 'RDMA_WRITE', signaled: true, sg: [{ mr: sa.mr, offset: i << 19, length: sizes[i]! }], remote: remoteOf(eb, i << 19) });
  }
  const udMsg = [rng.bytes(900), rng.bytes(700)];
  for (const [i, { qa, qb }] of ud.entries()) {
    const off = 0xf0000 + i * 0x1000;
    qb.postRecv({ wrId: 20 + i, sg: [{ mr: sb.mr, offset: off, length: 1024 + 40 }] });
    Buffer.from(udMsg[i]!).copy(sa.mem, off);
    const ah = sa.pd.createAh({ gid: B[i]!, port: i + 1 });
    qa.postSend({
      wrId: 30 + i,
      opcode: 'SEND',
      signaled: true,
      sg: [{ mr: sa.mr, offset: off, length: udMsg[i]!.length }],
      ud: { ah, remoteQpn: qb.qpn, remoteQkey: 0x1234 },
    });
  }
  sched.advance(50);
  const wc = [new Wc()];
  const got = (cq: typeof sa.cq): Map<bigint, string> => {
    const m = new Map<bigint, string>();
    while (cq.poll(wc) > 0) m.set(BigInt(wc[0]!.wrId), `${wc[0]!.status}/${wc[0]!.byteLen}`);
    return m;
  };
  const ca = got(sa.cq),
    cb = got(sb.cq);
  for (let i = 0; i < 2; i++) {
    t.equal(ca.get(BigInt(10 + i))?.split('/')[0], 'SUCCESS', `port ${i + 1}: RC WRITE completes`);
    t.ok(Buffer.from(data[i]!).equals(sb.mem.subarray(i << 19, (i << 19) + sizes[i]!)), `port ${i + 1}: the ${sizes[i]} written bytes landed unchanged`);
    t.equal(ca.get(BigInt(30 + i))?.split('/')[0], 'SUCCESS', `port ${i + 1}: UD SEND completes`);
    t.equal(cb.get(BigInt(20 + i)), `SUCCESS/${udMsg[i]!.length + 40}`, `port ${i + 1}: UD message received`);
    const off = 0xf0000 + i * 0x1000 + 40;
    t.ok(Buffer.from(udMsg[i]!).equals(sb.mem.subarray(off, off + udMsg[i]!.length)), `port ${i + 1}: UD bytes after the GRH unchanged`);
  }
  // Per-port counters: each port sent its own share (WRITE packets at MTU 1024 + one UD packet).
  const sent = [1, 2].map((p, i) => a.counters(p)['sent_pkts']! - before[i]!);
  t.same(sent, [Math.ceil(sizes[0]! / 1024) + 1, Math.ceil(sizes[1]! / 1024) + 1], `per-port sent_pkts: ${sent.join(' / ')}`);
  t.same(
    [1, 2].map((p) => b.counters(p)['rcvd_pkts']),
    sent,
    "the peer's ports received what each port sent",
  );
  await a.close();
  await b.close();
});

t.test("the receive path honours the QP's port; an AH of another port is refused; QP1 per port", async (t) => {
  await t.rejects(openDevice({ ports: [{ address: '127.0.0.1' }], address: '127.0.0.1' }), { code: 'EINVAL', argument: 'ports' });
  await t.rejects(openDevice({ ports: [], native: 'off' }), { code: 'EINVAL', argument: 'ports' });
  await t.rejects(openDevice({ ports: [{ address: 'eth0' }] }), { code: 'EINVAL', argument: 'ports[0].address' });
  const { sched, a, b } = await twoPortPair();
  const pa = a.allocPd(),
    pb = b.allocPd();
  const ca = a.createCq({ depth: 16 }),
    cb = b.createCq({ depth: 16 });
  const mra = pa.regMr(Buffer.alloc(4096), ['LOCAL_WRITE']);
  const mrb = pb.regMr(Buffer.alloc(4096), ['LOCAL_WRITE', 'REMOTE_WRITE']);
  // B's QP is on port 1; A sends to it through B's port 2 address: dropped there, counted on port 2.
  const qb = pb.createQp({ type: 'RC', sendCq: cb, recvCq: cb, cap: { maxSendWr: 4, maxRecvWr: 4 } });
  const qa = pa.createQp({ type: 'RC', sendCq: ca, recvCq: ca, cap: { maxSendWr: 4, maxRecvWr: 4 } });
  const eb = qb.endpoint({ mr: mrb });
  connectQp(qb, { port: 1 }, qa.endpoint({ port: 2 }));
  connectQp(qa, { port: 2, timeout: 14, retryCnt: 0 }, { ...eb, gid: B[1]! });
  qa.postSend({ wrId: 1, opcode: 'RDMA_WRITE', signaled: true, sg: [{ mr: mra, offset: 0, length: 64 }], remote: remoteOf(eb) });
  sched.advance(5);
  t.ok(b.counters(2)['rcvd_bad_state']! >= 1, `a packet for a port-1 QP arriving on port 2 is dropped (rcvd_bad_state ${b.counters(2)['rcvd_bad_state']})`);
  t.equal(b.counters(1)['rcvd_pkts'], 0, 'port 1 saw nothing');

  const ud = pa
    .createQp({ type: 'UD', sendCq: ca, recvCq: ca, cap: { maxSendWr: 4, maxRecvWr: 4 } })
    .toInit({ port: 2, qkey: 1 })
    .toRtr()
    .toRts();
  const ah1 = pa.createAh({ gid: B[0]! });
  t.throws(
    () => ud.postSend({ wrId: 2, opcode: 'SEND', sg: [], ud: { ah: ah1, remoteQpn: 0x20, remoteQkey: 1 } }),
    { code: 'EINVAL', argument: 'ud' },
    'AH of port 1 on a port-2 QP',
  );
  t.throws(() => pa.createAh({ gid: B[0]!, port: 3 }), { code: 'EINVAL', argument: 'port' });

  // QP1 of each port: a MAD to B's port 2 reaches B's port-2 QP1 only.
  const gsi = (d: Device, pd: typeof pa, cq: typeof ca, port: number) =>
    d.openGsi(pd, { sendCq: cq, recvCq: cq, port }).toInit({ qkey: 0x80010000 }).toRtr().toRts();
  const ga2 = gsi(a, pa, ca, 2);
  const gb1 = gsi(b, pb, cb, 1),
    gb2 = gsi(b, pb, cb, 2);
  t.throws(() => b.openGsi(pb, { sendCq: cb, recvCq: cb, port: 2 }), { code: 'EBUSY' }, 'one QP1 per port');
  t.equal(b.gsiOn(2), gb2);
  t.equal(b.gsi, gb1, 'device.gsi is port 1');
  t.same([gb1.port, gb2.port, gb1.qpn, gb2.qpn], [1, 2, 1, 1]);
  gb1.postRecv({ wrId: 41, sg: [{ mr: mrb, offset: 0, length: 296 }] });
  gb2.postRecv({ wrId: 42, sg: [{ mr: mrb, offset: 1024, length: 296 }] });
  const ah = pa.createAh({ gid: B[1]!, port: 2 });
  ga2.postSend({ wrId: 3, opcode: 'SEND', sg: [{ mr: mra, offset: 0, length: 256 }], ud: { ah, remoteQpn: 1, remoteQkey: 0x80010000 } });
  sched.advance(1);
  const w = [new Wc()];
  const ids: bigint[] = [];
  while (cb.poll(w) > 0) if (w[0]!.opcode === 'RECV' && w[0]!.status === 'SUCCESS') ids.push(BigInt(w[0]!.wrId));
  t.same(ids, [42n], "the MAD arrived at port 2's QP1");
  await a.close();
  await b.close();
  t.equal(b.gsiOn(2), null, 'closed with the device');
});

t.test('device list: multi-port SOFTROCE_DEVICES and config file; one device per interface without configuration', (t) => {
  const env = { SOFTROCE_DEVICES: 'mp0=veth0:198.19.5.1+veth1:198.19.6.1,one=lo:127.0.0.1,v6=eth0:fd00::2+eth1:fd00:1::2', SOFTROCE_CONFIG: '/nonexistent' };
  const l = getDeviceList(env);
  t.same(l[0], {
    name: 'mp0',
    netdev: 'veth0',
    address: '198.19.5.1',
    ports: [
      { netdev: 'veth0', address: '198.19.5.1' },
      { netdev: 'veth1', address: '198.19.6.1' },
    ],
  });
  t.same(l[1], { name: 'one', netdev: 'lo', address: '127.0.0.1' }, 'a one-port device keeps the one-port shape');
  t.same(
    portsOf(l[2]!).map((p) => p.address),
    ['fd00::2', 'fd00:1::2'],
    'IPv6 addresses: the netdev ends at the first colon',
  );
  t.same(portsOf(l[1]!), [{ netdev: 'lo', address: '127.0.0.1' }]);
  for (const bad of ['x=', 'x=eth0:1.2.3.4+', 'x=eth0:1.2.3.4+eth1', '=eth0:1.2.3.4'])
    t.throws(() => getDeviceList({ SOFTROCE_DEVICES: bad }), { code: 'EINVAL', argument: 'SOFTROCE_DEVICES' }, bad);

  const ifs = {
    lo: [{ address: '127.0.0.1', netmask: '255.0.0.0', family: 'IPv4', mac: '00:00:00:00:00:00', internal: true, cidr: '127.0.0.1/8' }],
    eth1: [{ address: 'fe80::1', netmask: 'ffff:ffff:ffff:ffff::', family: 'IPv6', mac: '02:00:00:00:00:02', internal: false, cidr: 'fe80::1/64', scopeid: 2 }],
    eth0: [
      { address: 'fd00::2', netmask: 'ffff:ffff:ffff:ffff::', family: 'IPv6', mac: '02:00:00:00:00:01', internal: false, cidr: 'fd00::2/64', scopeid: 0 },
      { address: '192.0.2.2', netmask: '255.255.255.0', family: 'IPv4', mac: '02:00:00:00:00:01', internal: false, cidr: '192.0.2.2/24' },
    ],
    'eth0:1': [{ address: '192.0.2.9', netmask: '255.255.255.0', family: 'IPv4', mac: '02:00:00:00:00:01', internal: false, cidr: '192.0.2.9/24' }],
    wg0: [{ address: 'fd01::5', netmask: 'ffff:ffff:ffff:ffff::', family: 'IPv6', mac: '00:00:00:00:00:00', internal: false, cidr: 'fd01::5/64', scopeid: 0 }],
  } as const;
  const fake = ifs as unknown as Parameters<typeof interfaceDevices>[0];
  t.same(interfaceDevices(fake), [
    { name: 'softroce_eth0', netdev: 'eth0', address: '192.0.2.2' },
    { name: 'softroce_wg0', netdev: 'wg0', address: 'fd01::5' },
  ]);
  t.same(
    getDeviceList({ SOFTROCE_CONFIG: '/nonexistent' }, fake).map((d) => d.name),
    ['softroce0', 'softroce1', 'softroce_eth0', 'softroce_wg0'],
    'no configuration: the loopback demo devices, then one per interface (up, with an address) by name',
  );
  t.end();
});

t.test('ibv_devinfo, show_gids and ibdev2netdev list every port', async (t) => {
  const saved = process.env['SOFTROCE_DEVICES'];
  process.env['SOFTROCE_DEVICES'] = 'mpcli=lo:127.0.83.1+lo:127.0.83.2';
  t.teardown(() => {
    if (saved === undefined) delete process.env['SOFTROCE_DEVICES'];
    else process.env['SOFTROCE_DEVICES'] = saved;
  });
  const lines: string[] = [];
  const out = (s: string): void => void lines.push(s);
  await ibdev2netdev(out);
  t.same(lines, ['mpcli port 1 ==> lo (Up)', 'mpcli port 2 ==> lo (Up)']);
  lines.length = 0;
  await ibvDevinfo(['-d', 'mpcli'], out);
  t.match(lines.join('\n'), /phys_port_cnt:\t+2[\s\S]*port:\t1[\s\S]*port:\t2/);
  lines.length = 0;
  await showGids(['mpcli'], out);
  t.ok(
    lines.some((l) => /^mpcli\t1\t\d+\t.*127\.0\.83\.1/.test(l)),
    'show_gids: port 1 holds 127.0.83.1',
  );
  t.ok(
    lines.some((l) => /^mpcli\t2\t\d+\t.*127\.0\.83\.2/.test(l)),
    'show_gids: port 2 holds 127.0.83.2',
  );
  // The device opens over real loopback sockets: one per port.
  const dev = await openDevice({ name: 'mpcli' });
  t.same(
    dev.ports.map((p) => p.link.localIp),
    ['127.0.83.1', '127.0.83.2'],
  );
  await dev.close();
});

t.test('ibv_ud_pingpong -i 2: UD on port 2 of two-port loopback devices (the AH takes the QP port)', async (t) => {
  const env = { ...process.env, SOFTROCE_DEVICES: 'mpud_a=lo:127.0.85.1+lo:127.0.85.2,mpud_b=lo:127.0.85.3+lo:127.0.85.4' };
  const bin = (tool: string): string => join(ROOT, 'bin', `${tool}.js`);
  const gidIndex = (dev: string, ip: string): number => {
    const r = spawnSync(process.execPath, [bin('show_gids'), dev, '2'], { encoding: 'utf8', env });
    const line = r.stdout.split('\n').find((l) => l.startsWith(`${dev}\t2\t`) && l.includes(ip) && /\tv2\t/.test(l));
    return line ? Number(line.split('\t')[2]) : -1;
  };
  const ga = gidIndex('mpud_a', '127.0.85.2'),
    gb = gidIndex('mpud_b', '127.0.85.4');
  t.ok(ga >= 0 && gb >= 0, `port 2's v2 GID indexes found (${ga}, ${gb})`);
  const run = (args: string[]): Promise<{ code: number | null; out: string }> =>
    new Promise((res) => {
      const p = spawn(process.execPath, [bin('ibv_ud_pingpong'), ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
      let out = '';
      p.stdout.on('data', (d: Buffer) => (out += d.toString()));
      p.stderr.on('data', (d: Buffer) => (out += d.toString()));
      const timer = setTimeout(() => p.kill('SIGKILL'), 30_000);
      p.on('exit', (code) => {
        clearTimeout(timer);
        res({ code, out });
      });
    });
  const common = ['-i', '2', '-p', '18573', '-n', '20', '-s', '512'];
  const server = run(['-d', 'mpud_a', '-g', String(ga), ...common]);
  await new Promise((r) => setTimeout(r, 1500)); // the server listens on its TCP port first
  const client = run(['-d', 'mpud_b', '-g', String(gb), ...common, '127.0.0.1']);
  const [s, c] = await Promise.all([server, client]);
  t.equal(s.code, 0, `server exits 0${s.code === 0 ? '' : `: ${s.out}`}`);
  t.equal(c.code, 0, `client exits 0${c.code === 0 ? '' : `: ${c.out}`}`);
  t.match(c.out, /20 iters/, 'the client ran its 20 iterations');
});
