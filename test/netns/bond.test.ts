/**
 * softroce <-> softroce bonds over real netdevs (issue 14, Tests): namespaces A and B joined by TWO veth pairs
 * (rba0-rbb0, rba1-rbb1); on each side both veth ends carry the side's one address (198.19.32.1/24 in A,
 * .2 in B: a bond's slaves carry the bond's IP) and one MAC (hwaddr_policy same_all). A process per side
 * (fixtures/bond-peer.js) makes a bond with createBond over its two veths (one socket per veth at
 * address:4791, SO_BINDTODEVICE) and teamd's default ethtool link watch, which follows the veths' carrier
 * (src/roce/link/carrier.ts). A streams 4 MiB by RDMA WRITE and 4 MiB by SEND to B (sha256 checked on B);
 * half-way the cable of port 1 is pulled as Linux's bonding selftests do (`ip link set rbb0 down`: both ends
 * lose carrier) and plugged back at three quarters (at least 300 ms later): both streams complete byte for byte. Printed: the failover time
 * (tcpdump on A's veths: A's last frame on rba0 before the plug-back to its first frame of the moved QP on
 * rba1), and the loss and retransmission at the cut (the veth's TX drops, RC counters). Cases: activebackup
 * (one port carries everything, the other after the cut), the same with teamd's arp_ping watch alone (the probes,
 * not the carrier, find the cut) at teamd's defaults (interval 1000 ms, missed_max 3: failover 2 to 8 s asserted)
 * and tuned (interval 10 ms: < 500 ms asserted), loadbalance (both ports; the QPs where flow entropy
 * and setLagPort put them); a refused configuration leaves the running bond as it was. Without the addon the
 * bond cannot bind its ports: EOPNOTSUPP naming `ports`. Bounds are generous (a loaded 2-core box): the figures
 * are printed, failover < 1 s asserted (ethtool).
 */
import t from 'tap';
import { join } from 'node:path';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { spawnSync } from 'node:child_process';
import { ROOT } from '../helpers.js';
import { Netns, netnsUnavailable, type NsProcess } from '../helpers/netns.js';
import { readCapture } from '../../src/roce/pcap.js';
import { createBond } from '../../src/lag/bond.js';
import { UdpLink } from '../../src/roce/link/udp-link.js';
import { VerbsError } from '../../src/verbs/errors.js';

const skip = netnsUnavailable() ?? false;
if (skip) t.comment(`netns tests skipped: ${skip}`);
const native = process.env['SOFTROCE_NO_NATIVE'] !== '1';

const PEER = join(ROOT, 'dist', 'test', 'netns', 'fixtures', 'bond-peer.js');
type Msg = Record<string, unknown> & { t: string };
type Tap = Pick<typeof t, 'equal' | 'ok' | 'same' | 'match' | 'comment'>;
const A_IP = '198.19.32.1';
const B_IP = '198.19.32.2';
const BYTES = 4 << 20;
const CHUNK = 64 << 10;
/** at least this many ms between pulling cable 1 and plugging it back (at three quarters of the streams) */
const OUTAGE = 300;
/** ms between a stream's WRs (64 of 64 KiB): the streams last over 1.3 s, so the cut and the plug-back fall inside */
const GAP = 20;

/** Answers of each type are taken in order: the k-th call for a type gets the k-th such line. */
const seen = new Map<NsProcess, Map<string, number>>();
async function next(p: NsProcess, type: string, ms: number): Promise<Msg> {
  const taken = seen.get(p) ?? new Map<string, number>();
  seen.set(p, taken);
  const k = (taken.get(type) ?? 0) + 1;
  taken.set(type, k);
  let n = 0;
  const line = await p.waitFor((l) => l.startsWith('{') && (JSON.parse(l) as Msg).t === type && ++n === k, ms);
  return JSON.parse(line) as Msg;
}
const send = (p: NsProcess, m: object): void => {
  p.proc.stdin!.write(`${JSON.stringify(m)}\n`);
};

/** not 4791: a test elsewhere on the host that binds 0.0.0.0:4791 would take every address's 4791 */
const PORT = 47091;

