/**
 * Shared by the fast-path tests (fast-tx, fast-read, place): a deterministic payload, waiting for
 * completions or a condition, the GSO switch, a captured packet's ICRC taken back to IPv4 ID 0, and
 * the port counters by name.
 */
import { Wc } from '../../src/verbs/types.js';
import type { Cq } from '../../src/verbs/cq.js';
import { icrcIdDelta, readIcrc, writeIcrc } from '../../src/roce/icrc.js';
import { fill } from '../verbs/pair.js';
import { COUNTER_NAMES } from '../../src/roce/counters.js';

/** A captured datagram and the IPv4 `id | df << 16` the receiver accepted it with (-1: not accepted). */
export interface Cap {
  bytes: Buffer;
  acc: number;
}

/** n bytes of xorshift32 from `seed` (pair.ts fill): every offset distinct enough to catch a misplaced copy. */
export function pattern(n: number, seed: number): Buffer {
  const b = Buffer.alloc(n);
  fill(b, seed);
  return b;
}

/** Polls `cond` every millisecond until it holds or `ms` passed; its last answer. */
export async function waitFor(cond: () => boolean, ms = 10_000): Promise<boolean> {
  for (const end = performance.now() + ms; performance.now() < end;) {
    if (cond()) return true;
    await new Promise((r) => setTimeout(r, 1));
  }
  return cond();
}

/** The port counters that moved, by name (for a test's log). */
export const moved = (c: number[]): string =>
  c
    .map((v, i) => (v > 0 ? `${COUNTER_NAMES[i] ?? i}=${v}` : ''))
    .filter((x) => x)
    .join(' ');

/** One port counter by name. */
export const ctr = (c: number[], name: string): number => c[(COUNTER_NAMES as readonly string[]).indexOf(name)]!;

/** Polls `cq` until n completions arrived or `ms` passed; the completions (copies). */
export async function waitN(cq: Cq, n: number, ms = 20_000): Promise<Wc[]> {
  const out: Wc[] = [];
  const buf = Array.from({ length: 16 }, () => new Wc());
  for (const end = performance.now() + ms; out.length < n && performance.now() < end;) {
    const k = cq.poll(buf);
    for (let i = 0; i < k; i++) out.push(Object.assign(new Wc(), buf[i]!));
    if (out.length < n) await new Promise((r) => setTimeout(r, 1));
  }
  return out;
}

/** The packet with its ICRC as it would be for IPv4 ID 0 (what a lone datagram carries). */
export function idZero(c: Cap): Buffer {
  const b = Buffer.from(c.bytes);
  const id = c.acc & 0xffff;
  if (id !== 0) writeIcrc(b, b.length - 4, (readIcrc(b, b.length - 4) ^ icrcIdDelta(b.length + 20, id)) >>> 0);
  return b;
}

/** Runs f with UDP GSO on (the default) or off (SOFTROCE_GSO=0), restoring the variable after. */
export async function withGso<T>(on: boolean, f: () => Promise<T>): Promise<T> {
  const was = process.env['SOFTROCE_GSO'];
  if (on) delete process.env['SOFTROCE_GSO'];
  else process.env['SOFTROCE_GSO'] = '0';
  try {
    return await f();
  } finally {
    if (was === undefined) delete process.env['SOFTROCE_GSO'];
    else process.env['SOFTROCE_GSO'] = was;
  }
}
