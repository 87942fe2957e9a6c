/**
 * The per-QP state of the three IBA roles (rxe keeps the same in struct rxe_req_info,
 * rxe_comp_info and rxe_resp_info): typed classes whose field initialisers are the values a new
 * QP starts from and whose reset() is what a move to RESET restores (IBA 10.3.1: RESET empties
 * the queues and clears the transport state). The roles (requester.ts, completer.ts,
 * responder.ts) read and write the fields directly: allocation-free on the hot path.
 */
import type { TimerHandle } from '../sched.js';
import type { MemoryRegion } from './shared.js';
import { RdResource, type RecvWqe } from './wqe.js';
import { LazyTimer } from './lazy-timer.js';

/** A probe's timer that comes this little (ms) before its deadline fires as if on time. */
const PROBE_SLACK_MS = 0.05;

/** RXE_MAX_UNACKED_PSNS: the requester's window starts (and is reset to) this many PSNs. */
const INITIAL_WINDOW = 128;

/** requester (rxe req): next PSN, next WQE to send, READ/ATOMIC outstanding */
export class ReqInfo {
  /** the next PSN to send */
  psn = 0;
  /** the PSN after the highest ever sent: responses at or above it are forged */
  maxPsn = 0;
  /** the absolute index of the next send WQE to send (sq[nextWqe % cap]): between sqHead and sqTail */
  nextWqe = 0;
  /** READ and ATOMIC WQEs sent and not yet completed (against max_rd_atomic) */
  rdAtomic = 0;
  /** packets since the last one that asked for an ACK */
  sinceAckReq = 0;
  /** in the device's run queue (engine.ts) */
  scheduled = false;
  /** waiting in a port's tx-wait list for the link's 'drain' */
  waitingDrain = false;
  /** PSNs that may be unacknowledged (halved on retry, grown back by ACKs: retry.ts) */
  window = INITIAL_WINDOW;
  /** progress credited toward the next one-PSN increment of `window` (additive increase, retry.ts madeProgress) */
  windowCredit = 0;
  /**
   * The device's accounting of it (engine.ts account): the packets in flight it last counted, and
   * its index in the engine's list of busy QPs (-1: not there). Not reset with the QP: the engine
   * settles them at its next run.
   */
  accounted = 0;
  busyAt = -1;

  /** RESET: the run-queue flags stay (a queued QP stays queued; its run finds nothing to do). */
  reset(): void {
    this.psn = 0;
    this.maxPsn = 0;
    this.nextWqe = 0;
    this.rdAtomic = 0;
    this.sinceAckReq = 0;
    this.window = INITIAL_WINDOW;
    this.windowCredit = 0;
  }
}

/** completer (rxe comp): oldest unacknowledged PSN, retry budget, timers */
export class CompInfo {
  /** the oldest unacknowledged PSN */
  psn = 0;
  /** retries left (the QP's retry_cnt / rnr_retry when set; 7 = forever) */
  retryCnt = 0;
  rnrRetry = 0;
  rnrTimer: TimerHandle | null = null;
  /** the PSN the last retry started from (-1: none) */
  retriedAt = -1;
  /** its ACK timer and probe are held while it waits in the device's run queue (engine.ts park) */
  parked = false;
  /** the ACK timer (retry.ts armRetransmit); `ack.at`: when it expires (Infinity: not armed) */
  readonly ack = new LazyTimer(0);
  /** round-trip estimate (ms, 0 = none yet) and the one packet being timed (PSN, send time) */
  srtt = 0;
  sampleP = -1;
  sampleT = 0;
  /** the tail-loss probe (requester.ts armProbe), and the probes sent since progress */
  readonly probe = new LazyTimer(PROBE_SLACK_MS);
  probes = 0;
  /**
   * The READ hole asked for last (read-response.ts askReadHole): its first PSN (-1: none), how
   * often it was asked, when it was first asked, and its probe (it is asked again if still missing
   * at `hole.at`); holeRtt: the round trip of a hole request answered at the first ask (ms, 0 =
   * none yet).
   */
  holePsn = -1;
  /** the PSN after the hole's range: it is filled when comp.psn reaches this */
  holeEnd = -1;
  holeAsks = 0;
  holeAskedAt = 0;
  readonly hole = new LazyTimer(PROBE_SLACK_MS);
  holeRtt = 0;

