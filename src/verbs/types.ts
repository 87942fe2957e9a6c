/**
 * Public verbs types: access flags, work requests, work completions, with
 * libibverbs' names. String unions at the API, small integers inside (one
 * name table bridges the two).
 */
import type { Mr } from './mr.js';
import type { Ah } from './objects.js';
import { ACCESS, type WcOpcode, type WcStatus } from '../roce/transport/types.js';

// The tables the transport shares with the verbs API are defined with the transport (it may not
// import verbs); these are their public names.
export { ACCESS, WrOp, WC_STATUS, WC_OPCODE } from '../roce/transport/types.js';
export type { WcStatus, WcOpcode } from '../roce/transport/types.js';

export type Access = keyof typeof ACCESS;
export function accessBits(
  a: readonly Access[] | undefined,
  arg: string,
  op: string,
  err: (code: 'EINVAL', op: string, msg: string, arg: string) => Error,
): number {
  let bits = 0;
  for (const x of a ?? []) {
    const b = ACCESS[x];
    if (b === undefined) throw err('EINVAL', op, `unknown access flag ${String(x)}`, arg);
    bits |= b;
  }
  return bits;
}

/** Scatter/gather element: a byte range of a registered region. */
export interface Sge {
  mr: Mr;
  offset: number;
  length: number;
}

export interface RecvWr {
  wrId: number;
  sg: readonly Sge[];
}

interface SendWrBase {
  wrId: number;
  sg: readonly Sge[];
  /** generate a completion (always on when the QP was created with sigAll) */
  signaled?: boolean;
  solicited?: boolean;
  fence?: boolean;
  /** copy the data at post time (up to maxInline bytes); the SGEs may then be reused at once */
  inline?: boolean;
  /** UD only: where to send */
  ud?: { ah: Ah; remoteQpn: number; remoteQkey: number };
}
export type Remote = { remote: { addr: bigint; rkey: number } };
export type SendWr = SendWrBase &
  (
    | { opcode: 'SEND' }
    | { opcode: 'SEND_WITH_IMM'; imm: number }
    | { opcode: 'SEND_WITH_INV'; invalidateRkey: number }
    | ({ opcode: 'RDMA_WRITE' } & Remote)
    | ({ opcode: 'RDMA_WRITE_WITH_IMM'; imm: number } & Remote)
    | ({ opcode: 'RDMA_READ' } & Remote)
    | ({ opcode: 'ATOMIC_CMP_AND_SWP'; compareAdd: bigint; swap: bigint } & Remote)
    | ({ opcode: 'ATOMIC_FETCH_AND_ADD'; compareAdd: bigint } & Remote)
  );
export type SendOpcode = SendWr['opcode'];

/** A work completion (ibv_wc). Fill preallocated ones with cq.poll(). */
export class Wc {
  wrId = 0;
  status: WcStatus = 'SUCCESS';
  opcode: WcOpcode = 'SEND';
  byteLen = 0;
  qpn = 0;
  srcQp = 0;
  /** immediate data, valid when `withImm` */
  imm = 0;
  withImm = false;
  /** the R_Key a SEND_WITH_INV invalidated, valid when `withInv` */
  invalidatedRkey = 0;
  withInv = false;
  /** UD: the first 40 bytes of the buffer hold the GRH (IBV_WC_GRH) */
  grh = false;
  solicited = false;
  pkeyIndex = 0;
  vendorErr = 0;
}
