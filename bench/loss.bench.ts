/**
 * Loss recovery (issue 10 item 2): a 16 MiB READ, WRITE and SEND between two
 * devices over UDP loopback (IPv4 and IPv6), path MTU 1024, with the fault
 * injector on both receive paths: clean, 1% loss, and 5% loss + 5% reordering.
 * For each: data packets on the wire / the 16,384 needed, and the time against
 * the clean-link time of the same operation in the same run. Targets: <= 1.05x
 * packets clean (also with timeout 8), <= 1.5x at 1%, <= 2.5x at 5% + reordering,
 * and at 5% + reordering at most 5x the clean-link time with timeout 14.
 * BENCH_QUICK=1: IPv4 only.
 */
import { openDevice, type Device } from '../src/verbs/device.js';
import { connectQp } from '../src/verbs/connect.js';
import { Wc, type SendWr } from '../src/verbs/types.js';
import type { FaultOptions } from '../src/roce/link/fault-link.js';

const SIZE = 16 << 20;
const MTU = 1024 as const;
const IDEAL = SIZE / MTU;

interface Row {
  family: string;
  op: string;
  faults: string;
  timeout: number;
  packets: number;
  ratio: number;
  ms: number;
  status: string;
}

async function one(
  family: 4 | 6,
  op: 'RDMA_READ' | 'RDMA_WRITE' | 'SEND',
  faults: FaultOptions | undefined,
  timeout: number,
): Promise<Omit<Row, 'family' | 'op' | 'faults' | 'timeout'>> {
  const addr = family === 4 ? ['127.0.21.1', '127.0.21.2'] : ['::1', '::1'];
  const ports = family === 4 ? [4791, 4791] : [4791, 4792];
  const devs: Device[] = [];
  try {
    for (const i of [0, 1])
      devs.push(await openDevice({ address: addr[i]!, udpPort: ports[i]!, ...(faults ? { faults: { ...faults, seed: faults.seed + i } } : {}) }));
    const pds = devs.map((d) => d.allocPd());
    const cqs = devs.map((d) => d.createCq({ depth: 64 }));
    const qps = pds.map((pd, i) => pd.createQp({ type: 'RC', sendCq: cqs[i]!, recvCq: cqs[i]!, sigAll: true, cap: { maxSendWr: 8, maxRecvWr: 8 } }));
    const mems = [Buffer.alloc(SIZE), Buffer.alloc(SIZE)];
    for (let i = 0; i < SIZE; i += 4096) {
      mems[0]![i] = i & 0xff;
      mems[1]![i] = (i >> 12) & 0xff;
    }
    const mrs = pds.map((pd, i) => pd.regMr(mems[i]!, ['LOCAL_WRITE', 'REMOTE_WRITE', 'REMOTE_READ']));
    const eps = qps.map((q) => q.endpoint());
    for (const i of [0, 1]) {
      const j = 1 - i;
      connectQp(qps[i]!, { pathMtu: MTU, timeout, retryCnt: 7 }, { ...eps[j]!, gid: addr[j]!, udpPort: ports[j]! });
    }
    if (op === 'SEND') qps[1]!.postRecv({ wrId: 1, sg: [{ mr: mrs[1]!, offset: 0, length: SIZE }] });
    const wr: SendWr =
      op === 'SEND'
        ? { wrId: 1, opcode: 'SEND', sg: [{ mr: mrs[0]!, offset: 0, length: SIZE }] }
        : { wrId: 1, opcode: op, sg: [{ mr: mrs[0]!, offset: 0, length: SIZE }], remote: { addr: mrs[1]!.addr, rkey: mrs[1]!.rkey } };
    const dataSender = op === 'RDMA_READ' ? devs[1]! : devs[0]!;
    const before = dataSender.counters()['sent_pkts']!;
    const t0 = performance.now();
    qps[0]!.postSend(wr);
    const w = [new Wc()];
    const deadline = t0 + 120_000;
    while (cqs[0]!.poll(w) === 0 && performance.now() < deadline) await new Promise((r) => setImmediate(r));
    const ms = performance.now() - t0;
    // The data sender also sends ACKs (READ responder) or nothing else (requester); count all.
    const packets = dataSender.counters()['sent_pkts']! - before;
    const status = performance.now() >= deadline ? 'TIMEOUT' : w[0]!.status;
    const ok = op === 'RDMA_READ' ? mems[0]!.equals(mems[1]!) : mems[1]!.equals(mems[0]!);
    return { packets, ratio: packets / IDEAL, ms, status: ok || status !== 'SUCCESS' ? status : 'DATA MISMATCH' };
  } finally {
    for (const d of devs) await d.close();
  }
}

export async function lossBench(): Promise<Row[]> {
  const rows: Row[] = [];
  const fams: Array<4 | 6> = process.env['BENCH_QUICK'] === '1' ? [4] : [4, 6];
  const cases: Array<[string, FaultOptions | undefined]> = [
    ['clean', undefined],
    ['1% loss', { seed: 11, dropPct: 1 }],
    ['5% loss + 5% reorder', { seed: 13, dropPct: 5, reorderPct: 5 }],
  ];
  for (const family of fams) {
    for (const op of ['RDMA_READ', 'RDMA_WRITE', 'SEND'] as const) {
      for (const timeout of [8, 14]) {
        for (const [name, f] of cases) {
          const r = await one(family, op, f, timeout);
          rows.push({ family: `IPv${family}`, op, faults: name, timeout, ...r });
        }
      }
    }
  }
  return rows;
}

function target(r: Row, clean: Row | undefined): string {
  const pk = r.faults === 'clean' ? 1.05 : r.faults === '1% loss' ? 1.5 : 2.5;
  const parts = [`pkts <= ${pk}x: ${r.ratio <= pk ? 'met' : 'MISSED'}`];
  if (r.faults.startsWith('5%') && r.timeout === 14 && clean) parts.push(`time <= 5x clean: ${r.ms <= 5 * clean.ms ? 'met' : 'MISSED'}`);
  return parts.join(', ');
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const rows = await lossBench();
  console.log('\n== loss recovery: 16 MiB, path MTU 1024, two devices over UDP loopback (same run)');
  console.log('family op          timeout faults                  packets   /ideal  time ms  /clean  status   targets');
  for (const r of rows) {
    const clean = rows.find((c) => c.family === r.family && c.op === r.op && c.timeout === r.timeout && c.faults === 'clean');
    console.log(
      `${r.family.padEnd(6)} ${r.op.padEnd(12)} ${String(r.timeout).padStart(7)} ${r.faults.padEnd(22)} ${String(r.packets).padStart(8)} ${r.ratio.toFixed(2).padStart(7)}x ${r.ms.toFixed(0).padStart(8)} ${(clean ? r.ms / clean.ms : 1).toFixed(2).padStart(6)}x  ${r.status.padEnd(8)} ${target(r, clean)}`,
    );
  }
}
