/**
 * udaddy, as rdma-core's librdmacm/examples/udaddy.c (v44, the lab's rdmacm-utils): UD over rdma_cm's
 * UDP port space. The client resolves the server's address and route and "connects" with a SIDR_REQ
 * (service ID 0x01110000 | 7174); the server answers each CONNECT_REQUEST with rdma_accept, a SIDR_REP
 * carrying its QPN and the Q_Key (RDMA_UDP_QKEY 0x01234567), and the client's ESTABLISHED brings both
 * with an AH. The client then sends message_count SEND_WITH_IMM of message_size bytes (the immediate:
 * its QPN, unsignaled), the server receives them, makes its reply AH from the first one's GRH
 * (ibv_create_ah_from_wc) and sends as many back (signaled). Same options (-p is the port space, the
 * port is always 7174), QP sizes, printed lines and exit status ("return status N", N & 0xff).
 */
import './epipe.js';
import { lookup } from 'node:dns/promises';
import { isIP } from 'node:net';
import { createEventChannel, type CmEvent, type EventChannel } from '../cm/event-channel.js';
import { createId } from '../cm/cm-id.js';
import type { PortSpace } from '../cm/port-space.js';
import { gidFromString, gidToString, ipv4ToGid } from '../roce/gid.js';
import type { Wc } from '../verbs/types.js';
import { runTool, UsageError } from './args.js';
import {
  atoi,
  finishTest,
  ENOMEM,
  getopt,
  initNode,
  newNode,
  perror,
  pollCqs,
  postRecvs,
  postSends,
  strtol,
  verifyTestParams,
  WAIT_MS,
  type UdNode,
  type UdTest,
} from './cm-ud.js';

/** rdma_cma.h's port spaces */
const RDMA_PS_IPOIB = 0x0002;
const RDMA_PS_TCP = 0x0106;
const RDMA_PS_UDP = 0x0111;
const RDMA_PS_IB = 0x013f;
const PS_NAME: Partial<Record<number, PortSpace>> = { [RDMA_PS_TCP]: 'TCP', [RDMA_PS_UDP]: 'UDP', [RDMA_PS_IB]: 'IB' };

export const UDADDY_USAGE = `usage: udaddy
\t[-s server_address]
\t[-b bind_address]
\t[-f address_format]
\t    name, ip, ipv6, or gid
\t[-P port_space]
\t    udp or ipoib
\t[-c connections]
\t[-C message_count]
\t[-S message_size]
\t[-t type_of_service]
\t[-p port_space - 0x111 for UDP (default), 0x2 for IPOIB]
`;

/** udaddy's fixed port (static const char *port = "7174") */
const PORT = 7174;
/** resolve_addr / resolve_route timeout of udaddy.c */
const RESOLVE_MS = 2000;
/** getaddrinfo's EAI_NONAME, as rdma_getaddrinfo returns it */
const EAI_NONAME = -2;

interface Udaddy extends UdTest {
  connections: number;
  ch: EventChannel;
  nodes: UdNode[];
  connIndex: number;
  connectsLeft: number;
  ps: PortSpace;
  tos: number | null;
}

