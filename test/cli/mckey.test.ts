/**
 * mckey (src/cli/mckey.ts) receiver and sender as two processes on loopback, as the lab runs the real
 * ones (receiver first): each binds its own address (127.0.63.11 / .12), joins 239.18.63.x (its UDP
 * link's socket joins the IPv4 group on lo; Linux delivers multicast on lo, and IP_MULTICAST_LOOP
 * hands the sender's datagrams to the host's members), and the lines and exit status are those of
 * test/interop/reference (real mckey on rxe, group 239.18.0.1 there). The receiver only gets to "data
 * transfers complete" once message_count datagrams reached its QP. Also: the usage text, -M without
 * -b, and -l (rxe has no IBV_QP_CREATE_BLOCK_SELF_MCAST_LB: the QP cannot be made, leave fails).
 */
import t from 'tap';
import { runBin, waitFor, reference, lines } from './tool-run.js';

const RECV = '127.0.63.11';
const SEND = '127.0.63.12';

/** the reference's lines for our group (recorded with -m 239.18.0.1) */
function refLines(name: string, group: string): string[] {
  return reference(name).lines.map((l) => l.replace('239.18.0.1', group));
}

async function pair(group: string, recvExtra: string[], sendExtra: string[]): Promise<{ r: ReturnType<typeof runBin>; s: ReturnType<typeof runBin> }> {
  const r = runBin('mckey', ['-m', group, '-b', RECV, ...recvExtra]);
  await waitFor(r, 'mckey: joined');
  const s = runBin('mckey', ['-m', group, '-b', SEND, '-s', ...sendExtra]);
  await Promise.all([r.done, s.done]);
  return { r, s };
}

t.test('defaults: receiver and sender print the reference lines, return status 0, exit 0', async (t) => {
  const group = '239.18.63.1';
  const { r, s } = await pair(group, [], []);
  t.same(lines(r.out), refLines('mckey.recv', group), 'receiver lines');
  t.same(lines(s.out), refLines('mckey.send', group), 'sender lines');
  t.equal(r.code, reference('mckey.recv').exit, 'receiver exit');
  t.equal(s.code, reference('mckey.send').exit, 'sender exit');
  t.equal(r.err + s.err, '', 'nothing on stderr');
});

t.test('-c 2 -C 50 -S 1000: two receiving ids, each gets 50 datagrams of 1000 bytes (one joined line each)', async (t) => {
  const group = '239.18.63.2';
  const { r, s } = await pair(group, ['-c', '2', '-C', '50', '-S', '1000'], ['-C', '50', '-S', '1000']);
  const ref = refLines('mckey.recv', group);
  t.same(lines(r.out), [...ref.slice(0, 3), ref[2]!, ...ref.slice(3)], 'receiver lines');
  t.same(lines(s.out), refLines('mckey.send', group), 'sender lines');
  t.equal(r.code, 0);
  t.equal(s.code, 0);
  t.equal(r.err + s.err, '');
});

t.test('-M with an IPv4-mapped group GID and -b: joined as that group, data flows', async (t) => {
  const group = '239.18.63.3';
  const r = runBin('mckey', ['-M', `::ffff:${group}`, '-b', RECV, '-C', '3']);
  await waitFor(r, 'mckey: joined');
  const s = runBin('mckey', ['-M', `::ffff:${group}`, '-b', SEND, '-s', '-C', '3']);
  await Promise.all([r.done, s.done]);
  t.same(lines(r.out), refLines('mckey.recv', group));
  t.same(lines(s.out), refLines('mckey.send', group));
  t.equal(r.code, 0);
  t.equal(s.code, 0);
});

t.test('an unknown option: the usage text and the getopt complaint, exit 1', async (t) => {
  const r = runBin('mckey', ['-h']);
  await r.done;
  t.same([...lines(r.out), ...lines(r.err)], reference('mckey.help').lines, 'usage then the complaint');
  t.equal(r.code, 1);
});

t.test('-M without -b: mckey.c refuses before anything, exit 1', async (t) => {
  const r = runBin('mckey', ['-M', '::ffff:239.18.63.4']);
  await r.done;
  t.same(lines(r.out), ['unmapped multicast address requires binding to source address']);
  t.equal(r.code, 1);
});

t.test('-l: the QP with BLOCK_SELF_MCAST_LB cannot be made (EOPNOTSUPP, as on rxe); leave fails; return status -1', async (t) => {
  const r = runBin('mckey', ['-m', '239.18.63.5', '-b', RECV, '-l']);
  await r.done;
  t.same(lines(r.out), ['mckey: starting server', 'mckey: joining', 'test complete', 'return status -1']);
  t.same(lines(r.err), ['mckey: unable to create QP: Operation not supported', 'mckey: failure leaving: Cannot assign requested address']);
  t.equal(r.code, 255);
});
