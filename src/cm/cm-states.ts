/**
 * The rdma_cm id's state machine in one place: the kernel's cma states (drivers/infiniband/core/cma.c,
 * enum rdma_cm_state), which call each state allows, where a call leaves the id, and where an event
 * moves it. cm-id.ts checks every call here before it changes anything (EINVAL naming the call, as
 * cma_comp_exch failing gives -EINVAL in the kernel); later work (connect, listen, accept) adds its
 * rows here rather than testing states inline.
 */

/** enum rdma_cm_state, in the kernel's order. */
export const CMA_STATES = [
  'IDLE',
  'ADDR_QUERY',
  'ADDR_RESOLVED',
  'ROUTE_QUERY',
  'ROUTE_RESOLVED',
  'CONNECT',
  'DISCONNECT',
  'ADDR_BOUND',
  'LISTEN',
  'DEVICE_REMOVAL',
  'DESTROYING',
  'ESTABLISHED',
] as const;
export type CmaState = (typeof CMA_STATES)[number];

/**
 * A call on an id: the states it is allowed in, and the state it moves the id to at once (null: it
 * does not move it). The librdmacm name is what an error names (`op`).
 */
export interface CallRow {
  readonly op: string;
  readonly from: readonly CmaState[];
  readonly to: CmaState | null;
}

/**
 * Which call is allowed in which state (cma.c):
 * - rdma_bind_addr: cma_comp_exch(IDLE, ADDR_BOUND).
 * - rdma_resolve_addr: an IDLE id is bound first (cma_bind_addr: the source, or the wildcard of the
 *   destination's family, port 0), then cma_comp_exch(ADDR_BOUND, ADDR_QUERY).
 * - rdma_resolve_route: cma_comp_exch(ADDR_RESOLVED, ROUTE_QUERY).
 * - rdma_set_option: TOS and ACK_TIMEOUT in any live state (rdma_set_service_type and
 *   rdma_set_ack_timeout check none); REUSEADDR and AFONLY have their own rules (reuseAddrAllowed,
 *   AFONLY_FROM below).
 * - rdma_migrate_id: any state but DESTROYING (it only moves the id's events).
 * - rdma_listen: an IDLE id is bound to the IPv4 wildcard first, then cma_comp_exch(ADDR_BOUND, LISTEN).
 * - rdma_connect: cma_comp_exch(ROUTE_RESOLVED, CONNECT).
 */
/** Every state but DESTROYING: the calls that any live id may make (migrate, leave a group). */
const LIVE: readonly CmaState[] = CMA_STATES.filter((st) => st !== 'DESTROYING');

export const CALLS = {
  bind: { op: 'rdma_bind_addr', from: ['IDLE'], to: 'ADDR_BOUND' },
  resolveAddr: { op: 'rdma_resolve_addr', from: ['IDLE', 'ADDR_BOUND'], to: 'ADDR_QUERY' },
  resolveRoute: { op: 'rdma_resolve_route', from: ['ADDR_RESOLVED'], to: 'ROUTE_QUERY' },
  setOption: {
    op: 'rdma_set_option',
    from: LIVE.filter((st) => st !== 'DEVICE_REMOVAL'),
    to: null,
  },
  migrate: {
    op: 'rdma_migrate_id',
    from: LIVE,
    to: null,
  },
  listen: { op: 'rdma_listen', from: ['IDLE', 'ADDR_BOUND'], to: 'LISTEN' },
  connect: { op: 'rdma_connect', from: ['ROUTE_RESOLVED'], to: 'CONNECT' },
  // rdma_create_qp: needs the id's device (bound to an address, resolved, or a connection request's id).
  createQp: { op: 'rdma_create_qp', from: ['ADDR_BOUND', 'ADDR_RESOLVED', 'ROUTE_RESOLVED', 'CONNECT'], to: null },
  // rdma_accept / rdma_reject: a passive id made for a request, still in CONNECT (cma_comp(RDMA_CM_CONNECT)).
  accept: { op: 'rdma_accept', from: ['CONNECT'], to: null },
  reject: { op: 'rdma_reject', from: ['CONNECT'], to: null },
  // rdma_establish: the active side without a QP, after CONNECT_RESPONSE; the passive side's ib_cm_notify.
  establish: { op: 'rdma_establish', from: ['CONNECT'], to: null },
  // rdma_disconnect: a connection being made, up, or already going down (cma.c checks no state; the
  // IB CM refuses what its own state does not allow).
  disconnect: { op: 'rdma_disconnect', from: ['CONNECT', 'ESTABLISHED', 'DISCONNECT'], to: 'DISCONNECT' },
  // rdma_join_multicast: cma_comp(ADDR_BOUND) || cma_comp(ADDR_RESOLVED); rdma_leave_multicast in any live state.
  joinMulticast: { op: 'rdma_join_multicast', from: ['ADDR_BOUND', 'ADDR_RESOLVED'], to: null },
  leaveMulticast: {
    op: 'rdma_leave_multicast',
    from: LIVE,
    to: null,
  },
} as const satisfies Record<string, CallRow>;
export type CmCall = keyof typeof CALLS;

/** rdma_set_reuseaddr: turning it on is allowed in any state but LISTEN, turning it off only in IDLE. */
export function reuseAddrAllowed(state: CmaState, reuse: boolean): boolean {
  return (reuse && state !== 'LISTEN' && state !== 'DESTROYING') || state === 'IDLE';
}

/** rdma_set_afonly: before the port is taken for good (IDLE, ADDR_BOUND). */
export const AFONLY_FROM: readonly CmaState[] = ['IDLE', 'ADDR_BOUND'];

/**
 * Where an event moves an id (the kernel's work->old_state → new_state, and addr_handler's error
 * path): the state the id must be in for the event to apply, and the one it goes to. An event that
 * finds the id in another state (destroyed meanwhile, a late answer) is dropped, as cma_comp_exch
 * failing drops the work in the kernel.
 */
export const EVENT_MOVES = {
  ADDR_RESOLVED: { from: 'ADDR_QUERY', to: 'ADDR_RESOLVED' },
  // addr_handler: a failed resolution goes back to ADDR_BOUND, so the caller may try again.
  ADDR_ERROR: { from: 'ADDR_QUERY', to: 'ADDR_BOUND' },
  ROUTE_RESOLVED: { from: 'ROUTE_QUERY', to: 'ROUTE_RESOLVED' },
  // cma_work_handler / cma_query_handler: a failed route query goes back to ADDR_RESOLVED.
  ROUTE_ERROR: { from: 'ROUTE_QUERY', to: 'ADDR_RESOLVED' },
  // cma_ib_handler: RTU (or COMM_EST) on the passive side, REP + RTU sent on the active side.
  ESTABLISHED: { from: 'CONNECT', to: 'ESTABLISHED' },
  // a DREQ received: the connection is going down (cma_ib_handler IB_CM_DREQ_RECEIVED).
  DISCONNECTED: { from: 'ESTABLISHED', to: 'DISCONNECT' },
} as const satisfies Record<string, { from: CmaState; to: CmaState }>;

/** May `call` run in `state`? */
export function callAllowed(call: CmCall, state: CmaState): boolean {
  return (CALLS[call].from as readonly CmaState[]).includes(state);
}
