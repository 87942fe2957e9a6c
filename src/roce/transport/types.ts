/**
 * What the transport needs from the objects above it, declared here so the transport never
 * imports the verbs layer (issue 11: layers point one way, verbs -> roce/transport -> roce/link). The
 * verbs classes (Qp, Device, Port, Mr, Cq, Ah) implement these interfaces; the transport sees
 * only what it reads or calls. The small constant tables the two layers share (WR opcodes, work
 * completion statuses and opcodes, access bits, QP states) and the leaf interfaces (memory,
 * completions, destinations) are in shared.ts, re-exported here.
 */
import type { Counters } from '../counters.js';
import type { Link } from '../link/link.js';
import type { Mtu } from '../opcode.js';
import type { Scheduler } from '../sched.js';
import type { ReqInfo, CompInfo, RespInfo } from './state.js';
import type { SendWqe, RecvWqe } from './wqe.js';
import type { TraceRing } from './trace.js';
import type { CompletionSink, Dest, KeyResolver, QpState, QpType } from './shared.js';

// The leaf tables and interfaces (shared.ts: no imports of their own), importable from here too.
export * from './shared.js';

/** What the transport reports to the verbs layer about a QP (ibv_get_async_event's QP events). */
export type QpEventType = 'COMM_EST' | 'QP_FATAL' | 'QP_REQ_ERR' | 'QP_ACCESS_ERR' | 'SQ_DRAINED' | 'LAST_WQE_REACHED';
export interface QpEvent {
  type: QpEventType;
  qp: TransportQp;
}

/** A RoCE port as the transport sends and receives on it (verbs Port). */
export interface PortLike {
  readonly num: number;
  readonly link: Link;
  readonly address: string;
  /** the bound IPv4 address as a number (0 for IPv6) and as bytes (4 or 16): ICRC inputs */
  readonly ipNum: number;
  readonly addrBytes: Uint8Array;
  readonly counters: Counters;
  /** per GID index, the generation of the entry there (0: empty); a Dest whose sgidGen differs sends nothing */
  readonly gidGen: Uint32Array;
}

/** The device as the transport uses it: ports, clock, tables, the run queue, events. */
export interface TransportDevice {
  readonly closed: boolean;
  readonly sched: Scheduler;
  readonly ports: readonly PortLike[];
  readonly attr: { readonly maxMsgSize: number };
  readonly icrcIpv4: 'infer-id' | 'id-zero';
  /** QPN -> QP (QP1 is per port: gsiOn) */
  readonly qps: { get(qpn: number): TransportQp | undefined; values(): Iterable<TransportQp> };
  /** QP1 (the GSI QP) of port `port` while open, else null: a port has its own (IBA 13.4.6.1) */
  gsiOn(port: number): TransportQp | null;
  /**
   * The QPs attached to the multicast group `group` (ibv_attach_mcast), in attach order, or undefined when
   * none is: `group` is the address as the link reports it (RxHandler's `group`: for an IPv4-mapped MGID
   * the dotted IPv4 group, else the MGID as an IPv6 string). A packet to QPN 0xFFFFFF goes to each.
   */
  mcastQps(group: string): readonly TransportQp[] | undefined;
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
  /**
   * the UDP source port of everything this QP sends, requests and responses (flow.ts: rxe's hash of
   * the QPN, or the AV's flow label); the ICRC covers it
   */
  readonly srcPort: number;
  /**
   * The port this QP's packets leave by when it is not `device.ports[port - 1]` itself: a bonded
   * device (src/lag) gives each QP the member link of its LAG port, as mlx5's QP TX affinity picks
   * the physical port under the one port the LAG device shows. Same address and GIDs as the QP's
   * port; its own link and counters. Absent or null: the QP's port (build.ts txPortOf).
   */
  readonly txPort?: PortLike | null;
  readonly cap: { readonly maxSendWr: number };
  readonly sendCq: CompletionSink;
  readonly recvCq: CompletionSink;
  readonly srq: object | null;
  /** the send queue ring: absolute counters, index = n % cap.maxSendWr */
  readonly sq: readonly SendWqe[];
  sqHead: number;
  readonly sqTail: number;
  readonly rqCount: number;
  readonly req: ReqInfo;
  readonly comp: CompInfo;
  readonly resp: RespInfo;
  /** the three roles' last decisions (trace.ts), for qp.trace() and the CLIs' stuck dumps */
  readonly traceRing: TraceRing;
  setState(to: QpState): void;
  /** the next receive WQE, from the SRQ or the RQ */
  takeRecv(): RecvWqe | null;
  /** give back the WQE takeRecv() returned (its message was refused before any byte landed) */
  returnRecv(e: RecvWqe): void;
}
