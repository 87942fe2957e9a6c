/**
 * perftest's tools (linux-rdma/perftest) over softroce: ib_write_bw, ib_read_bw,
 * ib_atomic_bw and ib_send_lat, speaking perftest's out-of-band TCP exchange
 * (port 18515) as perftest 6.06 does it, read off the lab's captures: version
 * (16 B), cycle buffer and cache line (4 B each, big-endian), MTU ("3\0"), then
 * 108-byte address messages ("LID:OUT:QPN:PSN:RKEY:VADDR:" + 16 GID bytes +
 * "SRQN:"), three of them before a BW test and four before a latency test,
 * one after a BW test followed by the 5-field report (size, iters, peak, avg,
 * msg rate as big-endian u64/double), and one more plus "done" to close.
 * Every message: the client writes then reads, the server reads then writes.
 * We advertise version 6.06, below 6.28, so newer perftest skips its raw
 * struct negotiation (roce-wire.md, T8).
 */
import './epipe.js';
import * as net from 'node:net';
import { randomInt } from 'node:crypto';
import { openDevice, getDeviceList, type Device } from '../verbs/device.js';
import { Wc, WC_STATUS } from '../verbs/types.js';
import { mtuFromEnum, mtuToEnum, isMtu, type Mtu } from '../roce/opcode.js';
import { parseArgs, toInt, UsageError, type OptSpec } from './args.js';
import { WC_STATUS_STR } from './pingpong.js';
import type { Qp } from '../verbs/qp.js';
import type { Gid } from '../roce/gid.js';

export type PerfTest = 'write_bw' | 'read_bw' | 'atomic_bw' | 'send_lat';
const VERSION = '6.06';
const MSG_LEN = 108;
const LINE = '---------------------------------------------------------------------------------------';

const SPECS: OptSpec[] = [
  { short: 'd', long: 'ib-dev', arg: true }, { short: 'i', long: 'ib-port', arg: true }, { short: 'p', long: 'port', arg: true },
  { short: 's', long: 'size', arg: true }, { short: 'n', long: 'iters', arg: true }, { short: 'D', long: 'duration', arg: true },
  { short: 'a', long: 'all', arg: false }, { short: 'q', long: 'qp', arg: true }, { short: 't', long: 'tx-depth', arg: true },
  { short: 'm', long: 'mtu', arg: true }, { short: 'x', long: 'gid-index', arg: true }, { short: 'c', long: 'connection', arg: true },
  { short: 'R', long: 'rdma_cm', arg: false }, { short: 'F', long: 'CPU-freq', arg: false }, { short: 'b', long: 'bidirectional', arg: false },
  { short: 'A', long: 'atomic_type', arg: true }, { long: 'report_gbits', arg: false }, { long: 'output', arg: true },
  { short: 'e', long: 'events', arg: false }, { short: 'o', long: 'outs', arg: true }, { short: 'Q', long: 'cq-mod', arg: true },
  { short: 'I', long: 'inline_size', arg: true }, { short: 'u', long: 'qp-timeout', arg: true }, { short: 'r', long: 'rx-depth', arg: true },
  { short: 'h', long: 'help', arg: false }, { short: 'V', long: 'version', arg: false }, { short: 'l', long: 'post_list', arg: true },
];

interface Dest { lid: number; outReads: number; qpn: number; psn: number; rkey: number; vaddr: bigint; gid: Gid; srqn: number }

function destMsg(d: Dest): Buffer {
  const h = (n: number | bigint, w: number): string => n.toString(16).padStart(w, '0');
  const s = `${h(d.lid, 4)}:${h(d.outReads, 4)}:${h(d.qpn, 6)}:${h(d.psn, 6)}:${h(d.rkey, 8)}:${h(d.vaddr, 16)}:` +
    [...d.gid].map((b) => h(b, 2) + ':').join('') + `${h(d.srqn, 8)}:`;
  const b = Buffer.alloc(MSG_LEN);
  b.write(s, 'latin1');
  return b;
}

function parseDest(b: Buffer): Dest {
  const s = b.toString('latin1').replace(/\0.*$/s, '');
  const f = s.split(':');
  if (f.length < 23) throw new Error(`Couldn't parse remote address ${JSON.stringify(s)}`);
  const n = (x: string | undefined): number => parseInt(x ?? 'x', 16);
  const gid = new Uint8Array(f.slice(6, 22).map((x) => parseInt(x, 16)));
  return { lid: n(f[0]), outReads: n(f[1]), qpn: n(f[2]), psn: n(f[3]), rkey: n(f[4]) >>> 0, vaddr: BigInt('0x' + f[5]), gid, srqn: n(f[22]) };
}

