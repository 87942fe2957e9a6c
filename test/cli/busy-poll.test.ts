/**
 * The latency tools' --busy_poll (issue 15): documented in their help, refused by the bandwidth
 * tools, and a run between two processes on loopback (127.0.83.0/24) prints perftest's usual
 * output; without the addon (SOFTROCE_NO_NATIVE=1, inherited by the tools) it says once on stderr
 * that it uses events, and the output is the same.
 */
import t from 'tap';
import { perftest } from '../../src/cli/perftest.js';
import { loadNative } from '../../src/native.js';
import { freshPort, runBin } from './tool-run.js';

const SRV = '127.0.83.201',
  CLI = '127.0.83.202';
process.env['SOFTROCE_DEVICES'] = `bp_a=lo:${SRV},bp_b=lo:${CLI}`;
const native = loadNative()?.rxPoll !== undefined;

async function capture(tool: Parameters<typeof perftest>[0], args: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = '',
    err = '';
  const code = await perftest(
    tool,
    args,
    (s) => (out += s + '\n'),
    (s) => (err += s + '\n'),
  );
  return { code, out, err };
}

t.test('help and misuse', async (t) => {
  for (const tool of ['send_lat', 'write_lat', 'read_lat', 'atomic_lat'] as const) {
    const h = await capture(tool, ['--help']);
    t.match(h.out, /--busy_poll {2}Spin on the device's receive sockets/, `ib_${tool} --help documents --busy_poll`);
  }
  const bw = await capture('write_bw', ['--help']);
  t.notMatch(bw.out, /busy_poll/, 'ib_write_bw --help does not offer it');
  const r = await capture('write_bw', ['--busy_poll', '-d', 'bp_a']);
  t.equal(r.code, 1, 'ib_write_bw --busy_poll exits 1');
  t.match(r.err, /--busy_poll is for the latency tests/, 'and says why');
});

/** The lines of a run's output with the numbers taken out: what must not change with the flag. */
const shape = (out: string): string[] =>
  out
    .split('\n')
    .filter((l) => !/QPN|PSN|GID:/.test(l))
    .map((l) => l.replace(/\d+(\.\d+)?/g, '#').replace(/ +/g, ' '));

for (const tool of ['send_lat', 'write_lat', 'read_lat'] as const) {
  t.test(`ib_${tool} --busy_poll between two processes`, async (t) => {
    const runs: Record<string, { server: string; client: string; err: string }> = {};
    for (const flags of [[], ['--busy_poll']]) {
      const port = freshPort();
      const common = ['-p', port, '-n', '500', '-s', tool === 'read_lat' ? '4096' : '2', ...flags];
      const s = runBin(`ib_${tool}`, ['-d', 'bp_a', ...common], 60_000);
      for (let i = 0; i < 200 && !s.out.includes('Waiting for client') && !s.out.includes('\n') && s.code === null; i++)
        await new Promise((r) => setTimeout(r, 10));
      await new Promise((r) => setTimeout(r, 100));
      const c = runBin(`ib_${tool}`, ['-d', 'bp_b', ...common, SRV], 60_000);
      await Promise.all([s.done, c.done]);
      const name = flags.length ? 'busy' : 'events';
      t.equal(c.code, 0, `${name}: the client exits 0 ${c.err}`);
      t.equal(s.code, 0, `${name}: the server exits 0 ${s.err}`);
      const row = c.out.split('\n').find((l) => /^\s*\d+\s+500\s/.test(l));
      t.ok(row, `${name}: the client prints its result row (500 iterations)`);
      runs[name] = { server: s.out, client: c.out, err: c.err + s.err };
    }
    const ev = runs['events']!,
      busy = runs['busy']!;
    t.same(shape(busy.client), shape(ev.client), 'the client output has the same lines as without the flag');
    t.same(shape(busy.server), shape(ev.server), 'so has the server output');
    if (native) t.notMatch(busy.err, /cannot busy-poll/, 'with the addon it busy-polls (no fallback notice)');
    else t.match(busy.err, /cannot busy-poll .*using events/, 'without the addon: events, said on stderr');
  });
}
