/**
 * The IB CM connection states and their transitions, as tables (IBA vol1 12.9 state diagrams; the kernel's
 * enum ib_cm_state and the state switches of drivers/infiniband/core/cm.c). ib-cm.ts looks a transition up
 * here before it sends or acts on a received message; anything not in a table is refused (a send: EINVAL) or
 * dropped and counted (a received message).
 */

/** enum ib_cm_state, in the kernel's order. */
export const IB_CM_STATES = [
  'IDLE',
  'LISTEN',
  'REQ_SENT',
  'REQ_RCVD',
  'MRA_REQ_SENT',
  'MRA_REQ_RCVD',
  'REP_SENT',
  'REP_RCVD',
  'MRA_REP_SENT',
  'MRA_REP_RCVD',
  'ESTABLISHED',
  'DREQ_SENT',
  'DREQ_RCVD',
  'TIMEWAIT',
  'SIDR_REQ_SENT',
  'SIDR_REQ_RCVD',
] as const;
export type IbCmState = (typeof IB_CM_STATES)[number];

type Table = Readonly<Partial<Record<IbCmState, IbCmState>>>;

/** What an id may send (or do) in each state, and the state it goes to (the ib_send_cm_* checks). */
export const SEND_TRANSITIONS = {
  listen: { IDLE: 'LISTEN' },
  req: { IDLE: 'REQ_SENT' },
  rep: { REQ_RCVD: 'REP_SENT', MRA_REQ_SENT: 'REP_SENT' },
  // librdmacm sends the RTU after moving its QP to RTS (ucma_complete / rdma_accept on the active side).
  rtu: { REP_RCVD: 'ESTABLISHED', MRA_REP_SENT: 'ESTABLISHED' },
  // cm_send_rej_locked: before a REP was sent or after one was received the id resets; a REJ that answers
  // our own REP (REP_SENT, MRA_REP_RCVD) enters TimeWait, since the peer may have seen the REP.
  rej: {
    REQ_SENT: 'IDLE',
    MRA_REQ_RCVD: 'IDLE',
    REQ_RCVD: 'IDLE',
    MRA_REQ_SENT: 'IDLE',
    REP_RCVD: 'IDLE',
    MRA_REP_SENT: 'IDLE',
    REP_SENT: 'TIMEWAIT',
    MRA_REP_RCVD: 'TIMEWAIT',
  },
  mra: { REQ_RCVD: 'MRA_REQ_SENT', REP_RCVD: 'MRA_REP_SENT' },
  dreq: { ESTABLISHED: 'DREQ_SENT' },
  drep: { DREQ_RCVD: 'TIMEWAIT' },
  sidr_req: { IDLE: 'SIDR_REQ_SENT' },
  sidr_rep: { SIDR_REQ_RCVD: 'IDLE' },
  // ib_cm_notify(IB_EVENT_COMM_EST): the first packet on the QP stands in for a lost RTU (cm_establish).
  establish: { REP_SENT: 'ESTABLISHED', MRA_REP_RCVD: 'ESTABLISHED' },
} as const satisfies Record<string, Table>;
export type IbCmSendOp = keyof typeof SEND_TRANSITIONS;

/** What a received message does to an id in each state (cm.c's *_handler switches). States not listed drop
 *  the message (counted); duplicates that get an answer (a REP in ESTABLISHED, a DREQ in TIMEWAIT, ...) are
 *  handled in ib-cm.ts before this table is consulted. */
export const RECV_TRANSITIONS = {
  REP: { REQ_SENT: 'REP_RCVD', MRA_REQ_RCVD: 'REP_RCVD' },
  RTU: { REP_SENT: 'ESTABLISHED', MRA_REP_RCVD: 'ESTABLISHED' },
  MRA: { REQ_SENT: 'MRA_REQ_RCVD', REP_SENT: 'MRA_REP_RCVD' },
  // cm_dreq_handler: a DREQ that crosses our REP's retries or our own DREQ (simultaneous disconnect) is
  // accepted like one in ESTABLISHED; the pending MAD is cancelled.
  DREQ: { ESTABLISHED: 'DREQ_RCVD', REP_SENT: 'DREQ_RCVD', MRA_REP_RCVD: 'DREQ_RCVD', DREQ_SENT: 'DREQ_RCVD' },
  DREP: { DREQ_SENT: 'TIMEWAIT', DREQ_RCVD: 'TIMEWAIT' },
  // cm_rej_handler: reason 10 (stale connection) sends the first six to TIMEWAIT instead of IDLE (ib-cm.ts).
  REJ: {
    REQ_SENT: 'IDLE',
    MRA_REQ_RCVD: 'IDLE',
    REP_SENT: 'IDLE',
    MRA_REP_RCVD: 'IDLE',
    REQ_RCVD: 'IDLE',
    MRA_REQ_SENT: 'IDLE',
    DREQ_SENT: 'TIMEWAIT',
    REP_RCVD: 'TIMEWAIT',
    MRA_REP_SENT: 'TIMEWAIT',
  },
  SIDR_REP: { SIDR_REQ_SENT: 'IDLE' },
} as const satisfies Record<string, Table>;
export type IbCmRecvType = keyof typeof RECV_TRANSITIONS;

/** The next state for `op` from `from`, or undefined when the op is not allowed there. */
export function sendTransition(op: IbCmSendOp, from: IbCmState): IbCmState | undefined {
  return (SEND_TRANSITIONS[op] as Table)[from];
}
export function recvTransition(type: IbCmRecvType, from: IbCmState): IbCmState | undefined {
  return (RECV_TRANSITIONS[type] as Table)[from];
}

/** States in which a MAD of ours is outstanding and retried (cm_id_priv->msg): the send that put the id there. */
export const RETRIED_IN: Readonly<Partial<Record<IbCmState, 'REQ' | 'REP' | 'DREQ' | 'SIDR_REQ'>>> = {
  REQ_SENT: 'REQ',
  MRA_REQ_RCVD: 'REQ',
  REP_SENT: 'REP',
  MRA_REP_RCVD: 'REP',
  DREQ_SENT: 'DREQ',
  SIDR_REQ_SENT: 'SIDR_REQ',
};