/** printf("%#0Nx"): zero prints without the 0x prefix. */
const alt = (v: number | bigint, width: number): string => (v === 0 || v === 0n ? '0'.repeat(width) : '0x' + v.toString(16).padStart(width - 2, '0'));
const gidLine = (g: Gid): string => ' GID: ' + [...g].map((b) => String(b).padStart(2, '0')).join(':');

/** Exact-length reads from a TCP stream. */
class Conn {
  private buf: Buffer = Buffer.alloc(0);
  private waiter: (() => void) | null = null;
  private err: Error | null = null;
  readonly client: boolean;
  private readonly sock: net.Socket;
  constructor(sock: net.Socket, client: boolean) {
    this.sock = sock;
    this.client = client;
    sock.on('data', (d: Buffer) => { this.buf = Buffer.concat([this.buf, d]); this.waiter?.(); });
    sock.on('end', () => { this.err = new Error('peer closed the connection'); this.waiter?.(); });
    sock.on('error', (e) => { this.err = e; this.waiter?.(); });
  }
  private async read(n: number): Promise<Buffer> {
    while (this.buf.length < n) {
      if (this.err) throw this.err;
      await new Promise<void>((r) => { this.waiter = r; });
      this.waiter = null;
    }
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    return out;
  }
  private write(b: Buffer): Promise<void> {
    return new Promise((res, rej) => this.sock.write(b, (e) => (e ? rej(e) : res())));
  }
  /** perftest's symmetric exchange: the client writes then reads, the server reads then writes. */
  async xchg(mine: Buffer, len = mine.length): Promise<Buffer> {
    if (this.client) { await this.write(mine); return this.read(len); }
    const theirs = await this.read(len);
    await this.write(mine);
    return theirs;
  }
  /** "done": both write it, then read the peer's. */
  async done(): Promise<void> {
    await this.write(Buffer.from('done\0', 'latin1'));
    await this.read(5).catch(() => undefined);
    this.sock.end();
  }
}

function usage(tool: string): string {
  return `Usage:
  ${tool}            start a server and wait for connection
  ${tool} <host>     connect to server at <host>

Options:
  -a, --all  Run sizes from 2 till 2^23
  -c, --connection=<RC/UC/UD>  Connection type RC/UC/UD (default RC)
  -d, --ib-dev=<dev>  Use IB device <dev> (default first device found)
  -i, --ib-port=<port>  Use port <port> of IB device (default 1)
  -m, --mtu=<mtu>  MTU size : 256 - 4096 (default port mtu)
  -n, --iters=<iters>  Number of exchanges
  -p, --port=<port>  Listen on/connect to port <port> (default 18515)
  -s, --size=<size>  Size of message to exchange
  -t, --tx-depth=<dep>  Size of tx queue (default 128)
  -x, --gid-index=<index>  Test uses GID with GID index
  -A, --atomic_type=<type>  Type of atomic operation: CMP_AND_SWAP or FETCH_AND_ADD
  -o, --outs=<num>  Number of outstanding read/atomic requests
  -Q, --cq-mod  Generate CQE only after <--cq-mod> completion
  -u, --qp-timeout=<timeout>  QP timeout, timeout value is 4 usec * 2 ^(timeout), default 14
  --report_gbits  Report Max/Average BW of test in Gbit/sec (instead of MB/sec)
`;
}