/** udaddy's main; returns its exit status (main's ret, & 0xff as the shell sees it). */
export async function udaddyMain(
  argv: string[],
  out: (s: string) => void = (s) => process.stdout.write(s),
  err: (s: string) => void = (s) => process.stderr.write(s),
): Promise<number> {
  let opts: Array<[string, string]>;
  try {
    opts = getopt(argv, 's:b:c:C:S:t:p:P:f:');
  } catch (e) {
    if (!(e instanceof UsageError)) throw e;
    // getopt's complaint on stderr, then udaddy's usage on stdout, exit(1)
    err(`udaddy: ${e.message}\n`);
    out(UDADDY_USAGE);
    return 1;
  }
  let server: string | undefined,
    bind: string | undefined,
    tos: number | null = null;
  let connections = 1,
    count = 10,
    size = 100;
  let psNum = RDMA_PS_UDP;
  let numeric = false;
  for (const [c, v] of opts) {
    switch (c) {
      case 's':
        server = v;
        break;
      case 'b':
        bind = v;
        break;
      case 'c':
        connections = atoi(v);
        break;
      case 'C':
        count = atoi(v);
        break;
      case 'S':
        size = atoi(v);
        break;
      case 't':
        tos = strtol(v) & 0xff;
        break;
      case 'p': // "for backwards compatibility - use -P"
        psNum = strtol(v);
        break;
      case 'f':
        if (v.slice(0, 2).toLowerCase() === 'ip') numeric = true;
        else if (v.slice(0, 3).toLowerCase() === 'gid') {
          err('udaddy: -f gid (AF_IB addresses) is not supported by softroce (use ip, ipv6 or name)\n');
          return 1;
        } else if (v.slice(0, 4).toLowerCase() !== 'name') err('Warning: unknown address format\n');
        break;
      case 'P':
        if (v.slice(0, 5).toLowerCase() === 'ipoib') psNum = RDMA_PS_IPOIB;
        else if (v.slice(0, 3).toLowerCase() !== 'udp') err('Warning: unknown port space format\n');
        break;
    }
  }
  const ps = PS_NAME[psNum];
  if (ps === undefined && psNum !== RDMA_PS_IPOIB && server !== undefined) {
    // A port space the kernel does not know: the client's rdma_create_id fails with EINVAL in alloc_nodes,
    // which prints nothing, and udaddy exits 1 (the real one does so in the lab with -p 7175).
    return 1;
  }
  if (ps === undefined) {
    // rdma_create_id refuses it here: softroce has no IPoIB port space (the kernel takes 0x2 for UD ids).
    err(`udaddy: port space ${'0x' + psNum.toString(16)} is not supported by softroce (0x111 UDP, 0x106 TCP, 0x13f IB)\n`);
    return 1;
  }
  const t: Udaddy = {
    tool: 'udaddy',
    out,
    err,
    count,
    size,
    connections,
    ch: createEventChannel(),
    nodes: [],
    connIndex: 0,
    connectsLeft: connections,
    ps,
    tos,
  };
  // alloc_nodes: the client's ids now; the server's come with the requests
  for (let i = 0; i < Math.max(0, connections); i++) {
    const n = newNode(i);
    if (server !== undefined) n.id = createId(t.ch, { ps, qpType: 'UD', context: n });
    t.nodes.push(n);
  }
  return finishTest(t, () => (server !== undefined ? runClient(t, bind, server, numeric) : runServer(t, bind, numeric)));
}

/** getaddrinfo of one address: the address, or EAI_NONAME (a name with -f ip, or one that does not resolve). */
async function getAddr(a: string, numeric: boolean): Promise<string | number> {
  if (isIP(a) !== 0) return a;
  if (numeric) return EAI_NONAME;
  try {
    return (await lookup(a)).address;
  } catch {
    return EAI_NONAME;
  }
}

function gaiStrerror(ret: number): string {
  return ret === EAI_NONAME ? 'Name or service not known' : `Unknown error ${ret}`;
}

async function nextEvent(t: Udaddy): Promise<CmEvent> {
  return t.ch.getEvent({ timeoutMs: WAIT_MS });
}

/** connect_events: until every connection is made or failed, or a handler fails. */
async function connectEvents(t: Udaddy): Promise<number> {
  let ret = 0;
  while (t.connectsLeft > 0 && !ret) ret = cmaHandler(t, await nextEvent(t));
  return ret;
}

function nodeOf(t: Udaddy, ev: CmEvent): UdNode | undefined {
  return t.nodes.find((n) => n.id === ev.id);
}

/** cma_handler */
function cmaHandler(t: Udaddy, ev: CmEvent): number {
  switch (ev.event) {
    case 'ADDR_RESOLVED':
      return addrHandler(t, nodeOf(t, ev)!);
    case 'ROUTE_RESOLVED':
      return routeHandler(t, nodeOf(t, ev)!);
    case 'CONNECT_REQUEST':
      return connectHandler(t, ev);
    case 'ESTABLISHED':
      return resolvedHandler(t, nodeOf(t, ev)!, ev);
    case 'ADDR_ERROR':
    case 'ROUTE_ERROR':
    case 'CONNECT_ERROR':
    case 'UNREACHABLE':
    case 'REJECTED':
      // rdma_event_str's names
      t.out(`udaddy: event: RDMA_CM_EVENT_${ev.event}, error: ${ev.status}\n`);
      t.connectsLeft--;
      return ev.status;
    default:
      // DEVICE_REMOVAL: cleanup happens after the test
      return 0;
  }
}

