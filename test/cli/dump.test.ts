/** The `softroce dump` command as a user runs it. */
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { capturesDir, ROOT } from '../helpers.js';

const bin = join(ROOT, 'bin', 'softroce.js');
const run = (...args: string[]) => spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8' });

t.test('text output: one line per RoCE packet, then exactly one summary line', (t) => {
  const r = run('dump', join(capturesDir(), 'ucmatose.pcap'));
  t.equal(r.status, 0);
  const lines = r.stdout.trimEnd().split('\n');
  t.equal(lines.length, 45 + 1);
  t.equal(lines.at(-1), 'packets=45 roce=45 icrc_ok=45 icrc_bad=0 malformed=0');
  t.equal(lines.filter((l) => /^packets=/.test(l)).length, 1);
  t.match(
    lines[0]!,
    /198\.18\.0\.12:55410 > 198\.18\.0\.11 UD_SEND_ONLY qp=0x000001 .*deth\[qkey=0x80010000 srcqp=0x000001\] \[CM REQ tid=0x[0-9a-f]{16} .*\] len=256 icrc=ok/,
  );
  t.ok(
    lines.some((l) => /RC_ACKNOWLEDGE .*aeth\[ACK msn=\d+\]/.test(l)),
    'AETH decoded',
  );
  t.end();
});

t.test('CM MADs decoded: message, comm IDs, service ID, QPN, PSN, private data (ucmatose.pcap)', (t) => {
  const r = run('dump', join(capturesDir(), 'ucmatose.pcap'));
  t.equal(r.status, 0);
  const cm = r.stdout.split('\n').filter((l) => l.includes('[CM '));
  const tail = (l: string): string => /\[CM [^\]]*\]/.exec(l)?.[0] ?? '';
  t.same(cm.map(tail), [
    '[CM REQ tid=0x000000021995e83d lcid=0x3de89519 sid=0x0000000001061d2f qpn=0x000016 psn=0x8a28ca pdata=36/92]',
    '[CM REP tid=0x000000021995e83d lcid=0x0b7cd3bf rcid=0x3de89519 qpn=0x000016 psn=0x3bf976 pdata=0/196]',
    '[CM RTU tid=0x000000021995e83d lcid=0x3de89519 rcid=0x0b7cd3bf pdata=0/224]',
    '[CM DREQ tid=0x00000002bfd37c0b lcid=0x0b7cd3bf rcid=0x3de89519 qpn=0x000016 pdata=0/220]',
    '[CM DREP tid=0x00000002bfd37c0b lcid=0x3de89519 rcid=0x0b7cd3bf pdata=0/224]',
  ]);
  const j = run('dump', join(capturesDir(), 'udaddy.pcap'), '--json');
  const objs = j.stdout
    .trimEnd()
    .split('\n')
    .slice(0, -1)
    .map((l) => JSON.parse(l) as { cm?: Record<string, unknown> });
  const sidr = objs.flatMap((o) => (o.cm ? [o.cm] : []));
  t.match(sidr, [
    { type: 'SIDR_REQ', serviceId: '0x0000000001111c06', requestId: 0x3fe89519, privateDataUsed: 36, privateDataMax: 216 },
    { type: 'SIDR_REP', serviceId: '0x0000000001111c06', requestId: 0x3fe89519, status: 0, qpn: 0x18, privateDataMax: 136 },
  ]);
  t.end();
});

t.test('--json: one object per packet, same summary line last', (t) => {
  const r = run('dump', join(capturesDir(), 'rping.pcap'), '--json');
  t.equal(r.status, 0);
  const lines = r.stdout.trimEnd().split('\n');
  t.equal(lines.at(-1), 'packets=125 roce=125 icrc_ok=125 icrc_bad=0 malformed=0');
  const objs = lines.slice(0, -1).map((l) => JSON.parse(l) as { opcodeName: string; icrc: string; reth?: { rkey: number } });
  t.equal(objs.length, 125);
  t.ok(objs.every((o) => o.icrc === 'ok'));
  t.ok(
    objs.some((o) => o.opcodeName === 'RC_RDMA_READ_REQUEST' && o.reth && o.reth.rkey > 0),
    'RETH fields',
  );
  t.end();
});

t.test('errors: a missing file, no file, a non-capture', (t) => {
  const a = run('dump', '/nonexistent/x.pcap');
  t.equal(a.status, 1);
  t.match(a.stderr, /ENOENT|no such file/i);
  const b = run('dump');
  t.equal(b.status, 2);
  const c = run('dump', bin);
  t.equal(c.status, 1);
  t.equal(c.stdout.trimEnd().split('\n').at(-1), 'packets=0 roce=0 icrc_ok=0 icrc_bad=0 malformed=0');
  t.end();
});

t.test('wire demo verifies and catches the corrupted packet', (t) => {
  const r = run('wire-demo');
  t.equal(r.status, 0);
  t.match(r.stdout, /packets=28 roce=28 icrc_ok=27 icrc_bad=1 malformed=0/);
  t.end();
});

t.test('npm start: RDMA between two loopback devices, its recording verified', (t) => {
  // Not the default 127.0.0.1/127.0.0.2: test/readme.test.ts runs the README's example there.
  const r = spawnSync(process.execPath, [bin, 'demo'], {
    encoding: 'utf8',
    env: { ...process.env, SOFTROCE_DEVICES: 'softroce0=lo:127.0.72.1,softroce1=lo:127.0.72.2' },
  });
  t.equal(r.status, 0, r.stderr);
  for (const op of ['SEND/RECV', 'RDMA WRITE', 'RDMA READ', 'FETCH_AND_ADD', 'CMP_AND_SWP'])
    t.match(r.stdout, new RegExp(`${op.replace('/', '\\/')}\\s+SUCCESS`), op);
  t.match(r.stdout, /FETCH_AND_ADD\s+SUCCESS: returned 41, remote now 42/);
  t.match(r.stdout, /CMP_AND_SWP\s+SUCCESS: compare 42 swap 1000 returned 42, remote now 1000/);
  t.match(r.stdout, /packets=18 roce=18 icrc_ok=18 icrc_bad=0 malformed=0/);
  t.match(r.stdout, /demo: OK/);
  t.end();
});
