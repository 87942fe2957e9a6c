/**
 * Memory regions (IBA 10.6). A region is a Buffer/Uint8Array the caller owns;
 * its "virtual address" is a fabricated, page-aligned, unique 64-bit value so
 * remote peers address it the way they address real memory. Keys are random
 * 32-bit values (not guessable from one another), looked up in a Map per
 * message, never per packet.
 */
import { randomInt } from 'node:crypto';
import { ACCESS } from './types.js';
import type { Pd } from './objects.js';
import { VerbsError } from './errors.js';
import type { MemoryRegion } from '../roce/transport/types.js';
import { disarmPlacement, placesInto } from '../roce/transport/place.js';

let nextVa = 0x7f3c_0000_0000n;

export class Mr implements MemoryRegion {
  readonly pd: Pd;
  /** the registered memory (a view over the caller's buffer) */
  readonly buffer: Buffer;
  readonly length: number;
  readonly addr: bigint;
  /** addr's high and low 32 bits, for the transport's per-packet bounds check */
  readonly addrHi: number;
  readonly addrLo: number;
  readonly lkey: number;
  readonly rkey: number;
  /** ACCESS bits */
  readonly access: number;
  /**
   * Whether a SEND_WITH_INV may invalidate this region's R_Key (`regMr(mem, access, { invalidatable: true })`).
   * rxe lets a remote invalidation hit only fast-registration MRs (IB_MR_TYPE_MEM_REG), never a plain
   * ibv_reg_mr region; this flag stands for that MR type.
   */
  readonly invalidatable: boolean;
  #valid = true;
  #closed = false;
  constructor(pd: Pd, mem: Uint8Array, access: number, lkey: number, rkey: number, invalidatable = false) {
    this.pd = pd;
    this.invalidatable = invalidatable;
    this.buffer = Buffer.from(mem.buffer, mem.byteOffset, mem.byteLength);
    this.length = mem.byteLength;
    this.addr = nextVa;
    this.addrHi = Number(nextVa >> 32n);
    this.addrLo = Number(nextVa & 0xffff_ffffn);
    // Next region one page further than this one's end: addresses never overlap.
    nextVa += (BigInt(mem.byteLength) + 0x1fffn) & ~0xfffn;
    this.access = access;
    this.lkey = lkey;
    this.rkey = rkey;
  }
  /** false after dereg or remote invalidation */
  get valid(): boolean {
    return this.#valid;
  }
  get closed(): boolean {
    return this.#closed;
  }
  /** @internal the responder: a SEND_WITH_INV took the R_Key out of use (IBA 10.6.5); local use stops too. */
  invalidate(): void {
    this.#valid = false;
    this.disarm();
  }
  /**
   * RX direct placement: the QPs whose WRITE in progress lands here are disarmed, synchronously,
   * so no byte lands after an invalidation or deregistration (their next packet goes to the
   * responder, which refuses it as before).
   */
  private disarm(): void {
    for (const qp of this.pd.device.qps.values()) if (placesInto(qp, this)) disarmPlacement(qp);
  }
  /** Offset into the region of [va, va+len), or -1 if it is not all inside. */
  offsetOf(va: bigint, len: number): number {
    const d = va - this.addr;
    if (d < 0n || d > BigInt(this.length)) return -1;
    const off = Number(d);
    return off + len <= this.length ? off : -1;
  }
  /** Whether the remote may do `need` (ACCESS bits) here. */
  allows(need: number): boolean {
    return this.#valid && !this.#closed && (this.access & need) === need;
  }
  close(): void {
    if (this.#closed) return;
    this.pd.device.deregMr(this);
    this.#closed = true;
    this.#valid = false;
    this.disarm();
  }
  [Symbol.dispose](): void {
    this.close();
  }
}

/** A fresh random key that is not 0 and not in use. */
export function newKey(inUse: (k: number) => boolean): number {
  for (;;) {
    const k = (randomInt(0, 0x10000) * 0x10000 + randomInt(0, 0x10000)) >>> 0;
    if (k !== 0 && !inUse(k)) return k;
  }
}

export function checkMrAccess(access: number): void {
  // IBA 10.6.3.1 / ibv_reg_mr: remote write or atomic requires local write.
  if (access & (ACCESS.REMOTE_WRITE | ACCESS.REMOTE_ATOMIC) && !(access & ACCESS.LOCAL_WRITE)) {
    throw new VerbsError('EINVAL', 'ibv_reg_mr', 'REMOTE_WRITE and REMOTE_ATOMIC need LOCAL_WRITE', 'access');
  }
}
