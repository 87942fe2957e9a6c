/**
 * ucmatose, as rdma-core's librdmacm/examples/cmatose.c: RC connections over rdma_cm, the server
 * SENDs message_count x message_size to each connection, the client receives them and replies with
 * as many, then the server disconnects. Same options, defaults (port 7471, 1 connection, 10
 * messages of 100 bytes), conn params (client: responder_resources 1, initiator_depth 1, retry 5,
 * rnr_retry 0; server: rdma_accept(id, NULL)), printed lines and exit status ("return status N").
 */
import './epipe.js';
import { lookup } from 'node:dns/promises';
import { createEventChannel, EventChannel } from '../cm/event-channel.js';
import { createId, type CmId } from '../cm/cm-id.js';
import type { CmEvent } from '../cm/event-channel.js';
import type { PortSpace } from '../cm/port-space.js';
import type { Mr } from '../verbs/mr.js';
import { Wc } from '../verbs/types.js';
import type { Cq } from '../verbs/cq.js';
import { parseArgs, runTool, toInt, UsageError, type OptSpec } from './args.js';

const SPECS: OptSpec[] = [
  { short: 's', long: 'server', arg: true },
  { short: 'b', long: 'bind', arg: true },
  { short: 'f', long: 'format', arg: true },
  { short: 'P', long: 'ps', arg: true },
  { short: 'c', long: 'connections', arg: true },
  { short: 'C', long: 'count', arg: true },
  { short: 'S', long: 'size', arg: true },
  { short: 't', long: 'tos', arg: true },
  { short: 'p', long: 'port', arg: true },
  { short: 'm', long: 'migrate', arg: false },
  { short: 'a', long: 'ack-timeout', arg: true },
];

export const UCMATOSE_USAGE = `usage: ucmatose
\t[-s server_address]
\t[-b bind_address]
\t[-f address_format]
\t    name, ip, ipv6, or gid
\t[-P port_space]
\t    tcp or ib
\t[-c connections]
\t[-C message_count]
\t[-S message_size]
\t[-t type_of_service]
\t[-p port_number]
\t[-m(igrate)]
\t[-a ack_timeout]
`;

/** resolve_addr / resolve_route timeout of cmatose.c */
const RESOLVE_MS = 2000;
/** how long a step may wait for an event or completion before the tool gives up (the C tool blocks) */
const WAIT_MS = 60_000;

interface Node {
  id: CmId;
  mr: Mr | null;
  connected: boolean;
}

interface Test {
  count: number;
  size: number;
  ch: EventChannel;
  nodes: Node[];
}

/** ucmatose's main; returns the exit status (cmatose.c returns its ret, the negative errno or event status). */
export async function ucmatoseMain(argv: string[], out: (s: string) => void = (s) => process.stdout.write(s)): Promise<number> {
  let o;
  try {
    o = parseArgs(argv, SPECS).opts;
  } catch (e) {
    if (!(e instanceof UsageError)) throw e;
    // getopt prints its complaint on stderr, then cmatose its usage on stdout, and exits 1.
    process.stderr.write(`ucmatose: ${e.message}\n`);
    out(UCMATOSE_USAGE);
    return 1;
  }
  const fmt = (o.get('format') as string | undefined) ?? 'ip';
  if (!['ip', 'ipv6', 'name', 'gid'].includes(fmt)) {
    out(UCMATOSE_USAGE);
    return 1;
  }
  if (fmt === 'gid') {
    process.stderr.write('ucmatose: -f gid is not supported by softroce (use ip, ipv6 or name)\n');
    return 1;
  }
  const psArg = (o.get('ps') as string | undefined) ?? 'tcp';
  let ps: PortSpace;
  if (psArg.toLowerCase() === 'tcp') ps = 'TCP';
  else if (psArg.toLowerCase() === 'ib') ps = 'IB';
  else {
    out(UCMATOSE_USAGE);
    return 1;
  }
  const connections = toInt(o.get('connections'), 'connections', 1);
  const count = toInt(o.get('count'), 'message_count', 10);
  const size = toInt(o.get('size'), 'message_size', 100);
  const port = toInt(o.get('port'), 'port', 7471);
  const tos = o.has('tos') ? toInt(o.get('tos'), 'tos', 0) : null;
  const ackTimeout = o.has('ack-timeout') ? toInt(o.get('ack-timeout'), 'ack_timeout', 0) : null;
  const migrate = o.has('migrate');
  const resolve = async (a: string | undefined): Promise<string | undefined> => {
    if (a === undefined || fmt !== 'name') return a;
    return (await lookup(a)).address;
  };
  const dst = await resolve(o.get('server') as string | undefined);
  const src = await resolve(o.get('bind') as string | undefined);
  const t: Test = { count, size, ch: createEventChannel(), nodes: [] };
  let ret: number;
  try {
    if (dst === undefined) {
      out('cmatose: starting server\n');
      ret = await runServer(t, { ps, connections, port, src, tos, ackTimeout, migrate }, out);
    } else {
      out('cmatose: starting client\n');
      ret = await runClient(t, { ps, connections, port, src, dst, tos, ackTimeout, migrate }, out);
    }
  } finally {
    out('test complete\n');
    for (const n of t.nodes) n.id.close();
    t.ch.close();
  }
  out(`return status ${ret}\n`);
  return ret & 0xff;
}

