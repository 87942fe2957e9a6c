/**
 * rping (src/cli/rping.ts) server and client as two processes on loopback (127.0.62.x): the lines
 * and exit statuses of test/interop/reference (real rping <-> real rping on rxe, -v -C 3, client -V),
 * the same ping pattern over 10 iterations, the usage text for an unknown option, and the client's
 * report when nothing listens on the port.
 */
import t from 'tap';
import { runBin, reference, lines, freshPort, type ToolRun } from './tool-run.js';

const SRV = '127.0.62.1';
const CLI = '127.0.62.2';

/** what rping's client puts in its start buffer for ping n (size 64): "rdma-ping-n: " then A..z from a start that advances */
function pingLine(n: number, size = 64): string {
  let s = `rdma-ping-${n}: `;
  let c = 65 + (n % 58);
  while (s.length < size - 1) {
    s += String.fromCharCode(c);
    if (++c > 122) c = 65;
  }
  return s;
}

async function pair(serverArgs: string[], clientArgs: string[]): Promise<{ s: ToolRun; c: ToolRun }> {
  const port = freshPort();
  const s = runBin('rping', ['-s', '-a', SRV, '-p', port, ...serverArgs]);
  await new Promise((r) => setTimeout(r, 700)); // the server prints nothing before it listens
  const c = runBin('rping', ['-c', '-a', SRV, '-I', CLI, '-p', port, ...clientArgs]);
  await Promise.all([s.done, c.done]);
  return { s, c };
}

t.test('-v -C 3, client -V: the reference lines on both sides, exit 0', async (t) => {
  const { s, c } = await pair(['-v', '-C', '3'], ['-v', '-V', '-C', '3']);
  const rs = reference('rping_-s_-a_19818011_-v_-C_3.server'),
    rc = reference('rping_-s_-a_19818011_-v_-C_3.client');
  // the captures hold stdout then stderr (the DISCONNECT and wait-for lines are stderr's)
  t.same([...lines(s.out), ...lines(s.err)], rs.lines, 'server lines');
  t.same([...lines(c.out), ...lines(c.err)], rc.lines, 'client lines');
  t.equal(s.code, rs.exit, 'server exit');
  t.equal(c.code, rc.exit, 'client exit');
});

t.test('-C 10 -v -V: ten pings, the pattern advancing each time, validated', async (t) => {
  const { s, c } = await pair(['-v'], ['-v', '-V', '-C', '10']);
  const want = Array.from({ length: 10 }, (_, i) => pingLine(i));
  t.same(
    lines(c.out),
    want.map((l) => `ping data: ${l}`),
    'client lines',
  );
  t.same(
    lines(s.out),
    want.map((l) => `server ping data: ${l}`),
    'server lines',
  );
  t.same(lines(c.err), ['client DISCONNECT EVENT...']);
  t.same(lines(s.err), ['server DISCONNECT EVENT...', 'wait for RDMA_READ_ADV state 10']);
  t.equal(s.code, 0);
  t.equal(c.code, 0);
  t.equal(pingLine(0), reference('rping_-s_-a_19818011_-v_-C_3.client').lines[0]!.slice('ping data: '.length), 'the generator is the reference');
});

t.test('-S 100 -C 2: a larger buffer goes through', async (t) => {
  const { s, c } = await pair(['-S', '100'], ['-V', '-v', '-S', '100', '-C', '2']); // both sides size their buffers alike, as with the real rping
  t.same(
    lines(c.out),
    [0, 1].map((i) => `ping data: ${pingLine(i, 100)}`),
  );
  t.equal(s.code, 0);
  t.equal(c.code, 0);
});

t.test('an unknown option: the usage text (rping sets opterr = 0), exit EINVAL', async (t) => {
  const r = runBin('rping', ['-h']);
  await r.done;
  t.same(lines(r.out), reference('rping.help').lines);
  t.equal(r.err, '', 'no getopt complaint');
  t.equal(r.code, 22);
});

t.test('bad -S and no -s/-c: EINVAL', async (t) => {
  const r = runBin('rping', ['-c', '-a', SRV, '-S', '10']);
  await r.done;
  t.equal(r.err, 'Invalid size 10 (valid range is 23 to 65536)\n');
  t.equal(r.code, 22);
  const r2 = runBin('rping', ['-v']);
  await r2.done;
  t.same(lines(r2.out), reference('rping.help').lines);
  t.equal(r2.code, 22);
});

t.test('nothing listens on the port: REJECTED (8), connect error, exit 255', async (t) => {
  const port = freshPort();
  const s = runBin('rping', ['-s', '-a', SRV, '-p', port]);
  await new Promise((r) => setTimeout(r, 700));
  const c = runBin('rping', ['-c', '-a', SRV, '-I', CLI, '-p', String(Number(port) + 1000), '-C', '1']);
  await c.done;
  s.child.kill();
  await s.done;
  t.same(lines(c.err), ['cma event RDMA_CM_EVENT_REJECTED, error 8', 'wait for CONNECTED state 4', 'connect error -1']);
  t.equal(c.code, 255);
});

t.test('-P: the server serves one client after another and keeps listening', async (t) => {
  const port = freshPort();
  const s = runBin('rping', ['-s', '-P', '-a', SRV, '-p', port, '-v']);
  await new Promise((r) => setTimeout(r, 700));
  for (let i = 0; i < 2; i++) {
    const c = runBin('rping', ['-c', '-a', SRV, '-I', CLI, '-p', port, '-C', '2', '-V', '-v']);
    await c.done;
    t.same(
      lines(c.out),
      [0, 1].map((n) => `ping data: ${pingLine(n)}`),
      `client ${i}`,
    );
    t.equal(c.code, 0, `client ${i} exit`);
  }
  t.equal(s.code, null, 'the persistent server is still running');
  s.child.kill();
  await s.done;
  t.equal(lines(s.out).length, 4, "the server printed both clients' pings");
});
