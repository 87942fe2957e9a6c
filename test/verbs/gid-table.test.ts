/**
 * The live GID table (issue 12 item 3), with a fake address source: the interface list and the
 * "addresses changed" trigger are the test's. What is checked: the kernel's layout (default GID
 * at 0/1, each address v1 then v2), stable indexes and reuse of holes, GID_CHANGE, the typed
 * error and counter of a full table, which netdevs count for a port (alias, VLAN, bond), and a
 * send whose source GID entry has gone: dropped and counted, never thrown.
 */
import t from 'tap';
import { openDevice, type Device, type AsyncEvent } from '../../src/verbs/device.js';
import { connectQp } from '../../src/verbs/connect.js';
import { FakeScheduler } from '../../src/roce/sched.js';
import { MemNetwork } from '../../src/roce/link/link.js';
import { gidToString } from '../../src/roce/gid.js';
import { Wc } from '../../src/verbs/types.js';
import { VerbsError } from '../../src/verbs/errors.js';
import { tiedNetdevs, wantedGids, type AddressSource, type IfAddr, type NetdevInfo } from '../../src/verbs/addr-watch.js';
import { buildGidTable } from '../../src/verbs/discovery.js';

/** A fake host: the test edits `addrs` and calls `changed()`, as netlink or the poll would. */
class FakeHost implements AddressSource {
  addrs: IfAddr[];
  readonly netdevs: NetdevInfo;
  private readonly cbs = new Set<() => void>();
  constructor(addrs: IfAddr[], netdevs: Partial<NetdevInfo> = {}) {
    this.addrs = addrs;
    this.netdevs = { uppers: () => [], vlanRealDev: () => null, bondActiveSlave: () => null, ...netdevs };
  }
  list(): IfAddr[] {
    return this.addrs.slice();
  }
  watch(cb: () => void): () => void {
    this.cbs.add(cb);
    return () => this.cbs.delete(cb);
  }
  get watchers(): number {
    return this.cbs.size;
  }
  changed(): void {
    for (const cb of [...this.cbs]) cb();
  }
  add(name: string, address: string): void {
    this.addrs.push({ name, address, family: address.includes(':') ? 6 : 4 });
    this.changed();
  }
  del(address: string): void {
    this.addrs = this.addrs.filter((a) => a.address !== address);
    this.changed();
  }
}

const rows = (d: Device): string[] => d.gidTable().map((g) => `${g.index} ${gidToString(g.gid)} ${g.type === 'RoCE v1' ? 'v1' : 'v2'} ${g.netdev}`);

async function open(host: FakeHost, o: { address?: string; gidTblLen?: number; net?: MemNetwork; sched?: FakeScheduler } = {}): Promise<Device> {
  const sched = o.sched ?? new FakeScheduler();
  const net = o.net ?? new MemNetwork(sched);
  const address = o.address ?? '198.19.0.1';
  return openDevice({
    address,
    netdev: 'eth9',
    scheduler: sched,
    link: net.attach(address),
    addresses: host,
    ...(o.gidTblLen ? { gidTblLen: o.gidTblLen } : {}),
  });
}

t.test('layout: default GID at 0/1, then each address v1 then v2 (IPv4 before IPv6), netdev per entry', async (t) => {
  const host = new FakeHost([
    { name: 'eth9', address: '198.19.0.1', family: 4 },
    { name: 'eth9', address: 'fd00::1', family: 6 },
    { name: 'eth9', address: '198.19.0.2', family: 4 },
    { name: 'eth8', address: '198.19.9.9', family: 4 },
  ]);
  const d = await open(host);
  t.teardown(() => d.close());
  // MemLink has no MAC of its own; the device's MAC is what openDevice found for the address (none: zeros).
  const dflt = gidToString(d.queryGid(0)!.gid);
  t.match(dflt, /^fe80::/);
  t.same(rows(d), [
    `0 ${dflt} v1 eth9`,
    `1 ${dflt} v2 eth9`,
    '2 ::ffff:198.19.0.1 v1 eth9',
    '3 ::ffff:198.19.0.1 v2 eth9',
    '4 ::ffff:198.19.0.2 v1 eth9',
    '5 ::ffff:198.19.0.2 v2 eth9',
    '6 fd00::1 v1 eth9',
    '7 fd00::1 v2 eth9',
  ]);
  t.equal(d.defaultSgidIndex(), 3, "QPs use the bound address's RoCE v2 entry");
  t.equal(d.queryPort().gidTblLen, 128, 'gid_tbl_len: 128 by default');
  t.equal(d.queryGid(100), null, 'an empty slot');
  t.throws(() => d.queryGid(128), { code: 'EINVAL', argument: 'index' });
});