export async function perftest(test: PerfTest, argv: string[], out: (s: string) => void = (s) => process.stdout.write(s + '\n'), err: (s: string) => void = (s) => process.stderr.write(s + '\n')): Promise<number> {
  const tool = `ib_${test}`;
  let o;
  try { o = parseArgs(argv, SPECS); } catch (e) { err(`${tool}: ${(e as Error).message}`); err(usage(tool)); return 1; }
  if (o.opts.has('help')) { out(usage(tool)); return 0; }
  if (o.opts.has('version')) { out(`Version: ${VERSION}`); return 0; }
  const lat = test.endsWith('_lat');
  let size: number, iters: number, port: number, ibPort: number, txDepth: number, gidx: number, cqMod: number, outs: number, timeout: number;
  let mtuOpt: number | undefined;
  try {
    size = toInt(o.opts.get('size'), 'size', test === 'atomic_bw' ? 8 : lat ? 2 : 65536);
    iters = toInt(o.opts.get('iters'), 'iters', test === 'write_bw' ? 5000 : 1000);
    port = toInt(o.opts.get('port'), 'port', 18515);
    ibPort = toInt(o.opts.get('ib-port'), 'ib-port', 1);
    txDepth = toInt(o.opts.get('tx-depth'), 'tx-depth', lat ? 1 : 128);
    gidx = toInt(o.opts.get('gid-index'), 'gid-index', -1);
    cqMod = toInt(o.opts.get('cq-mod'), 'cq-mod', 100);
    outs = toInt(o.opts.get('outs'), 'outs', 128);
    timeout = toInt(o.opts.get('qp-timeout'), 'qp-timeout', 14);
    if (o.opts.has('mtu')) mtuOpt = toInt(o.opts.get('mtu'), 'mtu', 1024);
  } catch (e) { err(`${tool}: ${(e as Error).message}`); return 1; }
  const conn = String(o.opts.get('connection') ?? 'RC');
  if (conn !== 'RC') { err(`${tool}: connection type ${conn} is not supported by softroce's ${tool} yet (RC only)`); return 1; }
  for (const f of ['rdma_cm', 'bidirectional', 'all', 'duration'] as const) {
    if (o.opts.has(f)) { err(`${tool}: --${f} is not supported by softroce's ${tool} yet`); return 1; }
  }
  if (toInt(o.opts.get('qp'), 'qp', 1) !== 1) { err(`${tool}: -q > 1 is not supported by softroce's ${tool} yet`); return 1; }
  if (test === 'atomic_bw' && size !== 8) size = 8;
  const atomicCmp = String(o.opts.get('atomic_type') ?? 'FETCH_AND_ADD') === 'CMP_AND_SWAP';
  const gbits = o.opts.has('report_gbits');
  const servername = o.positional[0];
  const list = getDeviceList();
  const devName = o.opts.get('ib-dev');
  const desc = typeof devName === 'string' ? list.find((d) => d.name === devName) : list[0];
  if (!desc) { err(' Unable to find the Infiniband/RoCE device'); return 1; }
  let dev: Device;
  try { dev = await openDevice({ name: desc.name }); } catch (e) { err(` Couldn't get context for the device: ${(e as Error).message}`); return 1; }
  try {
    return await run(dev);
  } catch (e) {
    err(`${tool}: ${(e as Error).message}`);
    return 1;
  } finally {
    await dev.close();
  }

  async function run(d: Device): Promise<number> {
    const pa = d.queryPort(ibPort);
    if (!servername) { out('\n************************************'); out('* Waiting for client to connect... *'); out('************************************'); }
    // TCP first, as perftest's establish_connection.
    let sock: net.Socket;
    if (servername) {
      sock = net.connect({ host: servername, port });
      await new Promise<void>((res, rej) => { sock.once('connect', () => res()); sock.once('error', (e) => rej(new Error(`Couldn't connect to ${servername}:${port}: ${e.message}`))); });
    } else {
      const server = net.createServer();
      await new Promise<void>((res, rej) => { server.once('error', rej); server.listen(port, () => res()); });
      sock = await new Promise<net.Socket>((res) => server.once('connection', res));
      server.close();
    }
    const c = new Conn(sock, !!servername);
    const ver = Buffer.alloc(16);
    ver.write(VERSION, 'latin1');
    const peerVer = parseFloat((await c.xchg(ver)).toString('latin1').replace(/\0.*$/s, ''));
    let cycle = 4096;
    if (peerVer >= 5.32) {
      const b = Buffer.alloc(4);
      b.writeInt32BE(cycle);
      cycle = Math.max(cycle, (await c.xchg(b)).readInt32BE(0));
      b.writeInt32BE(64);
      await c.xchg(b); // cache line size: nothing here depends on it
    }
    let mtu: Mtu = pa.activeMtu;
    if (mtuOpt !== undefined) {
      if (!isMtu(mtuOpt) || mtuOpt > pa.activeMtu) { err(` Invalid MTU ${mtuOpt}; the port's active MTU is ${pa.activeMtu}`); sock.destroy(); return 1; }
      mtu = mtuOpt;
    }
    if (peerVer >= 5.1) {
      const len = peerVer >= 5.31 ? 2 : 4;
      const b = Buffer.alloc(len);
      b.write(String(mtuToEnum(mtu)), 'latin1');
      const theirs = parseInt((await c.xchg(b, len)).toString('latin1'), 10);
      const m = mtuFromEnum(Math.min(mtuToEnum(mtu), theirs));
      if (m) mtu = m;
    }

    // Resources (perftest ctx_init): one RC QP, a buffer of two cycles, every remote access.
    txDepth = Math.max(1, Math.min(txDepth, iters));
    cqMod = Math.max(1, Math.min(cqMod, txDepth));
    const pd = d.allocPd();
    const bufSize = 2 * Math.max(size, cycle);
    const buf = Buffer.alloc(bufSize);
    const mr = pd.regMr(buf, ['LOCAL_WRITE', 'REMOTE_WRITE', 'REMOTE_READ', 'REMOTE_ATOMIC']);
    const cq = d.createCq({ depth: Math.max(txDepth, 1) + 1024 });
    const qp = pd.createQp({ type: 'RC', sendCq: cq, recvCq: cq, cap: { maxSendWr: Math.max(txDepth, 1), maxRecvWr: 1024 } });
    qp.toInit({ port: ibPort, accessFlags: ['REMOTE_WRITE', 'REMOTE_READ', 'REMOTE_ATOMIC', 'LOCAL_WRITE'] });
    const zero = new Uint8Array(16);
    const gid = gidx >= 0 ? (d.gidTable(ibPort)[gidx]?.gid ?? zero) : d.gidTable(ibPort)[d.defaultSgidIndex(ibPort)]!.gid;
    if (gidx < 0) gidx = d.defaultSgidIndex(ibPort);
    const rdAtomic = Math.min(outs, d.attr.maxQpRdAtom);
    const my: Dest = { lid: 0, outReads: rdAtomic, qpn: qp.qpn, psn: randomInt(0, 0x1000000), rkey: mr.rkey, vaddr: mr.addr, gid, srqn: 0 };

    const title = test === 'write_bw' ? 'RDMA_Write BW Test' : test === 'read_bw' ? 'RDMA_Read BW Test'
      : test === 'atomic_bw' ? `Atomic ${atomicCmp ? 'CMP_AND_SWAP' : 'FETCH_AND_ADD'} BW Test` : 'Send Latency Test';
    out(LINE);
    out(`                    ${title}`);
    out(` Dual-port       : OFF\t\tDevice         : ${d.name}`);
    out(` Number of qps   : 1\t\tTransport type : IB`);
    out(` Connection type : RC\t\tUsing SRQ      : OFF`);
    out(` PCIe relax order: OFF`);
    out(` ibv_wr* API     : OFF`);
    if (servername || lat) out(` TX depth        : ${txDepth}`);
    if (!lat) out(` CQ Moderation   : ${cqMod}`);
    out(` Mtu             : ${mtu}[B]`);
    out(` Link type       : Ethernet`);
    out(` GID index       : ${gidx}`);
    if (test === 'read_bw' || test === 'atomic_bw') out(` Outstand reads  : ${rdAtomic}`);
    else out(` Max inline data : 0[B]`);
    out(` rdma_cm QPs\t : OFF`);
    out(` Data ex. method : Ethernet`);
    out(LINE);
    const addrLine = (which: string, x: Dest): string => {
      let s = ` ${which} address: LID ${alt(x.lid, 4)} QPN ${alt(x.qpn, 6)} PSN ${alt(x.psn, 6)}`;
      if (test === 'read_bw') s += ` OUT ${alt(x.outReads, 4)}`;
      if (test === 'read_bw' || test === 'write_bw') s += ` RKey ${alt(x.rkey, 8)} VAddr ${alt(x.vaddr, 16)}`;
      return s;
    };
    out(addrLine('local', my));
    out(gidLine(my.gid));
    const rem = parseDest(await c.xchg(destMsg(my), MSG_LEN));
    out(addrLine('remote', rem));
    out(gidLine(rem.gid));
    out(LINE);

    // ctx_connect: RTR / RTS as perftest sets them (hop limit 0xFF in the AV).
    qp.toRtr({ remote: { qpn: rem.qpn, gid: rem.gid }, pathMtu: mtu, rqPsn: rem.psn, maxDestRdAtomic: rdAtomic, minRnrTimer: 12, sgidIndex: gidx, hopLimit: 0xff });
    qp.toRts({ sqPsn: my.psn, timeout, retryCnt: 7, rnrRetry: 7, maxRdAtomic: Math.max(1, Math.min(rdAtomic, rem.outReads || 1)) });
    await c.xchg(destMsg(my), MSG_LEN); // after RTR
    if (lat) {
      for (let i = 0; i < 32; i++) qp.postRecv({ wrId: 1000 + i, sg: [{ mr, offset: cycle, length: Math.max(size, 1) }] });
      await c.xchg(destMsg(my), MSG_LEN); // receives are posted on both sides
    }
    await c.xchg(destMsg(my), MSG_LEN); // start together

    if (lat) {
      out(' #bytes #iterations    t_min[usec]    t_max[usec]  t_typical[usec]    t_avg[usec]    t_stdev[usec]   99% percentile[usec]   99.9% percentile[usec] ');
      const times = await sendLat(qp, mr, size, iters, !!servername);
      if (typeof times === 'string') { err(times); return 1; }
      out(latRow(size, iters, times));
      out(LINE);
    } else if (servername) {
      out(` #bytes     #iterations    BW peak[${gbits ? 'Gb/sec' : 'MB/sec'}]    BW average[${gbits ? 'Gb/sec' : 'MB/sec'}]   MsgRate[Mpps]`);
      const r = await bwClient(test, qp, mr, rem, size, iters, txDepth, cqMod, atomicCmp);
      if (typeof r === 'string') { err(r); return 1; }
      out(bwRow(size, iters, r.peak, r.avg, r.rate, gbits));
      out(LINE);
      await c.xchg(destMsg(my), MSG_LEN); // the test is over
      const rep = Buffer.alloc(8);
      rep.writeBigUInt64BE(BigInt(size)); await c.xchg(rep, 8);
      rep.writeBigUInt64BE(BigInt(iters)); await c.xchg(rep, 8);
      rep.writeDoubleBE(r.peak); await c.xchg(rep, 8);
      rep.writeDoubleBE(r.avg); await c.xchg(rep, 8);
      rep.writeDoubleBE(r.rate); await c.xchg(rep, 8);
    } else {
      out(` #bytes     #iterations    BW peak[${gbits ? 'Gb/sec' : 'MB/sec'}]    BW average[${gbits ? 'Gb/sec' : 'MB/sec'}]   MsgRate[Mpps]`);
      await c.xchg(destMsg(my), MSG_LEN); // waits until the client is done
      const z = Buffer.alloc(8);
      const v: Buffer[] = [];
      for (let i = 0; i < 5; i++) v.push(await c.xchg(z, 8));
      out(bwRow(Number(v[0]!.readBigUInt64BE(0)), Number(v[1]!.readBigUInt64BE(0)), v[2]!.readDoubleBE(0), v[3]!.readDoubleBE(0), v[4]!.readDoubleBE(0), gbits));
      out(LINE);
    }
    await c.xchg(destMsg(my), MSG_LEN); // close
    await c.done();
    if (process.env['SOFTROCE_COUNTERS'] === '1') {
      err(` counters: ${Object.entries(d.counters(ibPort)).filter(([, v]) => v > 0).map(([k, v]) => `${k}=${v}`).join(' ')}`);
    }
    return 0;
  }
}