interface RunOpts {
  ps: PortSpace;
  connections: number;
  port: number;
  src: string | undefined;
  dst?: string;
  tos: number | null;
  ackTimeout: number | null;
  migrate: boolean;
}

/** init_node: a QP with count send and receive WRs (1 SGE, every send signaled) and one buffer */
function initNode(t: Test, n: Node): void {
  const depth = Math.max(1, t.count);
  const dev = n.id.verbs!;
  const pd = dev.allocPd();
  const sendCq = dev.createCq({ depth });
  const recvCq = dev.createCq({ depth });
  n.id.createQp(pd, { sendCq, recvCq, cap: { maxSendWr: depth, maxRecvWr: depth, maxSendSge: 1, maxRecvSge: 1 }, sigAll: true });
  n.mr = pd.regMr(Buffer.alloc(Math.max(1, t.size)), ['LOCAL_WRITE']);
}

function freeNode(n: Node): void {
  const qp = n.id.qp;
  if (qp === null) return;
  const pd = qp.pd;
  const cqs = [qp.sendCq, qp.recvCq];
  n.id.destroyQp();
  n.mr?.close();
  for (const c of cqs) c.close();
  pd.close();
}

function postRecvs(t: Test, n: Node): void {
  for (let i = 0; i < t.count; i++) n.id.qp!.postRecv({ wrId: i, sg: [{ mr: n.mr!, offset: 0, length: t.size }] });
}

function postSends(t: Test, n: Node): void {
  for (let i = 0; i < t.count; i++) n.id.qp!.postSend({ wrId: i, opcode: 'SEND', signaled: true, sg: [{ mr: n.mr!, offset: 0, length: t.size }] });
}

/** poll_cqs: count completions from each connected node's CQ; a failed one prints as cmatose does. */
async function pollCq(t: Test, which: 'send' | 'recv', out: (s: string) => void): Promise<number> {
  const wcs = [new Wc()];
  for (let i = 0; i < t.nodes.length; i++) {
    const n = t.nodes[i]!;
    if (!n.connected || n.id.qp === null) continue;
    const cq: Cq = which === 'send' ? n.id.qp.sendCq : n.id.qp.recvCq;
    const deadline = Date.now() + WAIT_MS;
    for (let done = 0; done < t.count;) {
      const r = cq.poll(wcs, 1);
      if (r === 1) {
        done++;
        if (wcs[0]!.status !== 'SUCCESS') out(`cmatose: completion error ${wcs[0]!.status} on node ${i}\n`);
        continue;
      }
      if (Date.now() > deadline) {
        out(`cmatose: failed polling CQ: ${-110}\n`);
        return -110;
      }
      await new Promise<void>((res) => {
        const timer = setTimeout(done2, 50);
        function done2(): void {
          cq.off('notify', done2);
          clearTimeout(timer);
          res();
        }
        cq.once('notify', done2);
        cq.reqNotify();
      });
    }
  }
  return 0;
}

function errEvent(ev: CmEvent, out: (s: string) => void): number {
  // rdma_event_str's names
  out(`cmatose: event: RDMA_CM_EVENT_${ev.event}, error: ${ev.status}\n`);
  return ev.status;
}

async function nextEvent(t: Test): Promise<CmEvent> {
  return t.ch.getEvent({ timeoutMs: WAIT_MS });
}

