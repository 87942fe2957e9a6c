/**
 * The bond's control socket (issue 14 item 6): teamd's usock protocol (requests, replies, escaping),
 * the state dump as teamd's state JSON plus softroce's part, for activebackup and loadbalance bonds on
 * the in-memory network (the active port and the link watches after a cable is pulled; per-port
 * packets and QPs), the config dumps, and the socket itself (listen, round trips, errors, close).
 */
import t from 'tap';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { bondAt, bondNet, bondOf, teamConfig, type BondNet } from './bond-net.js';
import { setLagPort, type Bond } from '../../src/lag/bond.js';
import {
  ctlSocketDir,
  ctlSocketPath,
  decodeReply,
  decodeRequest,
  encodeReplyErr,
  encodeReplySucc,
  encodeRequest,
  handleRequest,
  strDecode,
  strEncode,
  TeamdCtlClient,
  teamdState,
} from '../../src/lag/bond-ctl.js';
import { connectQp } from '../../src/verbs/connect.js';
import { loadNative } from '../../src/native.js';
import { createConnection } from 'node:net';
import { Wc } from '../../src/verbs/types.js';
import type { Qp } from '../../src/verbs/qp.js';
import type { Cq } from '../../src/verbs/cq.js';
import type { Mr } from '../../src/verbs/mr.js';

type Obj = Record<string, unknown>;
const at = (o: unknown, ...path: string[]): unknown => path.reduce<unknown>((v, k) => (v as Obj | undefined)?.[k], o);

/** Two bonds A (10.9.1.1) and B (10.9.1.2), `qps` connected RC QP pairs, A's QP i on port `ports[i]` (or the bond's choice). */
async function pair(
  t: Pick<typeof import('tap').default, 'teardown'>,
  runner: Obj,
  ports: Obj = { eth1: {}, eth2: {} },
  lagPorts: (number | null)[] = [1, 2],
): Promise<{ n: BondNet; a: Bond; b: Bond; qa: Qp[]; qb: Qp[]; traffic: (k: number) => void }> {
  const n = bondNet();
  const a = bondOf(await bondAt(n, '10.9.1.1', { ...teamConfig(runner), ports }));
  const b = bondOf(await bondAt(n, '10.9.1.2', { ...teamConfig(runner), device: 'team1', ports }));
  t.teardown(async () => {
    await a.close();
    await b.close();
  });
  const cqs: Cq[] = [];
  const mk = (bond: Bond): { qps: Qp[]; mr: Mr } => {
    const pd = bond.device.allocPd();
    const cq = bond.device.createCq({ depth: 256 });
    cqs.push(cq);
    const mem = Buffer.alloc(64 * 1024);
    const mr = pd.regMr(mem, ['LOCAL_WRITE']);
    const qps = lagPorts.map(() =>
      pd.createQp({ type: 'RC', sendCq: cq, recvCq: cq, sigAll: true, cap: { maxSendWr: 64, maxRecvWr: 64, maxSendSge: 1, maxRecvSge: 1 } }),
    );
    return { qps, mr };
  };
  const A = mk(a);
  const B = mk(b);
  lagPorts.forEach((p, i) => {
    if (p !== null) setLagPort(A.qps[i]!, p);
  });
  const local = { pathMtu: 1024 as const, timeout: 12, retryCnt: 7, rnrRetry: 7, minRnrTimer: 1 };
  A.qps.forEach((q, i) => {
    const r = B.qps[i]!;
    const lq = q.endpoint();
    const rq = r.endpoint();
    connectQp(q, { ...local, psn: lq.psn }, { qpn: rq.qpn, psn: rq.psn, gid: '10.9.1.2' });
    connectQp(r, { ...local, psn: rq.psn }, { qpn: lq.qpn, psn: lq.psn, gid: '10.9.1.1' });
  });
  const wc = Array.from({ length: 16 }, () => new Wc());
  /** k SENDs of 2000 bytes on each of A's QPs, run to completion */
  const traffic = (k: number): void => {
    A.qps.forEach((q, i) => {
      for (let j = 0; j < k; j++) {
        B.qps[i]!.postRecv({ wrId: j, sg: [{ mr: B.mr, offset: 0, length: 4096 }] });
        q.postSend({ wrId: j, opcode: 'SEND', sg: [{ mr: A.mr, offset: 0, length: 2000 }] });
      }
    });
    for (let ms = 0; ms < 200; ms++) {
      n.fake.run();
      n.fake.advance(1);
    }
    for (const cq of cqs) while (cq.poll(wc) > 0);
  };
  return { n, a, b, qa: A.qps, qb: B.qps, traffic };
}

