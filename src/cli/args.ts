/**
 * A small getopt_long for the rdma-core / perftest tools: short options
 * (`-s 64`, `-s64`, bundled flags `-ec`), long options (`--size=64`,
 * `--size 64`), and positional arguments. Unknown options are an error, as
 * with getopt.
 */
export interface OptSpec {
  short?: string;
  long: string;
  /** takes a value */
  arg: boolean;
}

export interface Parsed {
  opts: Map<string, string | true>;
  positional: string[];
}

export class UsageError extends Error {}

/**
 * A tool's process entry: runs it on the command line's arguments and turns its result into the
 * exit status; an exception the tool did not handle prints `prefix` (or the stack) and exits 1.
 */
export async function runTool(run: (argv: string[]) => Promise<number>, prefix?: string): Promise<void> {
  try {
    process.exitCode = await run(process.argv.slice(2));
  } catch (e) {
    process.stderr.write(prefix === undefined ? `${(e as Error).stack}\n` : `${prefix}: ${(e as Error).message}\n`);
    process.exitCode = 1;
  }
}

export function parseArgs(argv: readonly string[], specs: readonly OptSpec[]): Parsed {
  const byShort = new Map(specs.filter((s) => s.short).map((s) => [s.short!, s]));
  const byLong = new Map(specs.map((s) => [s.long, s]));
  const opts = new Map<string, string | true>();
  const positional: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--') {
      positional.push(...argv.slice(i + 1));
      break;
    }
    if (a.startsWith('--')) {
      const eq = a.indexOf('=');
      const name = eq >= 0 ? a.slice(2, eq) : a.slice(2);
      const spec = byLong.get(name);
      if (!spec) throw new UsageError(`unrecognized option '--${name}'`);
      if (spec.arg) {
        const v = eq >= 0 ? a.slice(eq + 1) : argv[++i];
        if (v === undefined) throw new UsageError(`option '--${name}' requires an argument`);
        opts.set(spec.long, v);
      } else opts.set(spec.long, true);
    } else if (a.startsWith('-') && a.length > 1) {
      for (let k = 1; k < a.length; k++) {
        const spec = byShort.get(a[k]!);
        if (!spec) throw new UsageError(`invalid option -- '${a[k]}'`);
        if (spec.arg) {
          const v = k + 1 < a.length ? a.slice(k + 1) : argv[++i];
          if (v === undefined) throw new UsageError(`option requires an argument -- '${a[k]}'`);
          opts.set(spec.long, v);
          break;
        }
        opts.set(spec.long, true);
      }
    } else positional.push(a);
  }
  return { opts, positional };
}

/** strtol-like integer (decimal, 0x hex, 0 octal), as the C tools accept. */
export function toInt(v: string | true | undefined, name: string, dflt: number): number {
  if (v === undefined) return dflt;
  if (v === true) throw new UsageError(`${name} needs a value`);
  const n = /^0x[0-9a-f]+$/i.test(v) ? parseInt(v, 16) : /^0[0-7]+$/.test(v) ? parseInt(v, 8) : /^-?\d+$/.test(v) ? parseInt(v, 10) : NaN;
  if (!Number.isFinite(n)) throw new UsageError(`invalid ${name} '${v}'`);
  return n;
}
