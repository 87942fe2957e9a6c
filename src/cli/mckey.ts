/**
 * mckey, as rdma-core's librdmacm/examples/mckey.c (v44, the lab's rdmacm-utils): UD multicast over
 * rdma_cm. Each of -c ids (port space UDP, Q_Key 0x01234567) is bound to -b, resolves the group
 * address, makes its UD QP (receivers post message_count receives first) and joins the group
 * (rdma_join_multicast: MGID ::ffff:<group>; the port's UDP link joins the IPv4 group, so the host
 * sends the IGMP report). MULTICAST_JOIN prints the MGID and brings the AH to the group (QPN 0xFFFFFF);
 * after 3 s (mckey's pause "to give SM chance to configure switches") the sender (-s) posts
 * message_count unsignaled SEND_WITH_IMM of message_size bytes to it and receivers wait for as many
 * completions; then every id leaves the group. Same options, QP sizes, printed lines and exit status
 * ("return status N" is the last rdma_leave_multicast's result, as in mckey.c).
 */
import './epipe.js';
import { lookup } from 'node:dns/promises';
import { isIP } from 'node:net';
import { createEventChannel, type CmEvent, type EventChannel } from '../cm/event-channel.js';
import { createId } from '../cm/cm-id.js';
import type { PortSpace } from '../cm/port-space.js';
import { gidFromString, gidToIpv4Number, isIpv4Mapped, numberToIpv4 } from '../roce/gid.js';
import { runTool, UsageError } from './args.js';
import {
  atoi,
  finishTest,
  drainSends,
  getopt,
  initNode,
  newNode,
  perror,
  pollCqs,
  postRecvs,
  postSends,
  strerror,
  strtol,
  verifyTestParams,
  WAIT_MS,
  type UdNode,
  type UdTest,
} from './cm-ud.js';

export const MCKEY_USAGE = `usage: mckey
\t-m multicast_address
\t[-M unmapped_multicast_address]
\t replaces -m and requires -b
\t[-s(ender)]
\t[-b bind_address]
\t[-c connections]
\t[-C message_count]
\t[-S message_size]
\t[-p port_space - 0x111 for UDP (default), 0x2 for IPOIB]
\t[-o join as a send-only full-member]
\t[-l join without multicast loopback]
`;

const RDMA_PS_TCP = 0x0106;
const RDMA_PS_UDP = 0x0111;
const RDMA_PS_IB = 0x013f;
const PS_NAME: Partial<Record<number, PortSpace>> = { [RDMA_PS_TCP]: 'TCP', [RDMA_PS_UDP]: 'UDP', [RDMA_PS_IB]: 'IB' };
/** rdma_resolve_addr's timeout in mckey.c */
const RESOLVE_MS = 2000;
/** sleep(3) after the joins */
const SM_PAUSE_MS = 3000;
/** getaddrinfo's EAI_NONAME */
const EAI_NONAME = -2;

interface McNode extends UdNode {
  /** rdma_join_multicast succeeded: librdmacm has the group in the id's mc_list (what leave looks for) */
  joined: boolean;
}

interface Mckey extends UdTest {
  connections: number;
  ch: EventChannel;
  nodes: McNode[];
  connectsLeft: number;
  sender: boolean;
  loopback: boolean;
  /** the group to join (an IPv4 address), or null: an unmapped (-M) GID this stack cannot join */
  group: string | null;
  /** the error a join of an -M GID softroce cannot join gets */
  unmappedErr: 'EINVAL' | 'EADDRNOTAVAIL' | null;
  /** errno of the last call addr_handler saw fail (what mckey's perror after it prints) */
  lastErrno: string;
}

