/**
 * Numbers and rules the CM protocol needs, as pure functions and const tables: CM timeouts (IBA 12.7.x,
 * kernel cm.c), REJ reasons (IBA 12.6.7.2, ib_cm.h enum ib_cm_rej_reason), SIDR_REP statuses (IBA 12.11.2),
 * the MTU enum, the RoCE path rules of cma.c (roce-wire.md h.4) and the rdma_cm event names (h.3).
 */

// ---- timeouts ----

/** rdma_cm's CM response timeout (cma.c CMA_CM_RESPONSE_TIMEOUT) and MAD retries (CMA_MAX_CM_RETRIES). */
export const CMA_CM_RESPONSE_TIMEOUT = 20;
export const CMA_MAX_CM_RETRIES = 15;
/** Packet life time rdma_cm gives a RoCE path (CMA_IBOE_PACKET_LIFETIME): 18 on the lab's 6.1 kernel (its
 *  REQs carry Local ACK Timeout 19 = cm_ack_timeout(15, 18)); 16 on kernels since late 2022. */
export const CMA_IBOE_PACKET_LIFETIME = 18;
/** rxe's local CA ACK delay (rxe_param.h RXE_LOCAL_CA_ACK_DELAY). */
export const RXE_LOCAL_CA_ACK_DELAY = 15;
/** SIDR_REQ timeout the kernel uses whatever the path (cm.c: cm_convert_to_ms(20) → 4096 ms). */
export const SIDR_REQ_TIMEOUT_MS = 4096;

/** An IBA time exponent as milliseconds, exactly: 4.096 µs × 2^t (IBA 12.7.3x "CM response timeout",
 *  9.7.6.1.3 local ACK timeout; t = 0 means "infinite" for an ACK timeout, not for the CM fields). */
export function cmTimeoutMs(t: number): number {
  return 4.096e-3 * 2 ** t;
}

/** The kernel's rounding of the same exponent (cm.c cm_convert_to_ms): 1 << max(t − 8, 0) ms, so 20 → 4096. */
export function kernelCmTimeoutMs(t: number): number {
  return 2 ** Math.max(t - 8, 0);
}

/** The time a CM waits for an answer before resending a MAD (roce-wire.md g.6): twice the packet life time
 *  plus the peer's CM response timeout, exactly as IBA states it. */
export function madRetryTimeoutMs(packetLifeTime: number, remoteCmResponseTimeout: number): number {
  return 2 * cmTimeoutMs(packetLifeTime) + cmTimeoutMs(remoteCmResponseTimeout);
}

/** What cm.c arms for a REQ (cm_send_req: timeout_ms = 2 · convert(packet life) + convert(remote response
 *  timeout)), and for a REP with the REQ's local response timeout: with life 16 and 20, 4608 ms (~4.6 s);
 *  with 18 and 20, 6144 ms. Use this one to time like the kernel. */
export function kernelMadRetryTimeoutMs(packetLifeTime: number, remoteCmResponseTimeout: number): number {
  return 2 * kernelCmTimeoutMs(packetLifeTime) + kernelCmTimeoutMs(remoteCmResponseTimeout);
}

/** The wait after an MRA before the next retry (cm.c cm_mra_handler: convert(service timeout) +
 *  convert(av timeout)); rdma_cm's MRA service timeout 24 → 65536 ms + the AV's part. */
export function kernelMraTimeoutMs(serviceTimeout: number, avTimeout: number): number {
  return kernelCmTimeoutMs(serviceTimeout) + kernelCmTimeoutMs(avTimeout);
}

/** The REQ/REP's Local ACK Timeout field from the CA's ACK delay and the path's packet life time (cm.c
 *  cm_ack_timeout): about packet life + 1, raised to cover the ACK delay, at most 31. rxe 15 and life 18 → 19
 *  (the lab's REQs). */
export function cmAckTimeout(caAckDelay: number, packetLifeTime: number): number {
  let t = packetLifeTime + 1;
  if (t >= caAckDelay) t += caAckDelay >= t - 1 ? 1 : 0;
  else t = caAckDelay + (t >= caAckDelay - 1 ? 1 : 0);
  return Math.min(31, t);
}

