/**
 * The named states of the three RC/UC/UD roles, as rxe names them (rxe_resp.c enum resp_states,
 * rxe_comp.c enum comp_state), and the reasons a role records with its decision (trace.ts).
 * Plain `as const` objects of small integers (no TS enums: erasableSyntaxOnly): the step tables in
 * responder.ts / completer.ts are indexed by them and the trace ring stores them in 6 bits.
 */

/** Responder (IBA 9.7.5.1, rxe_resp.c). DONE is terminal. */
export const RespState = {
  GET_REQ: 0,
  CHK_PSN: 1,
  CHK_OP_SEQ: 2,
  CHK_OP_VALID: 3,
  CHK_RESOURCE: 4,
  CHK_LENGTH: 5,
  CHK_RKEY: 6,
  EXECUTE: 7,
  READ_REPLY: 8,
  ATOMIC_REPLY: 9,
  COMPLETE: 10,
  ACKNOWLEDGE: 11,
  DUPLICATE_REQUEST: 12,
  /** RC: a PSN past the expected one (sequence NAK, maybe later); UC: the message in progress is lost */
  ERR_NAK_PSN: 13,
  /** RC: invalid request NAK, QP to ERR (class C); UC: the message is dropped */
  ERR_NAK_INVALID: 14,
  /** RC: remote access NAK, QP to ERR (class C); UC: the message is dropped */
  ERR_NAK_ACCESS: 15,
  /** RC: RNR NAK (no receive WQE); UC/UD: the message is dropped */
  ERR_NAK_RNR: 16,
  /** the receive WQE is too short for the message (rxe RESPST_ERR_LENGTH) */
  ERR_LENGTH: 17,
  /** the receive WQE's memory is gone (rxe RESPST_ERR_MALFORMED_WQE) */
  ERR_MALFORMED_WQE: 18,
  /** silently dropped (bad Q_Key, UC message being dropped, ...): counted, nothing answered */
  DROP: 19,
  /** the QP is not in a state that takes requests (rxe check_keys / state checks) */
  ERR_STATE: 20,
  DONE: 21,
} as const;
export type RespStateT = (typeof RespState)[keyof typeof RespState];

/** Completer (IBA 9.7.5.2, rxe_comp.c). DONE and EXIT are terminal. */
export const CompState = {
  GET_ACK: 0,
  GET_WQE: 1,
  CHECK_PSN: 2,
  CHECK_ACK: 3,
  READ: 4,
  ATOMIC: 5,
  WRITE_SEND: 6,
  UPDATE_COMP: 7,
  COMP_ACK: 8,
  COMP_WQE: 9,
  /** go-back-N against retry_cnt (rxe COMPST_ERROR_RETRY): timeout, sequence NAK, implicit NAK */
  ERROR_RETRY: 10,
  RNR_RETRY: 11,
  /** the head WQE completes in error (a NAK, a bad response, retries exhausted) */
  ERROR: 12,
  /** the response is not for anything outstanding: counted and dropped */
  DROP: 13,
  DONE: 14,
  EXIT: 15,
} as const;
export type CompStateT = (typeof CompState)[keyof typeof CompState];

/** Requester (IBA 9.7.4, rxe_req.c): where a run stopped. */
export const ReqState = {
  GET_WQE: 0,
  /** a packet left */
  SEND: 1,
  /** waiting: window, rd_atomic, fence, SQ drain, device hold, RNR wait, tx pool */
  WAIT: 2,
  /** a WR failed its local checks and completes in error */
  ERROR: 3,
  /** the tail-loss probe resent the oldest unacknowledged packet */
  PROBE: 4,
  DONE: 5,
} as const;
export type ReqStateT = (typeof ReqState)[keyof typeof ReqState];

const names = (o: Record<string, number>): readonly string[] => {
  const a: string[] = [];
  for (const [k, v] of Object.entries(o)) a[v] = k;
  return a;
};
export const RESP_STATE_NAME = names(RespState);
export const COMP_STATE_NAME = names(CompState);
export const REQ_STATE_NAME = names(ReqState);

/** Why a role decided what it did: a small number in the trace ring, a name when printed. */
export const Reason = {
  NONE: 0,
  // responder
  ACK_QUEUED: 1,
  NO_ACK_REQ: 2,
  BAD_STATE: 3,
  BAD_QKEY: 4,
  PSN_GAP_HELD: 5,
  PSN_GAP_NAKED: 6,
  UC_PSN_GAP: 7,
  UC_DROPPING: 8,
  DUP_ACKED: 9,
  DUP_IGNORED: 10,
  DUP_ATOMIC_REPLAYED: 11,
  DUP_READ_REPLAYED: 12,
  BAD_OP_SEQ: 13,
  OP_NOT_PERMITTED: 14,
  NO_RECV_WQE: 15,
  BAD_RKEY: 16,
  BAD_LENGTH: 17,
  MR_GONE: 18,
  MISALIGNED: 19,
  BAD_INV_RKEY: 20,
  LOC_LEN: 21,
  LOC_PROT: 22,
  CQ_FULL: 23,
  RECV_DONE: 24,
  READ_QUEUED: 25,
  ATOMIC_DONE: 26,
  // completer
  STALE: 27,
  BAD_PSN: 28,
  ACKED: 29,
  IMPLICIT_NAK: 30,
  RNR_NAK: 31,
  SEQ_NAK: 32,
  SEQ_NAK_STALE: 33,
  NAK_INVALID: 34,
  NAK_ACCESS: 35,
  NAK_OPERATIONAL: 36,
  BAD_RESPONSE: 37,
  READ_DATA: 38,
  READ_HOLE: 39,
  TIMEOUT: 40,
  RETRY_EXCEEDED: 41,
  RNR_EXCEEDED: 42,
  // requester
  WINDOW_FULL: 43,
  RD_ATOMIC_LIMIT: 44,
  FENCE: 45,
  SQ_DRAINING: 46,
  DEVICE_HOLD: 47,
  RNR_WAIT: 48,
  TX_POOL_EMPTY: 49,
  LOCAL_ERR: 50,
  SENT: 51,
  BUDGET_USED: 52,
  RECV_PROGRESS: 53,
} as const;
export type ReasonT = (typeof Reason)[keyof typeof Reason];
export const REASON_NAME = names(Reason).map((n) => n.toLowerCase());
