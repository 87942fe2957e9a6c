/**
 * rping, as rdma-core's librdmacm/examples/rping.c: a ping over one RC connection per client where
 * every iteration is (client) SEND rping_rdma_info{start buf} -> (server) RDMA READ of it -> "go
 * ahead" SEND -> (client) SEND rping_rdma_info{rdma buf} -> (server) RDMA WRITE back -> "go ahead".
 * rping_rdma_info is 16 bytes big-endian (u64 buf, u32 rkey, u32 size). Same options, defaults
 * (port 7174, 64 bytes, count unlimited), conn params (both sides responder_resources 1,
 * initiator_depth 1, retry 7, rnr 7), QP sizes (SQ 16, RQ 2, one CQ of 32), the state numbers the
 * C tool prints (IDLE 1 ... DISCONNECTED 10, ERROR 11), printed lines and exit statuses.
 */
import './epipe.js';
import { lookup } from 'node:dns/promises';
import { isIP } from 'node:net';
import { createEventChannel, type EventChannel, type CmEvent } from '../cm/event-channel.js';
import { createId, type CmId } from '../cm/cm-id.js';
import type { Mr } from '../verbs/mr.js';
import type { Cq } from '../verbs/cq.js';
import { Wc, WC_STATUS } from '../verbs/types.js';
import { parseArgs, runTool, toInt, UsageError, type OptSpec } from './args.js';

const SPECS: OptSpec[] = [
  { short: 'a', long: 'addr', arg: true },
  { short: 'I', long: 'bind', arg: true },
  { short: 'P', long: 'persistent', arg: false },
  { short: 'p', long: 'port', arg: true },
  { short: 'C', long: 'count', arg: true },
  { short: 'S', long: 'size', arg: true },
  { short: 't', long: 'tos', arg: true },
  { short: 's', long: 'server', arg: false },
  { short: 'c', long: 'client', arg: false },
  { short: 'v', long: 'verbose', arg: false },
  { short: 'V', long: 'validate', arg: false },
  { short: 'd', long: 'debug', arg: false },
  { short: 'q', long: 'self-qp', arg: false },
  { short: 'm', long: 'm', arg: false },
];

export const RPING_USAGE = `rping -s [-vVd] [-S size] [-C count] [-a addr] [-p port]
rping -c [-vVd] [-S size] [-C count] [-I addr] -a addr [-p port]
\t-c\t\tclient side
\t-I\t\tSource address to bind to for client.
\t-s\t\tserver side.  To bind to any address with IPv6 use -a ::0
\t-v\t\tdisplay ping data to stdout
\t-V\t\tvalidate ping data
\t-d\t\tdebug printfs
\t-S size \tping data size
\t-C count\tping count times
\t-a addr\t\taddress
\t-p port\t\tport
\t-P\t\tpersistent server mode allowing multiple connections
\t-q\t\tuse self-created, self-modified QP
`;

/** rping.c's test states: the numbers it prints in "wait for X state N" */
const S = {
  IDLE: 1,
  CONNECT_REQUEST: 2,
  ADDR_RESOLVED: 3,
  ROUTE_RESOLVED: 4,
  CONNECTED: 5,
  RDMA_READ_ADV: 6,
  RDMA_READ_COMPLETE: 7,
  RDMA_WRITE_ADV: 8,
  RDMA_WRITE_COMPLETE: 9,
  DISCONNECTED: 10,
  ERROR: 11,
} as const;

const EINVAL = 22;
const RPING_SQ_DEPTH = 16;
const RPING_BUFSIZE = 64 * 1024;
/**
 * sizeof(stringify(INT_MAX)) + sizeof(RPING_MSG_FMT): the smallest -S rping takes. rping's one-level
 * stringify makes the literal "INT_MAX" (8 bytes with its NUL), not the number, so 8 + 15 = 23: the
 * real tool says "valid range is 23 to 65536" in the lab.
 */
const RPING_MIN_BUFSIZE = 8 + 15;
const INFO_LEN = 16;
const RESOLVE_MS = 2000;

interface Opts {
  verbose: boolean;
  validate: boolean;
  debug: boolean;
  count: number;
  size: number;
  port: number;
  tos: number | null;
  out: (s: string) => void;
  err: (s: string) => void;
}