// ---- reasons and statuses ----

/** REJ reasons (IBA 12.6.7.2 table 103; kernel enum ib_cm_rej_reason). */
export const CmRejReason = {
  NO_QP: 1,
  NO_EEC: 2,
  NO_RESOURCES: 3,
  TIMEOUT: 4,
  UNSUPPORTED: 5,
  INVALID_COMM_ID: 6,
  INVALID_COMM_INSTANCE: 7,
  INVALID_SERVICE_ID: 8,
  INVALID_TRANSPORT_TYPE: 9,
  STALE_CONN: 10,
  RDC_NOT_EXIST: 11,
  INVALID_GID: 12,
  INVALID_LID: 13,
  INVALID_SL: 14,
  INVALID_TRAFFIC_CLASS: 15,
  INVALID_HOP_LIMIT: 16,
  INVALID_PACKET_RATE: 17,
  INVALID_ALT_GID: 18,
  INVALID_ALT_LID: 19,
  INVALID_ALT_SL: 20,
  INVALID_ALT_TRAFFIC_CLASS: 21,
  INVALID_ALT_HOP_LIMIT: 22,
  INVALID_ALT_PACKET_RATE: 23,
  PORT_CM_REDIRECT: 24,
  PORT_REDIRECT: 25,
  INVALID_MTU: 26,
  INSUFFICIENT_RESP_RESOURCES: 27,
  CONSUMER_DEFINED: 28,
  INVALID_RNR_RETRY: 29,
  DUPLICATE_LOCAL_COMM_ID: 30,
  INVALID_CLASS_VERSION: 31,
  INVALID_FLOW_LABEL: 32,
  INVALID_ALT_FLOW_LABEL: 33,
  VENDOR_OPTION_NOT_SUPPORTED: 35,
} as const;
export type CmRejReasonName = keyof typeof CmRejReason;

const REJ_NAME = new Map<number, CmRejReasonName>(Object.entries(CmRejReason).map(([k, v]) => [v, k as CmRejReasonName]));
/** The name of a REJ reason number, or undefined for one IBA does not define. */
export function rejReasonName(reason: number): CmRejReasonName | undefined {
  return REJ_NAME.get(reason);
}

/** REJ "Message REJected" and MRA "Message MRAed" (IBA 12.6.6, 12.6.7). */
export const CmMsgResponded = { REQ: 0, REP: 1, OTHER: 2 } as const;

/** REQ Transport Service Type (IBA 12.6.5; XRC is 3 with Extended Transport Type 1 in newer IBTA). */
export const CmTransport = { RC: 0, UC: 1, RD: 2, XRC: 3 } as const;

/** SIDR_REP status (IBA 12.11.2 table 109; kernel enum ib_cm_sidr_status). */
export const SidrStatus = { SUCCESS: 0, UNSUPPORTED: 1, REJECT: 2, NO_QP: 3, REDIRECT: 4, UNSUPPORTED_VERSION: 5 } as const;
export type SidrStatusName = keyof typeof SidrStatus;
const SIDR_NAME = new Map<number, SidrStatusName>(Object.entries(SidrStatus).map(([k, v]) => [v, k as SidrStatusName]));
export function sidrStatusName(status: number): SidrStatusName | undefined {
  return SIDR_NAME.get(status);
}

// ---- MTU ----

/** The IBA MTU enum (IBA 9.6.x, enum ib_mtu): the REQ's Path Packet Payload MTU. */
export const IbMtu = { MTU_256: 1, MTU_512: 2, MTU_1024: 3, MTU_2048: 4, MTU_4096: 5 } as const;

/** Bytes for an MTU enum value (0 for a value IBA does not define). */
export function ibMtuToBytes(e: number): number {
  return e >= 1 && e <= 5 ? 128 << e : 0;
}

/** The enum for an exact MTU in bytes (256..4096, powers of two), else 0. */
export function ibMtuFromBytes(bytes: number): number {
  for (let e = 5; e >= 1; e--) if (bytes === 128 << e) return e;
  return 0;
}

