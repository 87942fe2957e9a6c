/**
 * Public verbs types: access flags, work requests, work completions, with
 * libibverbs' names. String unions at the API, small integers inside (one
 * name table bridges the two).
 */
import type { Mr } from './mr.js';
import type { Ah } from './objects.js';

export const ACCESS = { LOCAL_WRITE: 1, REMOTE_WRITE: 2, REMOTE_READ: 4, REMOTE_ATOMIC: 8 } as const;
export type Access = keyof typeof ACCESS;
export function accessBits(a: readonly Access[] | undefined, arg: string, op: string, err: (code: 'EINVAL', op: string, msg: string, arg: string) => Error): number {
  let bits = 0;
  for (const x of a ?? []) {
    const b = ACCESS[x];
    if (b === undefined) throw err('EINVAL', op, `unknown access flag ${String(x)}`, arg);
    bits |= b;
  }
  return bits;
}

/** Scatter/gather element: a byte range of a registered region. */
export interface Sge { mr: Mr; offset: number; length: number }

export interface RecvWr { wrId: number; sg: readonly Sge[] }

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
export type SendWr = SendWrBase & (
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

/** Internal WR opcode numbers. */
export const WrOp = {
  SEND: 0, SEND_WITH_IMM: 1, SEND_WITH_INV: 2, RDMA_WRITE: 3, RDMA_WRITE_WITH_IMM: 4, RDMA_READ: 5,
  ATOMIC_CMP_AND_SWP: 6, ATOMIC_FETCH_AND_ADD: 7,
} as const;

/** ibv_wc_status, in libibverbs' order. */
export const WC_STATUS = [
  'SUCCESS', 'LOC_LEN_ERR', 'LOC_QP_OP_ERR', 'LOC_EEC_OP_ERR', 'LOC_PROT_ERR', 'WR_FLUSH_ERR', 'MW_BIND_ERR',
  'BAD_RESP_ERR', 'LOC_ACCESS_ERR', 'REM_INV_REQ_ERR', 'REM_ACCESS_ERR', 'REM_OP_ERR', 'RETRY_EXC_ERR',
  'RNR_RETRY_EXC_ERR', 'LOC_RDD_VIOL_ERR', 'REM_INV_RD_REQ_ERR', 'REM_ABORT_ERR', 'INV_EECN_ERR',
  'INV_EEC_STATE_ERR', 'FATAL_ERR', 'RESP_TIMEOUT_ERR', 'GENERAL_ERR',
] as const;
export type WcStatus = (typeof WC_STATUS)[number];
export const St = Object.fromEntries(WC_STATUS.map((s, i) => [s, i])) as { readonly [K in WcStatus]: number };

export const WC_OPCODE = ['SEND', 'RDMA_WRITE', 'RDMA_READ', 'COMP_SWAP', 'FETCH_ADD', 'BIND_MW', 'LOCAL_INV', 'RECV', 'RECV_RDMA_WITH_IMM'] as const;
export type WcOpcode = (typeof WC_OPCODE)[number];
export const WcOp = Object.fromEntries(WC_OPCODE.map((s, i) => [s, i])) as { readonly [K in WcOpcode]: number };

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
