/**
 * Scatter/gather over a list of SGEs by message offset: how a message's
 * bytes map onto registered memory (IBA 10.7.3.1 / 11.4.1.1). The requester
 * gathers from a send WQE, the completer scatters READ responses and atomic
 * results, the responder scatters SENDs into receive WQEs.
 */
import { copyBytes } from '../wire/copy.js';
import type { SgeLike as Sge } from './types.js';

/**
 * Whether every SGE still names live memory of `pd` (not deregistered, not invalidated) with
 * LOCAL_WRITE when the transport writes into it, inside the region (IBA 10.6.3.4, C10-..: an L_Key
 * is checked when it is used, not only at post). Checked per message and per packet, so an MR
 * closed while a message moves stops the message at once.
 */
export function sglUsable(sg: readonly Sge[], pd: unknown, write: boolean): boolean {
  // Indexed, not for-of: an array iterator the optimizer has not removed is an object per call.
  for (let i = 0; i < sg.length; i++) {
    const s = sg[i]!;
    const mr = s.mr;
    if (mr.closed || !mr.valid || mr.pd !== pd || s.offset + s.length > mr.length) return false;
    if (write && (mr.access & 1) === 0) return false; // ACCESS.LOCAL_WRITE
  }
  return true;
}

/** Copies message bytes [from, from+n) of `sg` to dst at `at`. */
export function gatherSgl(sg: readonly Sge[], from: number, dst: Buffer, at: number, n: number): void {
  let skip = from;
  for (const s of sg) {
    if (n === 0) return;
    if (skip >= s.length) {
      skip -= s.length;
      continue;
    }
    const take = Math.min(s.length - skip, n);
    copyBytes(s.mr.buffer, s.offset + skip, dst, at, take);
    at += take;
    n -= take;
    skip = 0;
  }
}

/** Copies n bytes of src (from `from`) into `sg` at message offset `at`. The caller has checked the length. */
export function scatterSgl(sg: readonly Sge[], at: number, src: Buffer, from: number, n: number): void {
  let skip = at;
  for (const s of sg) {
    if (n === 0) return;
    if (skip >= s.length) {
      skip -= s.length;
      continue;
    }
    const take = Math.min(s.length - skip, n);
    copyBytes(src, from, s.mr.buffer, s.offset + skip, take);
    from += take;
    n -= take;
    skip = 0;
  }
}
