/**
 * cmtime (src/cli/cmtime.ts) server and client as two processes on loopback (127.0.65.x), as the lab
 * runs the real ones: the client's lines and table layout of test/interop/reference/cmtime.client (real
 * cmtime <-> real cmtime on rxe, -c 100) with its own figures, exit 0; the server printing nothing
 * and running until killed; the usage text for an unknown option; REJECTED (8) per id when nothing
 * listens on the port.
 */
import t from 'tap';
import { runBin, reference, lines, freshPort, type ToolRun } from './tool-run.js';

const SRV = '127.0.65.1';
const CLI = '127.0.65.2';

/** cmtime.c's row: "%-13s: %11.2f%11.2f%11.2f%11.2f" (total ms, max ms, min us, us / conn) */
function row(line: string): { name: string; nums: number[] } | null {
  const m = /^(.{13}): ((?: *\d+\.\d\d){4})$/.exec(line);
  if (!m) return null;
  const cols = m[2]!;
  if (cols.length !== 44) return null; // four columns of width 11
  const nums = [0, 1, 2, 3].map((i) => cols.slice(i * 11, i * 11 + 11));
  if (!nums.every((c) => /^ *\d+\.\d\d$/.test(c))) return null;
  return { name: m[1]!.trimEnd(), nums: nums.map(Number) };
}

/**
 * The reference's lines as the real tool prints them with -b (the tests must bind: the lab's client
 * needed no -b, but on loopback the routed source would be 127.0.0.1, which is not ours): cmtime.c
 * prints "binding source address" after "creating id", and the "bind addr" row after "create id".
 */
function withBind(ref: string[]): string[] {
  const out: string[] = [];
  for (const l of ref) {
    out.push(l);
    if (l === 'creating id') out.push('binding source address');
    if (l.startsWith('create id    :')) out.push('bind addr    :');
  }
  return out;
}

async function server(port: string): Promise<ToolRun> {
  const s = runBin('cmtime', ['-b', SRV, '-p', port], 60_000);
  await new Promise((r) => setTimeout(r, 700)); // the server prints nothing: give it the time to listen
  return s;
}

t.test('-c 100: the reference lines, the table laid out as cmtime.c does, exit 0; the server silent until killed', async (t) => {
  const port = freshPort();
  const s = await server(port);
  const c = runBin('cmtime', ['-s', SRV, '-b', CLI, '-p', port, '-c', '100'], 60_000);
  await c.done;
  t.equal(s.code, null, 'the server still runs (the real one runs until killed)');
  s.child.kill();
  await s.done;
  t.equal(s.out + s.err, '', 'the server printed nothing');
  t.equal(c.err, '', 'nothing on stderr');
  const ref = reference('cmtime.client');
  t.equal(c.code, ref.exit, 'exit status as the reference');
  const got = lines(c.out);
  const want = withBind(ref.lines);
  t.equal(got.length, want.length, 'as many lines as the real tool prints with -b');
  const header = want.indexOf('step              total ms     max ms     min us  us / conn');
  t.ok(header > 0, 'the reference has the header');
  t.same(got.slice(0, header + 1), want.slice(0, header + 1), 'the step lines and the header, word for word');
  // the pattern below is the real tool's: every row of the reference fits it
  const refHeader = ref.lines.indexOf(want[header]!);
  for (const l of ref.lines.slice(refHeader + 1)) t.ok(row(l), `the reference row fits the pattern: ${l}`);
  for (let i = header + 1; i < want.length; i++) {
    const r = row(got[i] ?? '');
    t.ok(r, `a row in cmtime.c's format: ${JSON.stringify(got[i])}`);
    if (!r) continue;
    t.equal(`${r.name.padEnd(13)}:`, want[i]!.slice(0, 14), `row ${i - header}: ${r.name}`);
    const [totalMs, maxMs, minUs, perConn] = r.nums as [number, number, number, number];
    // every id took part in every step: the slowest is no faster than the fastest, and none is slower than the step
    t.ok(maxMs * 1000 >= minUs, `${r.name}: max >= min`);
    t.ok(maxMs <= totalMs + 0.01, `${r.name}: max <= total`);
    t.ok(Math.abs(perConn - (totalMs * 1000) / 100) <= 0.01 * Math.max(1, perConn), `${r.name}: us / conn = total / 100`);
    t.ok(minUs < 1e9, `${r.name}: the minimum was taken (no 1000000000.00, cmtime.c's "no data")`);
  }
  t.comment(got.slice(header).join('\n'));
});

t.test('an unknown option: the usage text and the getopt complaint, exit 1', async (t) => {
  const r = runBin('cmtime', ['-h']);
  await r.done;
  t.same([...lines(r.out), ...lines(r.err)], reference('cmtime.help').lines, 'usage then the complaint');
  t.equal(r.code, 1);
});

t.test('nothing listens on the port: REJECTED (8) for each id, the steps still reported, exit 0', async (t) => {
  const port = freshPort();
  // a server on another port gives the address a CM that answers (the peer's REJ "invalid service ID")
  const s = await server(port);
  const c = runBin('cmtime', ['-s', SRV, '-b', CLI, '-p', String(Number(port) + 1000), '-c', '3']);
  await c.done;
  s.child.kill();
  await s.done;
  const got = lines(c.out);
  t.same(got.slice(0, 10), [
    'creating id',
    'binding source address',
    'resolving address',
    'resolving route',
    'creating qp',
    'connecting',
    'event: RDMA_CM_EVENT_REJECTED, error: 8',
    'event: RDMA_CM_EVENT_REJECTED, error: 8',
    'event: RDMA_CM_EVENT_REJECTED, error: 8',
    'disconnecting',
  ]);
  t.equal(got[10], 'destroying id');
  // cmtime.c skips the failed ids from then on: no disconnect was timed, so its min stays 999999999.f
  const disc = got.find((l) => l.startsWith('disconnect   :'));
  t.match(disc, /^disconnect {3}: +\d+\.\d\d +0\.001000000000\.00 +\d+\.\d\d$/, 'the disconnect row of no data, as the C float prints it');
  t.equal(c.code, 0, "cmtime returns the last rdma_connect call's 0: the rejections do not change it");
});
