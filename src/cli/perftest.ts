/**
 * perftest's tools (linux-rdma/perftest) over softroce: ib_send_bw,
 * ib_write_bw, ib_read_bw, ib_atomic_bw, ib_send_lat, ib_write_lat,
 * ib_read_lat and ib_atomic_lat, with perftest's options and output tables,
 * speaking perftest 6.06's out-of-band TCP exchange (perftest-comm.ts) so that
 * each runs against the real perftest in either role.
 *
 * Exchange order (handshake = one 108-byte address record each way), read off
 * the lab's captures and perftest's sources:
 *   version, cycle buffer + cache line, MTU (all tools), then
 *   BW tests: one handshake per QP, connect, one more, one per QP again;
 *     SEND BW: per message size one handshake after the receives are posted
 *     (and, with -a, one after each size);
 *     WRITE/READ/ATOMIC BW: after the run one handshake and the 5-field
 *     report from the client, which the server prints;
 *   latency tests: SEND 3 + one per size after posting receives, WRITE,
 *     READ and ATOMIC 4 (READ/ATOMIC servers then only wait for the close);
 *   close: a handshake and "done" both ways.
 * We advertise version 6.06 (below 6.28, so newer perftest skips its raw
 * struct negotiation, roce-wire.md T8).
 */
import './epipe.js';
import { randomInt } from 'node:crypto';
import type { Device } from '../verbs/device.js';
import { cliDeviceList, openCliDevice } from './open-device.js';
import { mtuFromEnum, mtuToEnum, isMtu, type Mtu } from '../roce/opcode.js';
import { parseArgs, runTool, toInt, UsageError, type OptSpec } from './args.js';
import type { Gid } from '../roce/gid.js';
import type { Qp } from '../verbs/qp.js';
import type { Ah } from '../verbs/objects.js';
import { Conn, type PerfDest, type BwReport } from './perftest-comm.js';
import { CmConn, CmData } from './perftest-cm.js';
import { RDMA_UDP_QKEY } from '../cm/conn.js';
import { MemStats } from './memstats.js';
import { formatTrace, STUCK_TRACE_LINES } from '../roce/transport/trace.js';
import { warmUp, warmupIters, type Warmup } from './perftest-warmup.js';
import { bwClient, bwServer, latency, fillRecvs, runCtx, UD_QKEY, type Verb, type RunCtx, type Limit } from './perftest-run.js';

export type PerfTest = 'send_bw' | 'write_bw' | 'read_bw' | 'atomic_bw' | 'send_lat' | 'write_lat' | 'read_lat' | 'atomic_lat';
type ConnType = 'RC' | 'UC' | 'UD';

interface ToolSpec {
  verb: Verb;
  lat: boolean;
  conns: readonly ConnType[];
  iters: number;
}
/** Which verb each tool measures, which transports perftest allows for it, and its default iterations (DEF_ITERS_WB for write BW). */
const TOOLS: Record<PerfTest, ToolSpec> = {
  send_bw: { verb: 'SEND', lat: false, conns: ['RC', 'UC', 'UD'], iters: 1000 },
  write_bw: { verb: 'WRITE', lat: false, conns: ['RC', 'UC'], iters: 5000 },
  read_bw: { verb: 'READ', lat: false, conns: ['RC'], iters: 1000 },
  atomic_bw: { verb: 'ATOMIC', lat: false, conns: ['RC'], iters: 1000 },
  send_lat: { verb: 'SEND', lat: true, conns: ['RC', 'UC', 'UD'], iters: 1000 },
  write_lat: { verb: 'WRITE', lat: true, conns: ['RC', 'UC'], iters: 1000 },
  read_lat: { verb: 'READ', lat: true, conns: ['RC'], iters: 1000 },
  atomic_lat: { verb: 'ATOMIC', lat: true, conns: ['RC'], iters: 1000 },
};

const VERSION = '6.06';
const LINE = '---------------------------------------------------------------------------------------';
/** -a runs sizes 2^1 .. 2^23 (perftest's MAX_SIZE 8 MiB); UD stops at the MTU. */
const MAX_SIZE_LOG2 = 23;