  /**
   * RESET (the caller stops the timers first: retry.ts stopAckTimer, and the RNR timer). The
   * retry budgets are attributes (set again by the modify that sets retry_cnt); the round-trip
   * estimate is of the path and stays.
   */
  reset(): void {
    this.psn = 0;
    this.retriedAt = -1;
    this.sampleP = -1;
    this.probes = 0;
    this.holePsn = -1;
    this.holeEnd = -1;
    this.holeAsks = 0;
  }
}

/** A READ whose responses are still to be sent (responder.ts runReads). */
export interface PendingRead {
  psn: number;
  mr: MemoryRegion | null;
  off: number;
  len: number;
  sentPsn: number;
}
/** A request that arrived while READ responses were being sent (kept in order). */
export interface BackloggedRequest {
  buf: Buffer;
  len: number;
  srcIp: string;
  srcPort: number;
  ipId: number;
  srcBytes: Uint8Array;
}

/** READ responses per run of the responder's READ streams at most, and at least (see RespInfo.readBudget) */
export const READ_BUDGET_MAX = 64;
export const READ_BUDGET_MIN = 4;

/** responder (rxe resp): expected PSN, MSN, message in progress, saved READ/ATOMIC resources */
export class RespInfo {
  /** the expected PSN */
  psn = 0;
  msn = 0;
  /** the opcode of the last packet of the message in progress (-1: none) */
  lastOp = -1;
  /** the receive WQE of the SEND in progress, and the bytes it has */
  wqe: RecvWqe | null = null;
  offset = 0;
  /** the PSN a sequence NAK was sent for (-1: none) */
  nakPsn = -1;
  /** the highest PSN seen past a gap, and how many arrived past it (responder.ts) */
  oosMax = 0;
  oosCount = 0;
  /** UC: the rest of a message whose first packet was refused is dropped */
  dropMsg = false;
  /** the WRITE in progress: its MR, the offset there, bytes still to come, its total length */
  mr: MemoryRegion | null = null;
  mrOff = 0;
  resid = 0;
  /** the MR the last R_Key resolved to: a cache in front of the device's table (responder-steps.ts checkRkey) */
  keyMr: MemoryRegion | null = null;
  writeLen = 0;
  /** saved READ/ATOMIC resources (max_dest_rd_atomic of them, from INIT) and the next to use */
  res: RdResource[] = [];
  resNext = 0;
  /** READ responses still to send, per pending READ */
  reads: PendingRead[] = [];
  /** requests that arrived while READ responses were being sent (kept in order) */
  backlog: BackloggedRequest[] = [];
  /**
   * READ responses one run may send (responder.ts runReads), AIMD: halved by each duplicate READ
   * (the requester went back for responses it lost), one more per READ_CLEAN_RUNS runs without one.
   */
  readBudget = READ_BUDGET_MAX;
  readCleanRuns = 0;
  /** RC requests that arrived ahead of a missing PSN, kept by PSN until it comes (responder.ts stashAhead) */
  readonly stash = new Map<number, Buffer>();
  /** the expected PSN the out-of-sequence count (oosCount) is for */
  gapPsn = -1;
  scheduled = false;
  waitingDrain = false;
  /** a coalesced ACK waits for the end of this event-loop turn (responder.ts queueAck) */
  ackPending = false;
  ackPsn = 0;
  ackMsn = 0;
  ackFlush: (() => void) | null = null;

  /**
   * RESET: everything of the message in progress and of the sequence-gap tracking. (The literal
   * this replaces was re-initialised by hand and missed oosMax, oosCount, writeLen and resNext.)
   */
  reset(): void {
    this.psn = 0;
    this.msn = 0;
    this.lastOp = -1;
    this.wqe = null;
    this.offset = 0;
    this.nakPsn = -1;
    this.oosMax = 0;
    this.oosCount = 0;
    this.dropMsg = false;
    this.mr = null;
    this.mrOff = 0;
    this.resid = 0;
    this.keyMr = null;
    this.writeLen = 0;
    this.resNext = 0;
    this.reads = [];
    this.backlog = [];
    this.readBudget = READ_BUDGET_MAX;
    this.readCleanRuns = 0;
    this.stash.clear();
    this.gapPsn = -1;
  }

  /** RESET -> INIT: the MSN starts at 0 (IBA 9.7.5.1.2) and the READ/ATOMIC resources are allocated. */
  init(resources: number): void {
    this.msn = 0;
    this.ackPending = false;
    this.res = Array.from({ length: Math.max(1, resources) }, () => new RdResource());
  }
}
