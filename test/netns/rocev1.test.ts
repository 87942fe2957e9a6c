/**
 * RoCEv1 on the wire (issue 12 item 4): two namespaces joined by a veth pair (198.19.4.1/24, 198.19.4.2/24),
 * a softroce process in each (test/netns/fixtures/rocev1-peer.js) whose RC QP takes its source GID from the
 * address's RoCE v1 entry. SEND, WRITE, READ, FETCH_AND_ADD and CMP_AND_SWAP cross the veth as Ethernet frames
 * with Ethertype 0x8915 and a GRH (the addon's AF_PACKET socket), bytes and atomic results checked; the
 * client's LINKTYPE_ETHERNET capture decodes in `softroce dump` with every ICRC ok and every frame RoCEv1.
 * Without CAP_NET_RAW (setpriv drops it) the connect fails with a typed EPERM naming av.sgidIndex; on the
 * pure JS backend (no AF_PACKET) with EOPNOTSUPP.
 */
import t from 'tap';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { ROOT, Rng } from '../helpers.js';
import { Netns, netnsUnavailable, type NsProcess } from '../helpers/netns.js';
import { readCapture } from '../../src/roce/pcap.js';
import { decodeFrame, LinkType } from '../../src/roce/framing.js';

const skip = netnsUnavailable() ?? false;
if (skip) t.comment(`netns tests skipped: ${skip}`);

const PEER = join(ROOT, 'dist', 'test', 'netns', 'fixtures', 'rocev1-peer.js');
const BIN = join(ROOT, 'bin', 'softroce.js');
const NATIVE = process.env['SOFTROCE_NO_NATIVE'] !== '1';
type Msg = Record<string, unknown> & { t: string };

/** Waits (bounded) until both veth ends run: a device opened before that finds its address on no netdev. */
async function running(net: Netns, ends: [string, string][]): Promise<void> {
  for (let i = 0; i < 100 && !ends.every(([ns, dev]) => net.linkState(ns, dev).oper === 'UP'); i++) await new Promise((r) => setTimeout(r, 50));
}

async function next(p: NsProcess, type: string | string[], ms: number): Promise<Msg> {
  const types = Array.isArray(type) ? type : [type];
  const line = await p.waitFor((l) => l.startsWith('{') && types.includes((JSON.parse(l) as Msg).t), ms);
  return JSON.parse(line) as Msg;
}
const send = (p: NsProcess, m: object): void => {
  p.proc.stdin!.write(`${JSON.stringify(m)}\n`);
};
const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

