/**
 * The latency tools' warm-up (perftest-warmup.ts): it plays the tool's own latency loop between
 * two QPs of the device for the asked number of round trips, frees everything it made, and
 * nothing of it reaches the peer; SOFTROCE_LAT_WARMUP sets it, a bad value is a clear error.
 */
import t from 'tap';
import { openDevice } from '../../src/verbs/device.js';
import { warmUp, warmupIters, LAT_WARMUP_ITERS } from '../../src/cli/perftest-warmup.js';
import { perftest, type PerfTest } from '../../src/cli/perftest.js';
import type { Verb } from '../../src/cli/perftest-run.js';

const ADDR = '127.0.71.1';
process.env['SOFTROCE_DEVICES'] = 'wu_a=lo:127.0.71.2,wu_b=lo:127.0.71.3';
let nextPort = 24_400 + Math.floor(Math.random() * 400);

t.test('SOFTROCE_LAT_WARMUP', async (t) => {
  t.equal(warmupIters({}), LAT_WARMUP_ITERS, 'unset: the default');
  t.equal(warmupIters({ SOFTROCE_LAT_WARMUP: '' }), LAT_WARMUP_ITERS, 'empty: the default');
  t.equal(warmupIters({ SOFTROCE_LAT_WARMUP: '0' }), 0, '0: none');
  t.equal(warmupIters({ SOFTROCE_LAT_WARMUP: '250' }), 250);
  for (const bad of ['-1', '1.5', 'many', '1e3', '0x10'])
    t.throws(() => warmupIters({ SOFTROCE_LAT_WARMUP: bad }), { message: new RegExp(`SOFTROCE_LAT_WARMUP=${bad.replace('.', '\\.')}: must be a number`) }, bad);
});

t.test('each verb plays its loop for the asked round trips, then frees all it made', async (t) => {
  const d = await openDevice({ address: ADDR });
  t.teardown(() => d.close());
  const sgidIndex = d.defaultSgidIndex(1);
  const cases: Array<[Verb, 'RC' | 'UC']> = [
    ['SEND', 'RC'],
    ['WRITE', 'RC'],
    ['READ', 'RC'],
    ['ATOMIC', 'RC'],
    ['SEND', 'UC'],
    ['WRITE', 'UC'],
  ];
  for (const [verb, conn] of cases) {
    const before = d.counters();
    const w = await warmUp({
      device: d,
      verb,
      conn,
      port: 1,
      sgidIndex,
      size: verb === 'ATOMIC' ? 8 : 64,
      iters: 150,
      outReads: 16,
      access: ['REMOTE_WRITE', 'REMOTE_READ', 'REMOTE_ATOMIC', 'LOCAL_WRITE'],
      connect: (qp, r, sqPsn) => {
        qp.toRtr({
          remote: { qpn: r.qpn, gid: r.gid },
          pathMtu: 1024,
          rqPsn: r.psn,
          sgidIndex,
          ...(conn === 'RC' ? { maxDestRdAtomic: 16, minRnrTimer: 12 } : {}),
        });
        if (conn === 'RC') qp.toRts({ sqPsn, timeout: 14, retryCnt: 7, rnrRetry: 7, maxRdAtomic: 1 });
        else qp.toRts({ sqPsn });
      },
    });
    t.equal(w.result, 150, `${verb} ${conn}: 150 round trips`);
    t.ok(d.qps.size > 0, `${verb} ${conn}: its QPs live until close()`);
    w.close();
    t.equal(d.qps.size, 0, `${verb} ${conn}: close() freed its QPs`);
    const after = d.counters();
    // SEND: a SEND each way per round trip; WRITE: a WRITE each way; READ/ATOMIC: a request and its answer.
    t.ok(after['sent_pkts']! - before['sent_pkts']! >= 300, `${verb} ${conn}: its packets went through the device`);
    t.equal(after['rcvd_icrc_err'], 0, `${verb} ${conn}: no ICRC error`);
    // A packet the requester sent again (a tail probe or an ACK timeout, under load) may be
    // answered after close() freed its QP: the device drops that answer as for an unknown QP, as
    // rxe does. Anything else reaching an unknown QP is a stray of the warm-up.
    const resent = after['tail_probes']! + after['timeouts']! + after['read_hole_requests']!;
    t.ok(after['rcvd_unknown_qp']! <= resent, `${verb} ${conn}: unknown-QP drops ${after['rcvd_unknown_qp']} <= resends ${resent}`);
  }
});

interface Run {
  code: number;
  out: string;
  err: string;
}