/** mckey's main; returns its exit status (main's ret, & 0xff as the shell sees it). */
export async function mckeyMain(
  argv: string[],
  out: (s: string) => void = (s) => process.stdout.write(s),
  err: (s: string) => void = (s) => process.stderr.write(s),
): Promise<number> {
  let opts: Array<[string, string]>;
  try {
    opts = getopt(argv, 'm:M:sb:c:C:S:p:ol');
  } catch (e) {
    if (!(e instanceof UsageError)) throw e;
    err(`mckey: ${e.message}\n`);
    out(MCKEY_USAGE);
    return 1;
  }
  let dst: string | undefined, src: string | undefined;
  let unmapped = false,
    sender = false,
    loopback = true;
  let connections = 1,
    count = 10,
    size = 100,
    psNum = RDMA_PS_UDP;
  for (const [c, v] of opts) {
    switch (c) {
      case 'm':
        dst = v;
        break;
      case 'M':
        unmapped = true;
        dst = v;
        break;
      case 's':
        sender = true;
        break;
      case 'b':
        src = v;
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
      case 'p':
        psNum = strtol(v);
        break;
      case 'o':
        // A send-only full-member join: on RoCE the only difference is that the kernel sends no IGMP
        // report; softroce's rdma_join_multicast always joins as a full member (the QP also receives).
        break;
      case 'l':
        loopback = false;
        break;
    }
  }
  if (unmapped && src === undefined) {
    out('unmapped multicast address requires binding to source address\n');
    return 1;
  }
  const ps = PS_NAME[psNum];
  if (ps === undefined) {
    err(`mckey: port space ${'0x' + psNum.toString(16)} is not supported by softroce (0x111 UDP)\n`);
    return 1;
  }
  const t: Mckey = {
    tool: 'mckey',
    out,
    err,
    count,
    size,
    connections,
    ch: createEventChannel(),
    nodes: [],
    connectsLeft: connections,
    sender,
    loopback,
    group: null,
    unmappedErr: null,
    lastErrno: 'EINVAL',
  };
  // alloc_nodes
  for (let i = 0; i < Math.max(0, connections); i++) {
    const n: McNode = { ...newNode(i), joined: false };
    n.id = createId(t.ch, { ps, qpType: 'UD', context: n });
    t.nodes.push(n);
  }
  return finishTest(t, () => run(t, src, dst, unmapped));
}

/** get_addr: getaddrinfo(name, NULL, NULL), its complaint on failure. */
async function getAddr(t: Mckey, a: string | undefined): Promise<string | number> {
  if (a !== undefined && isIP(a) !== 0) return a;
  try {
    if (a === undefined) throw new Error('no name');
    return (await lookup(a)).address;
  } catch {
    t.out('getaddrinfo failed (Name or service not known) - invalid hostname or IP address\n');
    return EAI_NONAME;
  }
}

/**
 * get_dst_addr for -M: the GID as inet_pton(AF_INET6) reads it (all zeros when it cannot). An
 * IPv4-mapped multicast GID is the MGID rdma_cm makes for that IPv4 group, so it is joined as that
 * group; any other cannot be joined by softroce's UDP links (rdma_cm on RoCE v2 has IPv4 groups only):
 * the join fails as rdma_join_multicast does (EINVAL for the zero GID, EADDRNOTAVAIL for the rest).
 */
function unmappedGroup(t: Mckey, gid: string): void {
  let g: Uint8Array | null;
  try {
    g = isIP(gid) === 6 ? gidFromString(gid) : null;
  } catch {
    g = null;
  }
  if (g === null || g.every((b) => b === 0)) {
    t.unmappedErr = 'EINVAL';
    return;
  }
  if (isIpv4Mapped(g) && g[12]! >>> 4 === 0xe) t.group = numberToIpv4(gidToIpv4Number(g));
  else t.unmappedErr = 'EADDRNOTAVAIL';
}

async function run(t: Mckey, src: string | undefined, dst: string | undefined, unmapped: boolean): Promise<number> {
  t.out(`mckey: starting ${t.sender ? 'client' : 'server'}\n`);
  let srcAddr: string | undefined;
  if (src !== undefined) {
    const a = await getAddr(t, src);
    if (typeof a === 'number') return a;
    srcAddr = a;
  }
  if (unmapped) unmappedGroup(t, dst!);
  else {
    const a = await getAddr(t, dst);
    if (typeof a === 'number') return a;
    t.group = a;
  }
  t.out('mckey: joining\n');
  for (const n of t.nodes) {
    const id = n.id!;
    if (srcAddr !== undefined) {
      try {
        await id.bind({ address: srcAddr, port: 0 });
      } catch (e) {
        t.connectsLeft--;
        return perror(t, 'mckey: addr bind failure', e);
      }
    }
    let ret: number;
    let failed: unknown = null;
    if (unmapped) ret = addrHandler(t, n);
    else {
      ret = 0;
      try {
        // the outcome comes as the id's event (ADDR_RESOLVED / ADDR_ERROR)
        void id.resolveAddr({ ...(srcAddr !== undefined ? { src: { address: srcAddr, port: 0 } } : {}), dst: t.group!, timeoutMs: RESOLVE_MS });
      } catch (e) {
        failed = e;
        ret = -1;
      }
    }
    if (ret) {
      // perror after addr_handler prints the errno its failure left (the join's, or the QP's)
      if (failed !== null) perror(t, 'mckey: resolve addr failure', failed);
      else t.err(`mckey: resolve addr failure: ${strerror(t.lastErrno)}\n`);
      t.connectsLeft--;
      return ret;
    }
  }
  let ret = await connectEvents(t);
  if (!ret) {
    // cma_thread: later MULTICAST_ERROR / ADDR_CHANGE events are printed as they come
    t.ch.on('event', (ev: CmEvent) => {
      if (ev.event === 'MULTICAST_ERROR' || ev.event === 'ADDR_CHANGE') t.out(`mckey: event: RDMA_CM_EVENT_${ev.event}, status: ${ev.status}\n`);
    });
    await new Promise((r) => setTimeout(r, SM_PAUSE_MS));
    if (t.count) {
      if (t.sender) {
        t.out('initiating data transfers\n');
        for (const n of t.nodes) {
          ret = postSends(t, n, false);
          if (ret) break;
        }
      } else {
        t.out('receiving data transfers\n');
        ret = await pollCqs(t, t.nodes);
      }
      if (!ret) t.out('data transfers complete\n');
    }
  }
  // out: every id leaves the group; the last one's result is mckey's
  for (const n of t.nodes) {
    await drainSends(n);
    if (!n.joined) {
      // librdmacm finds no such group in the id's list
      t.err(`mckey: failure leaving: ${strerror('EADDRNOTAVAIL')}\n`);
      ret = -1;
      continue;
    }
    try {
      n.id!.leaveMulticast(t.group!);
      ret = 0;
    } catch (e) {
      ret = perror(t, 'mckey: failure leaving', e);
    }
  }
  return ret;
}

