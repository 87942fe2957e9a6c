/** Shared test helpers: where the lab's golden captures are, a seeded RNG. */
import { existsSync, readdirSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/** Repository root (tests run from dist/test/...). */
export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');

/**
 * The lab's captures: SOFTROCE_CAPTURES, else ../shared/lab/captures beside the
 * checkout (where CI puts shared/). A missing directory fails the tests that
 * need it rather than skipping them.
 */
export function capturesDir(): string {
  const d = process.env['SOFTROCE_CAPTURES'] ?? join(ROOT, '..', 'shared', 'lab', 'captures');
  if (!existsSync(d)) throw new Error(`golden captures not found at ${d} (set SOFTROCE_CAPTURES)`);
  return d;
}

export function goldenFiles(): string[] {
  const d = capturesDir();
  return readdirSync(d)
    .filter((f) => f.endsWith('.pcap'))
    .sort()
    .map((f) => join(d, f));
}

/** xorshift32: deterministic, seedable. */
export class Rng {
  private s: number;
  constructor(seed: number) {
    this.s = seed >>> 0 || 0x9e3779b9;
  }
  next(): number {
    let x = this.s;
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    this.s = x;
    return x;
  }
  int(n: number): number {
    return this.next() % n;
  }
  bytes(n: number): Uint8Array {
    const b = new Uint8Array(n);
    for (let i = 0; i < n; i++) b[i] = this.next() & 0xff;
    return b;
  }
  big64(): bigint {
    return (BigInt(this.next()) << 32n) | BigInt(this.next());
  }
}