t.test('the usock protocol: requests, replies and argument escaping as teamd and libteamdctl have them', async (t) => {
  t.equal(strEncode('a\\b\nc'), 'a\\\\b\\nc', "'\\\\' and '\\n' escaped (cli_usock.c __strencode)");
  t.equal(strDecode('a\\\\b\\nc'), 'a\\b\nc', 'and decoded back (teamd_usock.c __strdecode)');
  t.equal(strDecode('bad\\t'), null, 'any other escape is a corrupt argument');
  t.equal(encodeRequest('PortConfigDump', ['eth1']), 'REQUEST\nPortConfigDump\neth1\n');
  t.equal(encodeRequest('StateDump'), 'REQUEST\nStateDump\n');
  t.same(decodeRequest('REQUEST\nStateDump\n'), { method: 'StateDump', rest: '' });
  t.same(decodeRequest('\n\nREQUEST\n\nStateDump'), { method: 'StateDump', rest: null }, 'empty lines are skipped, as teamd_usock_msg_getline does');
  t.equal(decodeRequest('HELLO\nStateDump\n'), null, 'not a REQUEST');
  t.equal(decodeRequest('REQUEST\n'), null, 'no method');
  t.same(decodeReply(encodeReplySucc('{}')), { ok: true, text: '{}' });
  t.same(decodeReply(encodeReplySucc(null)), { ok: true, text: '' });
  t.equal(encodeReplyErr('NoSuchDev', 'No such device.'), 'REPLY_ERROR\nNoSuchDev\nNo such device.\n');
  t.same(decodeReply('REPLY_ERROR\nNoSuchDev\nNo such device.\n'), { ok: false, code: 'NoSuchDev', message: 'No such device.' });
  t.equal(decodeReply('REPLY_ERROR\nNoSuchDev\n'), null, 'an error without its message is incomplete');
  t.equal(decodeReply('WHAT\n'), null);
});

t.test('where the socket lives: overridable, per-user, never /var/run/teamd', async (t) => {
  t.equal(ctlSocketDir({ SOFTROCE_TEAMD_DIR: '/x/y' }), '/x/y');
  t.equal(ctlSocketDir({ XDG_RUNTIME_DIR: '/run/user/1000' }), '/run/user/1000/softroce/teamd');
  t.equal(ctlSocketPath('team0', { SOFTROCE_TEAMD_DIR: '/x' }), '/x/team0.sock', "<device>.sock, as teamd's");
  t.notOk(ctlSocketDir({}).startsWith('/var/run/teamd'), `default ${ctlSocketDir({})}`);
});

t.test('activebackup state dump: setup, ports, link watches, runner, team_device, softroce; the active port after a cable is pulled', async (t) => {
  const { n, a, traffic } = await pair(t, { name: 'activebackup' }, { eth1: { prio: 5 }, eth2: {} }, [1, 2]);
  traffic(4);
  let s = teamdState(a);
  t.same(
    s['setup'],
    {
      runner_name: 'activebackup',
      kernel_team_mode_name: 'activebackup',
      dbus_enabled: false,
      zmq_enabled: false,
      debug_level: 0,
      daemonized: false,
      pid: process.pid,
      pid_file: '',
    },
    'setup as teamd_state.c setup_state_vals',
  );
  t.same(at(s, 'runner'), { active_port: 'eth1' }, 'runner.active_port: the higher-prio port');
  t.same(at(s, 'ports', 'eth1', 'link_watches'), {
    up: true,
    list: { link_watch_0: { name: 'ethtool', up: true, down_count: 0, delay_up: 0, delay_down: 0 } },
  });
  t.same(
    at(s, 'ports', 'eth1', 'ifinfo'),
    { ifindex: 0, ifname: 'eth1', dev_addr: '00:00:00:00:00:00', dev_addr_len: 6 },
    'an in-memory port: no kernel ifindex, zero MAC',
  );
  t.same(at(s, 'ports', 'eth2', 'link'), { up: true, speed: 0, duplex: 'full' });
  t.same(at(s, 'team_device', 'ifinfo', 'ifname'), 'team0');
  t.equal(at(s, 'softroce', 'rdma_device'), a.name);
  t.equal(at(s, 'softroce', 'lag_mode'), 'active-backup');
  const p1 = at(s, 'softroce', 'ports', 'eth1') as Obj;
  const p2 = at(s, 'softroce', 'ports', 'eth2') as Obj;
  t.equal(p1['lag_port'], 1);
  t.same(
    [p1['qps_configured'], p1['qps_active'], p2['qps_configured'], p2['qps_active']],
    [1, 2, 1, 0],
    'QPs configured on 1 and 2, both active on the active port 1',
  );
  t.ok((p1['tx_packets'] as number) >= 8, `port 1 sent the traffic (${String(p1['tx_packets'])})`);
  t.equal(p2['tx_packets'], 0, 'port 2 sent nothing (backup)');
  t.ok((p1['rx_packets'] as number) > 0 && (p1['rx_bytes'] as number) > 0, 'port 1 received the ACKs');
  t.equal(p1['tx_packets'], a.portCounters(1).sent_pkts, 'tx_packets is bond.portCounters');

  n.net.setSegmentUp('w1', false);
  n.fake.run();
  s = teamdState(a);
  t.same(at(s, 'runner'), { active_port: 'eth2' }, 'after the cable is pulled: eth2 is active');
  t.same(at(s, 'ports', 'eth1', 'link'), { up: false, speed: 0, duplex: 'full' }, 'port link: the carrier is gone');
  t.same(at(s, 'ports', 'eth1', 'link_watches'), {
    up: false,
    list: { link_watch_0: { name: 'ethtool', up: false, down_count: 1, delay_up: 0, delay_down: 0 } },
  });
  t.same([at(s, 'softroce', 'ports', 'eth1', 'qps_active'), at(s, 'softroce', 'ports', 'eth2', 'qps_active')], [0, 2], 'both QPs now on port 2');
  t.equal(at(s, 'softroce', 'qp_moves'), 2);
});