const SPECS: OptSpec[] = [
  { short: 'd', long: 'ib-dev', arg: true },
  { short: 'i', long: 'ib-port', arg: true },
  { short: 'p', long: 'port', arg: true },
  { short: 's', long: 'size', arg: true },
  { short: 'n', long: 'iters', arg: true },
  { short: 'D', long: 'duration', arg: true },
  { short: 'a', long: 'all', arg: false },
  { short: 'q', long: 'qp', arg: true },
  { short: 't', long: 'tx-depth', arg: true },
  { short: 'm', long: 'mtu', arg: true },
  { short: 'x', long: 'gid-index', arg: true },
  { short: 'c', long: 'connection', arg: true },
  { short: 'R', long: 'rdma_cm', arg: false },
  { short: 'F', long: 'CPU-freq', arg: false },
  { short: 'b', long: 'bidirectional', arg: false },
  { short: 'A', long: 'atomic_type', arg: true },
  { long: 'report_gbits', arg: false },
  { long: 'output', arg: true },
  { short: 'e', long: 'events', arg: false },
  { short: 'o', long: 'outs', arg: true },
  { short: 'Q', long: 'cq-mod', arg: true },
  { short: 'I', long: 'inline_size', arg: true },
  { short: 'u', long: 'qp-timeout', arg: true },
  { short: 'r', long: 'rx-depth', arg: true },
  { short: 'h', long: 'help', arg: false },
  { short: 'V', long: 'version', arg: false },
  { short: 'l', long: 'post_list', arg: true },
  { short: 'N', long: 'noPeak', arg: false },
  { short: 'S', long: 'sl', arg: true },
  { short: 'T', long: 'tos', arg: true },
  { short: 'z', long: 'com_rdma_cm', arg: false },
  { long: 'comm_rdma_cm', arg: false },
  { long: 'source_ip', arg: true },
  { long: 'retry_count', arg: true },
  { short: 'U', long: 'report-unsorted', arg: false },
  { short: 'H', long: 'report-histogram', arg: false },
  { long: 'busy_poll', arg: false },
];

/** printf("%#0Nx"): zero prints without the 0x prefix. */
const alt = (v: number | bigint, width: number): string => (v === 0 || v === 0n ? '0'.repeat(width) : '0x' + v.toString(16).padStart(width - 2, '0'));
const gidLine = (g: Gid): string => ' GID: ' + [...g].map((b) => String(b).padStart(2, '0')).join(':');

function usage(tool: string, spec: ToolSpec): string {
  return `Usage:
  ${tool}            start a server and wait for connection
  ${tool} <host>     connect to server at <host>

Options:
  -a, --all  Run sizes from 2 till 2^23
  -c, --connection=<${spec.conns.join('/')}>  Connection type ${spec.conns.join('/')} (default RC)
  -d, --ib-dev=<dev>  Use IB device <dev> (default first device found)
  -D, --duration  Run test for a customized period of seconds
  -F, --CPU-freq  Do not show a warning even if cpufreq_ondemand module is loaded
  -i, --ib-port=<port>  Use port <port> of IB device (default 1)
  -m, --mtu=<mtu>  MTU size : 256 - 4096 (default port mtu)
  -n, --iters=<iters>  Number of exchanges (at least 5, default ${spec.iters})
  -p, --port=<port>  Listen on/connect to port <port> (default 18515)
${spec.lat ? '' : "  -q, --qp=<num of qp's>  Num of qp's(default 1)\n"}${spec.verb === 'SEND' ? '  -r, --rx-depth=<dep>  Rx queue size (default 512)\n' : ''}  -s, --size=<size>  Size of message to exchange (default ${spec.lat ? 2 : 65536})
  -t, --tx-depth=<dep>  Size of tx queue (default ${spec.lat ? 1 : 128})
  -x, --gid-index=<index>  Test uses GID with GID index
  -T, --tos=<tos value>  Set <tos_value> as the traffic class of the QPs (IPv4 TOS; applied with the native addon)
${spec.verb === 'ATOMIC' ? '  -A, --atomic_type=<type>  Type of atomic operation: CMP_AND_SWAP or FETCH_AND_ADD (default FETCH_AND_ADD)\n' : ''}${spec.verb === 'READ' || spec.verb === 'ATOMIC' ? '  -o, --outs=<num>  Number of outstanding read/atomic requests\n' : ''}${spec.lat ? '' : '  -Q, --cq-mod  Generate CQE only after <--cq-mod> completion\n'}  -u, --qp-timeout=<timeout>  QP timeout, timeout value is 4 usec * 2 ^(timeout), default 14
  -R, --rdma_cm  Connect QPs with rdma_cm and run test on those QPs
  -z, --comm_rdma_cm  Communicate with rdma_cm module to exchange data - use regular QPs
      --source_ip  Source IP of the interface used for connection establishment (with -R / -z: default the device's address)
      --retry_count=<value>  Set retry count value in rdma_cm mode
  --output=<units>  Set verbosity output level: bandwidth , message_rate, latency
${spec.lat ? "      --busy_poll  Spin on the device's receive sockets instead of sleeping until the event loop reports them (trades a core for latency; needs the native addon, else events are used, with a warning)\n" : ''}${spec.lat ? '' : '  --report_gbits  Report Max/Average BW of test in Gbit/sec (instead of MiB/sec)\n'}${spec.lat || spec.verb === 'SEND' ? '' : '  -b, --bidirectional  Measure bidirectional bandwidth (default unidirectional)\n'}
 Not available in softroce: -b for SEND and latency tests.
`;
}