/** BW columns as perftest prints them (MB = 2^20 bytes). */
function bwRow(size: number, iters: number, peak: number, avg: number, rate: number, gbits: boolean): string {
  const f = (x: number): string => (gbits ? (x * 1048576 * 8) / 1e9 : x).toFixed(2).padEnd(7);
  return ` ${String(size).padEnd(7)}    ${String(iters).padEnd(7)}          ${f(peak)}            ${f(avg)}  \t\t   ${rate.toFixed(6)}`;
}

function latRow(size: number, iters: number, t: number[]): string {
  const s = [...t].sort((a, b) => a - b);
  const pct = (p: number): number => s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)]!;
  const avg = s.reduce((a, b) => a + b, 0) / s.length;
  const sd = Math.sqrt(s.reduce((a, b) => a + (b - avg) ** 2, 0) / s.length);
  const f = (x: number): string => x.toFixed(2);
  return ` ${String(size).padEnd(7)} ${String(iters).padEnd(7)}      ${f(s[0]!).padEnd(7)}        ${f(s.at(-1)!).padEnd(7)}      ${f(s[Math.floor(s.length / 2)]!)}   \t       ${f(avg)}      \t${f(sd)} \t\t${f(pct(99))} \t\t${f(pct(99.9))}`;
}

const tick = (): Promise<void> => new Promise((r) => setImmediate(r));

