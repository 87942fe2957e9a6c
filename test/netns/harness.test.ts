/**
 * The network-namespace harness itself (test/helpers/netns.ts, issue 12 item 5): namespaces and veth pairs
 * are made and removed, links go down and up, addresses come and go, names are unique per process and
 * backend, and nothing is left behind by a test that fails (teardown), throws (exit hook), is sent SIGTERM
 * (signal hook) or is SIGKILLed (children die by pdeathsig, the startup sweep removes the namespaces).
 * Without root / CAP_NET_ADMIN / `ip`, every test here is skipped with the reason.
 */
import t from 'tap';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { ROOT } from '../helpers.js';
import { Netns, netnsUnavailable, listNamespaces, namespacePids, sweepStale, NETNS_PREFIX, type TeardownHost } from '../helpers/netns.js';

const skip = netnsUnavailable() ?? false;
if (skip) t.comment(`netns tests skipped: ${skip}`);

const alive = (pid: number): boolean => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

async function until(f: () => boolean, ms: number): Promise<boolean> {
  const end = Date.now() + ms;
  while (!f() && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
  return f();
}

t.test('namespaces and a veth pair are made, named uniquely, and removed by cleanup', { skip }, async (t) => {
  const net = Netns.open({ tag: 'harness' }, t);
  const a = net.addNamespace();
  const b = net.addNamespace();
  t.not(a, b);
  const backend = process.env['SOFTROCE_NO_NATIVE'] === '1' ? 'j' : 'n';
  t.match(a, new RegExp(`^${NETNS_PREFIX}${process.pid}-[0-9a-z]+-${backend}-harness-\\d+$`), 'pid, start time, backend and tag in the name');
  net.addVeth(a, 'h0', b, 'h1', '198.19.10.1/24', '198.19.10.2/24');
  const ns = listNamespaces();
  t.ok(ns.includes(a) && ns.includes(b), 'both namespaces exist');
  t.ok(await until(() => net.linkState(a, 'h0').oper === 'UP' && net.linkState(b, 'h1').oper === 'UP', 5000), 'both veth ends are up');
  t.same(net.addresses(a, 'h0'), ['198.19.10.1/24']);
  t.same(net.addresses(b, 'h1'), ['198.19.10.2/24']);
  net.cleanupSync();
  const after = listNamespaces();
  t.notOk(after.includes(a) || after.includes(b), 'cleanup deleted both namespaces');
  t.same(net.names, []);
  net.cleanupSync(); // idempotent
});

t.test('a failed test still cleans up: open(t) registers the cleanup as the test teardown', { skip }, async (t) => {
  const teardowns: (() => void | Promise<void>)[] = [];
  const host: TeardownHost = { teardown: (fn) => teardowns.push(fn) };
  const net = Netns.open({ tag: 'teardown' }, host);
  const a = net.addNamespace();
  t.equal(teardowns.length, 1, 'one teardown registered');
  t.ok(listNamespaces().includes(a));
  for (const fn of teardowns) await fn(); // what tap does after the test, passed or failed
  t.notOk(listNamespaces().includes(a), 'the teardown deleted the namespace');
});

t.test('link down and up, address add and del', { skip }, async (t) => {
  const net = Netns.open({ tag: 'linkaddr' }, t);
  const a = net.addNamespace();
  const b = net.addNamespace();
  net.addVeth(a, 'l0', b, 'l1', '198.19.11.1/24', '198.19.11.2/24');
  net.setLink(b, 'l1', 'down');
  t.equal(net.linkState(b, 'l1').up, false, 'l1 administratively down');
  t.ok(await until(() => net.linkState(a, 'l0').oper !== 'UP', 5000), `the peer l0 loses carrier (${net.linkState(a, 'l0').oper})`);
  net.setLink(b, 'l1', 'up');
  t.equal(net.linkState(b, 'l1').up, true, 'l1 up again');
  t.ok(await until(() => net.linkState(a, 'l0').oper === 'UP' && net.linkState(b, 'l1').oper === 'UP', 5000), 'both ends operationally up again');

  net.addAddress(a, 'l0', '198.19.11.11/24');
  t.same(net.addresses(a, 'l0').sort(), ['198.19.11.1/24', '198.19.11.11/24']);
  // (The secondary: deleting a primary also deletes its secondaries unless promote_secondaries is set.)
  net.delAddress(a, 'l0', '198.19.11.11/24');
  t.same(net.addresses(a, 'l0'), ['198.19.11.1/24'], 'the deleted address is gone, the other stays');
  // Only 198.19.0.0/16: never the lab's 198.18.0.0/24 and 198.18.1.0/24, never outside 198.18.0.0/15.
  t.throws(() => net.addAddress(a, 'l0', '198.18.0.7/24'), /only addresses in 198\.19\.0\.0\/16/);
  t.throws(() => net.addAddress(a, 'l0', '10.1.2.3/24'), /only addresses in 198\.19\.0\.0\/16/);
  t.throws(() => net.setLink('roce-lab', 'lo', 'down'), /not one of this harness's/, 'namespaces it did not make are refused');
  t.match(net.ip(a, ['-4', 'route']), /^198\.19\.11\.0\/24 dev l0 /m, 'ip(ns, args) runs iproute2 inside the namespace');
  t.throws(
    () => net.ip(a, ['link', 'set', 'dev', 'nosuch0', 'up']),
    /ip -n .* link set dev nosuch0 up: .*nosuch0/,
    "a failing command throws with ip's message",
  );
});

t.test('a link moves from one namespace to another', { skip }, async (t) => {
  const net = Netns.open({ tag: 'move' }, t);
  const a = net.addNamespace();
  const b = net.addNamespace();
  net.ip(a, ['link', 'add', 'm0', 'type', 'veth', 'peer', 'name', 'm1']);
  net.moveLink(a, 'm1', b);
  t.throws(() => net.linkState(a, 'm1'), 'm1 left namespace a');
  t.equal(net.linkState(b, 'm1').up, false, 'm1 arrives in b, down');
  net.addAddress(a, 'm0', '198.19.12.1/24');
  net.addAddress(b, 'm1', '198.19.12.2/24');
  net.setLink(a, 'm0', 'up');
  net.setLink(b, 'm1', 'up');
  t.ok(await until(() => net.linkState(a, 'm0').oper === 'UP' && net.linkState(b, 'm1').oper === 'UP', 5000), 'the pair is up across the two namespaces');
});

/** Run test/netns/fixtures/owner.js in `mode`; resolves with what it made once it has printed it. */
function owner(
  mode: 'throw' | 'wait',
): Promise<{ proc: ReturnType<typeof spawn>; made: { namespaces: string[]; child: number; orphan: number }; exited: Promise<unknown> }> {
  const proc = spawn(process.execPath, [join(ROOT, 'dist', 'test', 'netns', 'fixtures', 'owner.js'), mode], { stdio: ['ignore', 'pipe', 'pipe'] });
  const exited = new Promise((r) => proc.on('exit', (c, s) => r(c ?? s)));
  let out = '',
    err = '';
  proc.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  return new Promise((res, rej) => {
    const timer = setTimeout(() => {
      proc.kill('SIGKILL');
      rej(new Error(`owner fixture printed nothing in 15 s: ${err}`));
    }, 15_000);
    proc.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const nl = out.indexOf('\n');
      if (nl < 0) return;
      clearTimeout(timer);
      res({ proc, made: JSON.parse(out.slice(0, nl)) as { namespaces: string[]; child: number; orphan: number }, exited });
    });
    void exited.then(() => {
      clearTimeout(timer);
      rej(new Error(`owner fixture exited early: ${err}`));
    });
  });
}