t.test('RC SEND, WRITE, READ and atomics over RoCEv1 between two namespaces; the capture verifies', { skip }, async (t) => {
  const net = Netns.open({ tag: 'rocev1' }, t);
  const a = net.addNamespace();
  const b = net.addNamespace();
  net.addVeth(a, 'v1a', b, 'v1b', '198.19.4.1/24', '198.19.4.2/24');
  await running(net, [
    [a, 'v1a'],
    [b, 'v1b'],
  ]);
  const dir = mkdtempSync(join(tmpdir(), 'softroce-v1-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const pcap = join(dir, 'client.pcap');

  const server = net.spawn(b, [process.execPath, PEER, '198.19.4.2', 'server']);
  const client = net.spawn(a, [process.execPath, PEER, '198.19.4.1', 'client', pcap]);
  const [se, ce] = await Promise.all([next(server, 'ep', 15_000), next(client, 'ep', 15_000)]);
  t.equal(ce['backend'], NATIVE ? 'native' : 'dgram', "the peers run this suite's backend");
  t.ok((ce['sgidIndex'] as number) >= 2, `the client's address has a RoCE v1 GID entry (index ${String(ce['sgidIndex'])})`);
  send(server, { t: 'connect', ep: ce['ep'] });
  send(client, { t: 'connect', ep: se['ep'] });
  const [sr, cr] = await Promise.all([next(server, ['ready', 'refused'], 5000), next(client, ['ready', 'refused'], 5000)]);
  if (!NATIVE) {
    // Node has no AF_PACKET socket: a RoCE v1 AV is refused whole, typed, naming the attribute.
    send(client, { t: 'ud', data: 'AAAA', udQpn: se['udQpn'] });
    const ur = JSON.parse(await client.waitFor((l) => l.startsWith('{') && (JSON.parse(l) as Msg)['argument'] === 'sgidIndex', 5000)) as Msg;
    t.same([ur['code'], ur['argument']], ['EOPNOTSUPP', 'sgidIndex'], 'ibv_create_ah on the RoCE v1 GID: refused too');
    for (const r of [sr, cr]) {
      t.equal(r.t, 'refused');
      t.equal(r['code'], 'EOPNOTSUPP');
      t.equal(r['argument'], 'av.sgidIndex');
      t.match(r['message'] as string, /RoCE v1 needs the native addon/);
      t.equal(r['state'], 'INIT', 'the modify to RTR changed nothing');
    }
    return;
  }
  t.same([sr.t, cr.t], ['ready', 'ready'], 'both QPs reach RTS on their RoCE v1 GIDs');

  const data = new Rng(0x5eed41).bytes(200_000);
  const recv = next(server, 'recv', 20_000);
  send(client, { t: 'run', data: Buffer.from(data).toString('base64') });
  const ran = await next(client, 'ran', 20_000);
  t.same(ran['statuses'], ['SUCCESS', 'SUCCESS', 'SUCCESS', 'SUCCESS', 'SUCCESS'], 'WRITE, SEND, READ, FETCH_ADD, CMP_SWAP complete');
  const r = await recv;
  t.equal(r['sha256'], sha(data), 'the 200,000 written bytes landed unchanged (checked by the SEND that followed)');
  t.equal(ran['readSha'], sha(data), 'READ brought the same bytes back');
  t.equal(ran['fetchAdd'], '1000', 'FETCH_AND_ADD returned the original 1000');
  t.equal(ran['cmpSwap'], '1005', 'CMP_AND_SWAP saw 1005 (1000 + 5) and swapped');
  send(server, { t: 'peek' });
  t.equal((await next(server, 'peek', 5000))['atom'], '42', "the server's word holds the swapped value");

  // UD through an AH on the RoCE v1 GID: the datagram arrives with the GRH it carried on the wire.
  const ud = new Rng(0x5eed42).bytes(1000); // within the UD path MTU (1024 on a 1500-byte veth)
  const udRecv = next(server, 'udRecv', 10_000);
  send(client, { t: 'ud', data: Buffer.from(ud).toString('base64'), udQpn: se['udQpn'] });
  t.equal((await next(client, 'udSent', 10_000))['status'], 'SUCCESS', 'the UD SEND completes');
  const u = await udRecv;
  t.equal(u['status'], 'SUCCESS');
  t.equal(u['byteLen'], 40 + ud.length, 'GRH + payload');
  t.equal(u['sha256'], sha(ud), 'the UD payload landed unchanged');
  t.equal(u['sgid'], '00000000000000000000ffffc6130401', "the GRH's SGID is the client's v1 GID (::ffff:198.19.4.1)");

  send(client, { t: 'stats' });
  const st = (await next(client, 'stats', 5000)) as Msg & { v1: Record<string, number>; counters: Record<string, number> };
  t.ok(st.v1['txFrames']! > 150 && st.v1['rxFrames']! > 150, `frames went both ways over AF_PACKET (${st.v1['txFrames']} out, ${st.v1['rxFrames']} in)`);
  t.equal(st.v1['rxIcrcErr'], 0, 'no v1 ICRC errors');
  t.equal(st.counters['rcvd_icrc_err'] ?? 0, 0);

  // Closing stdin closes the devices: the capture is complete once the client exits.
  client.proc.stdin!.end();
  server.proc.stdin!.end();
  t.equal(await client.exited, 0);
  await server.exited;
  const cap = readCapture(readFileSync(pcap));
  const roce = cap.records.map((rec) => decodeFrame(rec.data, rec.linkType)).filter((d) => d.roce);
  t.ok(cap.records.length > 0 && cap.records.every((rec) => rec.linkType === LinkType.ETHERNET), 'the capture is LINKTYPE_ETHERNET');
  t.ok(roce.length > 300, `${roce.length} RoCE frames recorded, both directions`);
  t.ok(
    roce.every((d) => d.encap === 'rocev1' && d.icrc === 'ok' && d.frame?.eth?.ethertype === 0x8915),
    'every frame is RoCEv1 (Ethertype 0x8915, GRH) with a good ICRC',
  );
  const ops = new Set(roce.map((d) => d.frame!.ib.bth.opcode));
  // RC opcodes (IBA 9.2.1 table 38): SEND_ONLY, RDMA_WRITE_FIRST, RDMA_READ_REQUEST, RDMA_READ_RESPONSE_FIRST,
  // ACKNOWLEDGE, ATOMIC_ACKNOWLEDGE, COMPARE_SWAP, FETCH_ADD
  for (const op of [0x04, 0x06, 0x0c, 0x0d, 0x11, 0x12, 0x13, 0x14]) {
    t.ok(ops.has(op), `opcode 0x${op.toString(16)} on the wire`);
  }
  const out = spawnSync(process.execPath, [BIN, 'dump', pcap], { encoding: 'utf8' });
  t.equal(out.status, 0);
  const last = out.stdout.trimEnd().split('\n').at(-1)!;
  // tshark (when installed) dissects every frame as InfiniBand over RoCE, none malformed.
  const ts = spawnSync('tshark', ['-r', pcap, '-T', 'fields', '-e', 'frame.protocols', '-e', '_ws.malformed'], { encoding: 'utf8' });
  if (ts.error) t.comment(`tshark not run: ${ts.error.message}`);
  else {
    const rows = ts.stdout.trimEnd().split('\n');
    t.equal(rows.length, roce.length, 'tshark reads as many frames');
    t.ok(
      rows.every((r) => /^eth:ethertype:infiniband/.test(r) && !/\t\S/.test(r)),
      'tshark: every frame eth:ethertype:infiniband, none malformed',
    );
  }
  t.match(last, new RegExp(`^packets=${roce.length} roce=${roce.length} icrc_ok=${roce.length} icrc_bad=0 malformed=0$`), `softroce dump: ${last}`);
});

t.test('without CAP_NET_RAW a RoCE v1 GID is refused with a typed EPERM', { skip: skip || (!NATIVE && 'native backend only') }, async (t) => {
  const net = Netns.open({ tag: 'rocev1p' }, t);
  const a = net.addNamespace();
  const b = net.addNamespace();
  net.addVeth(a, 'v1c', b, 'v1d', '198.19.5.1/24', '198.19.5.2/24');
  await running(net, [
    [a, 'v1c'],
    [b, 'v1d'],
  ]);
  // setpriv drops CAP_NET_RAW from the bounding set, so the exec'd node does not have it, root or not.
  const drop = ['setpriv', '--inh-caps=-net_raw', '--bounding-set=-net_raw', '--'];
  const server = net.spawn(b, [process.execPath, PEER, '198.19.5.2', 'server']);
  const client = net.spawn(a, [...drop, process.execPath, PEER, '198.19.5.1', 'client']);
  const [se, ce] = await Promise.all([next(server, 'ep', 15_000), next(client, 'ep', 15_000)]);
  send(client, { t: 'connect', ep: se['ep'] });
  const r = await next(client, ['ready', 'refused'], 5000);
  t.equal(r.t, 'refused');
  t.equal(r['code'], 'EPERM');
  t.equal(r['argument'], 'av.sgidIndex');
  t.match(r['message'] as string, /RoCE v1 needs CAP_NET_RAW/);
  t.equal(r['state'], 'INIT', 'the modify to RTR changed nothing');
  void ce;
  client.proc.stdin!.end();
  server.proc.stdin!.end();
  await Promise.all([client.exited, server.exited]);
});
