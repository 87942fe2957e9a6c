/**
 * A per-QP ring of the last role decisions: which role, the state it decided in, the opcode and
 * PSN of the packet (or WQE) it was about, and a reason code (role-states.ts). What a stuck run or an
 * unexplained retry needs to be read after the fact (issue 11): the CLIs print it when a timeout
 * kills them, `qp.trace()` returns it.
 *
 * Two 32-bit words per entry in one Uint32Array allocated with the QP; recording is a few stores
 * and never allocates. A decision identical to the one just recorded (same role, state, opcode and
 * reason: a stream of ACKs, say) bumps that entry's repeat count and its PSN instead of taking a
 * new entry, so a burst of the same thing does not push the interesting entries out.
 *
 *   word 0: role (2 bits) << 30 | state (6 bits) << 24 | reason (8 bits) << 16 | opcode (8 bits)
 *   word 1: repeat count - 1 (8 bits, saturating) << 24 | PSN (24 bits)
 */
import { opcodeName } from '../opcode.js';
import { COMP_STATE_NAME, REASON_NAME, REQ_STATE_NAME, RESP_STATE_NAME } from './role-states.js';

export const Role = { REQ: 0, COMP: 1, RESP: 2 } as const;
export type RoleT = (typeof Role)[keyof typeof Role];
export const ROLE_NAME = ['req', 'comp', 'resp'] as const;
const STATE_NAMES = [REQ_STATE_NAME, COMP_STATE_NAME, RESP_STATE_NAME] as const;

/** Entries kept per QP. */
export const TRACE_SIZE = 64;

/** One decision as `qp.trace()` returns it. */
export interface TraceEntry {
  /** how many decisions were recorded before this one (its position in the QP's history) */
  seq: number;
  role: (typeof ROLE_NAME)[number];
  state: string;
  /** the packet's opcode name, or '-' when the decision was about no packet (a timer, a WQE) */
  opcode: string;
  psn: number;
  reason: string;
  /** consecutive identical decisions folded into this entry (the PSN is the last one's) */
  count: number;
}

/** Opcode byte for a decision that was not about a received or sent packet. */
export const NO_OPCODE = 0xff;

export class TraceRing {
  readonly #w = new Uint32Array(TRACE_SIZE * 2);
  /** entries written (not counting folded repeats) */
  #n = 0;

  /** Records a decision; `psn` is masked to 24 bits, `opcode` NO_OPCODE when there is none. */
  record(role: RoleT, state: number, opcode: number, psn: number, reason: number): void {
    const w0 = ((role << 30) | ((state & 0x3f) << 24) | ((reason & 0xff) << 16) | (opcode & 0xff)) >>> 0;
    const w = this.#w;
    if (this.#n > 0) {
      const last = ((this.#n - 1) % TRACE_SIZE) * 2;
      if (w[last] === w0) {
        const rep = w[last + 1]! >>> 24;
        w[last + 1] = (((rep < 255 ? rep + 1 : rep) << 24) | (psn & 0xffffff)) >>> 0;
        return;
      }
    }
    const i = (this.#n % TRACE_SIZE) * 2;
    w[i] = w0;
    w[i + 1] = psn & 0xffffff;
    this.#n++;
  }

  /** Decisions recorded so far (folded repeats count once). */
  get length(): number {
    return this.#n;
  }

  clear(): void {
    this.#n = 0;
  }

  /** The kept entries, oldest first (built on demand: this is the slow path). */
  entries(): TraceEntry[] {
    const out: TraceEntry[] = [];
    const w = this.#w;
    const from = this.#n > TRACE_SIZE ? this.#n - TRACE_SIZE : 0;
    for (let k = from; k < this.#n; k++) {
      const i = (k % TRACE_SIZE) * 2;
      const w0 = w[i]!,
        w1 = w[i + 1]!;
      const role = w0 >>> 30;
      const op = w0 & 0xff;
      out.push({
        seq: k,
        role: ROLE_NAME[role] ?? 'req',
        state: STATE_NAMES[role as 0 | 1 | 2]?.[(w0 >>> 24) & 0x3f] ?? `state${(w0 >>> 24) & 0x3f}`,
        opcode: op === NO_OPCODE ? '-' : opcodeName(op),
        psn: w1 & 0xffffff,
        reason: REASON_NAME[(w0 >>> 16) & 0xff] ?? `reason${(w0 >>> 16) & 0xff}`,
        count: (w1 >>> 24) + 1,
      });
    }
    return out;
  }
}

/** Trace entries a CLI's stuck dump prints per QP (the newest): enough for the last round trips, short with many QPs. */
export const STUCK_TRACE_LINES = 32;

/** One line per entry: `#12 resp ERR_NAK_PSN RC_SEND_ONLY psn 0x000123 psn_gap_naked x3`. */
export function formatTrace(entries: readonly TraceEntry[]): string[] {
  return entries.map(
    (e) => `#${e.seq} ${e.role} ${e.state} ${e.opcode} psn 0x${e.psn.toString(16).padStart(6, '0')} ${e.reason}${e.count > 1 ? ` x${e.count}` : ''}`,
  );
}
