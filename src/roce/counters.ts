/**
 * Per-port counters, named as rxe exposes them in
 * /sys/class/infiniband/<dev>/ports/<p>/hw_counters (rxe_hw_counters.c), plus
 * a few of softroce's own for what the wire layer drops. Incrementing is an
 * array store.
 */
export const COUNTER_NAMES = [
  'sent_pkts',
  'rcvd_pkts',
  'duplicate_request',
  'out_of_sequence',
  'rcvd_rnr_err',
  'send_rnr_err',
  'rcvd_seq_err',
  'ack_deferred',
  'retry_exceeded_err',
  'retry_rnr_exceeded_err',
  'completer_retry_err',
  'send_err',
  'link_downed',
  'rdma_sends',
  'rdma_recvs',
  // softroce: receive-side drops by reason
  'rcvd_icrc_err',
  'rcvd_malformed',
  'rcvd_unknown_qp',
  'rcvd_bad_state',
  'rcvd_bad_pkey',
  'rcvd_bad_qkey',
  'rcvd_bad_addr',
  'rcvd_bad_opcode',
  'timeouts',
  // responses for PSNs never sent or WQEs not outstanding; completions a full CQ could not take;
  // an exception caught on the receive path (a bug: the QP went to ERR)
  'rcvd_bad_psn',
  'cq_overflow',
  'rcvd_internal_err',
  // a response older than what is outstanding or not for the head WQE (a duplicate, a late one);
  // a UC/UD message with no receive posted (dropped, as IBA 9.8.3.3 / 10.8.3 say; RC gets an RNR NAK)
  'rcvd_stale_resp',
  'rcvd_no_recv_wqe',
  // tail-loss probes sent (requester.ts)
  'tail_probes',
  // READ holes asked for again (read-response.ts askReadHole)
  'read_hole_requests',
  // the GID table (issue 12): packets not sent because their source GID entry is gone (build.ts
  // finishAndSend); addresses a full GID table refused (verbs/gid-table.ts, once per address)
  'sent_sgid_gone',
  'gid_table_full',
  // a packet to the multicast QPN 0xFFFFFF whose destination group has no QP attached on the port
  // (recv.ts mcastRx; rxe drops it without a count)
  'rcvd_mcast_no_qp',
] as const;
export type CounterName = (typeof COUNTER_NAMES)[number];
/** Counter name -> its index in `counts` (`port.counters.counts[Ctr.send_err]++`: an array store, no lookup by string). */
export const Ctr = Object.fromEntries(COUNTER_NAMES.map((n, i) => [n, i])) as { readonly [K in CounterName]: number };

export class Counters {
  /** the counters' values, indexed by Ctr */
  readonly counts = new Float64Array(COUNTER_NAMES.length);
  snapshot(): Record<CounterName, number> {
    const o = {} as Record<CounterName, number>;
    COUNTER_NAMES.forEach((n, i) => {
      o[n] = this.counts[i]!;
    });
    return o;
  }
  reset(): void {
    this.counts.fill(0);
  }
}
