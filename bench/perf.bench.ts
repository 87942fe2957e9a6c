/**
 * `npm run bench` (third part): softroce's perftest tools between two
 * processes on loopback, next to baselines measured in the same run on the
 * same path: Node dgram ping-pong (with percentiles) and blast, Node TCP bulk,
 * and a C UDP program using sendmmsg/recvmmsg (bench/baselines/udp_blast.c,
 * built here with cc). Then the steady-state checks: the live heap over a long
 * ib_write_bw (after a full GC at its start and end, with the GC counts) and
 * the RSS of a 1 GiB transfer over 64 QPs. Prints a table with issue 5's
 * ratios and writes an SVG plot of bandwidth and latency against message size
 * to bench/out/perf.svg. BENCH_QUICK=1: fewer sizes and a 10 s heap run;
 * BENCH_HEAP_SECS overrides the heap run's length (default 60).
 */
import { spawn, spawnSync } from 'node:child_process';
import { mkdirSync, writeFileSync, existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const OUT = join(ROOT, 'bench', 'out');
const PEERS = join(ROOT, 'dist', 'bench', 'baselines', 'node-peers.js');
const A = '127.0.50.1',
  B = '127.0.50.2';
const ENV = { ...process.env, SOFTROCE_DEVICES: `bench_a=lo:${A},bench_b=lo:${B}` };
let nextPort = 19_500;

interface Proc {
  done: Promise<{ code: number | null; out: string }>;
  out: () => string;
  kill: () => void;
}

function start(cmd: string, args: string[], env: NodeJS.ProcessEnv = ENV): Proc {
  const p = spawn(cmd, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  p.stdout.on('data', (d: Buffer) => {
    out += d.toString();
  });
  p.stderr.on('data', (d: Buffer) => {
    out += d.toString();
  });
  const done = new Promise<{ code: number | null; out: string }>((r) => p.on('close', (code) => r({ code, out })));
  return { done, out: () => out, kill: () => p.kill('SIGTERM') };
}

async function waitFor(p: Proc, re: RegExp, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!re.test(p.out())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${re}: ${p.out().slice(-300)}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

const num = (s: string, re: RegExp): number => Number(re.exec(s)?.[1] ?? NaN);

async function nodePair(sink: string[], src: string[], readyRe = /ready/): Promise<string> {
  const s = start(process.execPath, [PEERS, ...sink]);
  await waitFor(s, readyRe);
  const c = start(process.execPath, [PEERS, ...src]);
  await c.done;
  const r = await s.done;
  return r.out;
}

/** Runs a softroce perftest tool as server and client (two processes); returns [client output, server output]. */
async function perftestPair(tool: string, args: string[], o: { nodeArgs?: string[]; env?: NodeJS.ProcessEnv } = {}): Promise<[string, string]> {
  const port = String(nextPort++);
  const bin = join(ROOT, 'bin', `${tool}.js`);
  const env = { ...ENV, ...(o.env ?? {}) };
  const s = start(process.execPath, [...(o.nodeArgs ?? []), bin, '-d', 'bench_a', '-p', port, ...args], env);
  await waitFor(s, /Waiting for client/);
  await new Promise((r) => setTimeout(r, 300));
  const c = start(process.execPath, [...(o.nodeArgs ?? []), bin, '-d', 'bench_b', '-p', port, ...args, A], env);
  const cr = await c.done;
  const sr = await s.done;
  if (cr.code !== 0) throw new Error(`${tool} ${args.join(' ')}: client exited ${cr.code}: ${cr.out.slice(-300)}`);
  return [cr.out, sr.out];
}

async function perftest(tool: string, size: number, iters: number, extra: string[] = []): Promise<string> {
  return (await perftestPair(tool, ['-s', String(size), '-n', String(iters), ...extra]))[0];
}

/** The numbers of a SOFTROCE_MEMSTATS=1 line. */
function memstats(out: string): Record<string, number> {
  const line = /memstats:([^\n]*)/.exec(out)?.[1] ?? '';
  return Object.fromEntries([...line.matchAll(/(\w+)=([\d.-]+)/g)].map((m) => [m[1]!, Number(m[2])]));
}

/** The numbers of the result row under perftest's "#bytes" header. */
function resultRow(out: string): number[] {
  const m = /#bytes[^\n]*\n([^\n]+)/.exec(out);
  return m ? m[1]!.trim().split(/\s+/).map(Number) : [];
}

async function main(): Promise<void> {
  mkdirSync(OUT, { recursive: true });
  const rows: Array<[string, string, string, string]> = [];
  const add = (what: string, size: string, value: string, note = ''): void => {
    rows.push([what, size, value, note]);
    console.log(`  ${what} ${size}: ${value} ${note}`);
  };
  console.log('measuring baselines ...');
  // Node dgram ping-pong, 2 bytes (two processes).
  const echoPort = nextPort++,
    pingPort = nextPort++;
  const echo = start(process.execPath, [PEERS, 'dgram-echo', A, String(echoPort)]);
  await waitFor(echo, /ready/);
  const ping = await start(process.execPath, [PEERS, 'dgram-ping', A, String(pingPort), String(echoPort), '20000']).done;
  echo.kill();
  const rtt = num(ping.out, /rtt_us=([\d.]+)/);
  add(
    'Node dgram ping-pong RTT',
    '2 B',
    `${rtt.toFixed(1)} us`,
    `(half: ${(rtt / 2).toFixed(1)} us; median ${num(ping.out, /median_us=([\d.]+)/).toFixed(1)}, p99 ${num(ping.out, /p99_us=([\d.]+)/).toFixed(0)} us)`,
  );
  // Node dgram blast, 4 KiB.
  const dport = nextPort++;
  const db = await nodePair(['dgram-sink', A, String(dport), '2'], ['dgram-blast', A, String(dport), '4096', '2']);
  const dgBw = num(db, /bytes=(\d+)/) / num(db, /secs=([\d.]+)/);
  add('Node dgram blast', '4 KiB', `${(dgBw / 1e9).toFixed(2)} GB/s`);
  // Node TCP bulk, 64 KiB writes.
  const tport = nextPort++;
  const tb = await nodePair(['tcp-sink', A, String(tport)], ['tcp-blast', A, String(tport), '65536', '2']);
  const tcpBw = num(tb, /bytes=(\d+)/) / num(tb, /secs=([\d.]+)/);
  add('Node TCP bulk', '64 KiB', `${(tcpBw / 1e9).toFixed(2)} GB/s`);
  // C UDP with sendmmsg/recvmmsg.
  const cbin = join(OUT, 'udp_blast');
  const cc = spawnSync('cc', ['-O2', '-o', cbin, join(ROOT, 'bench', 'baselines', 'udp_blast.c')], { encoding: 'utf8' });
  let cBw = NaN;
  if (cc.status === 0 && existsSync(cbin)) {
    const cport = String(nextPort++);
    const r = start(cbin, ['recv', A, cport, '2']);
    await waitFor(r, /ready/);
    await start(cbin, ['send', A, cport, '4096', '2']).done;
    const ro = (await r.done).out;
    cBw = num(ro, /bytes=(\d+)/) / num(ro, /secs=([\d.]+)/);
    add('C UDP sendmmsg/recvmmsg x32', '4 KiB', `${(cBw / 1e9).toFixed(2)} GB/s`);
  } else {
    add('C UDP sendmmsg/recvmmsg x32', '4 KiB', 'not built', `(cc failed: ${cc.stderr.trim().split('\n')[0] ?? ''})`);
  }

  console.log('measuring softroce (two processes, loopback, path MTU 4096) ...');
  const quick = process.env['BENCH_QUICK'] === '1';
  const bwSizes = quick ? [64, 4096, 65536, 1 << 20] : [64, 256, 1024, 4096, 16384, 65536, 262144, 1 << 20];
  const series: Record<string, Array<[number, number]>> = { ib_write_bw: [], ib_send_bw: [], ib_read_bw: [], ib_send_lat: [], ib_write_lat: [] };
  for (const tool of ['ib_write_bw', 'ib_send_bw', 'ib_read_bw']) {
    for (const size of bwSizes) {
      // About a second per size at the rates reached here (perftest's warm-up runs first for WRITE/READ).
      const iters = Math.max(500, Math.min(50_000, Math.round(600e6 / size)));
      try {
        const r = resultRow(await perftest(tool, size, iters));
        const mbs = r[3]!; // BW average [MiB/sec]
        series[tool]!.push([size, mbs]);
        const bytesPerSec = mbs * 1048576;
        const note =
          size === 65536 && tool === 'ib_write_bw'
            ? `${((bytesPerSec / cBw) * 100).toFixed(0)}% of C sendmmsg (target >= 50%), ${(bytesPerSec / tcpBw).toFixed(2)}x Node TCP (target >= 1)`
            : '';
        add(`softroce ${tool}`, `${size} B`, `${(bytesPerSec / 1e6).toFixed(1)} MB/s, ${r[4]!.toFixed(4)} Mpps`, note);
      } catch (e) {
        add(`softroce ${tool}`, `${size} B`, 'failed', String(e).slice(0, 120));
      }
    }
  }
  for (const tool of ['ib_send_lat', 'ib_write_lat']) {
    for (const size of quick ? [2, 4096] : [2, 64, 1024, 4096]) {
      try {
        const r = resultRow(await perftest(tool, size, 20_000));
        const avg = r[5]!;
        series[tool]!.push([size, avg]);
        const note = size === 2 ? `${(avg / (rtt / 2)).toFixed(2)}x half the dgram RTT (target <= 1.25 for send_lat)` : '';
        add(`softroce ${tool} avg`, `${size} B`, `${avg.toFixed(1)} us (typical ${r[4]!.toFixed(1)} us, p99 ${r[7]!.toFixed(0)} us)`, note);
      } catch (e) {
        add(`softroce ${tool}`, `${size} B`, 'failed', String(e).slice(0, 120));
      }
    }
  }

  // Steady state: a long ib_write_bw; the live heap after a full GC at its start and end, and the GC counts.
  const heapSecs = Number(process.env['BENCH_HEAP_SECS'] ?? (quick ? 10 : 60));
  console.log(`measuring memory (ib_write_bw -D ${heapSecs}; ib_write_bw -q 64 moving 1 GiB) ...`);
  try {
    const [co, so] = await perftestPair('ib_write_bw', ['-s', '65536', '-D', String(heapSecs)], { nodeArgs: ['--expose-gc'], env: { SOFTROCE_MEMSTATS: '1' } });
    for (const [side, out] of [
      ['client', co],
      ['server', so],
    ] as const) {
      const m = memstats(out);
      add(
        `ib_write_bw -D ${heapSecs} heap (${side})`,
        '64 KiB',
        `${m['heap_start_mb']} -> ${m['heap_end_mb']} MB live`,
        `growth ${m['heap_growth_mb']} MB; GCs: ${m['gc_minor']} minor, ${m['gc_major']} major, ${m['gc_incremental']} incremental (plus ${m['gc_forced']} forced by the measurement)`,
      );
    }
  } catch (e) {
    add('ib_write_bw heap', '64 KiB', 'failed', String(e).slice(0, 120));
  }
  try {
    const [co, so] = await perftestPair('ib_write_bw', ['-s', '65536', '-q', '64', '-n', '256'], { env: { SOFTROCE_MEMSTATS: '1' } });
    const r = resultRow(co);
    for (const [side, out] of [
      ['client', co],
      ['server', so],
    ] as const) {
      const m = memstats(out);
      add(
        `ib_write_bw -q 64, 1 GiB, RSS (${side})`,
        '64 KiB',
        `${m['rss_max_mb']} MB max RSS`,
        `(target < 200 MB)${side === 'client' ? `; ${((r[3]! * 1048576) / 1e6).toFixed(0)} MB/s` : ''}`,
      );
    }
  } catch (e) {
    add('ib_write_bw -q 64 RSS', '64 KiB', 'failed', String(e).slice(0, 120));
  }

  console.log('\n' + ['what'.padEnd(38), 'size'.padEnd(9), 'figure'.padEnd(44), 'ratio / note'].join(' '));
  for (const [w, sz, v, n] of rows) console.log([w.padEnd(38), sz.padEnd(9), v.padEnd(44), n].join(' '));
  const svg = plot(series, { dgramBw: dgBw / 1048576, tcpBw: tcpBw / 1048576, cBw: cBw / 1048576, halfRtt: rtt / 2 });
  writeFileSync(join(OUT, 'perf.svg'), svg);
  console.log(`plot: ${join(OUT, 'perf.svg')}`);
}

/** Two panels: bandwidth (MB/s) and latency (us) against message size (log2), with the baselines as lines. */
function plot(s: Record<string, Array<[number, number]>>, base: { dgramBw: number; tcpBw: number; cBw: number; halfRtt: number }): string {
  const W = 900,
    H = 360,
    pad = 60;
  const panel = (x0: number, title: string, pts: Record<string, Array<[number, number]>>, hlines: Array<[string, number]>, unit: string): string => {
    const all = Object.values(pts).flat();
    const xs = all.map(([x]) => Math.log2(x));
    const ys = [...all.map(([, y]) => y), ...hlines.map(([, y]) => y)].filter((v) => Number.isFinite(v));
    const xmin = Math.min(...xs, 1),
      xmax = Math.max(...xs, 2);
    const ymax = Math.max(...ys, 1) * 1.1;
    const w = W / 2 - pad * 1.5,
      h = H - pad * 2;
    const X = (v: number): number => x0 + pad + ((Math.log2(v) - xmin) / (xmax - xmin || 1)) * w;
    const Y = (v: number): number => pad + h - (v / ymax) * h;
    const colors = ['#1f77b4', '#d62728', '#2ca02c'];
    let g = `<text x="${x0 + pad}" y="30" font-size="14">${title}</text>`;
    g += `<line x1="${x0 + pad}" y1="${pad + h}" x2="${x0 + pad + w}" y2="${pad + h}" stroke="#000"/><line x1="${x0 + pad}" y1="${pad}" x2="${x0 + pad}" y2="${pad + h}" stroke="#000"/>`;
    g += `<text x="${x0 + pad - 50}" y="${pad + 5}" font-size="10">${ymax.toFixed(0)} ${unit}</text><text x="${x0 + pad + w - 80}" y="${pad + h + 30}" font-size="10">message size (log2)</text>`;
    Object.entries(pts).forEach(([name, p], i) => {
      if (!p.length) return;
      const c = colors[i % colors.length]!;
      g += `<polyline fill="none" stroke="${c}" stroke-width="2" points="${p.map(([x, y]) => `${X(x).toFixed(1)},${Y(y).toFixed(1)}`).join(' ')}"/>`;
      for (const [x, y] of p)
        g += `<circle cx="${X(x).toFixed(1)}" cy="${Y(y).toFixed(1)}" r="3" fill="${c}"/><text x="${X(x).toFixed(1)}" y="${pad + h + 14}" font-size="9">${x >= 1024 ? `${x / 1024}K` : x}</text>`;
      g += `<text x="${x0 + pad + 10}" y="${pad + 14 + 14 * i}" font-size="11" fill="${c}">${name}</text>`;
    });
    hlines.forEach(([name, v], i) => {
      if (!Number.isFinite(v)) return;
      g += `<line x1="${x0 + pad}" y1="${Y(v).toFixed(1)}" x2="${x0 + pad + w}" y2="${Y(v).toFixed(1)}" stroke="#888" stroke-dasharray="4 3"/><text x="${x0 + pad + w - 150}" y="${(Y(v) - 3 - 10 * i).toFixed(1)}" font-size="10" fill="#555">${name} ${v.toFixed(0)}</text>`;
    });
    return g;
  };
  const bw = panel(
    0,
    'Bandwidth (two processes, loopback)',
    { ib_write_bw: s['ib_write_bw']!, ib_send_bw: s['ib_send_bw']!, ib_read_bw: s['ib_read_bw']! },
    [
      ['C UDP sendmmsg', base.cBw],
      ['Node TCP', base.tcpBw],
      ['Node dgram', base.dgramBw],
    ],
    'MiB/s',
  );
  const lat = panel(
    W / 2,
    'Latency',
    { 'ib_send_lat avg': s['ib_send_lat']!, 'ib_write_lat avg': s['ib_write_lat']! },
    [['half dgram RTT', base.halfRtt]],
    'us',
  );
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif"><rect width="100%" height="100%" fill="#fff"/>${bw}${lat}</svg>\n`;
}

main().then(
  () => process.exit(0),
  (e: unknown) => {
    console.error(e);
    process.exit(1);
  },
);
