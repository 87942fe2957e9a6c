/**
 * softroce's perftest tools against each other (server and client in this
 * process, two devices on loopback, perftest's TCP exchange): every tool
 * completes and prints perftest's result row; the options an RDMA user runs
 * (-a, -D, -q, -c UC/UD, --output) do what perftest does; misuse is a clear
 * error, not a hang.
 */
import t from 'tap';
import { perftest, type PerfTest } from '../../src/cli/perftest.js';

process.env['SOFTROCE_DEVICES'] = 'pt_a=lo:127.0.70.1,pt_b=lo:127.0.70.2';
let nextPort = 23_400 + Math.floor(Math.random() * 400);

interface Run {
  code: number;
  out: string;
  err: string;
}

async function pair(test: PerfTest, args: string[]): Promise<{ server: Run; client: Run }> {
  const port = String(nextPort++);
  const mk = (): { r: Run; out: (s: string) => void; err: (s: string) => void } => {
    const r: Run = { code: -1, out: '', err: '' };
    return {
      r,
      out: (s) => {
        r.out += s + '\n';
      },
      err: (s) => {
        r.err += s + '\n';
      },
    };
  };
  const s = mk(),
    c = mk();
  const sp = perftest(test, ['-d', 'pt_a', '-p', port, ...args], s.out, s.err).then((code) => {
    s.r.code = code;
  });
  // The server listens before the client connects (perftest's client does not retry).
  for (let i = 0; i < 100 && !s.r.out.includes('Waiting for client') && !s.r.out.includes('\n'); i++) await new Promise((r) => setTimeout(r, 10));
  await new Promise((r) => setTimeout(r, 50));
  const cp = perftest(test, ['-d', 'pt_b', '-p', port, ...args, '127.0.70.1'], c.out, c.err).then((code) => {
    c.r.code = code;
  });
  await Promise.all([sp, cp]);
  return { server: s.r, client: c.r };
}

/** The numbers of the rows under perftest's "#bytes" header. */
function rows(out: string): number[][] {
  const lines = out.split('\n');
  const h = lines.findIndex((l) => l.includes('#bytes'));
  if (h < 0) return [];
  const res: number[][] = [];
  for (const l of lines.slice(h + 1)) {
    if (!/^\s*\d/.test(l)) break;
    res.push(l.trim().split(/\s+/).map(Number));
  }
  return res;
}

const TOOLS: PerfTest[] = ['send_bw', 'write_bw', 'read_bw', 'atomic_bw', 'send_lat', 'write_lat', 'read_lat', 'atomic_lat'];

t.test('each tool runs against itself and prints its result row', async (t) => {
  for (const tool of TOOLS) {
    const { server, client } = await pair(tool, ['-n', '300']);
    t.equal(client.code, 0, `ib_${tool} client exits 0 ${client.err}`);
    t.equal(server.code, 0, `ib_${tool} server exits 0 ${server.err}`);
    const cr = rows(client.out);
    t.equal(cr.length, 1, `ib_${tool}: one result row`);
    const size = tool.startsWith('atomic') ? 8 : tool.endsWith('_lat') ? 2 : 65536;
    t.equal(cr[0]?.[0], size, `ib_${tool}: default size ${size}`);
    t.equal(cr[0]?.[1], 300, `ib_${tool}: -n 300`);
    if (tool.endsWith('_bw')) {
      t.ok(cr[0]![3]! > 0 && cr[0]![2]! >= cr[0]![3]!, `ib_${tool}: average BW > 0 and peak >= average`);
      // WRITE/READ/ATOMIC servers print the client's report, SEND servers their own measurement.
      const sr = rows(server.out);
      t.equal(sr.length, 1, `ib_${tool}: the server prints a row too`);
      if (tool !== 'send_bw') t.same(sr[0], cr[0], `ib_${tool}: the server shows the client's report`);
      else t.equal(sr[0]?.[1], 300, 'send_bw server counted every message');
    } else {
      const [, , min, max, typ, avg] = cr[0]!;
      t.ok(min! > 0 && min! <= typ! && typ! <= max! && avg! >= min!, `ib_${tool}: min <= typical <= max`);
      if (tool === 'read_lat' || tool === 'atomic_lat') t.equal(rows(server.out).length, 0, `ib_${tool}: the server only serves`);
    }
  }
});

