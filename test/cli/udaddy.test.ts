/**
 * udaddy (src/cli/udaddy.ts) server and client as two processes on loopback (127.0.63.x), as the lab
 * runs the real ones: the output lines and exit status of test/interop/reference (real udaddy <-> real
 * udaddy on rxe), the usage text for an unknown option, and udaddy.c's reports when the SIDR_REQ is
 * answered "unsupported" (a CM answers at the address, nothing listens on UDP port 7174) or not at all
 * (retries spent: UNREACHABLE -ETIMEDOUT after 16 x 4096 ms), a message too big for the MTU, and a
 * name where -f ip wants an address.
 */
import t from 'tap';
import { runBin, waitFor, reference, lines, freshPort } from './tool-run.js';

const SRV = '127.0.63.1';
const CLI = '127.0.63.2';
/** an address where nothing answers (no device, so no CM): the SIDR_REQ goes unanswered */
const NOBODY = '127.0.63.9';

/**
 * The unanswered SIDR_REQ takes the kernel's ~66 s of retries: run once, on the addon backend (the
 * CM's timers, not the link, decide it), started first so that it overlaps the other tests.
 */
const SLOW_ONCE = process.env['SOFTROCE_NO_NATIVE'] !== '1';
const unanswered = SLOW_ONCE ? runBin('udaddy', ['-s', NOBODY, '-b', '127.0.63.3'], 120_000) : null;

async function pair(srvExtra: string[], cliExtra: string[]): Promise<{ s: ReturnType<typeof runBin>; c: ReturnType<typeof runBin> }> {
  const s = runBin('udaddy', ['-b', SRV, ...srvExtra]);
  await waitFor(s, 'udaddy: starting server');
  await new Promise((r) => setTimeout(r, 300)); // the listen follows the first line
  const c = runBin('udaddy', ['-s', SRV, '-b', CLI, ...cliExtra]);
  await Promise.all([s.done, c.done]);
  return { s, c };
}

t.test('defaults: the reference lines, return status 0, exit 0 on both sides', async (t) => {
  const { s, c } = await pair([], []);
  const rs = reference('udaddy.server'),
    rc = reference('udaddy.client');
  t.same(lines(s.out), rs.lines, 'server lines');
  t.same(lines(c.out), rc.lines, 'client lines');
  t.equal(s.code, rs.exit, 'server exit');
  t.equal(c.code, rc.exit, 'client exit');
  t.equal(s.err + c.err, '', 'nothing on stderr');
});

t.test('-c 10 -C 100 -S 1000 -t 32: ten SIDR exchanges, 1000 datagrams each way, the same lines', async (t) => {
  const { s, c } = await pair(['-c', '10', '-C', '100', '-S', '1000'], ['-c', '10', '-C', '100', '-S', '1000', '-t', '32']);
  t.equal(s.err + c.err, '', 'nothing on stderr (no listener-leak warning either)');
  t.same(lines(s.out), reference('udaddy.server').lines, 'server lines');
  t.same(lines(c.out), reference('udaddy.client').lines, 'client lines');
  t.equal(s.code, 0);
  t.equal(c.code, 0);
});

t.test('an unknown option: the usage text and the getopt complaint, exit 1', async (t) => {
  const r = runBin('udaddy', ['-h']);
  await r.done;
  const ref = reference('udaddy.help');
  t.same([...lines(r.out), ...lines(r.err)], ref.lines, 'usage then the complaint');
  t.equal(r.code, 1);
});

t.test('a CM at the address but no UDP listener on 7174: SIDR_REP "unsupported", UNREACHABLE error 1', async (t) => {
  // ucmatose listens in the TCP port space: the device's CM answers the SIDR_REQ with status 1 (cm.c
  // cm_sidr_req_handler, no listener for the service ID), which rdma_cm reports as UNREACHABLE.
  const u = runBin('ucmatose', ['-b', SRV, '-p', freshPort()]);
  await waitFor(u, 'cmatose: starting server');
  await new Promise((r) => setTimeout(r, 300));
  const start = Date.now();
  const c = runBin('udaddy', ['-s', SRV, '-b', CLI]);
  await c.done;
  const ms = Date.now() - start;
  u.child.kill();
  await u.done;
  t.same(lines(c.out), [
    'udaddy: starting client',
    'udaddy: connecting',
    'udaddy: event: RDMA_CM_EVENT_UNREACHABLE, error: 1',
    'test complete',
    'return status 1',
  ]);
  t.equal(c.code, 1, 'exit status: udaddy returns the event status');
  t.ok(ms < 5000, `answered, not timed out (${ms} ms)`);
});

t.test('-S over the active MTU: verify_test_params refuses it, return status -22', async (t) => {
  const c = runBin('udaddy', ['-s', SRV, '-b', CLI, '-S', '5000']);
  await c.done;
  t.same(lines(c.out), [
    'udaddy: starting client',
    'udaddy: connecting',
    'udaddy: message_size 5000 is larger than active mtu 4096',
    'test complete',
    'return status -22',
  ]);
  t.equal(c.code, 234, '-22 & 0xff');
});

t.test('-f ip with a name: rdma_getaddrinfo fails (EAI_NONAME), return status -2', async (t) => {
  const c = runBin('udaddy', ['-f', 'ip', '-s', 'localhost']);
  await c.done;
  t.same(lines(c.out), ['udaddy: starting client', 'udaddy: getaddrinfo error: Name or service not known', 'test complete', 'return status -2']);
  t.equal(c.code, 254);
});

t.test(
  'nothing answers at the address: the SIDR_REQ retries run out, UNREACHABLE -110, exit 146',
  { skip: unanswered === null ? '~66 s of SIDR_REQ retries: checked in the run on the addon backend only' : false },
  async (t) => {
    const u = unanswered!;
    await u.done;
    t.same(lines(u.out), [
      'udaddy: starting client',
      'udaddy: connecting',
      'udaddy: event: RDMA_CM_EVENT_UNREACHABLE, error: -110',
      'test complete',
      'return status -110',
    ]);
    t.equal(u.code, 146, '-110 & 0xff');
    t.equal(u.err, '');
  },
);