/** ib_<tool> server and client in this process, each with its own SOFTROCE_LAT_WARMUP (read as the tool starts). */
async function pair(tool: PerfTest, args: string[], warm: { server: string; client: string }): Promise<{ server: Run; client: Run }> {
  const port = String(nextPort++);
  const mk = (): Run => ({ code: -1, out: '', err: '' });
  const s = mk(),
    c = mk();
  process.env['SOFTROCE_LAT_WARMUP'] = warm.server;
  const sp = perftest(
    tool,
    ['-d', 'wu_a', '-p', port, ...args],
    (l) => (s.out += l + '\n'),
    (l) => (s.err += l + '\n'),
  ).then((code) => (s.code = code));
  for (let i = 0; i < 100 && !s.out.includes('\n'); i++) await new Promise((r) => setTimeout(r, 10));
  await new Promise((r) => setTimeout(r, 50));
  process.env['SOFTROCE_LAT_WARMUP'] = warm.client;
  const cp = perftest(
    tool,
    ['-d', 'wu_b', '-p', port, ...args, '127.0.71.2'],
    (l) => (c.out += l + '\n'),
    (l) => (c.err += l + '\n'),
  ).then((code) => (c.code = code));
  await Promise.all([sp, cp]);
  delete process.env['SOFTROCE_LAT_WARMUP'];
  return { server: s, client: c };
}

/** SOFTROCE_COUNTERS=1's " counters: k=v ..." line on stderr */
function counters(err: string): Record<string, number> {
  const line = / counters: ([^\n]*)/.exec(err)?.[1] ?? '';
  return Object.fromEntries([...line.matchAll(/(\w+)=(\d+)/g)].map((m) => [m[1]!, Number(m[2])]));
}

t.test("the client's warm-up stays on its own device: the server's run is the same with and without it", async (t) => {
  process.env['SOFTROCE_COUNTERS'] = '1';
  t.teardown(() => {
    delete process.env['SOFTROCE_COUNTERS'];
  });
  for (const tool of ['send_lat', 'write_lat'] as const) {
    const cold = await pair(tool, ['-n', '50'], { server: '0', client: '0' });
    const warm = await pair(tool, ['-n', '50'], { server: '0', client: '300' });
    for (const [name, r] of [
      ['cold', cold],
      ['warm', warm],
    ] as const) {
      t.equal(r.server.code, 0, `${tool} ${name}: server exit 0`);
      t.equal(r.client.code, 0, `${tool} ${name}: client exit 0`);
      t.notMatch(r.client.err, /warm-up skipped/, `${tool} ${name}: no warm-up failed`);
    }
    const sc = counters(cold.server.err),
      sw = counters(warm.server.err);
    const cc = counters(cold.client.err),
      cw = counters(warm.client.err);
    // The server's device took the run's 50 messages only, either way; the client's took its warm-up's too.
    const what = tool === 'send_lat' ? 'rdma_recvs' : 'rcvd_pkts';
    if (tool === 'send_lat') {
      t.equal(sc[what], 50, `${tool}: the cold server received the run's 50 SENDs`);
      t.equal(sw[what], 50, `${tool}: so did the server of a warmed client`);
      t.equal(cc[what], 50, `${tool}: a cold client received 50`);
      t.equal(cw[what], 50 + 600, `${tool}: a warmed client also received its warm-up's 300 pings and 300 pongs`);
    } else {
      t.ok(
        sw['rcvd_pkts']! <= sc['rcvd_pkts']! + 10,
        `${tool}: the server of a warmed client received no more than the run (${sw['rcvd_pkts']} vs ${sc['rcvd_pkts']})`,
      );
      t.ok(cw['sent_pkts']! >= cc['sent_pkts']! + 600, `${tool}: the warmed client sent its warm-up's 600 WRITEs besides the run`);
    }
    t.equal(sw['rcvd_unknown_qp'] ?? 0, 0, `${tool}: nothing for an unknown QP reached the server`);
  }
});

t.test('a bad SOFTROCE_LAT_WARMUP is a clear error before anything starts', async (t) => {
  process.env['SOFTROCE_LAT_WARMUP'] = 'lots';
  t.teardown(() => {
    delete process.env['SOFTROCE_LAT_WARMUP'];
  });
  let err = '';
  const code = await perftest(
    'send_lat',
    ['-d', 'wu_a', '-p', String(nextPort++)],
    () => {},
    (l) => (err += l),
  );
  t.equal(code, 1);
  t.match(err, /ib_send_lat: SOFTROCE_LAT_WARMUP=lots: must be a number of round trips/);
  // the bandwidth tools have no warm-up: the variable does not concern them
  const bw = await perftest(
    'write_bw',
    ['-d', 'wu_a', '-p', String(nextPort++), '--help'],
    () => {},
    () => {},
  );
  t.equal(bw, 0, 'ib_write_bw --help ignores it');
});
