/**
 * What udaddy.c and mckey.c (rdma-core librdmacm/examples) share: the per-connection node (PD, one CQ
 * for sends and receives, a UD QP on the rdma_cm id, one buffer of message_size + 40 bytes for the
 * GRH), its creation with the same sizes, the receive and SEND_WITH_IMM posts, the CQ polling, and the
 * C library's ways of reading numbers (atoi, strtol) and reporting errors (perror, strerror).
 */
import type { CmId } from '../cm/cm-id.js';
import type { Ah, Pd } from '../verbs/objects.js';
import type { Cq } from '../verbs/cq.js';
import type { Mr } from '../verbs/mr.js';
import { RdmaError } from '../verbs/errors.js';
import { Wc } from '../verbs/types.js';
import { UsageError } from './args.js';

/** sizeof(struct ibv_grh): every UD receive starts with it */
export const GRH_LEN = 40;
/** how long a poll or an event wait may take before the tool gives up (the C tools block forever) */
export const WAIT_MS = 90_000;
export const ETIMEDOUT = 110;
export const EINVAL = 22;
export const ENOMEM = 12;

/** struct cmatest_node */
export interface UdNode {
  readonly index: number;
  id: CmId | null;
  connected: boolean;
  pd: Pd | null;
  cq: Cq | null;
  mr: Mr | null;
  mem: Buffer | null;
  ah: Ah | null;
  remoteQpn: number;
  remoteQkey: number;
}

export function newNode(index: number): UdNode {
  return { index, id: null, connected: false, pd: null, cq: null, mr: null, mem: null, ah: null, remoteQpn: 0, remoteQkey: 0 };
}

/** The test's sizes; create_message sets count to 0 when size is 0, as the C tools do. */
export interface UdTest {
  count: number;
  size: number;
  readonly tool: string;
  readonly out: (s: string) => void;
  readonly err: (s: string) => void;
}

/** glibc's strerror for the errnos the CM and verbs report */
const STRERROR: Record<string, string> = {
  EPERM: 'Operation not permitted',
  ENOENT: 'No such file or directory',
  EBADF: 'Bad file descriptor',
  EAGAIN: 'Resource temporarily unavailable',
  ENOMEM: 'Cannot allocate memory',
  EACCES: 'Permission denied',
  EBUSY: 'Device or resource busy',
  EEXIST: 'File exists',
  ENODEV: 'No such device',
  EINVAL: 'Invalid argument',
  ENOSPC: 'No space left on device',
  ERANGE: 'Numerical result out of range',
  ENODATA: 'No data available',
  EPROTO: 'Protocol error',
  EOPNOTSUPP: 'Operation not supported',
  EADDRINUSE: 'Address already in use',
  EADDRNOTAVAIL: 'Cannot assign requested address',
  ENETUNREACH: 'Network is unreachable',
  ECONNRESET: 'Connection reset by peer',
  ETIMEDOUT: 'Connection timed out',
  ECONNREFUSED: 'Connection refused',
  EHOSTUNREACH: 'No route to host',
};

export function strerror(code: string): string {
  return STRERROR[code] ?? `Unknown error (${code})`;
}

/**
 * perror(prefix) for a call that failed with `e` (a C verbs / rdma_cm call returning -1 and setting
 * errno); returns -1, what those calls return. An error that is not the stack's own is rethrown.
 */
export function perror(t: UdTest, prefix: string, e: unknown): number {
  if (!(e instanceof RdmaError)) throw e;
  t.err(`${prefix}: ${strerror(e.code)}\n`);
  return -1;
}

/** The positive errno a verbs post returns (ibv_post_send / ibv_post_recv), from its error. */
function postErrno(e: unknown): number {
  if (!(e instanceof RdmaError)) throw e;
  return e.errno || ENOMEM;
}

/** atoi: leading blanks, a sign, the digits that follow; 0 when there are none. */
export function atoi(s: string): number {
  const m = /^\s*([+-]?\d+)/.exec(s);
  if (m === null) return 0;
  const n = Number(m[1]);
  // an int: what atoi's strtol gives, truncated as the C cast does
  return n | 0;
}

