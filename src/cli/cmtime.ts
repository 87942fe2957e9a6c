/**
 * cmtime, as rdma-core's librdmacm/examples/cmtime.c (rdma-core 44, the lab's rdmacm-utils): how long
 * each rdma_cm step takes for `-c` connections (default 100). The client runs every step for all its
 * ids at once, as cmtime.c does: it starts the step on each id in turn (create id, bind, resolve addr,
 * resolve route, create qp, connect, disconnect + destroy qp), waits until every id has its event, and
 * only then goes on to the next step; destroy is the ids' rdma_destroy_id in a loop. Each step's report
 * is the whole step's time (total ms), the slowest and fastest id (max ms, min us: from the call to the
 * id's event) and total / connections (us / conn), printed in cmtime.c's formats (float columns, the
 * bind row only with -b). The server (no -s) listens, accepts every request (a QP of 1/1 WRs, the
 * request's conn params) and, when a peer disconnects, disconnects, destroys the QP and the id; it
 * prints nothing and runs until killed, as the real one does. Same options (-s -b -c -p -r -t), port
 * 7471, resolve timeout 2000 ms, 2 retries (of a failed resolution, and the REQ's retry_count).
 */
import './epipe.js';
import { lookup } from 'node:dns/promises';
import { isIP } from 'node:net';
import { createEventChannel, type CmEvent, type EventChannel } from '../cm/event-channel.js';
import { createId, type CmId } from '../cm/cm-id.js';
import type { IdQpOptions } from '../cm/cm-id.js';
import { VerbsError } from '../verbs/errors.js';
import { parseArgs, runTool, toInt, UsageError, type OptSpec } from './args.js';

const SPECS: OptSpec[] = [
  { short: 's', long: 'server', arg: true },
  { short: 'b', long: 'bind', arg: true },
  { short: 'c', long: 'connections', arg: true },
  { short: 'p', long: 'port', arg: true },
  { short: 'r', long: 'retries', arg: true },
  { short: 't', long: 'timeout', arg: true },
];

export const CMTIME_USAGE = `usage: cmtime
\t[-s server_address]
\t[-b bind_address]
\t[-c connections]
\t[-p port_number]
\t[-r retries]
\t[-t timeout_ms]
`;

/** cmtime.c's steps, in its enum order (the report's rows) */
const STEPS = ['create id', 'bind addr', 'resolve addr', 'resolve route', 'create qp', 'connect', 'disconnect', 'destroy'] as const;
const CREATE_ID = 0,
  BIND = 1,
  RESOLVE_ADDR = 2,
  RESOLVE_ROUTE = 3,
  CREATE_QP = 4,
  CONNECT = 5,
  DISCONNECT = 6,
  DESTROY = 7,
  STEP_CNT = 8;

/** init_qp_attr of cmtime.c: an RC QP of one send and one receive WR, one SGE each */
const QP_ATTR: IdQpOptions = { cap: { maxSendWr: 1, maxRecvWr: 1, maxSendSge: 1, maxRecvSge: 1 } };

/** gettimeofday in µs: the C tool's clock has µs steps, so its per-id figures are whole µs ("12.00") */
function nowUs(): number {
  return Number(process.hrtime.bigint() / 1000n);
}

interface Node {
  id: CmId | null;
  /** [start, end] µs per step; 0: not taken (cmtime.c's zero_time) */
  times: Float64Array;
  error: boolean;
  retries: number;
}

interface Run {
  out: (s: string) => void;
  nodes: Node[];
  /** [start, end] µs of each whole step */
  times: Float64Array;
  started: number[];
  completed: number[];
  /** the step waiting for its events, woken when completed reaches started */
  wake: (() => void) | null;
  src: string | undefined;
  dst: string;
  port: number;
  retries: number;
  timeoutMs: number;
}

const start = (t: Float64Array, s: number): void => void (t[s * 2] = nowUs());
const end = (t: Float64Array, s: number): void => void (t[s * 2 + 1] = nowUs());