function addrHandler(t: Udaddy, n: UdNode): number {
  const id = n.id!;
  if (t.tos !== null) {
    try {
      id.setOption({ tos: t.tos });
    } catch (e) {
      perror(t, 'udaddy: set TOS option failed', e);
    }
  }
  try {
    void id.resolveRoute({ timeoutMs: RESOLVE_MS }); // ROUTE_RESOLVED / ROUTE_ERROR
  } catch (e) {
    t.connectsLeft--;
    return perror(t, 'udaddy: resolve route failed', e);
  }
  return 0;
}

function routeHandler(t: Udaddy, n: UdNode): number {
  let ret = verifyTestParams(t, n);
  if (!ret) ret = initNode(t, n);
  if (!ret) ret = postRecvs(t, n);
  if (!ret) {
    try {
      // conn_param zeroed; the private data is rai->ai_connect (none for IP addresses)
      void n.id!.connect(); // ESTABLISHED / UNREACHABLE
    } catch (e) {
      ret = perror(t, 'udaddy: failure connecting', e);
    }
  }
  if (ret) t.connectsLeft--;
  return ret;
}

function connectHandler(t: Udaddy, ev: CmEvent): number {
  let ret: number;
  const id = ev.id;
  if (t.connIndex === t.connections) {
    ret = -ENOMEM;
  } else {
    const n = t.nodes[t.connIndex++]!;
    n.id = id;
    id.context = n;
    ret = verifyTestParams(t, n);
    if (!ret) ret = initNode(t, n);
    if (!ret) ret = postRecvs(t, n);
    if (!ret) {
      try {
        // conn_param.qp_num = our QP: the SIDR_REP carries it and the Q_Key
        id.accept({ qpNum: id.qp!.qpn }).catch(() => undefined);
        n.connected = true;
        t.connectsLeft--;
        return 0;
      } catch (e) {
        ret = perror(t, 'udaddy: failure accepting', e);
      }
    }
    // err2: the node forgets the id (the C tool leaves its resources to destroy_nodes, which skips it)
    n.id = null;
    t.connectsLeft--;
    freeOrphan(n);
  }
  t.out('udaddy: failing connection request\n');
  try {
    id.reject();
  } catch {
    /* the request is gone already */
  }
  return ret;
}

/** What a failed connect_handler made before it dropped the id (the C tool leaks it until exit). */
function freeOrphan(n: UdNode): void {
  n.mr?.close();
  n.mr = null;
  n.mem = null;
}

function resolvedHandler(t: Udaddy, n: UdNode, ev: CmEvent): number {
  const ud = ev.param?.ud;
  if (ud === undefined) {
    t.out('udaddy: failure creating address handle\n');
    t.connectsLeft--;
    return -1;
  }
  n.remoteQpn = ud.qpNum;
  n.remoteQkey = ud.qkey;
  try {
    // ibv_create_ah(node->pd, &event->param.ud.ah_attr)
    const a = ud.ahAttr;
    n.ah = n.pd!.createAh({ gid: a.dgid, port: a.port, sgidIndex: a.sgidIndex, hopLimit: a.hopLimit, trafficClass: a.trafficClass, flowLabel: a.flowLabel });
  } catch {
    t.out('udaddy: failure creating address handle\n');
    t.connectsLeft--;
    return -1;
  }
  n.connected = true;
  t.connectsLeft--;
  return 0;
}

/**
 * create_reply_ah: ibv_create_ah_from_wc over the GRH at the head of the receive buffer (for RoCEv2 over
 * IPv4, 20 zero bytes then the IPv4 header; else the IPv6 header / IB GRH): the destination is the
 * packet's source, the source GID index the local GID the packet was sent to, hop limit 0xFF (rdma-core's
 * ibv_init_ah_from_wc); the peer's QPN is the immediate, its Q_Key our QP's.
 */
