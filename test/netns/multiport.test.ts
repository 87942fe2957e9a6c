/**
 * Devices with two ports between two namespaces (issue 12 item 2, "done when"): namespaces A and B joined by
 * two veth pairs (198.19.21.0/24 and 198.19.22.0/24); in each a process (fixtures/multiport-peer.js, on this
 * run's backend) opens a two-port device described by SOFTROCE_DEVICES (`mp=mpa0:198.19.21.1+mpa1:198.19.22.1`),
 * one port per veth, and runs an RC QP and a UD QP on each port, all at once: an RDMA WRITE + SEND and a UD SEND
 * per port, every byte checked by sha256 on the other side. Each port's counters show its own share (the
 * WRITE sizes differ per port, so a packet counted on the wrong port shows), and each veth carried its port's
 * packets (the kernel's per-link packet counts). ibdev2netdev run in the namespace lists both ports. tcpdump on
 * both of B's veths (when installed) shows every packet's UDP source port as the flow formula says: an RC QP's
 * rdma_get_udp_sport(0, qpn, dest_qpn), a UD QP's 0xC000 + hash_32(qpn, 14) (src/roce/flow.ts).
 */
import t from 'tap';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { ROOT, Rng } from '../helpers.js';
import { Netns, netnsUnavailable, type NsProcess } from '../helpers/netns.js';
import { readFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { spawnSync } from 'node:child_process';
import { readCapture } from '../../src/roce/pcap.js';
import { flowSourcePort, qpSourcePort } from '../../src/roce/flow.js';

const skip = netnsUnavailable() ?? false;
if (skip) t.comment(`netns tests skipped: ${skip}`);

const PEER = join(ROOT, 'dist', 'test', 'netns', 'fixtures', 'multiport-peer.js');
type Msg = Record<string, unknown> & { t: string };

async function next(p: NsProcess, match: (m: Msg) => boolean, ms: number): Promise<Msg> {
  const line = await p.waitFor((l) => l.startsWith('{') && match(JSON.parse(l) as Msg), ms);
  return JSON.parse(line) as Msg;
}
const send = (p: NsProcess, m: object): void => {
  p.proc.stdin!.write(`${JSON.stringify(m)}\n`);
};
const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

/**
 * The TX byte count of `dev` in `ns` (ip -s link), the kernel's own figure. Bytes, not packets: a UDP GSO
 * send crosses a veth as one packet however many datagrams it carries.
 */
function txBytes(net: Netns, ns: string, dev: string): number {
  const out = net.ip(ns, ['-s', '-j', 'link', 'show', 'dev', dev]);
  const j = JSON.parse(out) as Array<{ stats64?: { tx: { bytes: number } }; stats?: { tx: { bytes: number } } }>;
  return (j[0]?.stats64 ?? j[0]?.stats)?.tx.bytes ?? 0;
}

t.test('two-port devices in two namespaces: RC and UD on QPs of both ports at once, per-port counters', { skip }, async (t) => {
  const net = Netns.open({ tag: 'mport' }, t);
  const a = net.addNamespace();
  const b = net.addNamespace();
  net.addVeth(a, 'mpa0', b, 'mpb0', '198.19.21.1/24', '198.19.21.2/24');
  net.addVeth(a, 'mpa1', b, 'mpb1', '198.19.22.1/24', '198.19.22.2/24');
  const envA = { ...process.env, SOFTROCE_DEVICES: 'mp=mpa0:198.19.21.1+mpa1:198.19.22.1' };
  const envB = { ...process.env, SOFTROCE_DEVICES: 'mp=mpb0:198.19.21.2+mpb1:198.19.22.2' };

  const tools = net.spawn(a, [process.execPath, join(ROOT, 'bin', 'ibdev2netdev.js')], { env: envA });
  t.equal(await tools.exited, 0, 'ibdev2netdev exits 0 in the namespace');
  t.same(tools.out.trim().split('\n'), ['mp port 1 ==> mpa0 (Up)', 'mp port 2 ==> mpa1 (Up)'], 'ibdev2netdev lists both ports');

  const server = net.spawn(b, [process.execPath, PEER, 'mp', 'server'], { env: envB });
  const client = net.spawn(a, [process.execPath, PEER, 'mp', 'client'], { env: envA });
  const [se, ce] = await Promise.all([next(server, (m) => m.t === 'ep', 15_000), next(client, (m) => m.t === 'ep', 15_000)]);
  const backend = process.env['SOFTROCE_NO_NATIVE'] === '1' ? 'dgram' : 'native';
  t.equal(ce['backend'], backend, `the peers run this suite's backend (${backend})`);
  // With the addon (root here) each port's socket is bound to its veth (SO_BINDTODEVICE); Node's sockets alone cannot be.
  t.same(ce['bound'], backend === 'native' ? ['mpa0', 'mpa1'] : ['', ''], `sockets bound to the ports' netdevs: ${JSON.stringify(ce['bound'])}`);
  const cp = ce['ports'] as Array<{ rc: { gid: string }; ud: { gid: string }; netdev: string }>;
  t.same(
    cp.map((p) => [p.netdev, p.rc.gid, p.ud.gid]),
    [
      ['mpa0', '::ffff:198.19.21.1', '::ffff:198.19.21.1'],
      ['mpa1', '::ffff:198.19.22.1', '::ffff:198.19.22.1'],
    ],
    "each port's QPs carry the port's netdev and address",
  );
  send(server, { t: 'connect', ports: ce['ports'] });
  send(client, { t: 'connect', ports: se['ports'] });
  await Promise.all([next(server, (m) => m.t === 'ready', 5000), next(client, (m) => m.t === 'ready', 5000)]);

  // tcpdump on B's two veths while the traffic runs (Ethernet frames as they crossed each link).
  const hasTcpdump = spawnSync('tcpdump', ['--version']).status === 0;
  const capDir = mkdtempSync(join(tmpdir(), 'srt-mport-'));
  t.teardown(() => rmSync(capDir, { recursive: true, force: true }));
  const dumps = hasTcpdump
    ? ['mpb0', 'mpb1'].map((dev) =>
        net.spawn(b, ['tcpdump', '-i', dev, '--immediate-mode', '-s', '0', '-U', '-n', '-w', join(capDir, `${dev}.pcap`), 'udp port 4791']),
      )
    : [];
  for (const d of dumps) {
    for (let i = 0; i < 100 && !d.err.includes('listening on'); i++) await new Promise((r) => setTimeout(r, 50));
  }
  if (!hasTcpdump) t.comment('source-port capture not checked: tcpdump is not installed');

  const counters = async (p: NsProcess, tag: number): Promise<Array<Record<string, number>>> =>
    (await next(p, (m) => m.t === 'counters' && m['tag'] === tag, 5000))['c'] as Array<Record<string, number>>;
  send(client, { t: 'counters', tag: 1 });
  send(server, { t: 'counters', tag: 1 });
  const [c0, s0] = await Promise.all([counters(client, 1), counters(server, 1)]);
  const tx0 = [txBytes(net, a, 'mpa0'), txBytes(net, a, 'mpa1')];

  const rng = new Rng(0x2bad);
  const sizes = [400_000, 150_000];
  const rc = sizes.map((n) => rng.bytes(n));
  const ud = [rng.bytes(1000), rng.bytes(600)];
  const recvs = [1, 2].flatMap((port) =>
    (['rc', 'ud'] as const).map((kind) => next(server, (m) => m.t === 'recv' && m['port'] === port && m['kind'] === kind, 15_000)),
  );
  const done = next(client, (m) => m.t === 'done' && m['tag'] === 7, 15_000);
  send(client, { t: 'xfer', tag: 7, rc: rc.map((d) => Buffer.from(d).toString('base64')), ud: ud.map((d) => Buffer.from(d).toString('base64')) });
  const d = await done;
  t.same(d['st'], Array(6).fill('SUCCESS'), 'every WR on both ports completes (WRITE, SEND, UD SEND per port)');
  const r = await Promise.all(recvs);
  for (let i = 0; i < 2; i++) {
    const [rrc, rud] = [r[2 * i]!, r[2 * i + 1]!];
    t.same([rrc['status'], rrc['tag'], rrc['sha256']], ['SUCCESS', 7, sha(rc[i]!)], `port ${i + 1}: the ${sizes[i]} bytes written over RC landed unchanged`);
    t.same([rud['status'], rud['sha256']], ['SUCCESS', sha(ud[i]!)], `port ${i + 1}: the ${ud[i]!.length}-byte UD message arrived unchanged`);
  }

  send(client, { t: 'counters', tag: 2 });
  send(server, { t: 'counters', tag: 2 });
  const [c1, s1] = await Promise.all([counters(client, 2), counters(server, 2)]);
  const tx1 = [txBytes(net, a, 'mpa0'), txBytes(net, a, 'mpa1')];
  for (let i = 0; i < 2; i++) {
    // Port i sends its WRITE at MTU 1024, one RC SEND and one UD SEND: its share, and not the other port's.
    // Retransmissions are its own too, and a loaded machine makes some (a pure-JS run under load resent 136
    // of 149), so the upper bound is less than its share plus the other port's: a stream counted or carried on
    // the wrong port still shows, a retransmission burst does not fail the test.
    const want = Math.ceil(sizes[i]! / 1024) + 2;
    const other = Math.ceil(sizes[1 - i]! / 1024) + 2;
    const sent = c1[i]!['sent_pkts']! - c0[i]!['sent_pkts']!;
    const rcvd = s1[i]!['rcvd_pkts']! - s0[i]!['rcvd_pkts']!;
    t.ok(sent >= want && sent < want + other, `client port ${i + 1}: sent_pkts +${sent} (its share: ${want}; the other port's: ${other})`);
    t.ok(rcvd >= want && rcvd < want + other, `server port ${i + 1}: rcvd_pkts +${rcvd} (its share: ${want}; the other port's: ${other})`);
    // On the wire: the WRITE's bytes plus per-packet headers (Ethernet 14 + IPv4 20 + UDP 8 + BTH/RETH/ICRC <= 32).
    const wire = tx1[i]! - tx0[i]!;
    const payload = sizes[i]! + ud[i]!.length;
    t.ok(
      wire >= payload && wire < payload + sizes[1 - i]! + (want + other) * 90,
      `veth ${i === 0 ? 'mpa0' : 'mpa1'} carried port ${i + 1}'s packets (+${wire} TX bytes for ${payload} payload bytes)`,
    );
  }

  if (dumps.length > 0) {
    // --immediate-mode hands each frame to tcpdump at once (a TPACKET_V3 block would still hold the last ones at SIGINT).
    await new Promise((r) => setTimeout(r, 300));
    for (const d of dumps) d.proc.kill('SIGINT');
    await Promise.all(dumps.map((d) => d.exited));
    // What each packet's source port must be: keyed by source address and destination QPN.
    const sp = se['ports'] as Array<{ rc: { qpn: number }; ud: { qpn: number } }>;
    const want = new Map<string, number>();
    const addrs = [
      ['198.19.21.1', '198.19.21.2'],
      ['198.19.22.1', '198.19.22.2'],
    ] as const;
    const cq = ce['ports'] as Array<{ rc: { qpn: number }; ud: { qpn: number } }>;
    for (let i = 0; i < 2; i++) {
      const [ca, sa] = addrs[i]!;
      want.set(`${ca}>${sp[i]!.rc.qpn}`, flowSourcePort(cq[i]!.rc.qpn, 0, sp[i]!.rc.qpn));
      want.set(`${sa}>${cq[i]!.rc.qpn}`, flowSourcePort(sp[i]!.rc.qpn, 0, cq[i]!.rc.qpn));
      want.set(`${ca}>${sp[i]!.ud.qpn}`, qpSourcePort(cq[i]!.ud.qpn));
    }
    const perDev: number[] = [];
    const bad: string[] = [];
    const ports = new Set<number>();
    for (const dev of ['mpb0', 'mpb1']) {
      perDev.push(0);
      for (const rec of readCapture(readFileSync(join(capDir, `${dev}.pcap`))).records) {
        const f = rec.data;
        if (f.length < 14 + 20 + 8 + 12 || f.readUInt16BE(12) !== 0x0800) continue;
        const ip = 14;
        const udp = ip + (f[ip]! & 0x0f) * 4;
        const src = `${f[ip + 12]}.${f[ip + 13]}.${f[ip + 14]}.${f[ip + 15]}`;
        const sport = f.readUInt16BE(udp);
        const dqpn = f.readUInt32BE(udp + 8 + 4) & 0xffffff;
        const key = `${src}>${dqpn}`;
        const w = want.get(key);
        perDev[perDev.length - 1]!++;
        ports.add(sport);
        if (w !== sport || f.readUInt16BE(udp + 2) !== 4791)
          bad.push(`${dev} #${rec.index} ${key} sport 0x${sport.toString(16)} want ${w === undefined ? 'none' : `0x${w.toString(16)}`}`);
      }
    }
    t.ok(
      perDev.every((n) => n >= 3),
      `each veth's capture holds its port's packets (${perDev.join(' and ')} frames; a GSO batch is one frame)`,
    );
    t.same(
      bad.slice(0, 5),
      [],
      `every captured packet's UDP source port follows the flow formula (${ports.size} source ports: ${[...ports].map((p) => `0x${p.toString(16)}`).join(' ')})`,
    );
  }

  client.proc.stdin!.end();
  server.proc.stdin!.end();
  const codes = await Promise.all([client.exited, server.exited]);
  t.same(codes, [0, 0], `both peers close their devices and exit 0${client.err || server.err ? `; stderr: ${client.err}${server.err}` : ''}`);
});