/** cmtime's main; returns the exit status (cmtime.c returns its ret). */
export async function cmtimeMain(argv: string[], out: (s: string) => void = (s) => process.stdout.write(s)): Promise<number> {
  let o;
  try {
    o = parseArgs(argv, SPECS).opts;
  } catch (e) {
    if (!(e instanceof UsageError)) throw e;
    // getopt's complaint on stderr, then cmtime's usage on stdout, exit(1)
    process.stderr.write(`cmtime: ${e.message}\n`);
    out(CMTIME_USAGE);
    return 1;
  }
  const connections = atoi(o.get('connections'), 100);
  const port = toInt(o.get('port'), 'port_number', 7471);
  const retries = atoi(o.get('retries'), 2);
  const timeoutMs = atoi(o.get('timeout'), 2000);
  const addr = async (a: string | undefined): Promise<string | undefined> => (a === undefined || isIP(a) !== 0 ? a : (await lookup(a)).address);
  let src: string | undefined, dst: string | undefined;
  try {
    src = await addr(o.get('bind') as string | undefined);
    dst = await addr(o.get('server') as string | undefined);
  } catch (e) {
    out(`getaddrinfo error: ${(e as Error).message}\n`);
    return 1;
  }
  const ch = createEventChannel();
  if (dst === undefined) return runServer(ch, src, port);
  const r: Run = {
    out,
    nodes: [],
    times: new Float64Array(STEP_CNT * 2),
    started: new Array<number>(STEP_CNT).fill(0),
    completed: new Array<number>(STEP_CNT).fill(0),
    wake: null,
    src,
    dst,
    port,
    retries,
    timeoutMs,
  };
  // the event thread of cmtime.c: every event is handled as it comes, whatever step the main loop is in
  ch.on('event', (ev: CmEvent) => clientEvent(r, ev));
  allocNodes(r, ch, connections);
  let ret: number;
  try {
    ret = await runClient(r);
  } finally {
    cleanupNodes(r);
    ch.close();
  }
  showPerf(r, connections);
  return ret & 0xff;
}

/** atoi: leading digits (with a sign), 0 when there are none; as cmtime.c reads -c, -r and -t */
function atoi(v: string | true | undefined, dflt: number): number {
  if (v === undefined) return dflt;
  if (v === true) throw new UsageError('needs a value');
  const m = /^\s*([+-]?\d+)/.exec(v);
  return m ? Number(m[1]) | 0 : 0;
}

function allocNodes(r: Run, ch: EventChannel, connections: number): void {
  r.out('creating id\n');
  start(r.times, CREATE_ID);
  for (let i = 0; i < connections; i++) {
    const n: Node = { id: null, times: new Float64Array(STEP_CNT * 2), error: false, retries: 0 };
    r.nodes.push(n);
    start(n.times, CREATE_ID);
    n.id = createId(ch, { ps: 'TCP', context: n });
    end(n.times, CREATE_ID);
  }
  end(r.times, CREATE_ID);
}

function cleanupNodes(r: Run): void {
  r.out('destroying id\n');
  start(r.times, DESTROY);
  for (const n of r.nodes) {
    start(n.times, DESTROY);
    n.id?.close();
    end(n.times, DESTROY);
  }
  end(r.times, DESTROY);
}

/** perror: the call's name and the errno's text on stderr */
function perror(what: string, e: unknown): void {
  process.stderr.write(`${what}: ${e instanceof VerbsError ? e.message : String(e)}\n`);
}

/** the step's events: done when every started id has had its own (the C tool's sched_yield loop) */
function stepDone(r: Run, step: number): Promise<void> {
  if (r.completed[step] === r.started[step]) return Promise.resolve();
  return new Promise((res) => {
    r.wake = () => {
      if (r.completed[step] !== r.started[step]) return;
      r.wake = null;
      res();
    };
  });
}

function complete(r: Run, n: Node, step: number): void {
  end(n.times, step);
  r.completed[step]!++;
  r.wake?.();
}

