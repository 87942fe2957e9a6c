/**
 * LACP on real wires (issue 14 item 4): two namespaces joined by two veth pairs (lca1-lcb1 in
 * 198.19.35.0/24, lca2-lcb2 in 198.19.36.0/24), a softroce bond with the lacp runner (fast_rate) in each
 * (test/netns/fixtures/lacp-peer.js). They exchange real LACPDUs over AF_PACKET sockets (Ethertype 0x8809,
 * slow-protocols group joined); both ports of both bonds become collecting / distributing and enabled,
 * each side's partner system is the other's. Then B's LACPDUs on cable 2 are dropped at its egress (an
 * nft netdev egress rule on ether type 0x8809: the partner stops talking, every carrier stays up): after 3 x 1 s
 * A's port 2 is no longer enabled and A's QP configured on port 2 moves to port 1; with the filter gone
 * they come back. The time from the cut to A's portDown is printed. On the pure-JS backend (no AF_PACKET)
 * the runner says it cannot run (EOPNOTSUPP), typed, and the bond runs on its link watches.
 */
import t from 'tap';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ROOT } from '../helpers.js';
import { Netns, netnsUnavailable, type NsProcess } from '../helpers/netns.js';

const skip = netnsUnavailable() ?? (spawnSync('nft', ['-v']).status === 0 ? false : 'no nft binary');
if (skip) t.comment(`netns LACP test skipped: ${skip}`);

const PEER = join(ROOT, 'dist', 'test', 'netns', 'fixtures', 'lacp-peer.js');
const NATIVE = process.env['SOFTROCE_NO_NATIVE'] !== '1';
const CD = 0x08 | 0x10 | 0x20;
type Msg = Record<string, unknown> & { t: string };
interface PortState {
  state: string;
  enabled: boolean;
  selected: boolean;
  actorState: number;
  partnerState: number;
  partnerSystem: string;
  txPdus: number;
  rxPdus: number;
  rxBad: number;
}
interface State {
  carrier: boolean;
  ports: PortState[];
  qp: { configured: number; active: number };
}

/** The first JSON line of `type` (with `at` >= `from` when it has one), bounded by `ms`. */
async function next(p: NsProcess, type: string, ms: number, from = 0): Promise<Msg> {
  const line = await p.waitFor((l) => {
    if (!l.startsWith('{')) return false;
    const m = JSON.parse(l) as Msg;
    return m.t === type && (m['at'] === undefined || Number(m['at']) >= from);
  }, ms);
  return JSON.parse(line) as Msg;
}

