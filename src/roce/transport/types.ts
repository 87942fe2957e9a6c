/**
 * What the transport needs from the objects above it, declared here so the transport never
 * imports the verbs layer (issue 11: layers point one way, verbs -> roce/transport -> roce/link). The
 * verbs classes (Qp, Device, Port, Mr, Cq, Ah) implement these interfaces; the transport sees
 * only what it reads or calls. The small constant tables the two layers share (WR opcodes, work
 * completion statuses and opcodes, access bits, QP states) are defined here too and re-exported
 * by the verbs layer (its types.ts and qp-state.ts) under their public names.
 */
import type { Counters } from '../counters.js';
import type { Link } from '../link/link.js';
import type { Mtu } from '../opcode.js';
import type { Scheduler } from './sched.js';
import type { Dest } from './build.js';
import type { ReqState, CompState, RespState } from './state.js';
import type { SendWqe, RecvWqe } from './wqe.js';

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
  SEND: 0, SEND_WITH_IMM: 1, SEND_WITH_INV: 2, RDMA_WRITE: 3, RDMA_WRITE_WITH_IMM: 4, RDMA_READ: 5,
  ATOMIC_CMP_AND_SWP: 6, ATOMIC_FETCH_AND_ADD: 7,
} as const;

/** A WR that takes a responder resource and waits for a response (READ, the atomics): counted against max_rd_atomic. */
export const isRdAtomic = (op: number): boolean => op === WrOp.RDMA_READ || op === WrOp.ATOMIC_CMP_AND_SWP || op === WrOp.ATOMIC_FETCH_AND_ADD;

/** ibv_wc_status, in libibverbs' order. */
export const WC_STATUS = [
  'SUCCESS', 'LOC_LEN_ERR', 'LOC_QP_OP_ERR', 'LOC_EEC_OP_ERR', 'LOC_PROT_ERR', 'WR_FLUSH_ERR', 'MW_BIND_ERR',
  'BAD_RESP_ERR', 'LOC_ACCESS_ERR', 'REM_INV_REQ_ERR', 'REM_ACCESS_ERR', 'REM_OP_ERR', 'RETRY_EXC_ERR',
  'RNR_RETRY_EXC_ERR', 'LOC_RDD_VIOL_ERR', 'REM_INV_RD_REQ_ERR', 'REM_ABORT_ERR', 'INV_EECN_ERR',
  'INV_EEC_STATE_ERR', 'FATAL_ERR', 'RESP_TIMEOUT_ERR', 'GENERAL_ERR',
] as const;
export type WcStatus = (typeof WC_STATUS)[number];
/** Work completion status name -> its index in WC_STATUS (what the roles pass around). */
export const St = Object.fromEntries(WC_STATUS.map((s, i) => [s, i])) as { readonly [K in WcStatus]: number };

export const WC_OPCODE = ['SEND', 'RDMA_WRITE', 'RDMA_READ', 'COMP_SWAP', 'FETCH_ADD', 'BIND_MW', 'LOCAL_INV', 'RECV', 'RECV_RDMA_WITH_IMM'] as const;
export type WcOpcode = (typeof WC_OPCODE)[number];

/** The work completion opcode of a send WQE's WR opcode (ibv_wc_opcode). */
export function wcOpcodeFor(op: number): WcOpcode {
  switch (op) {
    case WrOp.RDMA_WRITE: case WrOp.RDMA_WRITE_WITH_IMM: return 'RDMA_WRITE';
    case WrOp.RDMA_READ: return 'RDMA_READ';
    case WrOp.ATOMIC_CMP_AND_SWP: return 'COMP_SWAP';
    case WrOp.ATOMIC_FETCH_AND_ADD: return 'FETCH_ADD';
    default: return 'SEND';
  }
}

/** Registered memory as the transport uses it (verbs Mr): an R_Key or L_Key resolves to one. */
export interface MemoryRegion {
  /** the protection domain (compared by identity only) */
  readonly pd: object;
  readonly buffer: Buffer;
  readonly length: number;
  /** ACCESS bits */
  readonly access: number;
  readonly invalidatable: boolean;
  readonly valid: boolean;
  readonly closed: boolean;
  /** Offset into the region of [va, va+len), or -1 if it is not all inside. */
  offsetOf(va: bigint, len: number): number;
  /** Whether the remote may do `need` (ACCESS bits) here. */
  allows(need: number): boolean;
  /** A SEND_WITH_INV took the R_Key out of use (IBA 10.6.5). */
  invalidate(): void;
}