async function bwClient(test: PerfTest, qp: Qp, mr: import('../verbs/mr.js').Mr, rem: Dest, size: number, iters: number, txDepth: number, cqMod: number, cmp: boolean): Promise<{ peak: number; avg: number; rate: number } | string> {
  const wcs = Array.from({ length: 64 }, () => new Wc());
  let posted = 0, done = 0;
  const remote = { addr: rem.vaddr, rkey: rem.rkey };
  const sg = [{ mr, offset: 0, length: size }];
  const t0 = process.hrtime.bigint();
  let last = t0;
  let peak = 0;
  while (done < iters) {
    while (posted < iters && posted - done < txDepth) {
      const signaled = posted % cqMod === cqMod - 1 || posted === iters - 1;
      if (test === 'write_bw') qp.postSend({ wrId: posted, opcode: 'RDMA_WRITE', signaled, sg, remote });
      else if (test === 'read_bw') qp.postSend({ wrId: posted, opcode: 'RDMA_READ', signaled, sg, remote });
      else if (cmp) qp.postSend({ wrId: posted, opcode: 'ATOMIC_CMP_AND_SWP', signaled, compareAdd: 0n, swap: 1n, sg, remote });
      else qp.postSend({ wrId: posted, opcode: 'ATOMIC_FETCH_AND_ADD', signaled, compareAdd: 1n, sg, remote });
      posted++;
    }
    const n = qp.sendCq.poll(wcs);
    if (n === 0) { await tick(); continue; }
    for (let i = 0; i < n; i++) {
      const w = wcs[i]!;
      if (w.status !== 'SUCCESS') {
        const code = WC_STATUS.indexOf(w.status);
        return ` Completion with error at client\n Failed status ${code}: wr_id ${w.wrId} syndrom 0x0 (${WC_STATUS_STR[code]})`;
      }
      const now = process.hrtime.bigint();
      const batch = w.wrId + 1 - done;
      const secs = Number(now - last) / 1e9;
      if (secs > 0) peak = Math.max(peak, (batch * size) / secs / 1048576);
      last = now;
      done = w.wrId + 1;
    }
  }
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  const avg = (iters * size) / secs / 1048576;
  return { peak: Math.max(peak, avg), avg, rate: iters / secs / 1e6 };
}