t.test('the loopback layout the interop tests rely on is unchanged (bound address last when lo does not list it)', async (t) => {
  const host = new FakeHost([
    { name: 'lo', address: '127.0.0.1', family: 4 },
    { name: 'lo', address: '::1', family: 6 },
  ]);
  const zero = new Uint8Array(6);
  const one = buildGidTable('lo', zero, '127.0.0.1', host).map((g) => `${g.index} ${gidToString(g.gid)} ${g.type}`);
  t.same(one.slice(2), ['2 ::ffff:127.0.0.1 RoCE v1', '3 ::ffff:127.0.0.1 RoCE v2', '4 ::1 RoCE v1', '5 ::1 RoCE v2']);
  const two = buildGidTable('lo', zero, '127.0.0.2', host).map((g) => `${g.index} ${gidToString(g.gid)} ${g.type}`);
  t.same(two.slice(6), ['6 ::ffff:127.0.0.2 RoCE v1', '7 ::ffff:127.0.0.2 RoCE v2']);
});

t.test('addresses come and go: GID_CHANGE, stable indexes, holes reused, pinned bound address stays', async (t) => {
  const host = new FakeHost([{ name: 'eth9', address: '198.19.0.2', family: 4 }]);
  const d = await open(host); // bound to 198.19.0.1, which eth9 does not list: pinned
  t.teardown(() => d.close());
  const events: AsyncEvent[] = [];
  d.on('async', (e: AsyncEvent) => events.push(e));
  t.same(rows(d).slice(2), ['2 ::ffff:198.19.0.2 v1 eth9', '3 ::ffff:198.19.0.2 v2 eth9', '4 ::ffff:198.19.0.1 v1 eth9', '5 ::ffff:198.19.0.1 v2 eth9']);

  host.changed();
  t.same(events, [], 'nothing changed: no event');

  host.add('eth9', '198.19.0.3');
  t.same(events, [{ type: 'GID_CHANGE', port: 1 }], 'an address added: GID_CHANGE on port 1');
  t.same(rows(d).slice(6), ['6 ::ffff:198.19.0.3 v1 eth9', '7 ::ffff:198.19.0.3 v2 eth9']);

  host.del('198.19.0.2');
  t.equal(events.length, 2, 'an address deleted: GID_CHANGE');
  t.equal(d.queryGid(2), null, 'its v1 slot is a hole');
  t.equal(d.queryGid(3), null, 'its v2 slot is a hole');
  t.equal(gidToString(d.queryGid(6)!.gid), '::ffff:198.19.0.3', 'the entries after it keep their indexes');
  t.equal(d.defaultSgidIndex(), 5, 'the pinned bound address keeps its index');

  host.add('eth9:1', '198.19.0.4'); // an alias label of eth9
  t.same(rows(d).slice(2, 4), ['2 ::ffff:198.19.0.4 v1 eth9', '3 ::ffff:198.19.0.4 v2 eth9'], 'a later address takes the lowest hole; an alias is its netdev');
  t.equal(events.length, 3);

  host.del('198.19.0.1');
  t.equal(gidToString(d.queryGid(4)!.gid), '::ffff:198.19.0.1', 'the bound address was never listed: it stays (pinned)');
});