t.test("no addon ('off'): createBond over two netdevs at one address is EOPNOTSUPP naming ports, nothing bound", async (t) => {
  const cfg = { device: 'rbteam0', runner: { name: 'activebackup' }, ports: { rbx0: {}, rbx1: {} } };
  const ports = [
    { netdev: 'rbx0', address: '127.0.70.1', udpPort: PORT },
    { netdev: 'rbx1', address: '127.0.70.1', udpPort: PORT },
  ];
  const e = await createBond(cfg, { ports, native: 'off' }).then(
    () => null,
    (x: unknown) => x,
  );
  t.ok(e instanceof VerbsError, 'a VerbsError');
  t.match(e, { code: 'EOPNOTSUPP', argument: 'ports', op: 'createBond' }, `EOPNOTSUPP naming ports: ${(e as Error).message}`);
  const l = await UdpLink.open({ address: '127.0.70.1', port: PORT, native: 'off' });
  t.pass(`127.0.70.1:${PORT} is free afterwards`);
  await l.close();
});

/** A side's bond config from its own address and the peer's (arp_ping: source_host, target_host). */
type SideConfig = (self: string, peer: string) => object;
/** Per link watch: what the case asserts. */
interface CaseBounds {
  watch: string;
  /** ms from the cut to A's portDown, at most */
  detectMax: number;
  /** ms, [min, max): failover as tcpdump shows it */
  failover: [number, number];
  /** A's packets sent on a port that B did not receive on it (the cut's loss), at most */
  lossMax: number;
}
// The loss bound follows the detection bound: until the move, each ACK timeout (67 ms) resends the
// in-flight window (up to ~132 packets) into the dead veth; 300 was met by a 100 ms detection, once not.
const ETHTOOL_BOUNDS: CaseBounds = { watch: 'ethtool', detectMax: 1000, failover: [0, 1000], lossMax: 2000 };

const MAC_A = '02:72:62:00:32:01';
const MAC_B = '02:72:62:00:32:02';

function vethStats(net: Netns, ns: string, dev: string): { txPackets: number; txDropped: number } {
  const j = JSON.parse(net.ip(ns, ['-s', '-j', 'link', 'show', 'dev', dev])) as Array<{ stats64?: { tx: { packets: number; dropped: number } } }>;
  const s = j[0]?.stats64?.tx;
  return { txPackets: s?.packets ?? 0, txDropped: s?.dropped ?? 0 };
}

interface Frame {
  time: number;
  dqpn: number;
}
function framesFrom(file: string, src: string): Frame[] {
  let buf: Buffer;
  try {
    buf = readFileSync(file);
  } catch {
    return [];
  }
  const out: Frame[] = [];
  for (const rec of readCapture(buf).records) {
    const f = rec.data;
    if (f.length < 14 + 20 + 8 + 12 || f.readUInt16BE(12) !== 0x0800) continue;
    const udp = 14 + (f[14]! & 0x0f) * 4;
    if (`${f[26]}.${f[27]}.${f[28]}.${f[29]}` !== src) continue;
    out.push({ time: rec.time * 1000, dqpn: f.readUInt32BE(udp + 8 + 4) & 0xffffff });
  }
  return out;
}