export async function perftest(
  test: PerfTest,
  argv: string[],
  out: (s: string) => void = (s) => process.stdout.write(s + '\n'),
  err: (s: string) => void = (s) => process.stderr.write(s + '\n'),
): Promise<number> {
  const tool = `ib_${test}`;
  const spec = TOOLS[test];
  const lat = spec.lat;
  let o;
  try {
    o = parseArgs(argv, SPECS);
  } catch (e) {
    err(`${tool}: ${(e as Error).message}`);
    err(usage(tool, spec));
    return 1;
  }
  if (o.opts.has('help')) {
    out(usage(tool, spec));
    return 0;
  }
  if (o.opts.has('version')) {
    out(`Version: ${VERSION}`);
    return 0;
  }
  let size: number,
    iters: number,
    port: number,
    ibPort: number,
    txDepth: number,
    rxDepth: number,
    gidx: number,
    cqMod: number,
    outs: number,
    timeout: number,
    numQps: number,
    retryCount: number;
  let duration = 0,
    tos = 0;
  let mtuOpt: number | undefined;
  try {
    size = toInt(o.opts.get('size'), 'size', spec.verb === 'ATOMIC' ? 8 : lat ? 2 : 65536);
    iters = toInt(o.opts.get('iters'), 'iters', spec.iters);
    port = toInt(o.opts.get('port'), 'port', 18515);
    ibPort = toInt(o.opts.get('ib-port'), 'ib-port', 1);
    txDepth = toInt(o.opts.get('tx-depth'), 'tx-depth', lat ? 1 : 128);
    rxDepth = toInt(o.opts.get('rx-depth'), 'rx-depth', 512);
    gidx = toInt(o.opts.get('gid-index'), 'gid-index', -1);
    cqMod = toInt(o.opts.get('cq-mod'), 'cq-mod', 100);
    outs = toInt(o.opts.get('outs'), 'outs', 128);
    timeout = toInt(o.opts.get('qp-timeout'), 'qp-timeout', 14);
    numQps = toInt(o.opts.get('qp'), 'qp', 1);
    if (o.opts.has('duration')) duration = toInt(o.opts.get('duration'), 'duration', 5);
    if (o.opts.has('mtu')) mtuOpt = toInt(o.opts.get('mtu'), 'mtu', 1024);
    tos = toInt(o.opts.get('tos'), 'tos', 0);
    retryCount = toInt(o.opts.get('retry_count'), 'retry_count', 7);
  } catch (e) {
    err(`${tool}: ${(e as Error).message}`);
    return 1;
  }
  const conn = String(o.opts.get('connection') ?? 'RC').toUpperCase() as ConnType;
  // Checks in the order and words of perftest's parser.
  if (!spec.conns.includes(conn)) {
    err(` Unsupported connection type ${conn} for ${tool} (supported: ${spec.conns.join(', ')})`);
    return 1;
  }
  // -R: the data QPs are rdma_cm's and the exchange runs over rdma_cm (perftest's work_rdma_cm, which
  // turns on use_rdma_cm); -z: only the exchange does (use_rdma_cm).
  const workCm = o.opts.has('rdma_cm');
  const useCm = workCm || o.opts.has('com_rdma_cm') || o.opts.has('comm_rdma_cm');
  if (workCm && conn === 'UC') {
    out(LINE);
    out(' UC is not supported in librdmacm');
    return 1;
  }
  if (retryCount < 0 || retryCount > 7) {
    err(' Retry Count must be between 0 and 7');
    return 1;
  }
  const tosGiven = o.opts.has('tos');
  const sourceIp = o.opts.get('source_ip');
  const source = typeof sourceIp === 'string' ? sourceIp : undefined;
  const duplex = o.opts.has('bidirectional');
  if (duplex && (lat || spec.verb === 'SEND')) {
    err(`${tool}: -b/--bidirectional is not supported by softroce's ${tool} (only ib_write_bw, ib_read_bw, ib_atomic_bw)`);
    return 1;
  }
  const busy = o.opts.has('busy_poll');
  // Latency tests: round trips V8 compiles the loop on, on QPs of our own (perftest-warmup.ts). Read
  // now, at the start, as the rest of the options.
  let warmN = 0;
  try {
    if (lat) warmN = warmupIters();
  } catch (e) {
    err(`${tool}: ${(e as Error).message}`);
    return 1;
  }
  if (busy && !lat) {
    err(`${tool}: --busy_poll is for the latency tests (ib_send_lat, ib_write_lat, ib_read_lat, ib_atomic_lat)`);
    return 1;
  }
  if (iters < 5 && !duration) {
    err(' Iteration num must be at least 5');
    return 1;
  }
  if (duration < 0) {
    err(' Duration must be positive');
    return 1;
  }
  if (numQps < 1 || numQps > 16384) {
    err(' Number of QPs must be between 1 and 16384');
    return 1;
  }
  if (lat && numQps !== 1) {
    err(' Latency tests use one QP');
    return 1;
  }
  if (txDepth < 1 || rxDepth < 1 || cqMod < 1) {
    err(' TX depth, RX depth and CQ moderation must be positive');
    return 1;
  }
  if (tos < 0 || tos > 255) {
    err(' TOS must be between 0 and 255');
    return 1;
  }
  if (size < 1 || size > 1 << MAX_SIZE_LOG2) {
    err(` Message size must be between 1 and ${1 << MAX_SIZE_LOG2}`);
    return 1;
  }
  const all = o.opts.has('all');
  if (spec.verb === 'ATOMIC') size = 8;
  const atomicType = String(o.opts.get('atomic_type') ?? 'FETCH_AND_ADD');
  if (atomicType !== 'FETCH_AND_ADD' && atomicType !== 'CMP_AND_SWAP') {
    err(` Invalid atomic type ${atomicType} (CMP_AND_SWAP or FETCH_AND_ADD)`);
    return 1;
  }
  const atomicCmp = atomicType === 'CMP_AND_SWAP';
  const gbits = o.opts.has('report_gbits');
  const output = o.opts.get('output');
  if (output !== undefined && !['bandwidth', 'message_rate', 'latency'].includes(String(output))) {
    err(` Invalid output type ${String(output)} (bandwidth, message_rate or latency)`);
    return 1;
  }
  const full = output === undefined;
  const say = full ? out : (): void => undefined;
  const servername = o.positional[0];
  const client = !!servername;
  // Long sweeps show where they are on a terminal (stderr, one rewritten line).
  const tty = full && (all || duration > 0) && process.stderr.isTTY === true;
  const progress = tty
    ? (s: string): void => {
        process.stderr.write(`\r\x1b[K ${s}`);
      }
    : null;
  const clearProgress = (): void => {
    if (tty) process.stderr.write('\r\x1b[K');
  };

  // bonds too (SOFTROCE_BONDS): opening one starts its control socket for softroce teamdctl
  const list = cliDeviceList();
  const devName = o.opts.get('ib-dev');
  const desc = typeof devName === 'string' ? list.find((d) => d.name === devName) : list[0];
  if (!desc) {
    err(' Unable to find the Infiniband/RoCE device');
    return 1;
  }
  let dev: Device;
  try {
    dev = await openCliDevice(desc.name);
  } catch (e) {
    err(` Couldn't get context for the device: ${(e as Error).message}`);
    return 1;
  }
  let c: Conn | CmConn | null = null;
  let cmData: CmData | null = null;
  try {
    return await run(dev);
  } catch (e) {
    err(`${tool}: ${(e as Error).message}`);
    (c as Conn | CmConn | null)?.destroy();
    return 1;
  } finally {
    clearProgress();
    (cmData as CmData | null)?.close();
    if ((c as Conn | CmConn | null) instanceof CmConn) (c as unknown as CmConn).destroy();
    await dev.close();
  }

  async function run(d: Device): Promise<number> {
    const pa = d.queryPort(ibPort);
    const rdAtomic = Math.min(outs, d.attr.maxQpRdAtom);
    // ctx_connect: RTR / RTS as perftest sets them (hop limit 0xFF in the AV), for RC and UC.
    const toRtrRts = (qp: Qp, r: PerfDest, sqPsn: number, mtu: Mtu, sgidIndex: number): void => {
      qp.toRtr({
        remote: { qpn: r.qpn, gid: r.gid },
        pathMtu: mtu,
        rqPsn: r.psn,
        sgidIndex,
        hopLimit: 0xff,
        trafficClass: tos,
        ...(conn === 'RC' ? { maxDestRdAtomic: rdAtomic, minRnrTimer: 12 } : {}),
      });
      if (conn === 'RC') qp.toRts({ sqPsn, timeout, retryCnt: 7, rnrRetry: 7, maxRdAtomic: Math.max(1, Math.min(rdAtomic, r.outReads || 1)) });
      else qp.toRts({ sqPsn });
    };
    // ctx_set_max_inline (from check_link, before the exchange): READ and atomics set the inline size to 0,
    // which on a device perftest does not know (rxe, or this one) is "not the default", so it says so.
    if (spec.verb === 'READ' || spec.verb === 'ATOMIC') {
      out(LINE);
      err('Device not recognized to implement inline feature. Disabling it');
    }
    if (full && !client) {
      out('\n************************************');
      out('* Waiting for client to connect... *');
      out('************************************');
    }
    if (useCm) {
      const co = { device: d, port, retryCount, err, ...(source !== undefined ? { source } : {}) };
      const cc = client ? await CmConn.connect(servername, co) : await CmConn.accept(co);
      if (cc === null) {
        // establish_connection's and main's words
        err(client ? ' Unable to perform rdma_client function' : ' Unable to perform rdma_server function');
        err(' Unable to init the socket connection');
        return 1;
      }
      c = cc;
    } else c = client ? await Conn.connect(servername, port) : await Conn.accept(port);
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
      if (!isMtu(mtuOpt) || mtuOpt > pa.activeMtu) {
        err(` Invalid MTU ${mtuOpt}; the port's active MTU is ${pa.activeMtu}`);
        c.destroy();
        return 1;
      }
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
    if (conn === 'UD' && size > mtu) {
      say(` Max msg size in UD is MTU ${mtu}\n Changing to this MTU`);
      size = mtu;
    }
    const sizes = !all
      ? [size]
      : spec.verb === 'ATOMIC'
        ? [8]
        : Array.from({ length: MAX_SIZE_LOG2 }, (_, i) => 2 ** (i + 1)).filter((s) => conn !== 'UD' || s <= mtu);
    const maxSize = Math.max(...sizes);

    // Resources (perftest ctx_init): a buffer of 2 regions per QP, each of
    // max(size, cycle buffer); QP i sends from region i and exposes region
    // q + i (latency tests, where the peer writes into it) or region i.
    txDepth = Math.max(1, Math.min(txDepth, duration ? txDepth : iters));
    cqMod = Math.max(1, Math.min(cqMod, txDepth));
    if (spec.verb === 'SEND') rxDepth = Math.max(1, Math.min(rxDepth, duration ? rxDepth : iters));
    const pd = d.allocPd();
    const region = Math.max(maxSize + (conn === 'UD' ? 40 : 0), cycle);
    const buf = Buffer.alloc(2 * numQps * region);
    const mr = pd.regMr(buf, ['LOCAL_WRITE', 'REMOTE_WRITE', 'REMOTE_READ', 'REMOTE_ATOMIC']);
    const sendCq = d.createCq({ depth: txDepth * numQps + 16 });
    const recvCq = spec.verb === 'SEND' ? d.createCq({ depth: rxDepth * numQps + 16 }) : sendCq;
    const zero = new Uint8Array(16);
    if (gidx < 0) gidx = d.defaultSgidIndex(ibPort);
    const gid = d.gidTable(ibPort).find((g) => g.index === gidx)?.gid ?? zero;
    const access = conn === 'RC' ? (['REMOTE_WRITE', 'REMOTE_READ', 'REMOTE_ATOMIC', 'LOCAL_WRITE'] as const) : (['REMOTE_WRITE', 'LOCAL_WRITE'] as const);
    const qps: Qp[] = [];
    const my: PerfDest[] = [];
    const cap = { maxSendWr: txDepth, maxRecvWr: spec.verb === 'SEND' ? rxDepth : 1 };
    if (c instanceof CmConn) c.gidIndex = gidx;
    if (workCm) {
      // create_rdma_cm_connection: a handshake of the still empty address record, the data QPs on
      // rdma_cm ids, one more handshake.
      const cc = c as CmConn;
      const none: PerfDest = { lid: 0, outReads: 0, qpn: 0, psn: 0, rkey: 0, vaddr: 0n, gid: zero, srqn: 0 };
      const dOpts = {
        device: d,
        ud: conn === 'UD',
        udQpnExchange: conn === 'UD' && lat,
        mr,
        port,
        numQps,
        pd,
        sendCq,
        recvCq,
        cap,
        rdAtomic: spec.verb === 'READ' || spec.verb === 'ATOMIC' ? rdAtomic : 0,
        retryCount,
        tos: tosGiven ? tos : null,
        err,
        ...(source !== undefined ? { source } : {}),
      };
      let ok: boolean;
      if (client) {
        await cc.handshake(none, 0);
        cmData = await CmData.connect(servername, dOpts);
        ok = cmData !== null;
      } else {
        cmData = await CmData.listen(dOpts);
        ok = cmData !== null;
        if (cmData !== null) {
          await cc.handshake(none, 0);
          ok = await cmData.serve(dOpts);
        }
      }
      if (!ok) {
        err('Failed to create RDMA CM connection.');
        err('Failed to create RDMA CM connection with resources.');
        return 1;
      }
      await cc.handshake(none, 0);
    }
    for (let i = 0; i < numQps; i++) {
      let qp: Qp;
      if (cmData !== null) qp = cmData.qps[i]!;
      else {
        qp = pd.createQp({ type: conn, sendCq, recvCq, cap });
        if (conn === 'UD') qp.toInit({ port: ibPort, qkey: UD_QKEY });
        else qp.toInit({ port: ibPort, accessFlags: [...access] });
      }
      qps.push(qp);
      const exposed = lat ? numQps + i : i;
      my.push({
        lid: 0,
        outReads: rdAtomic,
        qpn: qp.qpn,
        psn: randomInt(0, 0x1000000),
        rkey: mr.rkey,
        vaddr: mr.addr + BigInt(exposed * region),
        gid,
        srqn: 0,
      });
    }

    // The warm-up: after the run's own QPs exist (objects made later would change the shapes the
    // compiled code expects), before they are connected; the peer sees nothing of it.
    let warm: Warmup | null = null;
    // UD has no connected pair to warm: its run starts cold.
    if (warmN > 0 && conn !== 'UD') {
      const sgidIndex = gidx < 0 ? d.defaultSgidIndex(ibPort) : gidx;
      warm = await warmUp({
        device: d,
        verb: spec.verb,
        conn: conn === 'UC' ? 'UC' : 'RC',
        port: ibPort,
        sgidIndex,
        size,
        iters: warmN,
        outReads: rdAtomic,
        access: conn === 'RC' ? ['REMOTE_WRITE', 'REMOTE_READ', 'REMOTE_ATOMIC', 'LOCAL_WRITE'] : ['REMOTE_WRITE', 'LOCAL_WRITE'],
        connect: (qp, r, sqPsn) => toRtrRts(qp, r, sqPsn, mtu, sgidIndex),
      });
      if (typeof warm.result === 'string') err(`${tool}: warm-up skipped: ${warm.result}`);
    }

    const title = spec.verb === 'SEND' ? 'Send' : spec.verb === 'WRITE' ? 'RDMA_Write' : spec.verb === 'READ' ? 'RDMA_Read' : `Atomic ${atomicType}`;
    say(LINE);
    say(`                    ${title} ${lat ? 'Latency' : 'BW'} Test`);
    say(` Dual-port       : OFF\t\tDevice         : ${d.name}`);
    say(` Number of qps   : ${numQps}\t\tTransport type : IB`);
    say(` Connection type : ${conn}\t\tUsing SRQ      : OFF`);
    // perftest_parameters.c prints ON unless --disable_pcie_relaxed; write_lat.c sets it off (its polling on
    // memory must not see writes out of order). The lab's 6.06 build has HAVE_RO.
    say(` PCIe relax order: ${spec.verb === 'WRITE' && lat ? 'OFF' : 'ON'}`);
    say(` ibv_wr* API     : OFF`);
    // perftest 6.06's ctx_print_test_info: TX depth on the client (or -b), RX depth (SEND) on the server
    // (or -b), latency tests included, whatever the exchange (the lab's -R captures show it; the TCP
    // banner is the same function).
    if (client || duplex) say(` TX depth        : ${txDepth}`);
    if (spec.verb === 'SEND' && (!client || duplex)) say(` RX depth        : ${rxDepth}`);
    if (!lat) say(` CQ Moderation   : ${cqMod}`);
    say(` Mtu             : ${mtu}[B]`);
    say(` Link type       : Ethernet`);
    say(` GID index       : ${gidx}`);
    if (spec.verb === 'READ' || spec.verb === 'ATOMIC') say(` Outstand reads  : ${rdAtomic}`);
    else say(` Max inline data : 0[B]`);
    say(` rdma_cm QPs\t : ${workCm ? 'ON' : 'OFF'}`);
    // ctx_print_test_info: with -R the server's banner asks for the client only now, after it connected.
    say(` Data ex. method : ${useCm ? 'rdma_cm' : 'Ethernet'}${workCm && tosGiven ? ` \tTOS    : ${tos}` : ''}`);
    if (workCm && !client) {
      say(LINE);
      say(' Waiting for client rdma_cm QP to connect');
      say(' Please run the same command with the IB/RoCE interface IP');
    }
    say(LINE);
    // With rdma_cm the exchange's parameters (create_comm_struct) have verb SEND: the address lines
    // show no OUT, RKey or VAddr whatever the test.
    const shown: Verb = useCm ? 'SEND' : spec.verb;
    const addrLine = (which: string, x: PerfDest): string => {
      let s = ` ${which} address: LID ${alt(x.lid, 4)} QPN ${alt(x.qpn, 6)} PSN ${alt(x.psn, 6)}`;
      if (shown === 'READ' || shown === 'ATOMIC') s += ` OUT ${alt(x.outReads, 4)}`;
      if (shown !== 'SEND') s += ` RKey ${alt(x.rkey, 8)} VAddr ${alt(x.vaddr, 16)}`;
      return s;
    };
    for (const m of my) {
      say(addrLine('local', m));
      say(gidLine(m.gid));
    }

    // ctx_connect: RTR / RTS as perftest sets them (hop limit 0xFF in the AV).
    const rem: PerfDest[] = [];
    const ahs: Ah[] = [];
    const connect = (): void => {
      if (workCm) {
        // The CM connected them; a UD client sends with the SIDR_REP's AH, a UD server with one for the client's GID.
        if (conn === 'UD')
          rem.forEach((r, i) => ahs.push(cmData?.ud[i]?.ah ?? pd.createAh({ gid: r.gid, port: ibPort, sgidIndex: gidx, hopLimit: 0xff, trafficClass: tos })));
        return;
      }
      qps.forEach((qp, i) => {
        const r = rem[i]!;
        if (conn === 'UD') {
          qp.toRtr().toRts({ sqPsn: my[i]!.psn });
          ahs.push(pd.createAh({ gid: r.gid, port: ibPort, sgidIndex: gidx, hopLimit: 0xff, trafficClass: tos }));
          return;
        }
        toRtrRts(qp, r, my[i]!.psn, mtu, gidx);
      });
    };
    const hs = (i = 0): Promise<PerfDest> => c!.handshake(my[i]!);
    if (lat) {
      rem.push(await hs());
      connect();
      // perftest 6.06 latency tests: 4 handshakes before the run (SEND: 3, and one per size once its receives are posted).
      const more = spec.verb === 'SEND' ? 2 : 3;
      for (let k = 0; k < more; k++) await hs();
    } else {
      for (let i = 0; i < numQps; i++) rem.push(await hs(i));
      connect();
      await hs();
      for (let i = 0; i < numQps; i++) await hs(i);
    }
    for (const r of rem) {
      say(addrLine('remote', r));
      say(gidLine(r.gid));
    }
    say(LINE);

    // --busy_poll where the device cannot (no addon): events, said once on stderr (the output stays perftest's).
    const canBusy = busy && d.canBusyPoll;
    if (busy && !canBusy) err(`${tool}: --busy_poll: device ${d.name} cannot busy-poll (backend ${d.backendName}): using events`);
    const ctx: RunCtx = runCtx({
      device: d,
      verb: spec.verb,
      conn,
      qps,
      rem,
      ahs,
      mr,
      region,
      sendCq,
      recvCq,
      txDepth,
      rxDepth,
      cqMod,
      atomicCmp,
      progress,
      busy: canBusy,
    });
    if (workCm) ctx.qkey = RDMA_UDP_QKEY; // rdma_cm's UD QPs: the Q_Key the SIDR_REP gives (cma_node remote_qkey)
    // If a timeout kills us mid-run, say where each QP stood (the interop suite shows stderr).
    process.once('SIGTERM', () => {
      for (const q of qps) {
        process.stderr.write(
          `stuck: qp 0x${q.qpn.toString(16)} ${q.state} sq ${q.sqHead}/${q.sqTail} req.psn 0x${q.req.psn.toString(16)} max 0x${q.req.maxPsn.toString(16)} comp.psn 0x${q.comp.psn.toString(16)} resp.psn 0x${q.resp.psn.toString(16)} window ${q.req.window} reads ${q.resp.reads.length} backlog ${q.resp.backlog.length} stash ${q.resp.stash.size}\n`,
        );
        // The roles' last decisions (qp.trace()): what each was doing when it stopped.
        for (const l of formatTrace(q.trace().slice(-STUCK_TRACE_LINES))) process.stderr.write(`stuck: trace qp 0x${q.qpn.toString(16)} ${l}\n`);
      }
      process.stderr.write(
        `stuck: counters ${Object.entries(d.counters())
          .filter(([, v]) => v > 0)
          .map(([k, v]) => `${k}=${v}`)
          .join(' ')}\n`,
      );
      process.exit(124);
    });
    const limit: Limit = duration ? { secs: duration } : { iters };
    // perftest's RESULT_FMT says MB/sec for the MiB it computes (1 MB = 2^20 bytes there)
    const unit = gbits ? 'Gb/sec' : 'MB/sec';
    const bwHeader = ` #bytes     #iterations    BW peak[${unit}]    BW average[${unit}]   MsgRate[Mpps]`;
    const latHeader = duration
      ? ' #bytes        #iterations       t_avg[usec]    tps average'
      : ' #bytes #iterations    t_min[usec]    t_max[usec]  t_typical[usec]    t_avg[usec]    t_stdev[usec]   99% percentile[usec]   99.9% percentile[usec] ';
    let last: BwReport | null = null;
    let lastLat: number[] = [];
    const mem = MemStats.fromEnv();
    mem?.start();

    if (lat) {
      const passive = !client && (spec.verb === 'READ' || spec.verb === 'ATOMIC');
      if (!passive) {
        say(latHeader);
        const recvPosted = new Array<number>(numQps).fill(0);
        for (const s of sizes) {
          if (spec.verb === 'SEND') {
            // The receives for this size are in place before the peer may send (perftest's sync).
            fillRecvs({ ...ctx, rxDepth: Math.min(rxDepth, 64) }, recvPosted);
            await hs();
          }
          const t = await latency(ctx, s, limit, client);
          clearProgress();
          if (typeof t === 'string') {
            err(t);
            return 1;
          }
          lastLat = t;
          say(duration ? latDurRow(s, t) : latRow(s, iters, t));
        }
      }
    } else if (duplex) {
      // perftest -b (write_bw.c): both sides run the client loop; a handshake before each size, one
      // after it (perftest >= 4.6) with -a, then both reports are exchanged and their sum printed.
      say(bwHeader);
      for (const s of sizes) {
        await hs();
        const r = await bwClient(ctx, s, limit);
        clearProgress();
        if (typeof r === 'string') {
          err(r);
          return 1;
        }
        if (all) await hs();
        if (duration) {
          last = r;
          say(bwRow(r.size, r.iters, r.peak, r.avg, r.rate, gbits));
          continue;
        }
        const theirs = await c.xchgReport(r);
        last = { size: r.size, iters: r.iters, peak: r.peak + theirs.peak, avg: r.avg + theirs.avg, rate: r.rate + theirs.rate };
        say(bwRow(last.size, last.iters, last.peak, last.avg, last.rate, gbits));
      }
    } else if (client || spec.verb === 'SEND') {
      say(bwHeader);
      const recvPosted = new Array<number>(numQps).fill(0);
      for (const s of sizes) {
        if (spec.verb === 'SEND') {
          if (!client) fillRecvs(ctx, recvPosted);
          await hs();
        }
        const r = client ? await bwClient(ctx, s, limit) : await bwServer(ctx, s, limit);
        clearProgress();
        if (typeof r === 'string') {
          err(r);
          return 1;
        }
        last = r;
        say(bwRow(r.size, r.iters, r.peak, r.avg, r.rate, gbits));
        if (spec.verb === 'SEND' && all) await hs();
      }
    } else {
      say(bwHeader); // the row comes with the client's report
    }
    // A WRITE/READ/ATOMIC BW server's run is its wait for the client's report (below).
    const passiveBw = !lat && !client && !duplex && spec.verb !== 'SEND';
    if (mem && !passiveBw) err(mem.stop());
    if (lat || client || duplex || spec.verb === 'SEND') say(LINE);
    warm?.close();
    // WRITE/READ/ATOMIC BW: the client hands its report to the waiting server, which prints it.
    if (!lat && !duplex && spec.verb !== 'SEND') {
      await hs();
      if (mem && passiveBw) err(mem.stop());
      const mine: BwReport = last ?? { size, iters, peak: 0, avg: 0, rate: 0 };
      const theirs = await c.xchgReport(mine);
      if (!client) {
        last = theirs;
        say(bwRow(theirs.size, theirs.iters, theirs.peak, theirs.avg, theirs.rate, gbits));
        say(LINE);
      }
    }
    // write_lat.c (6.06) ends without ctx_close_connection: with -R a real peer goes straight to
    // rdma_disconnect on the data ids and waits for our DREP, so waiting for its last handshake here would
    // leave both sides waiting (the lab's real client against our server did). Over TCP the handshake
    // just meets the closed socket.
    if (!(c instanceof CmConn && spec.verb === 'WRITE' && lat)) await c.close(my[0]!);
    if (cmData !== null) await cmData.teardown();
    cmData = null;
    if (c instanceof CmConn) await c.shutdown();
    if (!full) {
      if (output === 'latency' && lastLat.length) out(stats(lastLat).avg.toFixed(2));
      else if (output === 'bandwidth' && last) out((gbits ? (last.avg * 1048576 * 8) / 1e9 : last.avg).toFixed(2));
      else if (output === 'message_rate' && last) out(last.rate.toFixed(6));
    }
    if (process.env['SOFTROCE_COUNTERS'] === '1') {
      err(
        ` counters: ${Object.entries(d.counters(ibPort))
          .filter(([, v]) => v > 0)
          .map(([k, v]) => `${k}=${v}`)
          .join(' ')}`,
      );
      const bs = (d.ports[ibPort - 1]?.link as { batchStats?: Record<string, number> } | undefined)?.batchStats;
      if (bs)
        err(
          ` link: ${Object.entries(bs)
            .filter(([, v]) => v > 0)
            .map(([k, v]) => `${k}=${v}`)
            .join(' ')}`,
        );
    }
    return 0;
  }
}