t.test('loadbalance state dump: the runner, QPs and traffic on both ports, a delayed watch', async (t) => {
  const { n, a, traffic } = await pair(
    t,
    { name: 'loadbalance', tx_balancer: { name: 'basic' } },
    { eth1: { link_watch: { name: 'ethtool', delay_down: 30 } }, eth2: {} },
    [1, 2, null],
  );
  traffic(3);
  const s = teamdState(a);
  t.same(at(s, 'setup', 'kernel_team_mode_name'), 'loadbalance');
  t.same(at(s, 'runner'), { tx_balancer: { name: 'basic', balancing_interval: 50 }, tx_hash: ['eth', 'ipv4', 'ipv6'] });
  t.same(
    at(s, 'ports', 'eth1', 'link_watches', 'list', 'link_watch_0'),
    { name: 'ethtool', up: true, down_count: 0, delay_up: 0, delay_down: 30 },
    "the port's own watch and its delay",
  );
  const sr = at(s, 'softroce', 'ports') as Record<string, Obj>;
  t.equal(sr['eth1']!['qps_configured']! as number, 2, 'eth1: the explicit QP and the round-robin one (first turn: port 1)');
  t.equal(sr['eth2']!['qps_configured']! as number, 1);
  t.ok((sr['eth1']!['tx_packets'] as number) > 0 && (sr['eth2']!['tx_packets'] as number) > 0, 'traffic on both ports');
  t.equal(at(s, 'softroce', 'lag_mode'), 'hash');
  n.net.setSegmentUp('w1', false);
  n.fake.advance(10);
  t.equal(at(teamdState(a), 'ports', 'eth1', 'link_watches', 'up'), true, 'before delay_down the watch still says up');
  t.equal(at(teamdState(a), 'ports', 'eth1', 'link', 'up'), false, 'while the carrier is already down');
  n.fake.advance(25);
  t.equal(at(teamdState(a), 'ports', 'eth1', 'link_watches', 'up'), false, 'after delay_down: down');
  t.same([sr['eth1'] && at(teamdState(a), 'softroce', 'ports', 'eth1', 'qps_active'), at(teamdState(a), 'softroce', 'ports', 'eth2', 'qps_active')], [0, 3]);
});