t.test('two softroce bonds exchange LACPDUs over two veth pairs; a silent partner unselects its port and QPs move', { skip }, async (t) => {
  const net = Netns.open({ tag: 'lc' }, t);
  const a = net.addNamespace();
  const b = net.addNamespace();
  net.addVeth(a, 'lca1', b, 'lcb1', '198.19.35.1/24', '198.19.35.2/24');
  net.addVeth(a, 'lca2', b, 'lcb2', '198.19.36.1/24', '198.19.36.2/24');
  for (let i = 0; i < 100 && !['lca1', 'lca2'].every((d) => net.linkState(a, d).oper === 'UP'); i++) await new Promise((r) => setTimeout(r, 50));
  const pa = net.spawn(a, [process.execPath, PEER, 'a', 'lca1', 'lca2']);
  const pb = net.spawn(b, [process.execPath, PEER, 'b', 'lcb1', 'lcb2']);
  const [ra, rb] = await Promise.all([next(pa, 'ready', 15_000), next(pb, 'ready', 15_000)]);
  if (!NATIVE) {
    for (const r of [ra, rb]) {
      const e = r['lacpError'] as { code: string; message: string } | null;
      t.equal(e?.code, 'EOPNOTSUPP', 'pure JS: no AF_PACKET socket, typed');
      t.match(e?.message ?? '', /native addon/);
    }
    return;
  }
  t.equal(ra['lacpError'], null, 'A runs the lacp runner');
  t.equal(rb['lacpError'], null, 'B runs the lacp runner');
  const askA = counter(pa);
  const askB = counter(pb);
  const t0 = Date.now();
  let sa: State | null = null;
  let sb: State | null = null;
  for (let i = 0; i < 100; i++) {
    sa = await askA();
    sb = await askB();
    if ([...sa.ports, ...sb.ports].every((p) => p.enabled) && sa.qp.active === 2) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  const converged = Date.now() - t0;
  t.comment(`LACP converged (all four ports collecting / distributing) ${converged} ms after both peers were ready`);
  for (const [who, s, other] of [
    ['A', sa!, rb],
    ['B', sb!, ra],
  ] as const) {
    t.ok(s.carrier, `${who}: carrier up`);
    s.ports.forEach((p, i) => {
      t.equal(p.state, 'current', `${who} port ${i + 1}: current`);
      t.ok(p.enabled, `${who} port ${i + 1}: enabled`);
      t.equal(p.actorState & CD, CD, `${who} port ${i + 1}: actor in sync, collecting, distributing`);
      t.equal(p.partnerState & CD, CD, `${who} port ${i + 1}: partner in sync, collecting, distributing`);
      t.equal(p.partnerSystem, other['system'], `${who} port ${i + 1}: the partner system is the other bond's`);
      t.ok(p.rxPdus > 0 && p.txPdus > 0, `${who} port ${i + 1}: LACPDUs crossed the veth (tx ${p.txPdus}, rx ${p.rxPdus})`);
      t.equal(p.rxBad, 0);
    });
  }
  t.same(sa!.qp, { configured: 2, active: 2, source: 'explicit' }, "A's QP on port 2");

  // The frames on cable 1 as a capture sees them (both directions), decoded by tshark where it is.
  const tshark = spawnSync('tshark', ['-v']).status === 0 && spawnSync('tcpdump', ['--version']).status === 0;
  if (tshark) {
    const dir = mkdtempSync(join(tmpdir(), 'softroce-lacp-'));
    t.teardown(() => rmSync(dir, { recursive: true, force: true }));
    const file = join(dir, 'lca1.pcap');
    // fast_rate: one LACPDU a second each way; eight frames in about four seconds. Not four: a side
    // that changed state sends at once too, so four frames were once all A's on a loaded machine.
    const cap = net.spawn(a, ['timeout', '20', 'tcpdump', '-i', 'lca1', '-c', '8', '-w', file, 'ether', 'proto', '0x8809']);
    t.equal(await cap.exited, 0, `tcpdump took eight LACPDUs off lca1 ${cap.err.trim().split('\n').at(-1) ?? ''}`);
    const v = spawnSync('tshark', ['-r', file, '-V'], { encoding: 'utf8', timeout: 30_000 }).stdout;
    t.equal(v.match(/Link Aggregation Control Protocol/g)?.length, 8, 'tshark: eight LACP frames');
    const sys = (x: unknown): string => String(x).replace(/(..)(?!$)/g, '$1:');
    t.match(v, new RegExp(`Actor System ID: ${sys(ra['system'])}`), "A's LACPDUs");
    t.match(v, new RegExp(`Actor System ID: ${sys(rb['system'])}`), "B's LACPDUs");
    t.match(v, /Actor State: 0x3f, LACP Activity, LACP Timeout, Aggregation, Synchronization, Collecting, Distributing/);
    t.notMatch(v, /[Mm]alformed/);
  } else t.comment('no tcpdump / tshark: the capture check is skipped');

  // B's LACPDUs on cable 2 are dropped on their way out: the partner stops, every carrier stays up.
  const nft = (args: string[]): void => {
    execFileSync('ip', ['netns', 'exec', b, 'nft', ...args], { stdio: 'pipe' });
  };
  nft(['add', 'table', 'netdev', 'lc']);
  nft(['add', 'chain', 'netdev', 'lc', 'out', '{ type filter hook egress device "lcb2" priority 0; }']);
  nft(['add', 'rule', 'netdev', 'lc', 'out', 'ether', 'type', '0x8809', 'drop']);
  const cut = Date.now();
  const down = await next(pa, 'portDown', 10_000, cut);
  const took = Number(down['at']) - cut;
  t.comment(`A's port 2 unselected ${took} ms after B's LACPDUs on cable 2 stopped (timeout 3 x 1 s, less the time since B's last one)`);
  t.equal(down['port'], 2);
  t.ok(took >= 1900 && took <= 4500, `unselected after about 3 x 1 s (${took} ms)`);
  t.equal(down['qpActive'], 1, "A's QP moved to port 1 at once");
  t.equal(net.linkState(a, 'lca2').oper, 'UP', "the cable's carrier is up all along");
  const sa2 = await askA();
  t.equal(sa2.ports[1]!.enabled, false);
  t.ok(sa2.ports[0]!.enabled, 'port 1 stays enabled');
  t.ok(sa2.carrier, 'min_ports 1: the team keeps its carrier');
  t.same(sa2.qp, { configured: 2, active: 1, source: 'explicit' });

  nft(['delete', 'table', 'netdev', 'lc']);
  const healed = Date.now();
  const up = await next(pa, 'portUp', 10_000, healed);
  t.comment(`port 2 back ${Number(up['at']) - healed} ms after the filter went`);
  t.equal(up['port'], 2);
  t.equal(up['qpActive'], 2, 'the QP is back on its configured port');
  pa.proc.stdin!.end();
  pb.proc.stdin!.end();
});

/** Asks one peer for its state; its answers are counted to take the newest (waitFor would match old ones). */
function counter(p: NsProcess): () => Promise<State> {
  let n = 0;
  return async () => {
    const k = ++n;
    p.proc.stdin!.write(`${JSON.stringify({ t: 'state' })}\n`);
    for (let i = 0; i < 100; i++) {
      const lines = p.out.split('\n').filter((l) => l.startsWith('{"t":"state"'));
      if (lines.length >= k) return JSON.parse(lines[k - 1]!) as State;
      await new Promise((r) => setTimeout(r, 20));
    }
    throw new Error('no state answer');
  };
}