async function runServer(t: Test, r: RunOpts, out: (s: string) => void): Promise<number> {
  const listen = createId(t.ch, { ps: r.ps });
  t.nodes.push({ id: listen, mr: null, connected: false });
  const listenNode = t.nodes.pop()!;
  try {
    await listen.bind({ address: r.src ?? '0.0.0.0', port: r.port });
    await listen.listen(0);
    let connectsLeft = r.connections;
    // connect_events: CONNECT_REQUEST -> QP, receives, rdma_accept(NULL); ESTABLISHED counts down
    while (connectsLeft > 0) {
      const ev = await nextEvent(t);
      if (ev.event === 'CONNECT_REQUEST') {
        const n: Node = { id: ev.id, mr: null, connected: false };
        t.nodes.push(n);
        if (r.tos !== null) n.id.setOption({ tos: r.tos });
        if (r.ackTimeout !== null) n.id.setOption({ ackTimeout: r.ackTimeout });
        initNode(t, n);
        postRecvs(t, n);
        n.id.accept().catch(() => undefined);
      } else if (ev.event === 'ESTABLISHED') {
        const n = t.nodes.find((x) => x.id === ev.id);
        if (n) n.connected = true;
        connectsLeft--;
      } else if (['CONNECT_ERROR', 'UNREACHABLE', 'REJECTED'].includes(ev.event)) {
        connectsLeft--;
        return errEvent(ev, out);
      }
    }
    if (r.migrate) {
      // -m: migrate every id to a new channel, as cmatose's migrate_channel does
      const ch2 = createEventChannel();
      for (const n of t.nodes) n.id.migrate(ch2);
      t.ch.close();
      t.ch = ch2;
    }
    let ret = 0;
    if (t.count) {
      out('initiating data transfers\n');
      for (const n of t.nodes) if (n.connected) postSends(t, n);
      out('completing sends\n');
      ret = await pollCq(t, 'send', out);
      if (ret) return ret;
      out('receiving data transfers\n');
      ret = await pollCq(t, 'recv', out);
      if (ret) return ret;
      out('data transfers complete\n');
    }
    out('cmatose: disconnecting\n');
    let left = 0;
    for (const n of t.nodes) {
      if (!n.connected) continue;
      n.connected = false;
      left++;
      n.id.disconnect().catch(() => undefined);
    }
    ret = await disconnectEvents(t, left, out);
    out('disconnected\n');
    return ret;
  } finally {
    listenNode.id.close();
    for (const n of t.nodes) freeNode(n);
  }
}

/** disconnect_events: DISCONNECTED for each connection (the id's rdma_disconnect, done in cma_handler) */
async function disconnectEvents(t: Test, left: number, out: (s: string) => void): Promise<number> {
  while (left > 0) {
    const ev = await nextEvent(t);
    if (ev.event === 'DISCONNECTED') {
      const n = t.nodes.find((x) => x.id === ev.id);
      if (n?.connected) {
        n.connected = false;
        n.id.disconnect().catch(() => undefined);
      }
      left--;
    } else if (ev.event === 'DEVICE_REMOVAL') {
      return errEvent(ev, out);
    }
  }
  return 0;
}

async function runClient(t: Test, r: RunOpts, out: (s: string) => void): Promise<number> {
  try {
    out('cmatose: connecting\n');
    for (let i = 0; i < r.connections; i++) {
      const id = createId(t.ch, { ps: r.ps });
      t.nodes.push({ id, mr: null, connected: false });
      if (r.src !== undefined) await id.bind({ address: r.src, port: 0 });
      id.resolveAddr({ dst: { address: r.dst!, port: r.port }, timeoutMs: RESOLVE_MS }).catch(() => undefined);
    }
    let connectsLeft = r.connections;
    let ret = 0;
    // connect_events stops at the first failure (while connects_left && !ret)
    while (connectsLeft > 0 && !ret) {
      const ev = await nextEvent(t);
      const n = t.nodes.find((x) => x.id === ev.id);
      if (n === undefined) continue;
      if (ev.event === 'ADDR_RESOLVED') {
        if (r.tos !== null) n.id.setOption({ tos: r.tos });
        if (r.ackTimeout !== null) n.id.setOption({ ackTimeout: r.ackTimeout });
        n.id.resolveRoute({ timeoutMs: RESOLVE_MS }).catch(() => undefined);
      } else if (ev.event === 'ROUTE_RESOLVED') {
        initNode(t, n);
        postRecvs(t, n);
        // cmatose.c route_handler: conn_param zeroed, then responder_resources 1, initiator_depth 1, retry_count 5
        n.id.connect({ responderResources: 1, initiatorDepth: 1, retryCount: 5, rnrRetryCount: 0 }).catch(() => undefined);
      } else if (ev.event === 'ESTABLISHED') {
        n.connected = true;
        connectsLeft--;
      } else if (['ADDR_ERROR', 'ROUTE_ERROR', 'CONNECT_ERROR', 'UNREACHABLE', 'REJECTED'].includes(ev.event)) {
        connectsLeft--;
        ret = errEvent(ev, out);
      }
    }
    if (ret) return ret;
    if (t.count) {
      out('receiving data transfers\n');
      ret = await pollCq(t, 'recv', out);
      if (ret) return ret;
      out('sending replies\n');
      for (const n of t.nodes) if (n.connected) postSends(t, n);
      ret = await pollCq(t, 'send', out);
      if (ret) return ret;
      out('data transfers complete\n');
    }
    return await disconnectEvents(t, t.nodes.filter((n) => n.connected).length, out);
  } finally {
    for (const n of t.nodes) freeNode(n);
  }
}

/** the process entry (bin/ucmatose.js) */
export async function ucmatoseCli(): Promise<void> {
  await runTool(ucmatoseMain, 'ucmatose');
}
