/**
 * One real use of the namespace harness: two namespaces joined by a veth pair (198.19.1.1/24 and
 * 198.19.1.2/24), a softroce device in each, opened by a separate process on its namespace's address
 * (test/netns/fixtures/rdma-peer.js, on the backend of this run: the addon, or SOFTROCE_NO_NATIVE=1).
 * An RC WRITE + SEND crosses the veth and the bytes that landed are checked against what the test sent.
 * Then the responder's link goes down (later the requester's own): the next WRITE + SEND stalls and the
 * requester retries on its ACK timer (retryCnt 7: forever, as rxe); the link comes back up and the
 * transfer completes, bytes checked. Last, an unreachable route to the responder fails the requester's sends:
 * they are counted as send_err (rxe's count of a failed transmit); the route goes and the transfer completes.
 */
import t from 'tap';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { ROOT, Rng } from '../helpers.js';
import { Netns, netnsUnavailable, type NsProcess } from '../helpers/netns.js';

const skip = netnsUnavailable() ?? false;
if (skip) t.comment(`netns tests skipped: ${skip}`);

const PEER = join(ROOT, 'dist', 'test', 'netns', 'fixtures', 'rdma-peer.js');
type Msg = Record<string, unknown> & { t: string };

/** The next JSON line of `p` that has type `type` (and `tag`, if given), within `ms`. */
async function next(p: NsProcess, type: string, ms: number, tag?: number): Promise<Msg> {
  const line = await p.waitFor((l) => {
    if (!l.startsWith('{')) return false;
    const m = JSON.parse(l) as Msg;
    return m.t === type && (tag === undefined || m['tag'] === tag);
  }, ms);
  return JSON.parse(line) as Msg;
}
const send = (p: NsProcess, m: object): void => {
  p.proc.stdin!.write(`${JSON.stringify(m)}\n`);
};
const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

