/**
 * ibv_post_send's per-WR work: the checks C returns EINVAL for (all made before any WR of a list
 * is queued), and the copy of a WR into the send WQE the requester runs on (with the local
 * protection check of IBA 10.6.3.4 and the inline copy).
 */
import { VerbsError } from './errors.js';
import { ACCESS, WrOp, type SendWr } from './types.js';
import { checkSgl, Ah, type Pd } from './objects.js';
import * as V from './validate.js';
import { WqeState, type SendWqe } from '../roce/transport/wqe.js';
import type { SgeLike } from '../roce/transport/shared.js';
import type { QpType } from '../roce/transport/types.js';
import type { QpCap } from './qp-attrs.js';

/** What the send WR checks read of the QP (a Qp). */
export interface SendQueueOwner {
  readonly type: QpType;
  readonly pd: Pd;
  readonly cap: Required<QpCap>;
  readonly sigAll: boolean;
  readonly pathMtu: number;
  readonly port: number;
  readonly device: { readonly attr: { readonly maxMsgSize: number } };
}

/** The boolean flags of a send WR (checked per post: a module constant, no array per call). */
const SEND_FLAGS = ['signaled', 'solicited', 'fence', 'inline'] as const;

export function checkSendWr(qp: SendQueueOwner, w: SendWr): void {
  const op = 'ibv_post_send';
  V.obj(op, 'wr', w);
  V.wrId(op, 'wrId', w.wrId);
  const code = typeof w.opcode === 'string' && Object.hasOwn(WrOp, w.opcode) ? WrOp[w.opcode] : undefined;
  if (code === undefined) throw new VerbsError('EINVAL', op, `unknown opcode ${String(w.opcode)}`, 'opcode');
  const t = qp.type;
  if ((t === 'UD' || t === 'GSI') && code !== WrOp.SEND && code !== WrOp.SEND_WITH_IMM)
    throw new VerbsError('EINVAL', op, `${w.opcode} is not allowed on a UD QP`, 'opcode');
  if (t === 'UC' && (code === WrOp.RDMA_READ || code >= WrOp.ATOMIC_CMP_AND_SWP || code === WrOp.SEND_WITH_INV))
    throw new VerbsError('EINVAL', op, `${w.opcode} is not allowed on a UC QP`, 'opcode');
  for (const k of SEND_FLAGS) V.optBool(op, k, w[k]);
  const len = checkSgl(w.sg, qp.cap.maxSendSge, op);
  if (w.inline && len > qp.cap.maxInline) throw new VerbsError('EINVAL', op, `inline data ${len} > maxInline ${qp.cap.maxInline}`, 'inline');
  if (w.inline && (code === WrOp.RDMA_READ || code >= WrOp.ATOMIC_CMP_AND_SWP)) throw new VerbsError('EINVAL', op, 'inline is for sends and writes', 'inline');
  if (len > qp.device.attr.maxMsgSize) throw new VerbsError('EINVAL', op, `message of ${len} bytes > ${qp.device.attr.maxMsgSize}`, 'sg');
  const x = w as unknown as Record<string, unknown>;
  if (code === WrOp.SEND_WITH_IMM || code === WrOp.RDMA_WRITE_WITH_IMM) V.u32(op, 'imm', x['imm']);
  if (code === WrOp.SEND_WITH_INV) V.u32(op, 'invalidateRkey', x['invalidateRkey']);
  if (code >= WrOp.RDMA_WRITE) {
    // Without this an RDMA op would go out with R_Key 0 and VA 0 (the peer NAKs it much later).
    V.obj(op, 'remote', x['remote']);
    const r = x['remote'] as Record<string, unknown>;
    V.u64(op, 'remote', r['addr']);
    V.u32(op, 'remote', r['rkey']);
    // rdma-core's rxe provider (post_one_send): an atomic's target must be 8-byte aligned.
    if (code >= WrOp.ATOMIC_CMP_AND_SWP && ((r['addr'] as bigint) & 7n) !== 0n)
      throw new VerbsError('EINVAL', op, 'an atomic needs an 8-byte aligned remote address', 'remote');
  }
  if (code >= WrOp.ATOMIC_CMP_AND_SWP) {
    V.operand(op, 'compareAdd', x['compareAdd']);
    if (code === WrOp.ATOMIC_CMP_AND_SWP) V.operand(op, 'swap', x['swap']);
    if (len !== 8) throw new VerbsError('EINVAL', op, 'an atomic needs one 8-byte local buffer', 'sg');
  }
  if (t === 'UD' || t === 'GSI') {
    if (w.ud === undefined) throw new VerbsError('EINVAL', op, 'a UD send needs ud: { ah, remoteQpn, remoteQkey }', 'ud');
    V.obj(op, 'ud', w.ud);
    if (!(w.ud.ah instanceof Ah) || w.ud.ah.closed || w.ud.ah.pd !== qp.pd) throw new VerbsError('EINVAL', op, 'AH is closed or of another PD', 'ud');
    // The AH's source GID is an entry of its port's table; the QP sends through its own port's link.
    if (w.ud.ah.port !== qp.port) throw new VerbsError('EINVAL', op, `AH is of port ${w.ud.ah.port}, the QP of port ${qp.port}`, 'ud');
    V.int(op, 'ud', w.ud.remoteQpn, 0, 0xffffff);
    V.u32(op, 'ud', w.ud.remoteQkey);
    if (len > qp.pathMtu) throw new VerbsError('EINVAL', op, `UD message of ${len} bytes > path MTU ${qp.pathMtu}`, 'sg');
  }
}