t.test('handleRequest: the methods teamdctl uses, and teamd-like errors', async (t) => {
  const { a } = await pair(t, { name: 'activebackup' });
  const call = (m: string, args: string[] = []): ReturnType<typeof decodeReply> => decodeReply(handleRequest(a, encodeRequest(m, args)) ?? 'none');
  const actual = call('ConfigDumpActual');
  t.ok(actual?.ok);
  if (actual?.ok === true) {
    const j = JSON.parse(actual.text) as Obj;
    t.same(j['notify_peers'], { count: 1 }, 'written back: notify_peers.count 1 for activebackup');
    t.same(at(j, 'ports', 'eth1', 'link_watch'), { name: 'ethtool' }, 'written back: the implicit ethtool watch');
    t.match(actual.text, /^\{\n {4}"device": "team0",/, 'jansson layout: indent 4, sorted keys');
  }
  const st = call('StateDump');
  t.ok(st?.ok === true && (JSON.parse(st.text) as Obj)['setup'] !== undefined, 'StateDump: the state JSON');
  t.same(
    call('PortConfigDump', ['eth1']),
    { ok: true, text: '{\n    "link_watch": {\n        "name": "ethtool"\n    }\n}' },
    "PortConfigDump: the port's written-back config",
  );
  t.same(call('PortConfigDump', ['eth9']), { ok: false, code: 'NoSuchDev', message: 'No such device.' });
  t.same(call('PortConfigDump'), { ok: false, code: 'InvalidArgs', message: 'Did not receive correct message arguments.' });
  t.same(call('StateItemValueGet', ['runner.active_port']), { ok: true, text: 'eth1' });
  t.same(call('StateItemValueGet', ['ports.eth2.link.up']), { ok: true, text: 'true' });
  t.same(call('StateItemValueGet', ['setup.nope']), { ok: false, code: 'PathDoesNotExist', message: 'Item path does not exist.' });
  t.same(call('PortAdd', ['eth3']), { ok: false, code: 'PortAddFail', message: 'Failed to add port.' }, 'a third port is refused');
  t.equal(a.ports.length, 2, 'and the bond is untouched');
  t.same(call('PortConfigUpdate', ['eth2', '{"prio": 100}']), { ok: true, text: '' }, 'PortConfigUpdate reconfigures');
  t.equal(a.activePort, 2, 'eth2 (prio 100) is active now');
  t.same(call('PortConfigUpdate', ['eth2', '{"prio": "x"}']), { ok: false, code: 'ConfigUpdateFail', message: 'Failed to update config.' });
  t.equal(handleRequest(a, encodeRequest('NoSuchMethod')), null, 'an unknown method gets no reply (teamd logs it and sends nothing)');
  t.equal(handleRequest(a, 'HELLO\n'), null, 'neither does a message that is not a REQUEST');
});

t.test('the socket: listen, round trips, one server per path, stale files, closed with the bond', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'softroce-ctl-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const { a, b } = await pair(t, { name: 'activebackup' });
  const path = await a.listen(join(dir, 'team0.sock'));
  t.equal(a.controlPath, path);
  t.ok(existsSync(path), 'the socket file exists');
  await t.rejects(a.listen(join(dir, 'other.sock')), { code: 'EBUSY' }, 'one control socket per bond');
  await t.rejects(b.listen(path), { code: 'EADDRINUSE' }, "another bond cannot take a live bond's socket");
  const c = await TeamdCtlClient.connect(path);
  const r1 = await c.call('StateDump');
  t.ok(r1.ok && (JSON.parse(r1.text) as Obj)['runner'] !== undefined, 'StateDump over the socket');
  const r2 = await c.call('PortConfigDump', ['eth1\nx']);
  t.same(r2, { ok: false, code: 'NoSuchDev', message: 'No such device.' }, 'an argument with a newline travels escaped, in one line');
  const r3 = await c.call('ConfigDump');
  t.ok(r3.ok && r3.text.includes('"device": "team0"'), 'several calls on one connection');
  await t.rejects(c.call('NoSuchMethod', [], 200), { code: 'ETIMEDOUT' }, 'no reply to an unknown method: the client times out');
  c.close();
  // a stale socket file (no server) is replaced, as teamd unlinks it
  const stale = join(dir, 'team1.sock');
  writeFileSync(stale, ''); // a plain file where a socket was: nobody answers there
  t.equal(await b.listen(stale), stale, 'a path nobody answers on is taken over');
  await a.close();
  t.notOk(existsSync(path), 'closing the bond removes its socket');
  await t.rejects(TeamdCtlClient.connect(path), { code: 'ENOENT' });
  await t.rejects(a.listen(), { code: 'EBADF' }, 'a closed bond does not listen');
});

t.test("the transport: teamd's SOCK_SEQPACKET with the native addon, NUL-framed SOCK_STREAM without", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'softroce-ctl-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const { a } = await pair(t, { name: 'loadbalance' });
  const path = await a.listen(join(dir, 'team0.sock'));
  const seq = loadNative()?.seqpacketOpen !== undefined;
  const c = await TeamdCtlClient.connect(path);
  t.teardown(() => c.close());
  t.equal(c.transport, seq ? 'seqpacket' : 'stream', `the client connected by ${c.transport}`);
  const r = await c.call('ConfigDump');
  t.ok(r.ok && r.text.startsWith('{\n    "device": "team0"'), 'and got its reply');
  // What libteam's teamdctl needs (cli_usock.c: socket(AF_UNIX, SOCK_SEQPACKET)): a stream connect is refused.
  const stream = await new Promise<string>((resolve) => {
    const s = createConnection(path);
    s.once('connect', () => {
      s.destroy();
      resolve('connected');
    });
    s.once('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? 'error'));
  });
  t.equal(
    stream,
    seq ? 'EPROTOTYPE' : 'connected',
    seq ? "a SOCK_STREAM connect fails: the socket is SOCK_SEQPACKET, as teamd's" : 'without the addon: a stream socket',
  );
});