function clientEvent(r: Run, ev: CmEvent): void {
  const n = ev.id.context as Node | undefined;
  if (n === undefined || n === null) return;
  switch (ev.event) {
    case 'ADDR_RESOLVED':
      complete(r, n, RESOLVE_ADDR);
      return;
    case 'ROUTE_RESOLVED':
      complete(r, n, RESOLVE_ROUTE);
      return;
    case 'ESTABLISHED':
      complete(r, n, CONNECT);
      return;
    case 'ADDR_ERROR':
      if (n.retries-- > 0) {
        try {
          resolveAddr(r, n);
          return;
        } catch {
          /* reported below, as a failed retry is */
        }
      }
      r.out(`RDMA_CM_EVENT_ADDR_ERROR, error: ${ev.status}\n`);
      n.error = true;
      complete(r, n, RESOLVE_ADDR);
      return;
    case 'ROUTE_ERROR':
      if (n.retries-- > 0) {
        try {
          void n.id!.resolveRoute({ timeoutMs: r.timeoutMs });
          return;
        } catch {
          /* reported below */
        }
      }
      r.out(`RDMA_CM_EVENT_ROUTE_ERROR, error: ${ev.status}\n`);
      n.error = true;
      complete(r, n, RESOLVE_ROUTE);
      return;
    case 'CONNECT_ERROR':
    case 'UNREACHABLE':
    case 'REJECTED':
      r.out(`event: RDMA_CM_EVENT_${ev.event}, error: ${ev.status}\n`);
      n.error = true;
      complete(r, n, CONNECT);
      return;
    case 'DISCONNECTED':
      complete(r, n, DISCONNECT);
      return;
    default:
      return;
  }
}

function resolveAddr(r: Run, n: Node): void {
  // rdma_resolve_addr(id, ai_src_addr, ai_dst_addr, timeout): the bound source (-b), the server's port
  void n.id!.resolveAddr({
    ...(r.src !== undefined ? { src: { address: r.src, port: 0 } } : {}),
    dst: { address: r.dst, port: r.port },
    timeoutMs: r.timeoutMs,
  });
}

async function runClient(r: Run): Promise<number> {
  let ret = 0;
  if (r.src !== undefined) {
    r.out('binding source address\n');
    start(r.times, BIND);
    for (const n of r.nodes) {
      start(n.times, BIND);
      try {
        await n.id!.bind({ address: r.src, port: 0 });
      } catch (e) {
        perror('failure bind addr', e);
        n.error = true;
        ret = -1;
        continue;
      }
      end(n.times, BIND);
    }
    end(r.times, BIND);
  }

  // A step for every id at once: started on each in turn, done when each has its event.
  const step = async (s: number, what: string, call: (n: Node) => void): Promise<void> => {
    for (const n of r.nodes) {
      if (n.error) continue;
      n.retries = r.retries;
      start(n.times, s);
      try {
        call(n);
      } catch (e) {
        perror(what, e);
        n.error = true;
        ret = -1;
        continue;
      }
      r.started[s]!++;
    }
    await stepDone(r, s);
  };

  r.out('resolving address\n');
  start(r.times, RESOLVE_ADDR);
  await step(RESOLVE_ADDR, 'failure getting addr', (n) => resolveAddr(r, n));
  end(r.times, RESOLVE_ADDR);

  r.out('resolving route\n');
  start(r.times, RESOLVE_ROUTE);
  await step(RESOLVE_ROUTE, 'failure resolving route', (n) => void n.id!.resolveRoute({ timeoutMs: r.timeoutMs }));
  end(r.times, RESOLVE_ROUTE);

  r.out('creating qp\n');
  start(r.times, CREATE_QP);
  for (const n of r.nodes) {
    if (n.error) continue;
    start(n.times, CREATE_QP);
    try {
      n.id!.createQp(null, QP_ATTR);
    } catch (e) {
      perror('failure creating qp', e);
      n.error = true;
      ret = -1;
      continue;
    }
    end(n.times, CREATE_QP);
  }
  end(r.times, CREATE_QP);

  r.out('connecting\n');
  start(r.times, CONNECT);
  // conn_param of cmtime.c: static (zeroed), then responder_resources 1, initiator_depth 1, retry_count = retries
  await step(CONNECT, 'failure rconnecting', (n) => void n.id!.connect({ responderResources: 1, initiatorDepth: 1, retryCount: r.retries, rnrRetryCount: 0 }));
  end(r.times, CONNECT);

  r.out('disconnecting\n');
  start(r.times, DISCONNECT);
  await step(DISCONNECT, 'failure disconnecting', (n) => {
    void n.id!.disconnect();
    n.id!.destroyQp();
  });
  end(r.times, DISCONNECT);
  return ret;
}