/** A counting semaphore: rping's cb->sem, posted by the CQ and CM handlers. */
class Sem {
  #n = 0;
  #waiters: (() => void)[] = [];
  post(): void {
    const w = this.#waiters.shift();
    if (w) w();
    else this.#n++;
  }
  wait(): Promise<void> {
    if (this.#n > 0) {
      this.#n--;
      return Promise.resolve();
    }
    return new Promise((res) => this.#waiters.push(res));
  }
}

/** struct rping_cb: one connection's buffers, state and semaphore */
class Cb {
  state: number = S.IDLE;
  /** the state as the handlers left it (read after an await: TypeScript would narrow cb.state) */
  now(): number {
    return this.state;
  }
  readonly sem = new Sem();
  readonly id: CmId;
  readonly o: Opts;
  readonly server: boolean;
  recvMr!: Mr;
  sendMr!: Mr;
  rdmaMr!: Mr;
  startMr: Mr | null = null;
  remoteRkey = 0;
  remoteAddr = 0n;
  remoteLen = 0;
  #cq!: Cq;
  readonly #wc = [new Wc()];

  constructor(id: CmId, o: Opts, server: boolean) {
    this.id = id;
    this.o = o;
    this.server = server;
  }

  /** rping_setup_qp + rping_setup_buffers: one CQ (SQ depth x 2) for both queues, SQ 16, RQ 2 */
  setup(): void {
    const dev = this.id.verbs!;
    const pd = dev.allocPd();
    this.#cq = dev.createCq({ depth: RPING_SQ_DEPTH * 2 });
    this.id.createQp(pd, { sendCq: this.#cq, recvCq: this.#cq, cap: { maxSendWr: RPING_SQ_DEPTH, maxRecvWr: 2, maxSendSge: 1, maxRecvSge: 1 } });
    this.recvMr = pd.regMr(Buffer.alloc(INFO_LEN), ['LOCAL_WRITE']);
    this.sendMr = pd.regMr(Buffer.alloc(INFO_LEN), []);
    this.rdmaMr = pd.regMr(Buffer.alloc(this.o.size), ['LOCAL_WRITE', 'REMOTE_READ', 'REMOTE_WRITE']);
    if (!this.server) this.startMr = pd.regMr(Buffer.alloc(this.o.size), ['LOCAL_WRITE', 'REMOTE_READ', 'REMOTE_WRITE']);
    this.#cq.on('notify', this.#onCq);
    this.#cq.reqNotify();
    this.postRecv();
  }

  postRecv(): void {
    this.id.qp!.postRecv({ wrId: 1, sg: [{ mr: this.recvMr, offset: 0, length: INFO_LEN }] });
  }

  /** the 16-byte go-ahead / rping_rdma_info SEND of send_buf */
  postSendInfo(): void {
    this.id.qp!.postSend({ wrId: 2, opcode: 'SEND', signaled: true, sg: [{ mr: this.sendMr, offset: 0, length: INFO_LEN }] });
  }

  /** rping_format_send: buf address, rkey and size, big-endian */
  formatSend(mr: Mr): void {
    const b = this.sendMr.buffer;
    b.writeBigUInt64BE(mr.addr, 0);
    b.writeUInt32BE(mr.rkey, 8);
    b.writeUInt32BE(this.o.size, 12);
    if (this.o.debug) this.o.out(`RDMA addr ${mr.addr.toString(16)} rkey ${mr.rkey.toString(16)} len ${this.o.size}\n`);
  }

  /** rping_cq_event_handler: every completion moves the state and posts the semaphore */
  readonly #onCq = (): void => {
    if (this.#cq.closed) return;
    const w = this.#wc[0]!;
    while (this.#cq.poll(this.#wc, 1) === 1) {
      if (w.status !== 'SUCCESS') {
        if (w.status === 'WR_FLUSH_ERR') continue;
        this.o.err(`cq completion failed status ${WC_STATUS.indexOf(w.status)}\n`);
        this.state = S.ERROR;
        this.sem.post();
        return;
      }
      switch (w.opcode) {
        case 'SEND':
          break;
        case 'RDMA_WRITE':
          this.state = S.RDMA_WRITE_COMPLETE;
          this.sem.post();
          break;
        case 'RDMA_READ':
          this.state = S.RDMA_READ_COMPLETE;
          this.sem.post();
          break;
        case 'RECV':
          if (w.byteLen !== INFO_LEN) {
            this.o.err(`Received bogus data, size ${w.byteLen}\n`);
            this.state = S.ERROR;
            this.sem.post();
            return;
          }
          if (this.server) {
            const b = this.recvMr.buffer;
            this.remoteAddr = b.readBigUInt64BE(0);
            this.remoteRkey = b.readUInt32BE(8);
            this.remoteLen = b.readUInt32BE(12);
            this.state = this.state <= S.CONNECTED || this.state === S.RDMA_WRITE_COMPLETE ? S.RDMA_READ_ADV : S.RDMA_WRITE_ADV;
          } else {
            this.state = this.state === S.RDMA_READ_ADV ? S.RDMA_WRITE_ADV : S.RDMA_WRITE_COMPLETE;
          }
          this.postRecv();
          this.sem.post();
          break;
        default:
          break;
      }
    }
    this.#cq.reqNotify();
  };

  /** rping_cma_event_handler's share of an event for this id */
  onCm(ev: CmEvent): void {
    switch (ev.event) {
      case 'ESTABLISHED':
        // The channel hands events over a turn later than the CQ's notify: the client's first SEND
        // may have moved the state on already (the kernel delivers ESTABLISHED on the RTU, first).
        if (this.state < S.CONNECTED) this.state = S.CONNECTED;
        this.sem.post();
        break;
      case 'DISCONNECTED':
        this.o.err(`${this.server ? 'server' : 'client'} DISCONNECT EVENT...\n`);
        this.state = S.DISCONNECTED;
        this.sem.post();
        break;
      case 'ADDR_ERROR':
      case 'ROUTE_ERROR':
      case 'CONNECT_ERROR':
      case 'UNREACHABLE':
      case 'REJECTED':
        // rping.c leaves the state alone here (its cm thread then exits with -1): the waiting
        // main thread prints the state it was in, e.g. "wait for CONNECTED state 4" (ROUTE_RESOLVED)
        // after a REJECTED, as the real tool does in the lab.
        this.o.err(`cma event RDMA_CM_EVENT_${ev.event}, error ${ev.status}\n`);
        this.sem.post();
        break;
      case 'DEVICE_REMOVAL':
        this.o.err('cma detected device removal!!!!\n');
        this.state = S.ERROR;
        this.sem.post();
        break;
      default:
        break;
    }
  }

  free(): void {
    const qp = this.id.qp;
    this.#cq?.off('notify', this.#onCq);
    if (qp === null) return;
    const pd = qp.pd;
    this.id.destroyQp();
    for (const m of [this.recvMr, this.sendMr, this.rdmaMr, this.startMr]) m?.close();
    this.#cq.close();
    pd.close();
  }
}

/** rping_test_server: READ the client's buffer, go ahead, WRITE it back to the sink, go ahead */
async function testServer(cb: Cb): Promise<number> {
  const o = cb.o;
  const qp = cb.id.qp!;
  for (;;) {
    await cb.sem.wait();
    if (cb.now() !== S.RDMA_READ_ADV) {
      o.err(`wait for RDMA_READ_ADV state ${cb.now()}\n`);
      return -1;
    }
    qp.postSend({
      wrId: 3,
      opcode: 'RDMA_READ',
      signaled: true,
      remote: { addr: cb.remoteAddr, rkey: cb.remoteRkey },
      sg: [{ mr: cb.rdmaMr, offset: 0, length: Math.min(cb.remoteLen, o.size) }],
    });
    await cb.sem.wait();
    if (cb.now() !== S.RDMA_READ_COMPLETE) {
      o.err(`wait for RDMA_READ_COMPLETE state ${cb.now()}\n`);
      return -1;
    }
    if (o.verbose) o.out(`server ping data: ${cString(cb.rdmaMr.buffer)}\n`);
    cb.postSendInfo();
    await cb.sem.wait();
    if (cb.now() !== S.RDMA_WRITE_ADV) {
      o.err(`wait for RDMA_WRITE_ADV state ${cb.now()}\n`);
      return -1;
    }
    // strlen(rdma_buf) + 1: the string and its NUL
    const len = Math.min(cString(cb.rdmaMr.buffer).length + 1, o.size);
    qp.postSend({
      wrId: 4,
      opcode: 'RDMA_WRITE',
      signaled: true,
      remote: { addr: cb.remoteAddr, rkey: cb.remoteRkey },
      sg: [{ mr: cb.rdmaMr, offset: 0, length: len }],
    });
    await cb.sem.wait();
    if (cb.now() !== S.RDMA_WRITE_COMPLETE) {
      o.err(`wait for RDMA_WRITE_COMPLETE state ${cb.now()}\n`);
      return -1;
    }
    cb.postSendInfo();
  }
}

function cString(b: Buffer): string {
  const z = b.indexOf(0);
  return b.toString('latin1', 0, z < 0 ? b.length : z);
}

/** rping_test_client: "rdma-ping-%d: " then A..z cycling from a start char that advances each ping */
async function testClient(cb: Cb): Promise<number> {
  const o = cb.o;
  const start = cb.startMr!.buffer;
  let startCh = 65;
  for (let ping = 0; !o.count || ping < o.count; ping++) {
    cb.state = S.RDMA_READ_ADV;
    start.fill(0);
    const head = Buffer.from(`rdma-ping-${ping}: `, 'latin1');
    const cc = head.copy(start, 0, 0, Math.min(head.length, o.size - 1));
    for (let i = cc, c = startCh; i < o.size; i++) {
      start[i] = c;
      if (++c > 122) c = 65;
    }
    if (++startCh > 122) startCh = 65;
    start[o.size - 1] = 0;
    cb.formatSend(cb.startMr!);
    cb.postSendInfo();
    await cb.sem.wait();
    if (cb.now() !== S.RDMA_WRITE_ADV) {
      o.err(`wait for RDMA_WRITE_ADV state ${cb.now()}\n`);
      return -1;
    }
    cb.formatSend(cb.rdmaMr);
    cb.postSendInfo();
    await cb.sem.wait();
    if (cb.now() !== S.RDMA_WRITE_COMPLETE) {
      o.err(`wait for RDMA_WRITE_COMPLETE state ${cb.now()}\n`);
      return -1;
    }
    if (o.validate && !start.equals(cb.rdmaMr.buffer)) {
      o.err('data mismatch!\n');
      return -1;
    }
    if (o.verbose) o.out(`ping data: ${cString(cb.rdmaMr.buffer)}\n`);
  }
  return 0;
}

/** Reads the channel for the life of the tool and hands each event to its connection. */
function dispatch(ch: EventChannel, cbs: Map<CmId, Cb>, onRequest: (ev: CmEvent) => void): void {
  void (async () => {
    try {
      for await (const ev of ch) {
        if (ev.event === 'CONNECT_REQUEST') onRequest(ev);
        else cbs.get(ev.id)?.onCm(ev);
      }
    } catch {
      // the channel closed
    }
  })();
}

async function toAddress(a: string): Promise<string> {
  return isIP(a) ? a : (await lookup(a)).address;
}

/** one served connection: QP, receive, accept (resp_res 1, init_depth 1), the test, disconnect */
async function serveOne(cb: Cb): Promise<number> {
  cb.setup();
  cb.id.accept({ responderResources: 1, initiatorDepth: 1 }).catch(() => undefined);
  await cb.sem.wait();
  // rping_accept checks for ERROR only: the post may be the first receive's, ESTABLISHED's comes next
  if (cb.now() === S.ERROR) {
    cb.o.err(`wait for CONNECTED state ${cb.now()}\n`);
    return -1;
  }
  await testServer(cb);
  // rping_run_server: the test's outcome is not the exit status (the reference server exits 0
  // after "wait for RDMA_READ_ADV state 10")
  await cb.id.disconnect({ timeoutMs: 2000 }).catch(() => undefined);
  return 0;
}

async function runServer(addr: string | undefined, persistent: boolean, o: Opts): Promise<number> {
  const ch = createEventChannel();
  const cbs = new Map<CmId, Cb>();
  const listen = createId(ch, { ps: 'TCP' });
  const requests: Cb[] = [];
  let wake: (() => void) | null = null;
  try {
    if (o.tos !== null) listen.setOption({ tos: o.tos });
    await listen.bind({ address: addr ?? '0.0.0.0', port: o.port });
    await listen.listen(3);
    dispatch(ch, cbs, (ev) => {
      const cb = new Cb(ev.id, o, true);
      cb.state = S.CONNECT_REQUEST;
      cbs.set(ev.id, cb);
      requests.push(cb);
      wake?.();
    });
    const next = async (): Promise<Cb> => {
      while (requests.length === 0) await new Promise<void>((res) => (wake = res));
      return requests.shift()!;
    };
    if (!persistent) {
      const cb = await next();
      try {
        return await serveOne(cb);
      } finally {
        cb.free();
        cb.id.close();
      }
    }
    // -P: every connection served on its own (rping's thread per connection), until killed
    for (;;) {
      const cb = await next();
      void serveOne(cb).finally(() => {
        cb.free();
        cb.id.close();
        cbs.delete(cb.id);
      });
    }
  } finally {
    listen.close();
    ch.close();
  }
}

async function runClient(addr: string, bind: string | undefined, o: Opts): Promise<number> {
  const ch = createEventChannel();
  const id = createId(ch, { ps: 'TCP' });
  const cb = new Cb(id, o, false);
  const cbs = new Map<CmId, Cb>([[id, cb]]);
  dispatch(ch, cbs, () => undefined);
  try {
    if (bind !== undefined) await id.bind({ address: bind, port: 0 });
    // rping_bind_client: resolve the address, then the route (2000 ms each)
    const ok = await id.resolveAddr({ dst: { address: addr, port: o.port }, timeoutMs: RESOLVE_MS }).then(
      () => true,
      () => false,
    );
    if (!ok) {
      await cb.sem.wait();
      o.err(`waiting for addr/route resolution state ${cb.now()}\n`);
      return -1;
    }
    if (o.tos !== null) id.setOption({ tos: o.tos });
    const ok2 = await id.resolveRoute({ timeoutMs: RESOLVE_MS }).then(
      () => true,
      () => false,
    );
    if (!ok2) {
      await cb.sem.wait();
      o.err(`waiting for addr/route resolution state ${cb.now()}\n`);
      return -1;
    }
    cb.state = S.ROUTE_RESOLVED;
    cb.setup();
    id.connect({ responderResources: 1, initiatorDepth: 1, retryCount: 7, rnrRetryCount: 7 }).catch(() => undefined);
    await cb.sem.wait();
    if (cb.now() !== S.CONNECTED) {
      o.err(`wait for CONNECTED state ${cb.now()}\n`);
      o.err('connect error -1\n');
      return -1;
    }
    const ret = await testClient(cb);
    if (ret) o.err('rping client failed: -1\n');
    // rdma_disconnect, then the DISCONNECTED event ("client DISCONNECT EVENT...")
    await id.disconnect({ timeoutMs: 2000 }).catch(() => undefined);
    await new Promise((r) => setImmediate(r));
    return ret;
  } finally {
    cb.free();
    id.close();
    ch.close();
  }
}

/** rping's main; returns its exit status (EINVAL for usage errors, as rping.c's ret) */
export async function rpingMain(
  argv: string[],
  out: (s: string) => void = (s) => process.stdout.write(s),
  err: (s: string) => void = (s) => process.stderr.write(s),
): Promise<number> {
  let opts;
  try {
    // rping sets opterr = 0: an unknown option prints the usage only
    opts = parseArgs(argv, SPECS).opts;
  } catch (e) {
    if (!(e instanceof UsageError)) throw e;
    out(RPING_USAGE);
    return EINVAL;
  }
  const o: Opts = {
    verbose: opts.has('verbose'),
    validate: opts.has('validate'),
    debug: opts.has('debug'),
    count: toInt(opts.get('count'), 'count', 0),
    size: toInt(opts.get('size'), 'size', 64),
    port: toInt(opts.get('port'), 'port', 7174),
    tos: opts.has('tos') ? toInt(opts.get('tos'), 'tos', 0) : null,
    out,
    err,
  };
  if (o.size < RPING_MIN_BUFSIZE || o.size > RPING_BUFSIZE - 1) {
    err(`Invalid size ${o.size} (valid range is ${RPING_MIN_BUFSIZE} to ${RPING_BUFSIZE})\n`);
    return EINVAL;
  }
  if (o.count < 0) {
    err(`Invalid count ${o.count}\n`);
    return EINVAL;
  }
  if (opts.has('self-qp')) err('rping: -q (self-created QP) is not supported by softroce; using the rdma_cm QP\n');
  const server = opts.has('server') ? true : opts.has('client') ? false : null;
  if (server === null) {
    out(RPING_USAGE);
    return EINVAL;
  }
  const a = opts.get('addr');
  const addr = typeof a === 'string' ? await toAddress(a) : undefined;
  const i = opts.get('bind');
  const bind = typeof i === 'string' ? await toAddress(i) : undefined;
  if (server) return (await runServer(addr, opts.has('persistent'), o)) & 0xff;
  if (addr === undefined) {
    out(RPING_USAGE);
    return EINVAL;
  }
  return (await runClient(addr, bind, o)) & 0xff;
}

/** the process entry (bin/rping.js) */
export async function rpingCli(): Promise<void> {
  await runTool(rpingMain, 'rping');
}
