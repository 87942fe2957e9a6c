/**
 * ucmatose (src/cli/ucmatose.ts) server and client as two processes on loopback (127.0.61.x), as
 * the lab runs the real ones: the output lines and exit status of test/interop/reference (real
 * ucmatose <-> real ucmatose on rxe), the usage text for an unknown option, and cmatose.c's
 * REJECTED report when nothing listens on the port.
 */
import t from 'tap';
import { runBin, waitFor, reference, lines, freshPort } from './tool-run.js';

const SRV = '127.0.61.1';
const CLI = '127.0.61.2';

async function pair(extra: string[]): Promise<{ s: ReturnType<typeof runBin>; c: ReturnType<typeof runBin> }> {
  const port = freshPort();
  const s = runBin('ucmatose', ['-b', SRV, '-p', port, ...extra]);
  await waitFor(s, 'cmatose: starting server');
  await new Promise((r) => setTimeout(r, 300)); // the listen follows the first line
  const c = runBin('ucmatose', ['-s', SRV, '-b', CLI, '-p', port, ...extra]);
  await Promise.all([s.done, c.done]);
  return { s, c };
}

t.test('defaults: the reference lines, return status 0, exit 0 on both sides', async (t) => {
  const { s, c } = await pair([]);
  const rs = reference('ucmatose.server'),
    rc = reference('ucmatose.client');
  t.same(lines(s.out), rs.lines, 'server lines');
  t.same(lines(c.out), rc.lines, 'client lines');
  t.equal(s.code, rs.exit, 'server exit');
  t.equal(c.code, rc.exit, 'client exit');
});

t.test('-c 10 -C 5 -S 1000: ten connections, five 1000-byte messages each way', async (t) => {
  const { s, c } = await pair(['-c', '10', '-C', '5', '-S', '1000']);
  t.equal(s.err + c.err, '', 'nothing on stderr (the real tools print nothing there either)');
  const rs = reference('ucmatose_-c_10_-C_5_-S_1000.server'),
    rc = reference('ucmatose_-c_10_-C_5_-S_1000.client');
  t.same(lines(s.out), rs.lines, 'server lines');
  t.same(lines(c.out), rc.lines, 'client lines');
  t.equal(s.code, rs.exit, 'server exit');
  t.equal(c.code, rc.exit, 'client exit');
});

t.test('an unknown option: the usage text and the getopt complaint, exit 1', async (t) => {
  const r = runBin('ucmatose', ['-h']);
  await r.done;
  const ref = reference('ucmatose.help');
  t.same([...lines(r.out), ...lines(r.err)], ref.lines, 'usage then the complaint');
  t.equal(r.code, 1);
});

t.test('nothing listens on the port: REJECTED (reason 8), return status 8', async (t) => {
  const port = freshPort();
  // a server on another port gives the address a CM that answers (the peer's REJ "invalid service ID")
  const s = runBin('ucmatose', ['-b', SRV, '-p', port]);
  await waitFor(s, 'cmatose: starting server');
  await new Promise((r) => setTimeout(r, 300));
  const c = runBin('ucmatose', ['-s', SRV, '-b', CLI, '-p', String(Number(port) + 1000)]);
  await c.done;
  s.child.kill();
  await s.done;
  t.same(lines(c.out), [
    'cmatose: starting client',
    'cmatose: connecting',
    'cmatose: event: RDMA_CM_EVENT_REJECTED, error: 8',
    'test complete',
    'return status 8',
  ]);
  t.equal(c.code, 8, 'exit status: cmatose returns the event status');
});
