/**
 * The carrier of a real netdev through a UDP link bound to it (issue 14 item 4: what teamd's ethtool link
 * watch reads): two namespaces joined by a veth pair (198.19.31.0/24); a process in A (fixtures/carrier-peer.js,
 * on this run's backend) opens UdpLink on A's end. Pulling the cable as Linux's bonding selftests do (`ip link
 * set <peer> down`: both ends lose carrier) makes the link report down, plugging it back up; the link's own end
 * set administratively down reports down too (its carrier file then cannot be read). With the addon the news
 * comes by netlink and a 100 ms sysfs poll, without it by the poll alone (src/roce/link/carrier.ts); the delays
 * are printed and asserted only against a generous bound (2 s: a loaded 2-core box). One 'link' event per
 * change, no more (numbered by the fixture).
 */
import t from 'tap';
import { join } from 'node:path';
import { ROOT } from '../helpers.js';
import { Netns, netnsUnavailable, type NsProcess } from '../helpers/netns.js';
import { readCarrier, watchCarrier, netdevExists } from '../../src/roce/link/carrier.js';

const skip = netnsUnavailable() ?? false;
if (skip) t.comment(`netns tests skipped: ${skip}`);

const PEER = join(ROOT, 'dist', 'test', 'netns', 'fixtures', 'carrier-peer.js');
type Msg = Record<string, unknown> & { t: string };

async function next(p: NsProcess, match: (m: Msg) => boolean, ms: number): Promise<Msg> {
  const line = await p.waitFor((l) => l.startsWith('{') && match(JSON.parse(l) as Msg), ms);
  return JSON.parse(line) as Msg;
}

t.test('carrier reads in this namespace', async (t) => {
  t.equal(readCarrier('lo'), true, 'lo: carrier 1, operstate unknown: up (netif_oper_up)');
  t.equal(readCarrier('nosuchdev9'), false, 'a netdev that is not there reads as down');
  t.equal(readCarrier('../lo'), false, 'a name with a slash is no netdev');
  t.equal(netdevExists('nosuchdev9'), false);
  t.equal(
    watchCarrier('nosuchdev9', () => undefined),
    null,
    'nothing to follow for a netdev that does not exist',
  );
  const w = watchCarrier('lo', () => undefined);
  t.ok(w !== null && w.up, 'lo is followed and up');
  w?.stop();
  w?.stop();
});

t.test('a UDP link on a veth reports its carrier: peer down / up, own end down / up', { skip }, async (t) => {
  const net = Netns.open({ tag: 'rbcarrier' }, t);
  const a = net.addNamespace();
  const b = net.addNamespace();
  net.addVeth(a, 'rbc0', b, 'rbc1', '198.19.31.1/24', '198.19.31.2/24');
  const p = net.spawn(a, [process.execPath, PEER, '198.19.31.1', 'rbc0']);
  const open = await next(p, (m) => m.t === 'open', 15_000);
  const native = process.env['SOFTROCE_NO_NATIVE'] !== '1';
  t.equal(open['up'], true, 'the link opens up (both ends up, carrier on)');
  t.equal(open['trigger'], native ? 'netlink' : 'poll', `carrier news by ${String(open['trigger'])}`);
  t.equal(open['bound'], native ? 'rbc0' : '', 'bound to the veth with the addon (SO_BINDTODEVICE), not without');

  let n = 0;
  const flip = async (what: string, ns: string, dev: string, state: 'up' | 'down'): Promise<void> => {
    const want = state === 'up';
    const k = ++n;
    const ev = next(p, (m) => m.t === 'link' && m['n'] === k, 5000);
    const t0 = Date.now();
    net.setLink(ns, dev, state);
    const m = await ev;
    const ms = (m['at'] as number) - t0;
    t.comment(`${what}: 'link' ${String(want)} after ${ms} ms`);
    t.equal(m['up'], want, `${what}: event ${k} says ${state}`);
    t.ok(ms < 2000, `${what}: the link reports ${state} (${ms} ms)`);
  };
  await flip('peer end down (cable pulled)', b, 'rbc1', 'down');
  await flip('peer end up (cable back)', b, 'rbc1', 'up');
  await flip('own end administratively down', a, 'rbc0', 'down');
  await flip('own end up', a, 'rbc0', 'up');
  p.proc.stdin!.write('state\n');
  t.equal((await next(p, (m) => m.t === 'state', 5000))['up'], true, 'up at the end');
  p.proc.stdin!.end();
  t.equal(await p.exited, 0, 'the fixture closes its link and exits 0');
});