/** connect_events */
async function connectEvents(t: Mckey): Promise<number> {
  let ret = 0;
  while (t.connectsLeft > 0 && !ret) {
    const ev = await t.ch.getEvent({ timeoutMs: WAIT_MS });
    ret = cmaHandler(t, ev);
  }
  return ret;
}

function cmaHandler(t: Mckey, ev: CmEvent): number {
  const n = t.nodes.find((x) => x.id === ev.id);
  switch (ev.event) {
    case 'ADDR_RESOLVED':
      return n === undefined ? 0 : addrHandler(t, n);
    case 'MULTICAST_JOIN':
      return n === undefined ? 0 : joinHandler(t, n, ev);
    case 'ADDR_ERROR':
    case 'ROUTE_ERROR':
    case 'MULTICAST_ERROR':
      t.out(`mckey: event: RDMA_CM_EVENT_${ev.event}, error: ${ev.status}\n`);
      t.connectsLeft--;
      return ev.status;
    default:
      return 0;
  }
}

/** addr_handler: check the size, make the QP (receivers post their receives), join the group. */
function addrHandler(t: Mckey, n: McNode): number {
  let ret = verifyTestParams(t, n);
  if (!ret) {
    // -l asks for IBV_QP_CREATE_BLOCK_SELF_MCAST_LB, which rxe does not support (providers/rxe
    // check_qp_init_attr: no create flags): rdma_create_qp_ex fails with EOPNOTSUPP.
    ret = initNode(t, n, t.loopback ? null : 'EOPNOTSUPP');
    if (ret) t.lastErrno = t.loopback ? 'EINVAL' : 'EOPNOTSUPP';
  }
  if (!ret && !t.sender) ret = postRecvs(t, n);
  if (!ret) {
    try {
      if (t.group === null) throw Object.assign(new Error(), { code: t.unmappedErr });
      void n.id!.joinMulticast(t.group, { context: n }); // MULTICAST_JOIN / MULTICAST_ERROR
      n.joined = true;
    } catch (e) {
      const code = (e as { code?: unknown }).code;
      t.lastErrno = typeof code === 'string' ? code : 'EINVAL';
      t.err(`mckey: failure joining: ${strerror(t.lastErrno)}\n`);
      ret = -1;
    }
  }
  if (ret) t.connectsLeft--;
  return ret;
}

/** join_handler: the MGID line, the AH to the group (ibv_create_ah with the event's ah_attr). */
function joinHandler(t: Mckey, n: McNode, ev: CmEvent): number {
  const ud = ev.param?.ud;
  if (ud !== undefined) {
    // RoCE has no LIDs (mlid 0); the SL is the one of the id's TOS, 0 here (mckey sets no TOS).
    t.out(`mckey: joined dgid: ${ud.ahAttr.dgid} mlid 0x0 sl 0\n`);
    n.remoteQpn = ud.qpNum;
    n.remoteQkey = ud.qkey;
    try {
      const a = ud.ahAttr;
      n.ah = n.pd!.createAh({ gid: a.dgid, port: a.port, sgidIndex: a.sgidIndex, hopLimit: a.hopLimit, trafficClass: a.trafficClass, flowLabel: a.flowLabel });
    } catch {
      n.ah = null;
    }
  }
  if (n.ah === null) {
    t.out('mckey: failure creating address handle\n');
    t.connectsLeft--;
    return -1;
  }
  n.connected = true;
  t.connectsLeft--;
  return 0;
}

/** the process entry (bin/mckey.js) */
export async function mckeyCli(): Promise<void> {
  await runTool(mckeyMain, 'mckey');
}