export function fillSendWqe(qp: SendQueueOwner, e: SendWqe, w: SendWr): void {
  e.wrId = w.wrId;
  e.op = WrOp[w.opcode];
  // The WQE's own SGE array, refilled (this is its only writer): no array or closure per post.
  const sg = e.sg as SgeLike[];
  const n = w.sg.length;
  let len = 0;
  sg.length = n;
  for (let i = 0; i < n; i++) {
    const s = w.sg[i]!;
    sg[i] = s;
    len += s.length;
  }
  e.length = len;
  e.signaled = qp.sigAll || w.signaled === true;
  e.solicited = w.solicited === true;
  e.fence = w.fence === true;
  e.imm = 'imm' in w ? w.imm >>> 0 : 0;
  e.invRkey = 'invalidateRkey' in w ? w.invalidateRkey >>> 0 : 0;
  const addr = 'remote' in w ? w.remote.addr : 0n;
  // The halves only when the address changed: a WR posted again and again (perftest) costs no bigint.
  if (addr !== e.remoteAddr) {
    e.remoteAddr = addr;
    const a = BigInt.asUintN(64, addr);
    e.remoteHi = Number(a >> 32n);
    e.remoteLo = Number(a & 0xffffffffn);
  }
  e.rkey = 'remote' in w ? w.remote.rkey >>> 0 : 0;
  e.compareAdd = 'compareAdd' in w ? BigInt.asUintN(64, w.compareAdd) : 0n;
  e.swap = 'swap' in w ? BigInt.asUintN(64, w.swap) : 0n;
  e.ah = w.ud?.ah ?? null;
  e.remoteQpn = w.ud?.remoteQpn ?? 0;
  e.remoteQkey = w.ud ? w.ud.remoteQkey >>> 0 : 0;
  e.state = WqeState.POSTED;
  e.sent = 0;
  e.firstPsn = e.lastPsn = 0;
  e.psnAssigned = false;
  e.rdCounted = false;
  e.localErr = 0;
  e.inline = null;
  e.rdMaxSeen = -1;
  e.rdAsked = -1;
  e.rdAskedEnd = -1;
  if (e.rdHave !== null) e.rdHave.fill(0);
  // Local protection (IBA 10.6.3.4): every SGE inside a live MR of this PD; READ/atomic targets need LOCAL_WRITE.
  const needWrite = e.op === WrOp.RDMA_READ || e.op >= WrOp.ATOMIC_CMP_AND_SWP;
  for (const s of e.sg) {
    if (s.mr.closed || s.mr.pd !== qp.pd || s.offset + s.length > s.mr.length || (needWrite && !(s.mr.access & ACCESS.LOCAL_WRITE))) e.localErr = 4; // LOC_PROT_ERR
  }
  if (w.inline && !e.localErr) {
    const b = Buffer.allocUnsafe(e.length);
    let p = 0;
    for (const s of e.sg) {
      s.mr.buffer.copy(b, p, s.offset, s.offset + s.length);
      p += s.length;
    }
    e.inline = b;
  }
}