t.test('RC WRITE + SEND between two namespaces; link down stalls and retries, link up completes', { skip }, async (t) => {
  const net = Netns.open({ tag: 'rdma' }, t);
  const a = net.addNamespace();
  const b = net.addNamespace();
  net.addVeth(a, 'sr0', b, 'sr1', '198.19.1.1/24', '198.19.1.2/24');

  const server = net.spawn(b, [process.execPath, PEER, '198.19.1.2', 'server']);
  const client = net.spawn(a, [process.execPath, PEER, '198.19.1.1', 'client']);
  const [se, ce] = await Promise.all([next(server, 'ep', 15_000), next(client, 'ep', 15_000)]);
  const backend = process.env['SOFTROCE_NO_NATIVE'] === '1' ? 'dgram' : 'native';
  t.equal(ce['backend'], backend, `the peers run this suite's backend (${backend})`);
  t.equal((ce['ep'] as { gid: string }).gid, '::ffff:198.19.1.1', "the client's GID is its namespace address");
  send(server, { t: 'connect', ep: ce['ep'] });
  send(client, { t: 'connect', ep: se['ep'] });
  await Promise.all([next(server, 'ready', 5000), next(client, 'ready', 5000)]);

  const rng = new Rng(0x5eed12);
  const xfer = async (tag: number, data: Uint8Array, ms: number): Promise<void> => {
    const done = next(client, 'done', ms, tag);
    const recv = next(server, 'recv', ms, tag);
    const [d, r] = await Promise.all([done, recv]);
    t.same([d['write'], d['send']], ['SUCCESS', 'SUCCESS'], `transfer ${tag}: WRITE and SEND complete`);
    t.equal(r['status'], 'SUCCESS', `transfer ${tag}: the SEND is received`);
    t.equal(r['sha256'], sha(data), `transfer ${tag}: the ${data.length} written bytes landed unchanged`);
  };

  // 1. Both links up: 300 KB WRITE (300 packets at MTU 1024) and a SEND.
  const d1 = rng.bytes(300_000);
  const x1 = xfer(1, d1, 15_000);
  send(client, { t: 'xfer', tag: 1, data: Buffer.from(d1).toString('base64') });
  await x1;

  // 2. A link goes down: the next WRITE + SEND stalls while the requester retries on its ACK timer (retry_cnt 7:
  // forever, as rxe), never giving up; 3. the link comes back up: the next retry gets through, bounded.
  // First the responder's end (the requester's packets go out and are lost on the dead veth, no ACK comes
  // back), then the requester's own end (its sends fail at once: no route; counted, never thrown).
  // How an outage is made and undone: a link down (and up), or (kind 'route') an unreachable route to the
  // responder in the requester's namespace, which fails its sends (EHOSTUNREACH) while the link and its
  // address, hence the GID table, stay as they are.
  const outage = async (tag: number, ns: string, dev: string, who: string, kind: 'link' | 'route' = 'link'): Promise<void> => {
    send(client, { t: 'counters', tag: tag * 10 });
    const before = (await next(client, 'counters', 5000, tag * 10))['c'] as Record<string, number>;
    if (kind === 'route') net.ip(ns, ['route', 'add', 'unreachable', '198.19.1.2/32']);
    else net.setLink(ns, dev, 'down');
    const data = rng.bytes(100_000);
    let finished = false;
    const x = xfer(tag, data, 30_000).finally(() => (finished = true));
    send(client, { t: 'xfer', tag, data: Buffer.from(data).toString('base64') });
    await new Promise((r) => setTimeout(r, 1500));
    t.notOk(finished, `${who} down: the transfer does not complete`);
    t.notOk(client.out.includes(`"t":"done","tag":${tag}`), `${who} down: no completion for it yet`);
    send(client, { t: 'counters', tag: tag * 10 + 1 });
    const duringMsg = await next(client, 'counters', 5000, tag * 10 + 1);
    const during = duringMsg['c'] as Record<string, number>;
    const d = (k: string): number => (during[k] ?? 0) - (before[k] ?? 0);
    // 1.5 s of 16.8 ms ACK timeouts: dozens of retries; ask for a few, the timer is coarse under load.
    t.ok(
      d('completer_retry_err') >= 3,
      `${who} down: the requester retried on its ACK timer (${d('completer_retry_err')} retries in 1.5 s, send_err +${d('send_err')})`,
    );
    t.equal(d('retry_exceeded_err'), 0, `${who} down: and never gave up`);
    if (kind === 'route') {
      // The requester's sendto() fails at once (EHOSTUNREACH). rxe counts a failed transmit as send_err
      // (rxe_xmit_packet); so do the links here (udp-base.ts sendFailed: the addon's refused sendmmsg, the
      // error of Node's send callback). The source address stays, so nothing is dropped before the socket.
      t.ok(d('send_err') > 0, `${who}: failed sends counted as send_err (+${d('send_err')})`);
      t.equal(d('sent_sgid_gone'), 0, `${who}: the GID table kept the source address`);
      // A GSO send refused for its route is a lost datagram, not a sign that GSO does not work: it stays on.
      t.equal(duringMsg['gso'], ce['gso'], `${who}: UDP GSO as it was before the outage (${String(ce['gso'])})`);
    } else if (ns === a) {
      // With its own link down the requester's sends fail (ENETUNREACH: the connected route went with the
      // link), counted as send_err; or, once the GID table has dropped the address of a link without carrier
      // (os.networkInterfaces() and the addon's list hide it), they are dropped before the socket as
      // sent_sgid_gone. Either way each one is counted, none thrown.
      t.ok(
        d('send_err') + d('sent_sgid_gone') > 0,
        `${who}: the failed sends are counted (send_err +${d('send_err')}, sent_sgid_gone +${d('sent_sgid_gone')})`,
      );
    }
    const up = Date.now();
    if (kind === 'route') net.ip(ns, ['route', 'del', 'unreachable', '198.19.1.2/32']);
    else net.setLink(ns, dev, 'up');
    await x;
    t.ok(Date.now() - up < 30_000, `${who} back: completed ${Date.now() - up} ms later`);
  };
  await outage(2, b, 'sr1', "responder's link");
  await outage(3, a, 'sr0', "requester's link");
  await outage(4, a, 'sr0', 'route to the responder (unreachable)', 'route');

  client.proc.stdin!.end();
  server.proc.stdin!.end();
  const codes = await Promise.all([client.exited, server.exited]);
  t.same(codes, [0, 0], `both peers close their devices and exit 0${client.err || server.err ? `; stderr: ${client.err}${server.err}` : ''}`);
});
