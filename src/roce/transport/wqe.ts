/**
 * The work queue entries the transport runs on: send WQEs (what the requester needs of a WR,
 * copied at post time, and where it is in its life), receive WQEs, and the responder's saved
 * READ/ATOMIC resources. The verbs layer fills them at post; the roles own them afterwards.
 */
import type { AddressHandle, SgeLike } from './shared.js';

/**
 * An empty SGE list of the kind a filled one is (holey, of objects). Each queue slot keeps its
 * array and refills it at every post (fillSendWqe, fillRecvWqe). From `[]` (small integers), a
 * slot's first post changed its array's map, and V8 discarded the post path it had compiled for
 * the QPs already running: every new QP (and the latency tools' run after their warm-up)
 * started on deoptimized code (issue 15).
 */
const NO_SGE = { length: 0 } as unknown as SgeLike;
function emptySgl(): SgeLike[] {
  const a = new Array<SgeLike>(1);
  a[0] = NO_SGE;
  a.length = 0;
  return a;
}
/** A send WQE's life (rxe wqe_state): posted, being sent, sent and waiting for its ACK/response, completed. */
export const WqeState = { POSTED: 0, PROCESSING: 1, PENDING: 2, DONE: 3 } as const;

/** A send WQE: what the requester needs of a WR, copied at post time. */
export class SendWqe {
  wrId = 0;
  op = 0;
  sg: readonly SgeLike[] = emptySgl();
  length = 0;
  inline: Buffer | null = null;
  imm = 0;
  invRkey = 0;
  remoteAddr = 0n;
  /**
   * remoteAddr as two 32-bit halves, for the RETH of every WRITE and READ request: writing a
   * bigint allocated several per message (issue 15: a quarter of ib_write_bw's allocations)
   */
  remoteHi = 0;
  remoteLo = 0;
  rkey = 0;
  compareAdd = 0n;
  swap = 0n;
  signaled = false;
  solicited = false;
  fence = false;
  ah: AddressHandle | null = null;
  remoteQpn = 0;
  remoteQkey = 0;
  state = 0;
  firstPsn = 0;
  lastPsn = 0;
  /** bytes sent so far (READ: bytes of response received) */
  sent = 0;
  /** firstPsn/lastPsn hold the PSNs this WQE was sent with (a go-back-N resend reuses them) */
  psnAssigned = false;
  /** counted in req.rdAtomic (READ/ATOMIC) */
  rdCounted = false;
  /** a local error found while processing (WC status index), 0 = none */
  localErr = 0;
  /**
   * READ: responses that arrived ahead of a missing one (a bit per response packet; allocated the
   * first time one does, kept for reuse), the highest response index seen, and the response index a
   * hole re-request was last sent for and the index after its range (read-response.ts readResponse)
   */
  rdHave: Uint8Array | null = null;
  rdMaxSeen = -1;
  rdAsked = -1;
  rdAskedEnd = -1;
}

/** A receive WQE (of a QP's RQ or of an SRQ). */
export class RecvWqe {
  wrId = 0;
  sg: readonly SgeLike[] = emptySgl();
  length = 0;
}

/** A saved responder resource for READ and ATOMIC (IBA 9.7.5.1.6: duplicates are answered from it). */
export class RdResource {
  psn = -1;
  lastPsn = -1;
  atomic = false;
  orig = 0n;
  msn = 0;
  /** READ: the request as first received; a duplicate must ask for the same R_Key and a part of this range */
  va = 0n;
  len = 0;
  rkey = 0;
}
