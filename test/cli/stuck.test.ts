/**
 * The stuck dump of the ping-pong tools (what the interop suite shows when a timeout kills one)
 * includes the QP's transition trace: each role's last decisions (qp.trace(), trace.ts). Two
 * ibv_rc_pingpong processes on loopback run until the client is sent SIGTERM mid-run.
 */
import t from 'tap';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { ROOT } from '../helpers.js';

const env = { ...process.env, SOFTROCE_DEVICES: 'st_a=lo:127.0.74.1,st_b=lo:127.0.74.2' };
const bin = (tool: string): string => join(ROOT, 'bin', `${tool}.js`);

/** The index of a device's RoCEv2 GID for its IPv4 address (the table also holds lo's other addresses). */
function gidIndex(dev: string, ip: string): number {
  const r = spawnSync(process.execPath, [bin('show_gids')], { encoding: 'utf8', env });
  const line = r.stdout.split('\n').find((l) => l.startsWith(`${dev}\t`) && l.includes(ip) && /\tv2\t/.test(l));
  return line ? Number(line.split('\t')[2]) : -1;
}

interface Proc {
  p: ChildProcess;
  out: string;
  err: string;
  code: Promise<number | null>;
}
function run(args: string[], tool = 'ibv_rc_pingpong'): Proc {
  const p = spawn(process.execPath, [bin(tool), ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  const r: Proc = { p, out: '', err: '', code: new Promise((res) => p.on('exit', (c) => res(c))) };
  p.stdout!.on('data', (d: Buffer) => {
    r.out += d.toString();
  });
  p.stderr!.on('data', (d: Buffer) => {
    r.err += d.toString();
  });
  return r;
}

async function until(f: () => boolean, ms: number): Promise<boolean> {
  const end = Date.now() + ms;
  while (!f() && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
  return f();
}

t.test('a SIGTERMed ping-pong prints its QP trace under "stuck: trace"', async (t) => {
  const g = gidIndex('st_a', '127.0.74.1');
  t.ok(g >= 0, 'the IPv4 RoCEv2 GID is in the table');
  const port = String(24_100 + Math.floor(Math.random() * 400));
  const common = ['-g', String(g), '-p', port, '-n', '100000000'];
  const server = run(['-d', 'st_a', ...common]);
  let client: Proc | null = null;
  try {
    t.ok(await until(() => server.out.includes('local address'), 10_000), 'server up');
    client = run(['-d', 'st_b', ...common, '127.0.74.1']);
    t.ok(await until(() => client!.out.includes('remote address'), 10_000), 'client connected');
    await new Promise((r) => setTimeout(r, 500)); // some round trips
    client.p.kill('SIGTERM');
    t.equal(await client.code, 124, 'the client exits 124 (timeout) after its dump');
  } finally {
    if (client && client.p.exitCode === null) client.p.kill('SIGKILL');
    server.p.kill('SIGTERM');
    await Promise.race([server.code, new Promise((r) => setTimeout(r, 5000))]);
    if (server.p.exitCode === null) server.p.kill('SIGKILL');
  }
  const lines = client.err.split('\n');
  const trace = lines.filter((l) => l.startsWith('stuck: trace '));
  t.ok(trace.length > 0 && trace.length <= 32, `trace lines printed (${trace.length}, at most 32)`);
  for (const l of trace) t.match(l, /^stuck: trace qp 0x[0-9a-f]+ #\d+ (req|comp|resp) [A-Z_]+ (RC_[A-Z_]+|-) psn 0x[0-9a-f]{6} [a-z_]+( x\d+)?$/);
  // A ping-pong in progress: it sent SENDs, had them acknowledged, and received the peer's.
  t.ok(
    trace.some((l) => / req SEND RC_SEND_(LAST|ONLY) .* sent$/.test(l)),
    'requester: sent',
  );
  t.ok(
    trace.some((l) => / comp COMP_ACK RC_ACKNOWLEDGE .* acked/.test(l)),
    'completer: ACK completed',
  );
  t.ok(
    trace.some((l) => / resp ACKNOWLEDGE RC_SEND_(LAST|ONLY) .* ack_queued/.test(l)),
    'responder: SEND received and acknowledged',
  );
  // The trace follows the QP's own stuck line.
  const first = lines.findIndex((l) => l.startsWith('stuck: trace '));
  t.match(lines[first - 1] ?? '', /^stuck: qp 0x[0-9a-f]+ RTS /);
  t.match(server.err, /stuck: trace qp 0x[0-9a-f]+ #\d+ /, 'the server printed its trace too');
});

t.test('a SIGTERMed ib_write_bw prints its QP trace under "stuck: trace"', async (t) => {
  const g = gidIndex('st_a', '127.0.74.1');
  const port = String(24_600 + Math.floor(Math.random() * 400));
  const common = ['-x', String(g), '-p', port, '-D', '30'];
  const server = run(['-d', 'st_a', ...common], 'ib_write_bw');
  let client: Proc | null = null;
  try {
    t.ok(await until(() => server.out.includes('Waiting for client') || server.out.includes('local address'), 10_000), 'server up');
    await new Promise((r) => setTimeout(r, 200));
    client = run(['-d', 'st_b', ...common, '127.0.74.1'], 'ib_write_bw');
    t.ok(await until(() => client!.out.includes('#bytes'), 10_000), 'client running');
    await new Promise((r) => setTimeout(r, 500));
    client.p.kill('SIGTERM');
    t.equal(await client.code, 124, 'the client exits 124 after its dump');
  } finally {
    if (client && client.p.exitCode === null) client.p.kill('SIGKILL');
    if (server.p.exitCode === null) server.p.kill('SIGTERM');
    await Promise.race([server.code, new Promise((r) => setTimeout(r, 5000))]);
    if (server.p.exitCode === null) server.p.kill('SIGKILL');
  }
  const trace = client.err.split('\n').filter((l) => l.startsWith('stuck: trace '));
  t.ok(trace.length > 0 && trace.length <= 32, `trace lines printed (${trace.length})`);
  t.ok(
    trace.some((l) => / req SEND RC_RDMA_WRITE_(LAST|ONLY) /.test(l)),
    'requester: WRITEs sent',
  );
  t.ok(
    trace.some((l) => / comp COMP_ACK RC_ACKNOWLEDGE .* acked/.test(l)),
    'completer: ACKs',
  );
});