t.test('a full table: ENOSPC on the device, counted once per refused GID, admitted when a slot frees', async (t) => {
  const host = new FakeHost([
    { name: 'eth9', address: '198.19.0.1', family: 4 },
    { name: 'eth9', address: '198.19.0.2', family: 4 },
  ]);
  const d = await open(host, { gidTblLen: 6 });
  t.teardown(() => d.close());
  t.equal(d.queryPort().gidTblLen, 6);
  const errs: unknown[] = [];
  d.on('gidTableFull', (e: unknown) => errs.push(e));
  host.add('eth9', '198.19.0.3');
  t.equal(errs.length, 2, 'v1 and v2 both refused');
  t.ok(errs[0] instanceof VerbsError);
  t.match(errs[0], { code: 'ENOSPC', op: 'ib_cache_gid_add', argument: 'gid' });
  t.equal(d.counters().gid_table_full, 2);
  host.changed();
  host.changed();
  t.equal(d.counters().gid_table_full, 2, 'polling again does not count the same refusal again');
  t.equal(errs.length, 2);
  host.del('198.19.0.2');
  t.same(rows(d).slice(4), ['4 ::ffff:198.19.0.3 v1 eth9', '5 ::ffff:198.19.0.3 v2 eth9'], 'the refused address gets the freed slots');
  await t.rejects(openDevice({ address: '198.19.0.1', link: new MemNetwork(new FakeScheduler()).attach('198.19.0.1'), gidTblLen: 1 }), {
    code: 'EINVAL',
    argument: 'gidTblLen',
  });
});

t.test('tied netdevs: VLANs, a bond master for its active slave only, uppers of those', async (t) => {
  const uppers: Record<string, string[]> = { eth9: ['eth9.10', 'bond0'], eth8: ['bond0'], bond0: ['bond0.5'], 'eth9.10': [] };
  const vlan: Record<string, string> = { 'eth9.10': 'eth9', 'bond0.5': 'bond0' };
  const bond: Record<string, string> = { bond0: 'eth9' };
  const info: NetdevInfo = {
    uppers: (d) => uppers[d] ?? [],
    vlanRealDev: (d) => vlan[d] ?? null,
    bondActiveSlave: (d) => bond[d] ?? null,
  };
  t.same(tiedNetdevs('eth9', info), ['eth9', 'eth9.10', 'bond0', 'bond0.5'], 'the active slave gets the bond and its VLAN');
  t.same(tiedNetdevs('eth8', info), ['eth8'], 'an inactive slave does not');
  bond['bond0'] = '';
  t.same(tiedNetdevs('eth8', info), ['eth8', 'bond0', 'bond0.5'], 'a bond without an active slave (not active-backup): every slave');
  bond['bond0'] = 'eth9';
  const host = new FakeHost(
    [
      { name: 'eth9', address: '198.19.0.1', family: 4 },
      { name: 'bond0', address: '198.19.1.1', family: 4 },
      { name: 'eth9.10', address: '198.19.10.1', family: 4 },
      { name: 'eth7', address: '198.19.7.1', family: 4 },
      { name: 'bond0.5', address: '198.19.5.1', family: 4 },
    ],
    info,
  );
  t.same(
    wantedGids('eth9', host).map((w) => `${gidToString(w.gid)} ${w.netdev}`),
    ['::ffff:198.19.0.1 eth9', '::ffff:198.19.1.1 bond0', '::ffff:198.19.10.1 eth9.10', '::ffff:198.19.5.1 bond0.5'],
  );
  const d = await open(host);
  t.teardown(() => d.close());
  t.equal(d.gidTable().length, 10, 'default + 4 addresses, two types each');
  const events: AsyncEvent[] = [];
  d.on('async', (e: AsyncEvent) => events.push(e));
  bond['bond0'] = 'eth8'; // failover: the bond's addresses leave eth9's table
  host.changed();
  t.same(events, [{ type: 'GID_CHANGE', port: 1 }]);
  t.same(
    d.gidTable().map((g) => g.netdev),
    ['eth9', 'eth9', 'eth9', 'eth9', 'eth9.10', 'eth9.10'],
  );
});