/** C's float: the per-id figures and the step time are floats in cmtime.c (so 999999999. prints as 1000000000.00) */
const f32 = Math.fround;

function showPerf(r: Run, connections: number): void {
  const max: number[] = [],
    min: number[] = [];
  for (let i = 0; i < STEP_CNT; i++) {
    max[i] = 0;
    min[i] = f32(999999999);
    for (const n of r.nodes) {
      const a = n.times[i * 2]!,
        b = n.times[i * 2 + 1]!;
      if (a !== 0 && b !== 0) {
        const us = f32(b - a);
        if (us > max[i]!) max[i] = us;
        if (us < min[i]!) min[i] = us;
      }
    }
  }
  let s = 'step              total ms     max ms     min us  us / conn\n';
  for (let i = 0; i < STEP_CNT; i++) {
    if (i === BIND && r.src === undefined) continue;
    const us = f32(r.times[i * 2 + 1]! - r.times[i * 2]!);
    s += `${STEPS[i]!.padEnd(13)}: ${f11(us / 1000)}${f11(max[i]! / 1000)}${f11(min[i]!)}${f11(f32(us / connections))}\n`;
  }
  r.out(s);
}

/** printf %11.2f */
function f11(v: number): string {
  return v.toFixed(2).padStart(11);
}

/**
 * run_server: a listener on -b (else the wildcard) and -p; every CONNECT_REQUEST gets a QP and
 * rdma_accept(id, NULL); a DISCONNECTED id is disconnected, its QP and the id destroyed. The ids have
 * no node (the listener's context is NULL), so ESTABLISHED is not counted. Runs until killed.
 */
async function runServer(ch: EventChannel, src: string | undefined, port: number): Promise<number> {
  const listen = createId(ch, { ps: 'TCP' });
  try {
    await listen.bind({ address: src ?? '0.0.0.0', port });
  } catch (e) {
    perror('bind address failed', e);
    listen.close();
    ch.close();
    return 0xff;
  }
  try {
    await listen.listen(0);
  } catch (e) {
    perror('failure trying to listen', e);
    listen.close();
    ch.close();
    return 0xff;
  }
  ch.on('event', (ev: CmEvent) => {
    const id = ev.id;
    if (ev.event === 'CONNECT_REQUEST') {
      try {
        id.createQp(null, QP_ATTR);
      } catch (e) {
        perror('failure creating qp', e);
        failRequest(id);
        return;
      }
      try {
        void id.accept();
      } catch (e) {
        perror('failure accepting', e);
        id.destroyQp();
        failRequest(id);
      }
    } else if (ev.event === 'DISCONNECTED' && id !== listen) {
      // disc_handler_thread: rdma_disconnect (the DREP), rdma_destroy_qp, rdma_destroy_id
      try {
        void id.disconnect();
      } catch {
        /* gone already */
      }
      id.destroyQp();
      id.close();
    }
  });
  // process_events: until the process is killed
  await new Promise<never>(() => undefined);
  return 0;
}

function failRequest(id: CmId): void {
  process.stdout.write('failing connection request\n');
  try {
    id.reject();
  } catch {
    /* not a request any more */
  }
  id.close();
}

/** the process entry (bin/cmtime.js) */
export async function cmtimeCli(): Promise<void> {
  await runTool(cmtimeMain, 'cmtime');
}
