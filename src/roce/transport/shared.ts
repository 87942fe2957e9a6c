/**
 * The tables and leaf interfaces the transport shares with the verbs layer: QP states and types,
 * WR opcodes, work completion statuses and opcodes, access bits (re-exported by the verbs layer
 * under their public names), and what the transport needs of memory, completion queues and
 * destinations. No imports: wqe.ts, state.ts and types.ts build on this file.
 */
/** QP states (IBA 10.3.1) and types; the transport moves QPs to ERR and SQD. */
export const QP_STATES = ['RESET', 'INIT', 'RTR', 'RTS', 'SQD', 'SQE', 'ERR'] as const;
export type QpState = (typeof QP_STATES)[number];
/** GSI is QP1, the special UD QP that carries MADs (CM). */
export const QP_TYPES = ['RC', 'UC', 'UD', 'GSI'] as const;
export type QpType = (typeof QP_TYPES)[number];

/** Access bits of an MR or a QP (ibv_access_flags). */
export const ACCESS = { LOCAL_WRITE: 1, REMOTE_WRITE: 2, REMOTE_READ: 4, REMOTE_ATOMIC: 8 } as const;

/** Internal WR opcode numbers (a send WQE's `op`). */
export const WrOp = {
  SEND: 0,
  SEND_WITH_IMM: 1,
  SEND_WITH_INV: 2,
  RDMA_WRITE: 3,
  RDMA_WRITE_WITH_IMM: 4,
  RDMA_READ: 5,
  ATOMIC_CMP_AND_SWP: 6,
  ATOMIC_FETCH_AND_ADD: 7,
} as const;

/** A WR that takes a responder resource and waits for a response (READ, the atomics): counted against max_rd_atomic. */
export const isRdAtomic = (op: number): boolean => op === WrOp.RDMA_READ || op === WrOp.ATOMIC_CMP_AND_SWP || op === WrOp.ATOMIC_FETCH_AND_ADD;

/** ibv_wc_status, in libibverbs' order. */
export const WC_STATUS = [
  'SUCCESS',
  'LOC_LEN_ERR',
  'LOC_QP_OP_ERR',
  'LOC_EEC_OP_ERR',
  'LOC_PROT_ERR',
  'WR_FLUSH_ERR',
  'MW_BIND_ERR',
  'BAD_RESP_ERR',
  'LOC_ACCESS_ERR',
  'REM_INV_REQ_ERR',
  'REM_ACCESS_ERR',
  'REM_OP_ERR',
  'RETRY_EXC_ERR',
  'RNR_RETRY_EXC_ERR',
  'LOC_RDD_VIOL_ERR',
  'REM_INV_RD_REQ_ERR',
  'REM_ABORT_ERR',
  'INV_EECN_ERR',
  'INV_EEC_STATE_ERR',
  'FATAL_ERR',
  'RESP_TIMEOUT_ERR',
  'GENERAL_ERR',
] as const;
export type WcStatus = (typeof WC_STATUS)[number];
/** Work completion status name -> its index in WC_STATUS (what the roles pass around). */
export const WcStatusIdx = Object.fromEntries(WC_STATUS.map((s, i) => [s, i])) as { readonly [K in WcStatus]: number };

export const WC_OPCODE = ['SEND', 'RDMA_WRITE', 'RDMA_READ', 'COMP_SWAP', 'FETCH_ADD', 'BIND_MW', 'LOCAL_INV', 'RECV', 'RECV_RDMA_WITH_IMM'] as const;
export type WcOpcode = (typeof WC_OPCODE)[number];

/** The work completion opcode of a send WQE's WR opcode (ibv_wc_opcode). */
export function wcOpcodeFor(op: number): WcOpcode {
  switch (op) {
    case WrOp.RDMA_WRITE:
    case WrOp.RDMA_WRITE_WITH_IMM:
      return 'RDMA_WRITE';
    case WrOp.RDMA_READ:
      return 'RDMA_READ';
    case WrOp.ATOMIC_CMP_AND_SWP:
      return 'COMP_SWAP';
    case WrOp.ATOMIC_FETCH_AND_ADD:
      return 'FETCH_ADD';
    default:
      return 'SEND';
  }
}

/** Registered memory as the transport uses it (verbs Mr): an R_Key or L_Key resolves to one. */
export interface MemoryRegion {
  /** the protection domain (compared by identity only) */
  readonly pd: object;
  /** the R_Key that names it to a peer */
  readonly rkey: number;
  readonly buffer: Buffer;
  readonly length: number;
  /** ACCESS bits */
  readonly access: number;
  readonly invalidatable: boolean;
  readonly valid: boolean;
  readonly closed: boolean;
  /** Offset into the region of [va, va+len), or -1 if it is not all inside. */
  offsetOf(va: bigint, len: number): number;
  /** addr's high and low 32 bits: the per-packet bounds check (offsetIn) works on numbers, not bigints. */
  readonly addrHi: number;
  readonly addrLo: number;
  /** Whether the remote may do `need` (ACCESS bits) here. */
  allows(need: number): boolean;
  /** A SEND_WITH_INV took the R_Key out of use (IBA 10.6.5). */
  invalidate(): void;
}

/** A scatter/gather element: a byte range of registered memory. */
export interface SgeLike {
  readonly mr: MemoryRegion;
  readonly offset: number;
  readonly length: number;
}

/** How a remote R_Key resolves to memory (the device's R_Key table). */
export interface KeyResolver {
  get(key: number): MemoryRegion | undefined;
}

/** The work completion slot a CQ hands out (verbs Wc). */
export interface WcSlot {
  wrId: number;
  status: WcStatus;
  opcode: WcOpcode;
  byteLen: number;
  qpn: number;
  srcQp: number;
  imm: number;
  withImm: boolean;
  invalidatedRkey: number;
  withInv: boolean;
  grh: boolean;
  solicited: boolean;
}

/** Where completions go (verbs Cq): slot() then fill it then commit(), or null when the CQ is full. */
export interface CompletionSink {
  slot(): WcSlot | null;
  commit(solicitedOrError: boolean): void;
}

/** A UD WR's address handle (verbs Ah): where its packets go. */
export interface AddressHandle {
  readonly dest: Dest;
}

/**
 * Where a QP's or AH's packets go: address, UDP port, and the AV's traffic class (IPv4 TOS); and
 * the source GID they leave from: its index in the port's GID table and the generation the entry
 * there had when the AV was set (PortLike.gidGen: a send whose entry is gone is dropped).
 */
export interface Dest {
  ip: string;
  ipNum: number;
  family: 4 | 6;
  port: number;
  bytes: Uint8Array;
  tos: number;
  sgidIndex: number;
  sgidGen: number;
}
