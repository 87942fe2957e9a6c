/**
 * UD multicast between two namespaces over a veth pair (198.19.31.1/24 and .2/24), through the real kernel:
 * a device in each (fixtures/mcast-peer.js, on this run's backend) attaches UD QPs to ::ffff:239.19.31.1 (one
 * in A, two in B), so each port's link joins 239.19.31.1 on its veth (the kernel lists the membership: `ip
 * maddr`). A UD SEND to the MGID from either side reaches every attached QP on both sides once, byte-exact,
 * with the sender's QPN and a GRH from the sender to the group. After B detaches, B's veth has left the
 * group and B receives nothing more.
 */
import t from 'tap';
import { createHash, randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { ROOT } from '../helpers.js';
import { Netns, netnsUnavailable, type NsProcess } from '../helpers/netns.js';

const skip = netnsUnavailable() ?? false;
if (skip) t.comment(`netns tests skipped: ${skip}`);

const PEER = join(ROOT, 'dist', 'test', 'netns', 'fixtures', 'mcast-peer.js');
const GROUP = '239.19.31.1';
const MGID = `::ffff:${GROUP}`;
type Msg = Record<string, unknown> & { t: string };

/** Every JSON line of `p` so far, parsed. */
const lines = (p: NsProcess): Msg[] =>
  p.out
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as Msg);
const send = (p: NsProcess, m: object): void => {
  p.proc.stdin!.write(`${JSON.stringify(m)}\n`);
};
/** Waits (bounded) until `p` has printed `n` lines of type `type`; returns them. */
async function until(p: NsProcess, type: string, n: number, ms: number): Promise<Msg[]> {
  const end = Date.now() + ms;
  for (;;) {
    const got = lines(p).filter((m) => m.t === type);
    if (got.length >= n || Date.now() > end) return got;
    await new Promise((r) => setTimeout(r, 10));
  }
}

t.test('multicast UD SEND between two namespaces over a veth: every attached QP on both sides, once each', { skip }, async (t) => {
  const net = Netns.open({ tag: 'mcast' }, t);
  const a = net.addNamespace();
  const b = net.addNamespace();
  net.addVeth(a, 'mca0', b, 'mcb0', '198.19.31.1/24', '198.19.31.2/24');
  const pa = net.spawn(a, [process.execPath, PEER, '198.19.31.1', MGID, '1']);
  const pb = net.spawn(b, [process.execPath, PEER, '198.19.31.2', MGID, '2']);
  t.teardown(() => {
    pa.proc.stdin?.end();
    pb.proc.stdin?.end();
  });
  const [ra, rb] = await Promise.all([until(pa, 'ready', 1, 15_000), until(pb, 'ready', 1, 15_000)]);
  t.equal(ra.length, 1, `A ready ${pa.err}`);
  t.equal(rb.length, 1, `B ready ${pb.err}`);
  const A = ra[0]!,
    B = rb[0]!;
  const backend = process.env['SOFTROCE_NO_NATIVE'] === '1' ? 'dgram' : 'native';
  t.equal(B['backend'], backend, `this suite's backend (${backend})`);
  t.match(net.ip(b, ['maddr', 'show', 'dev', 'mcb0']), GROUP, "B's veth is a member of the group (IP_ADD_MEMBERSHIP on the port's address)");
  t.match(net.ip(a, ['maddr', 'show', 'dev', 'mca0']), GROUP, "A's veth too");

  const round = async (from: NsProcess, fromAddr: string, fromQp: number, size: number, before: [number, number]): Promise<void> => {
    const data = randomBytes(size);
    const sha = createHash('sha256').update(data).digest('hex');
    send(from, { t: 'send', data: data.toString('base64') });
    const [ga, gb] = await Promise.all([until(pa, 'recv', before[0] + 1, 5000), until(pb, 'recv', before[1] + 2, 5000)]);
    const fresh = [...ga.slice(before[0]), ...gb.slice(before[1])];
    // What the peers printed, when a copy is missing or extra (their stderr has any exception).
    if (fresh.length !== 3) t.comment(pa.out, pa.err, pb.out, pb.err);
    t.same(
      fresh.map((m) => m['qpn']).sort(),
      [...(A['qpns'] as number[]), ...(B['qpns'] as number[])].sort(),
      `from ${fromAddr}: each attached QP got one copy`,
    );
    for (const m of fresh) {
      t.equal(m['status'], 'SUCCESS');
      t.equal(m['byteLen'], 40 + size, 'GRH + payload');
      t.equal(m['srcQp'], fromQp, "src_qp is the sender's QPN");
      t.same(m['grh'], [fromAddr, GROUP], 'GRH: from the sender to the group');
      t.equal(m['sha256'], sha, 'payload byte-exact');
    }
  };
  await round(pa, '198.19.31.1', A['sender'] as number, 1000, [0, 0]);
  await round(pb, '198.19.31.2', B['sender'] as number, 64, [1, 2]);
  await new Promise((r) => setTimeout(r, 150));
  t.equal(lines(pa).filter((m) => m.t === 'recv').length, 2, 'A: no duplicate');
  t.equal(lines(pb).filter((m) => m.t === 'recv').length, 4, 'B: no duplicate');

  send(pb, { t: 'detach' });
  await until(pb, 'detached', 1, 5000);
  await new Promise((r) => setTimeout(r, 50));
  t.notMatch(net.ip(b, ['maddr', 'show', 'dev', 'mcb0']), GROUP, "B's veth left the group with its last QP");
  send(pb, { t: 'counters' });
  const c0 = (await until(pb, 'counters', 1, 5000))[0]!['c'] as Record<string, number>;
  send(pa, { t: 'send', data: Buffer.from('after').toString('base64') });
  await until(pa, 'recv', 3, 5000);
  await new Promise((r) => setTimeout(r, 100));
  send(pb, { t: 'counters' });
  const c1 = (await until(pb, 'counters', 2, 5000))[1]!['c'] as Record<string, number>;
  t.equal(lines(pb).filter((m) => m.t === 'recv').length, 4, 'B receives nothing after detaching');
  t.equal(c1['rcvd_pkts'], c0['rcvd_pkts'], "B's device does not even see the datagram");
  t.equal(c1['rcvd_icrc_err'], 0, 'no ICRC error on B');
});