t.test('a QP whose source GID entry is gone: sends dropped and counted, not thrown; new AVs on it are refused (ENODATA)', async (t) => {
  const sched = new FakeScheduler();
  const net = new MemNetwork(sched);
  const hostA = new FakeHost([{ name: 'eth9', address: '198.19.0.1', family: 4 }]);
  const hostB = new FakeHost([{ name: 'eth9', address: '198.19.0.2', family: 4 }]);
  const a = await open(hostA, { address: '198.19.0.1', net, sched });
  const b = await open(hostB, { address: '198.19.0.2', net, sched });
  t.teardown(async () => {
    await a.close();
    await b.close();
  });
  hostA.add('eth9', '198.19.0.11'); // a second address on A's netdev: entries 4/5
  const v2 = 5;
  t.equal(gidToString(a.queryGid(v2)!.gid), '::ffff:198.19.0.11');
  const side = (d: Device) => {
    const pd = d.allocPd();
    const cq = d.createCq({ depth: 64 });
    const qp = pd.createQp({ type: 'RC', sendCq: cq, recvCq: cq, sigAll: true, cap: { maxSendWr: 16, maxRecvWr: 16 } });
    const mem = Buffer.alloc(4096);
    const mr = pd.regMr(mem, ['LOCAL_WRITE', 'REMOTE_WRITE']);
    return { pd, cq, qp, mem, mr };
  };
  const A = side(a);
  const B = side(b);
  connectQp(A.qp, { pathMtu: 1024, timeout: 8, retryCnt: 1, sgidIndex: v2 }, { qpn: B.qp.qpn, psn: B.qp.sqPsn, gid: '198.19.0.2' });
  connectQp(B.qp, { pathMtu: 1024, timeout: 8, retryCnt: 1 }, { qpn: A.qp.qpn, psn: A.qp.sqPsn, gid: '198.19.0.1' });
  const write = (wrId: number): void =>
    A.qp.postSend({ wrId, opcode: 'RDMA_WRITE', sg: [{ mr: A.mr, offset: 0, length: 64 }], remote: { addr: B.mr.addr, rkey: B.mr.rkey } });
  const wcs = async (n: number): Promise<Wc[]> => {
    const out: Wc[] = [];
    const buf = Array.from({ length: 8 }, () => new Wc());
    for (let i = 0; i < 20_000 && out.length < n; i++) {
      sched.advance(1);
      const k = A.cq.poll(buf);
      for (let j = 0; j < k; j++) out.push(Object.assign(new Wc(), buf[j]!));
    }
    return out;
  };
  A.mem.fill(7, 0, 64);
  write(1);
  t.same(
    (await wcs(1)).map((w) => w.status),
    ['SUCCESS'],
    'from the live entry the WRITE completes',
  );
  t.equal(B.mem[0], 7);
  t.equal(a.counters().sent_sgid_gone, 0);

  hostA.del('198.19.0.11');
  t.equal(a.queryGid(v2), null, 'the entry is gone');
  const sentBefore = a.counters().sent_pkts;
  const rcvdBefore = b.counters().rcvd_pkts;
  t.doesNotThrow(() => write(2), 'posting still works');
  const after = await wcs(1);
  t.ok(a.counters().sent_sgid_gone! >= 1, `the dropped sends are counted (sent_sgid_gone ${a.counters().sent_sgid_gone})`);
  t.equal(a.counters().sent_pkts, sentBefore, 'nothing left the port');
  t.equal(b.counters().rcvd_pkts, rcvdBefore, 'nothing reached the peer');
  t.same(
    after.map((w) => w.status),
    ['RETRY_EXC_ERR'],
    'the RC QP retried into the void and failed as after a loss',
  );

  hostA.add('eth9', '198.19.0.12'); // takes the hole: same index, another address
  t.equal(gidToString(a.queryGid(v2)!.gid), '::ffff:198.19.0.12');
  const qp2 = A.pd.createQp({ type: 'RC', sendCq: A.cq, recvCq: A.cq, cap: { maxSendWr: 4, maxRecvWr: 4 } });
  hostA.del('198.19.0.12');
  t.throws(() => connectQp(qp2, { sgidIndex: v2 }, { qpn: B.qp.qpn, psn: 0, gid: '198.19.0.2' }), { code: 'ENODATA', argument: 'sgidIndex' });
  t.throws(() => A.pd.createAh({ gid: '198.19.0.2', sgidIndex: v2 }), { code: 'ENODATA', argument: 'sgidIndex' });
  t.throws(() => A.pd.createAh({ gid: '198.19.0.2', sgidIndex: 128 }), { code: 'EINVAL', argument: 'sgidIndex' });
});

