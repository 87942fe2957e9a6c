/**
 * 24-bit Packet Sequence Number arithmetic (IBA 9.7.1). PSNs wrap modulo 2^24;
 * "a is after b" is decided on the signed 24-bit difference, as rxe's
 * psn_compare does (shift the difference into the top of a 32-bit int).
 */
export const PSN_MASK = 0xffffff;
export const PSN_MOD = 0x1000000;

export function psnAdd(psn: number, n: number): number {
  return (psn + n) & PSN_MASK;
}

/** Signed distance a − b in [−2^23, 2^23). */
export function psnDiff(a: number, b: number): number {
  return ((a - b) << 8) >> 8;
}

/** < 0 if a is before b, 0 if equal, > 0 if after (rxe psn_compare). */
export function psnCompare(a: number, b: number): number {
  return psnDiff(a, b);
}

/** Whether psn lies in [start, start + count) modulo 2^24. */
export function psnInRange(psn: number, start: number, count: number): boolean {
  const d = (psn - start) & PSN_MASK;
  return d < count;
}

/** Number of PSNs a message of `len` bytes uses at path MTU `mtu` (an empty message still takes one). */
export function packetsFor(len: number, mtu: number): number {
  return len === 0 ? 1 : Math.ceil(len / mtu);
}

/** Pad bytes before the ICRC so the IB payload is 4-byte aligned (IBA 9.2: PadCnt). */
export function padFor(payloadLen: number): number {
  return (4 - (payloadLen & 3)) & 3;
}