t.test('an uncaught exception in the test process: the exit hook cleans up', { skip }, async (t) => {
  const o = await owner('throw');
  t.equal(o.made.namespaces.length, 2);
  t.not(await o.exited, 0, 'the owner died of its exception');
  const ns = listNamespaces();
  t.notOk(
    o.made.namespaces.some((n) => ns.includes(n)),
    'its namespaces are gone',
  );
  t.ok(await until(() => !alive(o.made.child) && !alive(o.made.orphan), 5000), 'the processes in its namespaces are gone');
});

t.test('SIGTERM to the test process: the signal hook cleans up', { skip }, async (t) => {
  const o = await owner('wait');
  t.ok(listNamespaces().includes(o.made.namespaces[0]!), 'namespaces exist while the owner runs');
  t.ok(alive(o.made.child), 'its child runs');
  o.proc.kill('SIGTERM');
  t.equal(await o.exited, 'SIGTERM', 'the owner still dies of SIGTERM');
  const ns = listNamespaces();
  t.notOk(
    o.made.namespaces.some((n) => ns.includes(n)),
    'its namespaces are gone',
  );
  t.ok(await until(() => !alive(o.made.child) && !alive(o.made.orphan), 5000), 'the processes in its namespaces are gone');
});

t.test('SIGKILL to the test process: its child dies with it, the next sweep removes its namespaces', { skip }, async (t) => {
  const live = Netns.open({ tag: 'live' }, t);
  const mine = [live.addNamespace()];
  const o = await owner('wait');
  const [a, b] = o.made.namespaces as [string, string];
  t.same(namespacePids(a), [o.made.child], 'the child runs inside the namespace');
  o.proc.kill('SIGKILL');
  t.equal(await o.exited, 'SIGKILL');
  t.ok(await until(() => !alive(o.made.child), 5000), 'the child died with its owner (pdeathsig)');
  t.ok(alive(o.made.orphan), 'a process started around the harness survives its owner');
  const left = listNamespaces();
  const swept = sweepStale();
  // tap runs files in parallel: another file's open() may have swept them in the last few ms. Either
  // way a sweep removed them; when this one did, they were stale and it chose them.
  if (left.includes(a) && left.includes(b)) {
    t.ok(swept.includes(a) && swept.includes(b), 'no hook ran (they were still there); this sweep removed them');
  } else {
    t.comment("a concurrent test file's sweep removed them first");
  }
  t.notOk(
    swept.some((n) => mine.includes(n)),
    'the sweep spared a live owner (this process)',
  );
  t.ok(await until(() => !alive(o.made.orphan), 5000), 'the sweep killed what still ran inside');
  const now = listNamespaces();
  t.notOk(now.includes(a) || now.includes(b), 'nothing left behind');
  t.ok(
    mine.every((n) => now.includes(n)),
    "this process's own namespaces survive the sweep",
  );
});