t.test('bonds over two veth pairs: failover mid-stream, activebackup and loadbalance, refused config', { skip }, async (t) => {
  const net = Netns.open({ tag: 'rbbond' }, t);
  const a = net.addNamespace();
  const b = net.addNamespace();
  net.addVeth(a, 'rba0', b, 'rbb0', `${A_IP}/24`, `${B_IP}/24`);
  net.addVeth(a, 'rba1', b, 'rbb1', `${A_IP}/24`, `${B_IP}/24`);
  // hwaddr_policy same_all: every port of a side has the side's one MAC.
  for (const [ns, devs, mac] of [
    [a, ['rba0', 'rba1'], MAC_A],
    [b, ['rbb0', 'rbb1'], MAC_B],
  ] as const) {
    for (const d of devs) {
      net.setLink(ns, d, 'down');
      net.ip(ns, ['link', 'set', 'dev', d, 'address', mac]);
    }
    // Strict reverse-path filtering would drop what arrives on the port that is not the first route's.
    const r = net.spawn(ns, [
      'sysctl',
      '-q',
      '-w',
      'net.ipv4.conf.all.rp_filter=0',
      'net.ipv4.conf.default.rp_filter=0',
      ...devs.map((d) => `net.ipv4.conf.${d}.rp_filter=0`),
    ]);
    t.equal(await r.exited, 0, `rp_filter off in ${ns.slice(-8)}${r.err ? `: ${r.err}` : ''}`);
    for (const d of devs) net.setLink(ns, d, 'up');
  }
  const client = net.spawn(a, [process.execPath, PEER, 'client']);
  const server = net.spawn(b, [process.execPath, PEER, 'server']);
  t.teardown(() => {
    client.proc.stdin!.end();
    server.proc.stdin!.end();
  });

  const bond = async (config: object | SideConfig): Promise<[Msg, Msg]> => {
    const side = (self: string, peer: string): object => (typeof config === 'function' ? config(self, peer) : config);
    send(client, { t: 'bond', config: { ...side(A_IP, B_IP), ports: { rba0: {}, rba1: {} } }, netdevs: ['rba0', 'rba1'], address: A_IP });
    send(server, { t: 'bond', config: { ...side(B_IP, A_IP), ports: { rbb0: {}, rbb1: {} } }, netdevs: ['rbb0', 'rbb1'], address: B_IP });
    const want = native ? 'bond' : 'error';
    return Promise.all([next(client, want, 20_000), next(server, want, 20_000)]);
  };

  if (!native) {
    const [ce, se] = await bond({ device: 'rbteam', runner: { name: 'activebackup' } });
    for (const e of [ce, se]) t.match(e, { code: 'EOPNOTSUPP', argument: 'ports' }, `without the addon: EOPNOTSUPP naming ports (${String(e['message'])})`);
    return;
  }

  const hasTcpdump = spawnSync('tcpdump', ['--version']).status === 0;
  if (!hasTcpdump) t.comment('failover time not measured: tcpdump is not installed');
  const capDir = mkdtempSync(join(tmpdir(), 'srt-rbbond-'));
  t.teardown(() => rmSync(capDir, { recursive: true, force: true }));

  const runCase = async (
    t: Tap,
    label: string,
    config: object | SideConfig,
    qps: Array<{ name: string; fe?: number; lag?: number }>,
    o: CaseBounds = ETHTOOL_BOUNDS,
  ): Promise<{
    before: Msg;
    after: Msg;
    cutState: Msg;
    lag: Record<string, { configured: number; active: number; source: string }>;
    failoverMs: number | null;
  }> => {
    const [cb, sb] = await bond(config);
    t.same([cb['lag'], sb['lag']], [true, true], `${label}: LAG mode on both sides (${String(cb['name'])}, ${String(cb['mode'])})`);
    t.same(cb['bound'], ['rba0', 'rba1'], `${label}: each port's socket at ${A_IP}:4791 is bound to its own veth (the kernel took both binds)`);
    // An arp_ping watch starts down (teamd: a new port's user link-up is false) until its first reply.
    let upNow = [cb['up'], sb['up']];
    for (let i = 0; i < 100 && !upNow.flat().every(Boolean); i++) {
      await new Promise((r) => setTimeout(r, 100));
      send(client, { t: 'state' });
      send(server, { t: 'state' });
      upNow = (await Promise.all([next(client, 'state', 5000), next(server, 'state', 5000)])).map((m) =>
        (m['ports'] as Array<{ up: boolean }>).map((p) => p.up),
      );
    }
    t.same(upNow.flat(), [true, true, true, true], `${label}: both ports up on both sides, A then B (${o.watch})`);
    // The ports that came up after the bond was made said portUp: taken here, so the cut's events are the next ones.
    for (const u of cb['up'] as boolean[]) if (!u) await next(client, 'portUp', 5000);
    t.ok(
      (cb['gids'] as string[]).some((g) => g.endsWith(`::ffff:${A_IP}`)),
      `${label}: the bond's GID table has the bond's address`,
    );
    send(client, { t: 'ep', qps });
    send(server, { t: 'ep', qps });
    const [ce, se] = await Promise.all([next(client, 'ep', 10_000), next(server, 'ep', 10_000)]);
    send(client, { t: 'connect', peer: se, chunk: CHUNK });
    send(server, { t: 'connect', peer: ce, chunk: CHUNK });
    await Promise.all([next(client, 'ready', 10_000), next(server, 'ready', 10_000)]);
    const tag = label.replace(/\W/g, '');
    const dumps = hasTcpdump
      ? ['rba0', 'rba1'].map((dev) =>
          net.spawn(a, ['tcpdump', '-i', dev, '--immediate-mode', '-s', '96', '-U', '-n', '-w', join(capDir, `${tag}-${dev}.pcap`), 'udp port 4791']),
        )
      : [];
    for (const d of dumps) for (let i = 0; i < 100 && !d.err.includes('listening on'); i++) await new Promise((r) => setTimeout(r, 50));
    send(client, { t: 'state' });
    const before = await next(client, 'state', 5000);
    const drops0 = vethStats(net, a, 'rba0').txDropped;
    send(client, { t: 'stream', bytes: BYTES, chunk: CHUNK, gapMs: GAP });
    await next(client, 'half', 60_000);
    send(client, { t: 'state' });
    const atCut = await next(client, 'state', 5000);
    const cutAt = Date.now();
    net.setLink(b, 'rbb0', 'down');
    // Plugged back at three quarters of the streams, after at least OUTAGE ms: the QPs move back mid-stream.
    await next(client, 'q3', 60_000); // (always before 'done')
    await new Promise((r) => setTimeout(r, Math.max(0, OUTAGE - (Date.now() - cutAt))));
    send(client, { t: 'state' });
    const cutState = await next(client, 'state', 5000);
    const plugAt = Date.now();
    net.setLink(b, 'rbb0', 'up');
    const done = await next(client, 'done', 120_000);
    const [down, up] = await Promise.all([next(client, 'portDown', 5000), next(client, 'portUp', 5000)]);
    const detect = (down['at'] as number) - cutAt;
    t.ok(
      down['port'] === 1 && up['port'] === 1 && detect < o.detectMax,
      `${label}: A's ${o.watch} watch saw port 1 go ${detect} ms after the cut, and come back ${(up['at'] as number) - plugAt} ms after the plug-back`,
    );
    t.comment(`${label}: cut at half, plugged back ${plugAt - cutAt} ms later, ${(done['at'] as number) - plugAt} ms before the streams ended`);
    send(server, { t: 'sha', bytes: BYTES });
    const sh = await next(server, 'sha', 10_000);
    send(client, { t: 'state' });
    send(server, { t: 'state' });
    const [after, safter] = await Promise.all([next(client, 'state', 5000), next(server, 'state', 5000)]);
    const drops = vethStats(net, a, 'rba0').txDropped - drops0;
    // Each member socket gets its own veth's datagrams: what one side sent on port i, the other received on
    // port i (less what the cut lost: sent on port 1 before the watch saw the carrier go).
    const pc = (m: Msg): Array<{ tx: number; rx: number }> => m['ports'] as Array<{ tx: number; rx: number }>;
    for (const [from, to, name] of [
      [after, safter, 'A -> B'],
      [safter, after, 'B -> A'],
    ] as const) {
      for (let i = 0; i < 2; i++) {
        const sent = pc(from)[i]!.tx - (from === after ? pc(before)[i]!.tx : 0);
        const got = pc(to)[i]!.rx - (to === after ? pc(before)[i]!.rx : 0);
        t.ok(got <= sent && sent - got <= o.lossMax, `${label}: ${name} port ${i + 1}: ${sent} sent, ${got} received on port ${i + 1}`);
      }
    }
    t.same([done['w'], done['s'], done['bad'], sh['bad']], ['SUCCESS', 'SUCCESS', [], []], `${label}: every WRITE and SEND completed, no error on either side`);
    t.equal(sh['recvs'], BYTES / CHUNK, `${label}: every SEND received`);
    t.same(sh['sha'], done['sha'], `${label}: both 4 MiB streams arrived byte for byte (sha256 on B)`);
    t.same(
      (cutState['ports'] as Array<{ up: boolean }>).map((p) => p.up),
      [false, true],
      `${label}: during the outage the ${o.watch} watch has port 1 down, port 2 up`,
    );
    t.same(
      (after['ports'] as Array<{ up: boolean }>).map((p) => p.up),
      [true, true],
      `${label}: after the plug-back both ports are up again`,
    );
    let failoverMs: number | null = null;
    if (dumps.length > 0) {
      await new Promise((r) => setTimeout(r, 300));
      for (const d of dumps) d.proc.kill('SIGINT');
      await Promise.all(dumps.map((d) => d.exited));
      const old = framesFrom(join(capDir, `${tag}-rba0.pcap`), A_IP).filter((f) => f.time < plugAt);
      const moved = (se['qps'] as Record<string, { qpn: number }>)['w']!.qpn;
      const lastOld = old.at(-1)?.time ?? NaN;
      const firstNew = framesFrom(join(capDir, `${tag}-rba1.pcap`), A_IP).find((f) => f.time > lastOld && f.dqpn === moved)?.time ?? NaN;
      failoverMs = Math.round((firstNew - lastOld) * 10) / 10;
      t.ok(
        failoverMs >= o.failover[0] && failoverMs < o.failover[1],
        `${label}: failover ${failoverMs} ms (A's last frame on rba0 to its first of the WRITE QP on rba1, tcpdump; bound ${o.failover.join(' to ')} ms)`,
      );
    }
    const c = after['counters'] as Record<string, number>;
    const s = safter['counters'] as Record<string, number>;
    const c0 = atCut['counters'] as Record<string, number>;
    const unique = 2 * (BYTES / 1024);
    const lost = pc(after)[0]!.tx - pc(before)[0]!.tx - pc(safter)[0]!.rx;
    t.comment(
      `${label}: failover ${failoverMs ?? '?'} ms (port down seen ${detect} ms after the cut); at the cut ${lost} of A's packets sent on port 1 never reached B ` +
        `(${drops} counted as TX drops of rba0); A sent ${c['sent_pkts']! - unique} packets more than the ${unique} of the streams (retransmitted); ` +
        `A: timeouts ${c['timeouts']! - c0['timeouts']!}, completer_retry_err ${c['completer_retry_err']! - c0['completer_retry_err']!}, ` +
        `rcvd_seq_err ${c['rcvd_seq_err']! - c0['rcvd_seq_err']!}; B: out_of_sequence ${s['out_of_sequence']}, duplicate_request ${s['duplicate_request']}; ` +
        `streams took ${String(done['ms'])} ms`,
    );
    send(client, { t: 'close' });
    send(server, { t: 'close' });
    await Promise.all([next(client, 'closed', 10_000), next(server, 'closed', 10_000)]);
    return { before, after, cutState, lag: ce['lag'] as Record<string, { configured: number; active: number; source: string }>, failoverMs };
  };

  const ethtool = { name: 'ethtool' };
  // arp_ping: each side's bond probes the other side's address from each port (the peer's kernel answers the
  // ARP). The watch list has no ethtool, so the carrier the cut also drops is ignored: the probes alone decide.
  // send_always: active-backup enables only the active port, and teamd's disabled port sends no probe
  // (forced_send), so without it port 2 would go down on missed replies before the cut and port 1 stay down
  // after the plug-back.
  const arpPing =
    (interval: number, missedMax: number): SideConfig =>
    (self, peer) => ({
      device: 'rbteam',
      runner: { name: 'activebackup' },
      link_watch: { name: 'arp_ping', source_host: self, target_host: peer, interval, missed_max: missedMax, send_always: true },
    });
  await t.test('activebackup: one port carries everything, the other after the cut', async (t) => {
    const r = await runCase(t, 'activebackup', { device: 'rbteam', runner: { name: 'activebackup' }, link_watch: ethtool }, [{ name: 'w' }, { name: 's' }]);
    const tx = (m: Msg): number[] => (m['ports'] as Array<{ tx: number }>).map((p) => p.tx);
    t.same(tx(r.before), [0, 0], 'nothing sent before the streams');
    t.equal(
      tx(r.cutState)[0]! > 0 && tx(r.cutState)[1]! > 0,
      true,
      `by the end of the outage both ports have sent (port 1 before the cut, port 2 after): ${tx(r.cutState).join(' / ')}`,
    );
    t.same(r.lag['w'], { configured: 1, active: 1, source: 'round-robin' }, 'active-backup: the WRITE QP on the active port 1');
    // Issue 15: the TX fast path (native sendSegments) sits on each member's link, so a bond's QPs use
    // it on whichever port carries them, before the cut and after the failover.
    const fast = r.after['fastTx'] as number[];
    if (process.env['SOFTROCE_NO_FASTPATH'] === '1') t.same(fast, [0, 0], 'SOFTROCE_NO_FASTPATH=1: no packet by the fast path');
    else
      t.ok(
        fast.length === 2 && fast[0]! > 0 && fast[1]! > 0,
        `the fast path sent on both member links (port 1 before the cut, port 2 after): ${fast.join(' / ')}`,
      );
  });

  // teamd's defaults: a dead peer found missed_max + 1 to + 2 intervals (4 to 5 s) after the cut; the streams stall
  // meanwhile (both QPs on port 1, retransmitting every 67 ms into the dead veth: retry_cnt 7 retries forever, as
  // rxe), so the plug-back still falls inside them; the loss counts those retransmissions.
  for (const [label, interval, bounds] of [
    ['arp_ping defaults', 1000, { watch: 'arp_ping', detectMax: 8000, failover: [2000, 8000], lossMax: 4000 }],
    ['arp_ping tuned', 10, { watch: 'arp_ping', detectMax: 500, failover: [0, 500], lossMax: 1000 }],
  ] as const) {
    await t.test(`activebackup, ${label} (interval ${interval} ms, missed_max 3): the probes alone find the cut`, async (t) => {
      const r = await runCase(t, `activebackup ${label}`, arpPing(interval, 3), [{ name: 'w' }, { name: 's' }], { ...bounds, failover: [...bounds.failover] });
      t.same(r.lag['w'], { configured: 1, active: 1, source: 'round-robin' }, 'active-backup: the WRITE QP on the active port 1');
    });
  }

  await t.test('loadbalance: traffic on both ports, QPs where flow entropy and setLagPort put them', async (t) => {
    const r = await runCase(t, 'loadbalance', { device: 'rbteam', runner: { name: 'loadbalance' }, link_watch: ethtool }, [
      { name: 'w', fe: 0 },
      { name: 's', fe: 1 },
      { name: 'e2', fe: 2 },
      { name: 'e3', fe: 3 },
      { name: 'x', fe: 0, lag: 2 },
    ]);
    t.same(
      Object.fromEntries(Object.entries(r.lag).map(([k, v]) => [k, [v.configured, v.active, v.source]])),
      { w: [1, 1, 'flow-entropy'], s: [2, 2, 'flow-entropy'], e2: [1, 1, 'flow-entropy'], e3: [2, 2, 'flow-entropy'], x: [2, 2, 'explicit'] },
      'flow entropy even -> port 1, odd -> port 2 (mlx4); setLagPort wins over the entropy',
    );
    const txc = (r.after['ports'] as Array<{ tx: number }>).map((p) => p.tx);
    t.ok(txc[0]! > 1000 && txc[1]! > 1000, `both ports carried the streams: ${txc.join(' / ')} packets`);
    const rl = r.after['lag'] as Record<string, { configured: number; active: number }>;
    t.same(rl['w'], { configured: 1, active: 1, source: 'flow-entropy' }, 'the WRITE QP is back on its port after the plug-back');
  });

  await t.test('a refused configuration raises a typed error and leaves the running bond as it was', async (t) => {
    const [cb] = await bond({ device: 'rbteam', runner: { name: 'loadbalance' } });
    t.equal(cb['mode'], 'hash', 'running: loadbalance');
    send(client, { t: 'state' });
    const s0 = await next(client, 'state', 5000);
    send(client, { t: 'reconfigure', config: { device: 'rbteam', runner: { name: 'roundrobin' }, ports: { rba0: {}, rba1: {} } } });
    const r1 = await next(client, 'refused', 5000);
    t.match(
      r1,
      { code: 'EOPNOTSUPP', reason: 'unsupported-runner', argument: 'config', name: 'LagRefusedError' },
      `roundrobin refused: ${String(r1['message'])}`,
    );
    send(client, { t: 'addPort', netdev: 'rba2' });
    const r2 = await next(client, 'refused', 5000);
    t.match(r2, { code: 'EINVAL', reason: 'port-count', name: 'LagRefusedError' }, `a third port refused: ${String(r2['message'])}`);
    send(client, { t: 'state' });
    const s1 = await next(client, 'state', 5000);
    t.same([s1['mode'], s1['ports'], s1['stats']], [s0['mode'], s0['ports'], s0['stats']], 'the bond is as it was (mode, ports, stats)');
    send(client, { t: 'close' });
    send(server, { t: 'close' });
    await Promise.all([next(client, 'closed', 10_000), next(server, 'closed', 10_000)]);
  });
});