t.test('a reused slot does not carry old AVs: a UD AH made before the address changed sends nothing', async (t) => {
  const sched = new FakeScheduler();
  const net = new MemNetwork(sched);
  const hostA = new FakeHost([
    { name: 'eth9', address: '198.19.0.1', family: 4 },
    { name: 'eth9', address: '198.19.0.21', family: 4 },
  ]);
  const a = await open(hostA, { address: '198.19.0.1', net, sched });
  t.teardown(() => a.close());
  const pd = a.allocPd();
  const cq = a.createCq({ depth: 16 });
  const qp = pd.createQp({ type: 'UD', sendCq: cq, recvCq: cq, sigAll: true, cap: { maxSendWr: 8, maxRecvWr: 8 } });
  qp.toInit({ qkey: 1 }).toRtr().toRts({ sqPsn: 0 });
  const mr = pd.regMr(Buffer.alloc(64), ['LOCAL_WRITE']);
  const ah = pd.createAh({ gid: '198.19.0.2', sgidIndex: 5 });
  hostA.del('198.19.0.21');
  hostA.add('eth9', '198.19.0.22'); // slot 5 again, another address
  t.equal(gidToString(a.queryGid(5)!.gid), '::ffff:198.19.0.22');
  qp.postSend({ wrId: 1, opcode: 'SEND', sg: [{ mr, offset: 0, length: 8 }], ud: { ah, remoteQpn: 0x11, remoteQkey: 1 } });
  for (let i = 0; i < 10; i++) sched.advance(1);
  t.equal(a.counters().sent_sgid_gone, 1, 'dropped: the AH was made for 198.19.0.21');
  t.equal(a.counters().sent_pkts, 0);
});

t.test('the watch stops when the device closes', async (t) => {
  const host = new FakeHost([]);
  const d = await open(host);
  t.equal(host.watchers, 1);
  await d.close();
  t.equal(host.watchers, 0);
  host.changed(); // a late trigger on a closed device does nothing
});

t.test('a link flap (the address gone from os.networkInterfaces() while down) brings it back to its slot with its generation', async (t) => {
  const { GidTable } = await import('../../src/verbs/gid-table.js');
  const { ipv4ToGid } = await import('../../src/roce/gid.js');
  const table = new GidTable(16, 'veth0', new Uint8Array([2, 0, 0, 0, 0, 1]));
  const a = { gid: ipv4ToGid('198.19.5.1'), netdev: 'veth0' };
  const b = { gid: ipv4ToGid('198.19.5.2'), netdev: 'veth0' };
  table.sync([a]);
  const slots = table
    .entries()
    .filter((e) => e.index >= 2)
    .map((e) => e.index);
  t.same(slots, [2, 3], 'v1 and v2 of the address after the default GID');
  const gens = slots.map((i) => table.gen[i]);
  table.sync([]); // link down: libuv lists only interfaces that are up and running
  t.same(
    slots.map((i) => table.gen[i]),
    [0, 0],
    'gone while down: sends from it are dropped and counted',
  );
  table.sync([a]); // link up again
  t.same(
    slots.map((i) => table.gen[i]),
    gens,
    'back in the same slots with the same generations: QPs on it carry on',
  );
  table.sync([]);
  table.sync([b]); // another address takes the slots meanwhile
  t.ok(
    slots.every((i, k) => table.gen[i] !== 0 && table.gen[i] !== gens[k]),
    'another address in those slots gets new generations',
  );
  table.sync([b, a]);
  t.same(
    table
      .entries()
      .filter((e) => e.index >= 2)
      .map((e) => e.index),
    [2, 3, 4, 5],
    'the first address then takes free slots',
  );
  t.ok(
    [4, 5].every((i, k) => table.gen[i] !== gens[k]),
    'with new generations: a QP made before cannot send from a different slot',
  );
});