function createReplyAh(n: UdNode, wc: Wc): number {
  const id = n.id!;
  const qp = id.qp!;
  const g = n.mem!;
  let sgid: string, dgid: string, tclass: number, flow: number;
  if (g[20]! >>> 4 === 4) {
    sgid = gidToString(ipv4ToGid(g.readUInt32BE(20 + 12)));
    dgid = gidToString(ipv4ToGid(g.readUInt32BE(20 + 16)));
    tclass = g[21]!;
    flow = 0;
  } else {
    sgid = gidToString(g.subarray(8, 24));
    dgid = gidToString(g.subarray(24, 40));
    const w = g.readUInt32BE(0);
    tclass = (w >>> 20) & 0xff;
    flow = w & 0xfffff;
  }
  const dev = id.verbs!;
  const mine = gidToString(gidFromString(dgid));
  const entry = dev.gidTable(id.portNum).find((e) => gidToString(e.gid) === mine && e.type === id.route.gidType);
  try {
    n.ah = n.pd!.createAh({
      gid: sgid,
      port: id.portNum,
      sgidIndex: entry?.index ?? id.route.sgidIndex ?? dev.defaultSgidIndex(id.portNum),
      hopLimit: 0xff,
      trafficClass: tclass,
      flowLabel: flow,
    });
  } catch {
    return -1;
  }
  n.remoteQpn = wc.imm >>> 0;
  n.remoteQkey = qp.qkey;
  return 0;
}

async function runServer(t: Udaddy, bind: string | undefined, numeric: boolean): Promise<number> {
  t.out('udaddy: starting server\n');
  const listen = createId(t.ch, { ps: t.ps, qpType: 'UD', context: t });
  try {
    // get_rdma_addr(RAI_PASSIVE): the bind address, else the wildcard
    const src = bind === undefined ? '0.0.0.0' : await getAddr(bind, numeric);
    if (typeof src === 'number') {
      t.out(`udaddy: getrdmaaddr error: ${gaiStrerror(src)}\n`);
      return src;
    }
    try {
      await listen.bind({ address: src, port: PORT });
    } catch (e) {
      return perror(t, 'udaddy: bind address failed', e);
    }
    try {
      await listen.listen(0);
    } catch (e) {
      return perror(t, 'udaddy: failure trying to listen', e);
    }
    // udaddy ignores connect_events' result: the transfers run on the connections it has
    await connectEvents(t);
    let ret = 0;
    if (t.count) {
      t.out('receiving data transfers\n');
      ret = await pollCqs(t, t.nodes, (n, wc) => {
        if (n.ah !== null) return 0;
        const rc = createReplyAh(n, wc);
        if (rc) t.out('udaddy: failed to create reply AH\n');
        return rc;
      });
      if (ret) return ret;
      t.out('sending replies\n');
      for (const n of t.nodes) {
        ret = postSends(t, n, true);
        if (ret) return ret;
      }
      ret = await pollCqs(t, t.nodes);
      if (ret) return ret;
      t.out('data transfers complete\n');
    }
    return ret;
  } finally {
    listen.close();
  }
}

async function runClient(t: Udaddy, bind: string | undefined, server: string, numeric: boolean): Promise<number> {
  t.out('udaddy: starting client\n');
  // get_rdma_addr: the bind address (passive lookup), then the server's with port 7174
  const src = bind === undefined ? undefined : await getAddr(bind, numeric);
  const dst = typeof src === 'number' ? src : await getAddr(server, numeric);
  const bad = typeof src === 'number' ? src : typeof dst === 'number' ? dst : null;
  if (bad !== null) {
    t.out(`udaddy: getaddrinfo error: ${gaiStrerror(bad)}\n`);
    return bad;
  }
  t.out('udaddy: connecting\n');
  for (const n of t.nodes) {
    try {
      void n.id!.resolveAddr({
        ...(src !== undefined ? { src: { address: src as string, port: 0 } } : {}),
        dst: { address: dst as string, port: PORT },
        timeoutMs: RESOLVE_MS,
      });
    } catch (e) {
      t.connectsLeft--;
      return perror(t, 'udaddy: failure getting addr', e);
    }
  }
  let ret = await connectEvents(t);
  if (ret) return ret;
  if (t.count) {
    t.out('initiating data transfers\n');
    for (const n of t.nodes) {
      ret = postSends(t, n, false);
      if (ret) return ret;
    }
    t.out('receiving data transfers\n');
    ret = await pollCqs(t, t.nodes);
    if (ret) return ret;
    t.out('data transfers complete\n');
  }
  return ret;
}

/** the process entry (bin/udaddy.js) */
export async function udaddyCli(): Promise<void> {
  await runTool(udaddyMain, 'udaddy');
}