t.test('-a sweeps the sizes, -q spreads over QPs, -D runs for a time', async (t) => {
  const a = await pair('write_bw', ['-a', '-n', '5']);
  t.equal(a.client.code, 0, a.client.err);
  t.same(
    rows(a.client.out).map((r) => r[0]),
    Array.from({ length: 23 }, (_, i) => 2 ** (i + 1)),
    'write_bw -a: 2 B to 8 MiB',
  );
  const l = await pair('send_lat', ['-a', '-n', '5']);
  t.equal(l.client.code, 0, l.client.err);
  t.equal(rows(l.client.out).length, 23, 'send_lat -a: 23 sizes');
  const q = await pair('send_bw', ['-q', '4', '-n', '200']);
  t.equal(q.client.code, 0, q.client.err);
  t.match(q.client.out, /Number of qps {3}: 4/);
  t.equal((q.client.out.match(/local address:/g) ?? []).length, 4, 'four local QPs printed');
  t.equal(rows(q.server.out)[0]?.[1], 200, 'every QP delivered its 200 messages');
  const d = await pair('write_bw', ['-D', '1', '-s', '4096']);
  t.equal(d.client.code, 0, d.client.err);
  t.ok(rows(d.client.out)[0]![1]! > 100, '-D 1: the iterations column counts what ran');
});

t.test('-b: both sides run and print the sum of both directions', async (t) => {
  for (const tool of ['write_bw', 'read_bw', 'atomic_bw'] as const) {
    const r = await pair(tool, ['-b', '-n', '300']);
    t.equal(r.client.code, 0, `ib_${tool} -b client ${r.client.err}`);
    t.equal(r.server.code, 0, `ib_${tool} -b server ${r.server.err}`);
    const cr = rows(r.client.out),
      sr = rows(r.server.out);
    t.equal(cr.length, 1, `ib_${tool} -b: one row`);
    t.same(sr, cr, `ib_${tool} -b: both sides print the same combined row`);
    t.ok(cr[0]![3]! > 0, `ib_${tool} -b: bandwidth measured`);
  }
});

t.test('UC and UD where perftest allows them', async (t) => {
  for (const [tool, conn] of [
    ['send_bw', 'UC'],
    ['send_bw', 'UD'],
    ['write_bw', 'UC'],
    ['send_lat', 'UD'],
    ['write_lat', 'UC'],
  ] as const) {
    const r = await pair(tool, ['-c', conn, '-n', '200']);
    t.equal(r.client.code, 0, `ib_${tool} -c ${conn} ${r.client.err}`);
    t.match(r.client.out, new RegExp(`Connection type : ${conn}`));
    t.equal(rows(r.client.out).length, 1, `ib_${tool} -c ${conn}: a result row`);
    if (conn === 'UD') t.ok(rows(r.client.out)[0]![0]! <= 4096, 'UD messages are cut to the MTU');
  }
});

t.test('--output prints the one figure asked for', async (t) => {
  const r = await pair('write_bw', ['-n', '200', '--output=bandwidth']);
  t.equal(r.client.code, 0);
  t.match(r.client.out, /^\d+\.\d+\n$/, 'only the average bandwidth');
  const l = await pair('send_lat', ['-n', '200', '--output=latency']);
  t.match(l.client.out, /^\d+\.\d+\n$/, 'only the average latency');
});

t.test('misuse is a clear error', async (t) => {
  const cases: Array<[PerfTest, string[], RegExp]> = [
    ['read_bw', ['-c', 'UD'], /Unsupported connection type UD/],
    ['write_bw', ['-R', '--retry_count', '9'], /Retry Count/],
    ['send_lat', ['-b'], /bidirectional/],
    ['send_lat', ['-q', '2'], /Latency tests use one QP/],
    ['write_bw', ['-n', '2'], /at least 5/],
    ['atomic_bw', ['-A', 'XOR'], /Invalid atomic type/],
    ['write_bw', ['--output=speed'], /Invalid output type/],
    ['write_bw', ['--bogus'], /unrecognized option/],
    ['write_bw', ['-d', 'nosuch'], /Unable to find/],
  ];
  for (const [tool, args, re] of cases) {
    let err = '';
    const code = await perftest(
      tool,
      args,
      () => undefined,
      (s) => {
        err += s;
      },
    );
    t.equal(code, 1, `ib_${tool} ${args.join(' ')} exits 1`);
    t.match(err, re, `ib_${tool} ${args.join(' ')} says why`);
  }
});