/** strtol(s, NULL, 0): decimal, 0x hexadecimal or 0 octal prefix; 0 when nothing parses. */
export function strtol(s: string): number {
  const m = /^\s*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9]\d*)/.exec(s);
  if (m === null) return 0;
  const body = m[2]!;
  const v = /^0[xX]/.test(body) ? parseInt(body.slice(2), 16) : body.length > 1 && body[0] === '0' ? parseInt(body, 8) : parseInt(body, 10);
  return m[1] === '-' ? -v : v;
}

/**
 * verify_test_params: a UD message must fit the port's active MTU (IBA 9.7.1: UD is one packet);
 * the same message as the tools, and -EINVAL.
 */
export function verifyTestParams(t: UdTest, n: UdNode): number {
  const id = n.id!;
  const mtu = id.verbs!.queryPort(id.portNum).activeMtu;
  if (t.count && t.size > mtu) {
    t.out(`${t.tool}: message_size ${t.size} is larger than active mtu ${mtu}\n`);
    return -EINVAL;
  }
  return 0;
}

/**
 * init_node: a PD, one CQ of count * 2 entries (2 with no messages) for both queues, a UD QP with
 * count send and receive WRs (1 with no messages) of one SGE, sq_sig_all 0, then create_message (the
 * buffer of size + GRH, LOCAL_WRITE). `refuseQp` is an errno the QP creation fails with (mckey -l).
 */
export function initNode(t: UdTest, n: UdNode, refuseQp: 'EOPNOTSUPP' | null = null): number {
  const id = n.id!;
  const dev = id.verbs!;
  n.pd = dev.allocPd();
  n.cq = dev.createCq({ depth: t.count ? t.count * 2 : 2 });
  const wr = t.count ? t.count : 1;
  if (refuseQp !== null) {
    t.err(`${t.tool}: unable to create QP: ${strerror(refuseQp)}\n`);
    return -1;
  }
  try {
    id.createQp(n.pd, { sendCq: n.cq, recvCq: n.cq, cap: { maxSendWr: wr, maxRecvWr: wr, maxSendSge: 1, maxRecvSge: 1 }, sigAll: false, type: 'UD' });
  } catch (e) {
    return perror(t, `${t.tool}: unable to create QP`, e);
  }
  // create_message
  if (!t.size) t.count = 0;
  if (!t.count) return 0;
  n.mem = Buffer.alloc(t.size + GRH_LEN);
  n.mr = n.pd.regMr(n.mem, ['LOCAL_WRITE']);
  return 0;
}

/** post_recvs: count receives of size + GRH, all into the node's one buffer. */
export function postRecvs(t: UdTest, n: UdNode): number {
  if (!t.count) return 0;
  const qp = n.id!.qp!;
  for (let i = 0; i < t.count; i++) {
    try {
      qp.postRecv({ wrId: n.index, sg: [{ mr: n.mr!, offset: 0, length: t.size + GRH_LEN }] });
    } catch (e) {
      const r = postErrno(e);
      t.out(`failed to post receives: ${r}\n`);
      return r;
    }
  }
  return 0;
}

/** post_sends: count SEND_WITH_IMM of size bytes to the node's AH, QPN and Q_Key, the immediate our QPN. */
export function postSends(t: UdTest, n: UdNode, signaled: boolean): number {
  if (!n.connected || !t.count) return 0;
  const qp = n.id!.qp!;
  let ret = 0;
  for (let i = 0; i < t.count && !ret; i++) {
    try {
      qp.postSend({
        wrId: n.index,
        opcode: 'SEND_WITH_IMM',
        imm: qp.qpn,
        signaled,
        sg: [{ mr: n.mr!, offset: 0, length: t.size }],
        ud: { ah: n.ah!, remoteQpn: n.remoteQpn, remoteQkey: n.remoteQkey },
      });
    } catch (e) {
      ret = postErrno(e);
      t.out(`failed to post sends: ${ret}\n`);
    }
  }
  return ret;
}