/** The RoCE path MTU for a netdev MTU (ib_addr.h iboe_get_mtu): the netdev MTU less the largest RoCE
 *  headers (GRH 40 + UDP 8 + BTH 12 + XRC ETH 4 + AtomicETH 28 + ICRC 4 = 96), rounded down to an IB MTU;
 *  0 when under 256. A 1500-byte netdev gives 1024 (enum 3), as the lab's REQs carry. */
export function iboeGetMtu(netdevMtu: number): number {
  const room = netdevMtu - 96;
  for (let e = 5; e >= 1; e--) if (room >= 128 << e) return e;
  return 0;
}

// ---- RoCE path fields (cma.c cma_resolve_iboe_route, roce-wire.md h.4) ----

/** The flow label rdma_cm gives a RoCEv2 path over IPv4 (or IPv6 with no flowinfo): cma.c
 *  cma_get_roce_udp_flow_label, (sport · 31 + dport) & 0xFFFFF over the rdma_cm ports. */
export function flowLabelFromPorts(sport: number, dport: number): number {
  return (sport * 31 + dport) & 0xfffff;
}

/** Linux's ip_tos2prio (net/ipv4/route.c), indexed by IPTOS_TOS(tos) >> 1 (rt_tos2priority). */
const IP_TOS2PRIO = [0, 0, 0, 0, 2, 2, 2, 2, 6, 6, 6, 6, 4, 4, 4, 4] as const;

/** rt_tos2priority(tos): the skb priority a TOS maps to. */
export function tosToPriority(tos: number): number {
  return IP_TOS2PRIO[(tos & 0x1e) >> 1]!;
}

/**
 * The path SL for a TOS (cma.c iboe_tos_to_sl): the netdev's priority → traffic-class map applied to
 * rt_tos2priority(tos) when the netdev has one (a VLAN egress map or an mqprio num_tc); 0 otherwise, which is
 * what a plain netdev (the lab's virtio, rxe over a bridge) gives. Pass the map only when you have it.
 */
export function tosToSl(tos: number, prioToTc?: readonly number[]): number {
  if (!prioToTc) return 0;
  return (prioToTc[tosToPriority(tos)] ?? 0) & 0xf;
}

/** LIDs on a RoCE path: the permissive LID 0xFFFF when the route leaves the subnet (hop limit > 1, the
 *  normal case), 0 otherwise; SubnetLocal is the reverse (cm.c cm_format_req with a RoCE path). */
export function rocePathLid(hopLimit: number): number {
  return hopLimit > 1 ? 0xffff : 0;
}
export function roceSubnetLocal(hopLimit: number): number {
  return hopLimit > 1 ? 0 : 1;
}

// ---- rdma_cm events ----

/** rdma_cm event types in enum order (librdmacm rdma_cma.h enum rdma_cm_event_type): the index is the value. */
export const RDMA_CM_EVENT_NAMES = [
  'ADDR_RESOLVED',
  'ADDR_ERROR',
  'ROUTE_RESOLVED',
  'ROUTE_ERROR',
  'CONNECT_REQUEST',
  'CONNECT_RESPONSE',
  'CONNECT_ERROR',
  'UNREACHABLE',
  'REJECTED',
  'ESTABLISHED',
  'DISCONNECTED',
  'DEVICE_REMOVAL',
  'MULTICAST_JOIN',
  'MULTICAST_ERROR',
  'ADDR_CHANGE',
  'TIMEWAIT_EXIT',
  'ADDRINFO_RESOLVED',
  'ADDRINFO_ERROR',
] as const;
export type RdmaCmEventName = (typeof RDMA_CM_EVENT_NAMES)[number];
/** name → value, e.g. RdmaCmEvent.ESTABLISHED === 9. */
export const RdmaCmEvent = Object.fromEntries(RDMA_CM_EVENT_NAMES.map((n, i) => [n, i])) as { readonly [K in RdmaCmEventName]: number };

/** rdma_event_str's text for an event value ('RDMA_CM_EVENT_ESTABLISHED'), or 'UNKNOWN EVENT'. */
export function rdmaEventStr(ev: number): string {
  const n = RDMA_CM_EVENT_NAMES[ev];
  return n === undefined ? 'UNKNOWN EVENT' : `RDMA_CM_EVENT_${n}`;
}