/** A scatter/gather element: a byte range of registered memory. */
export interface SgeLike { readonly mr: MemoryRegion; readonly offset: number; readonly length: number }

/** How a remote R_Key resolves to memory (the device's R_Key table). */
export interface KeyResolver { get(key: number): MemoryRegion | undefined }

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
export interface AddressHandle { readonly dest: Dest }

/** What the transport reports to the verbs layer about a QP (ibv_get_async_event's QP events). */
export type QpEventType = 'COMM_EST' | 'QP_FATAL' | 'QP_REQ_ERR' | 'QP_ACCESS_ERR' | 'SQ_DRAINED' | 'LAST_WQE_REACHED';
export interface QpEvent { type: QpEventType; qp: TransportQp }

/** A RoCE port as the transport sends and receives on it (verbs Port). */
export interface PortLike {
  readonly num: number;
  readonly link: Link;
  readonly address: string;
  /** the bound IPv4 address as a number (0 for IPv6) and as bytes (4 or 16): ICRC inputs */
  readonly ipNum: number;
  readonly addrBytes: Uint8Array;
  readonly counters: Counters;
  readonly recorderTx: ((b: Buffer, len: number, ip: string, port: number) => void) | null;
  readonly recorderRx: ((b: Buffer, len: number, ip: string, port: number, ipId: number, df: number) => void) | null;
}

/** The device as the transport uses it: ports, clock, tables, the run queue, events. */
export interface TransportDevice {
  readonly closed: boolean;
  readonly sched: Scheduler;
  readonly ports: readonly PortLike[];
  readonly attr: { readonly maxMsgSize: number };
  readonly icrcIpv4: 'infer-id' | 'id-zero';
  /** QPN -> QP, and QP1 while open */
  readonly qps: { get(qpn: number): TransportQp | undefined; values(): Iterable<TransportQp> };
  readonly gsi: TransportQp | null;
  readonly mrByRkey: KeyResolver;
  /** schedule the requester of `qp` (engine.ts) */
  kick(qp: TransportQp, soon?: boolean): void;
  /** the requester of `qp` found the tx pool of `port` empty */
  waitTx(qp: TransportQp, port: PortLike, sentSome: boolean): void;
  /** before a new message of an RC QP: true = wait (the device's in-flight share is taken) */
  holdNew(qp: TransportQp): boolean;
  /** raise an async event (the state already changed) */
  asyncEvent(e: QpEvent): void;
}

/**
 * A QP as the three roles see it (verbs Qp): its attributes (read-only here), its queues, the
 * requester/completer/responder state, where its completions go, and the one state change the
 * transport makes (setState: to ERR or SQD, with the side effects of IBA 10.3.1).
 */
export interface TransportQp {
  readonly device: TransportDevice;
  readonly pd: object;
  readonly qpn: number;
  readonly type: QpType;
  readonly state: QpState;
  readonly closed: boolean;
  /** COMM_EST raised (the responder sets it on the first packet in RTR) */
  commEst: boolean;
  readonly port: number;
  readonly qkey: number;
  readonly accessFlags: number;
  readonly pathMtu: Mtu;
  readonly destQpn: number;
  readonly timeout: number;
  readonly retryCnt: number;
  readonly rnrRetry: number;
  readonly minRnrTimer: number;
  readonly maxRdAtomic: number;
  readonly sqDrainNotify: boolean;
  /** the AV of a connected QP (null before RTR); the transport checks only its presence */
  readonly av: object | null;
  /** where RC/UC packets go */
  readonly dest: Dest;
  readonly cap: { readonly maxSendWr: number };
  readonly sendCq: CompletionSink;
  readonly recvCq: CompletionSink;
  readonly srq: object | null;
  /** the send queue ring: absolute counters, index = n % cap.maxSendWr */
  readonly sq: readonly SendWqe[];
  sqHead: number;
  readonly sqTail: number;
  readonly rqCount: number;
  readonly req: ReqState;
  readonly comp: CompState;
  readonly resp: RespState;
  setState(to: QpState): void;
  /** the next receive WQE, from the SRQ or the RQ */
  takeRecv(): RecvWqe | null;
  /** give back the WQE takeRecv() returned (its message was refused before any byte landed) */
  returnRecv(e: RecvWqe): void;
}