/**
 * poll_cqs: count completions from each connected node's CQ, in batches of up to 8 (their status is not
 * looked at, as in the C tools); `first` sees the first batch of a node (udaddy's create_reply_ah) and
 * may fail the poll. The C tools spin; this waits for the CQ's notification, WAIT_MS at most.
 */
export async function pollCqs(t: UdTest, nodes: readonly UdNode[], first?: (n: UdNode, wc: Wc) => number): Promise<number> {
  const wcs = Array.from({ length: 8 }, () => new Wc());
  for (const n of nodes) {
    if (!n.connected) continue;
    const cq = n.cq!;
    const deadline = Date.now() + WAIT_MS;
    for (let done = 0; done < t.count;) {
      const r = cq.poll(wcs, 8);
      if (r > 0) {
        done += r;
        if (first !== undefined) {
          const rc = first(n, wcs[0]!);
          if (rc) return rc;
        }
        continue;
      }
      if (Date.now() > deadline) {
        t.out(`${t.tool}: failed polling CQ: ${-ETIMEDOUT}\n`);
        return -ETIMEDOUT;
      }
      await cqNotified(cq);
    }
  }
  return 0;
}

/** The CQ's next completion (or 50 ms, whichever is first). */
function cqNotified(cq: Cq): Promise<void> {
  return new Promise<void>((res) => {
    const timer = setTimeout(done, 50);
    function done(): void {
      cq.off('notify', done);
      clearTimeout(timer);
      res();
    }
    cq.once('notify', done);
    cq.reqNotify();
  });
}

/** Sends still in the QP's queue go out before it is destroyed (unsignaled UD sends: no completion says when). */
export async function drainSends(n: UdNode): Promise<void> {
  const qp = n.id?.qp;
  if (qp == null) return;
  const end = Date.now() + 5000;
  while (!qp.closed && qp.outstanding > 0 && Date.now() < end) await new Promise((r) => setTimeout(r, 5));
}

/** destroy_node: AH, QP, CQ, MR, PD, then the id. */
/**
 * main's tail in udaddy.c and mckey.c: "test complete" whatever happened, the nodes and the channel
 * destroyed, "return status N"; the process exits with N & 0xff.
 */
export async function finishTest(
  t: UdTest & { readonly nodes: readonly UdNode[]; readonly ch: { close(): void } },
  run: () => Promise<number>,
): Promise<number> {
  let ret: number;
  try {
    ret = await run();
  } finally {
    t.out('test complete\n');
    for (const n of t.nodes) destroyNode(n);
    t.ch.close();
  }
  t.out(`return status ${ret}\n`);
  return ret & 0xff;
}

export function destroyNode(n: UdNode): void {
  const id = n.id;
  if (id === null) return;
  n.ah?.close();
  if (id.qp !== null) id.destroyQp();
  n.cq?.close();
  n.mr?.close();
  n.pd?.close();
  id.close();
}

/**
 * getopt(argc, argv, optstring) as glibc runs it for these tools: the options in the order given (each
 * takes effect as the C switch sees it, so `-p` then `-P` is not `-P` then `-p`), bundled flags, the
 * argument attached or next, "--" ends them, other words are skipped. An unknown option or a missing
 * argument throws the UsageError whose message is glibc's complaint (after "<tool>: ").
 */
export function getopt(argv: readonly string[], optstring: string): Array<[string, string]> {
  const takes = new Map<string, boolean>();
  for (let i = 0; i < optstring.length; i++) {
    const c = optstring[i]!;
    if (c === ':') continue;
    takes.set(c, optstring[i + 1] === ':');
  }
  const r: Array<[string, string]> = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--') break;
    if (!a.startsWith('-') || a.length < 2) continue;
    for (let k = 1; k < a.length; k++) {
      const c = a[k]!;
      const arg = takes.get(c);
      if (arg === undefined) throw new UsageError(`invalid option -- '${c}'`);
      if (!arg) {
        r.push([c, '']);
        continue;
      }
      const v = k + 1 < a.length ? a.slice(k + 1) : argv[++i];
      if (v === undefined) throw new UsageError(`option requires an argument -- '${c}'`);
      r.push([c, v]);
      break;
    }
  }
  return r;
}