/** Send ping-pong: the client sends first; each side sends once it has received. Returns one-way latencies in µs. */
async function sendLat(qp: Qp, mr: import('../verbs/mr.js').Mr, size: number, iters: number, client: boolean): Promise<number[] | string> {
  const wc = [new Wc(), new Wc()];
  const sg = [{ mr, offset: 0, length: size }];
  const times: number[] = [];
  let prev = process.hrtime.bigint();
  let recvd = 0;
  const recvSg = [{ mr, offset: mr.length / 2, length: Math.max(size, 1) }];
  const waitRecv = async (): Promise<string | null> => {
    for (;;) {
      const n = qp.recvCq.poll(wc, 1);
      if (n === 1) {
        const w = wc[0]!;
        if (w.status !== 'SUCCESS') return ` Failed status ${w.status}`;
        if (w.opcode === 'RECV') { recvd++; qp.postRecv({ wrId: 2000 + recvd, sg: recvSg }); return null; }
        continue; // a send completion
      }
      await tick();
    }
  };
  for (let i = 0; i < iters; i++) {
    // The client pings first; the server answers each ping.
    if (!client) { const e = await waitRecv(); if (e) return e; }
    qp.postSend({ wrId: i, opcode: 'SEND', signaled: true, sg });
    if (client) { const e = await waitRecv(); if (e) return e; }
    const now = process.hrtime.bigint();
    times.push(Number(now - prev) / 2000);
    prev = now;
  }
  // Drain the last send completions.
  for (let k = 0; k < 100 && qp.outstanding > 0; k++) await tick();
  return times;
}

export async function perftestMain(test: PerfTest): Promise<void> {
  try {
    process.exitCode = await perftest(test, process.argv.slice(2));
  } catch (e) {
    process.stderr.write(`${(e as Error).stack}\n`);
    process.exitCode = 1;
  }
}
export { UsageError };
