/**
 * `softroce` command: `softroce dump FILE [--json]`, `softroce demo`, `softroce teamdctl TEAMDEV ...`.
 */
import { readFileSync } from 'node:fs';
import { dumpCapture, formatPacket, formatSummary, type DumpPacket } from '../roce/dump.js';
import { runDemo } from './demo.js';
import { runWireDemo } from './wire-demo.js';
import { teamdctl } from './teamdctl.js';

const USAGE = `usage: softroce dump FILE [--json]   decode RoCE packets in a pcap/pcapng capture
       softroce demo                 RDMA between two loopback devices (no root, no configuration)
       softroce wire-demo            build, encode and verify one packet of each kind (no sockets)
       softroce teamdctl [-v] [-o] [-U] TEAMDEV command   a softroce bond's state and config, as teamdctl (-h: commands)`;

function jsonLine(p: DumpPacket): string {
  return JSON.stringify(p);
}

export async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  if (cmd === 'dump') {
    const json = rest.includes('--json');
    const files = rest.filter((a) => a !== '--json');
    if (files.length !== 1) {
      process.stderr.write(USAGE + '\n');
      return 2;
    }
    let buf: Buffer;
    try {
      buf = readFileSync(files[0]!);
    } catch (e) {
      process.stderr.write(`softroce dump: ${files[0]}: ${(e as Error).message}\n`);
      return 1;
    }
    const out: string[] = [];
    const flush = (): void => {
      if (out.length) process.stdout.write(out.join('\n') + '\n');
      out.length = 0;
    };
    const res = dumpCapture(buf, (p) => {
      out.push(json ? jsonLine(p) : formatPacket(p));
      if (out.length >= 256) flush();
    });
    flush();
    if (res.error) process.stderr.write(`softroce dump: ${files[0]}: ${res.error}\n`);
    // Both modes end with the same plain summary line, so scripts can always grep it.
    process.stdout.write(formatSummary(res.summary) + '\n');
    return res.error ? 1 : 0;
  }
  if (cmd === 'demo' || cmd === undefined) return runDemo();
  if (cmd === 'wire-demo') return runWireDemo();
  if (cmd === 'teamdctl') return teamdctl(rest, { argv0: 'softroce teamdctl' });
  process.stderr.write(USAGE + '\n');
  return 2;
}

// `softroce dump x.pcap | head` closes the pipe early: that is not an error.
process.stdout.on('error', (e: NodeJS.ErrnoException) => {
  if (e.code === 'EPIPE') process.exit(0);
  throw e;
});

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (e: unknown) => {
    process.stderr.write(`softroce: ${(e as Error).stack ?? String(e)}\n`);
    process.exitCode = 1;
  },
);