/** BW columns as perftest prints them (MiB = 2^20 bytes). */
function bwRow(size: number, iters: number, peak: number, avg: number, rate: number, gbits: boolean): string {
  const f = (x: number): string => (gbits ? (x * 1048576 * 8) / 1e9 : x).toFixed(2).padEnd(7);
  return ` ${String(size).padEnd(7)}    ${String(iters).padEnd(7)}          ${f(peak)}            ${f(avg)}  \t\t   ${rate.toFixed(6)}`;
}

function stats(t: readonly number[]): { s: number[]; avg: number; sd: number } {
  const s = [...t].sort((a, b) => a - b);
  const avg = s.reduce((a, b) => a + b, 0) / Math.max(1, s.length);
  const sd = Math.sqrt(s.reduce((a, b) => a + (b - avg) ** 2, 0) / Math.max(1, s.length));
  return { s, avg, sd };
}

function latRow(size: number, iters: number, t: readonly number[]): string {
  const { s, avg, sd } = stats(t);
  if (s.length === 0) return ` ${String(size).padEnd(7)} ${String(iters).padEnd(7)}      (no samples)`;
  const pct = (p: number): number => s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)]!;
  const f = (x: number): string => x.toFixed(2);
  return ` ${String(size).padEnd(7)} ${String(iters).padEnd(7)}      ${f(s[0]!).padEnd(7)}        ${f(s.at(-1)!).padEnd(7)}      ${f(s[Math.floor(s.length / 2)]!)}   \t       ${f(avg)}      \t${f(sd)} \t\t${f(pct(99))} \t\t${f(pct(99.9))}`;
}

/** Duration runs print the count, the average and transactions per second. */
function latDurRow(size: number, t: readonly number[]): string {
  const { avg } = stats(t);
  return ` ${String(size).padEnd(7)}       ${String(t.length).padEnd(7)}          ${avg.toFixed(2).padEnd(7)}        ${(avg > 0 ? 1e6 / avg : 0).toFixed(0)}`;
}

export function perftestMain(test: PerfTest): Promise<void> {
  return runTool((argv) => perftest(test, argv));
}
export { UsageError };
