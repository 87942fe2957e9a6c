/**
 * Scatter/gather over a list of SGEs by message offset: how a message's
 * bytes map onto registered memory (IBA 10.7.3.1 / 11.4.1.1). The requester
 * gathers from a send WQE, the completer scatters READ responses and atomic
 * results, the responder scatters SENDs into receive WQEs.
 */
import type { Sge } from '../../verbs/types.js';

/** Copies message bytes [from, from+n) of `sg` to dst at `at`. */
export function gatherSgl(sg: readonly Sge[], from: number, dst: Buffer, at: number, n: number): void {
  let skip = from;
  for (const s of sg) {
    if (n === 0) return;
    if (skip >= s.length) { skip -= s.length; continue; }
    const take = Math.min(s.length - skip, n);
    s.mr.buffer.copy(dst, at, s.offset + skip, s.offset + skip + take);
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
    if (skip >= s.length) { skip -= s.length; continue; }
    const take = Math.min(s.length - skip, n);
    src.copy(s.mr.buffer, s.offset + skip, from, from + take);
    from += take;
    n -= take;
    skip = 0;
  }
}
