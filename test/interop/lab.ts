/**
 * The lab of ../shared/lab as the interop suite drives it: run a command in a
 * guest (`lab exec`) or in the lab's own namespace on the host side (`lab
 * host`), with a timeout, and collect its exit status and output.
 */
import { spawn } from 'node:child_process';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
export const LAB_DIR = process.env['SOFTROCE_LAB'] ?? resolve(ROOT, '..', 'shared', 'lab');
export const LAB = join(LAB_DIR, 'lab');
export const HOST_IP = '198.18.0.1';
export const GUEST_SERVER = 1;
export const GUEST_CLIENT = 2;
export const GUEST_IP = (g: number): string => `198.18.0.${10 + g}`;
/** softroce's device on the host side of the lab: the bridge, with the host's address. */
export const DEVS = `SOFTROCE_DEVICES=rxe0=labbr0:${HOST_IP}`;

export interface Res {
  code: number | null;
  out: string;
  err: string;
}

export function sh(cmd: string, args: string[], timeoutMs: number, env: NodeJS.ProcessEnv = process.env): Promise<Res> {
  return new Promise((res) => {
    const p = spawn(cmd, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '',
      err = '';
    p.stdout.on('data', (d: Buffer) => {
      out += d.toString();
    });
    p.stderr.on('data', (d: Buffer) => {
      err += d.toString();
    });
    const t = setTimeout(() => p.kill('SIGTERM'), timeoutMs);
    p.on('close', (code) => {
      clearTimeout(t);
      res({ code, out, err });
    });
    p.on('error', (e) => {
      clearTimeout(t);
      res({ code: -1, out, err: err + String(e) });
    });
  });
}
export const lab = (args: string[], ms = 120_000): Promise<Res> => sh(LAB, args, ms);
export const guest = (g: number, cmd: string, ms = 90_000): Promise<Res> => lab(['exec', '-t', String(Math.ceil(ms / 1000)), String(g), cmd], ms + 10_000);
export const host = (cmd: string, ms = 90_000): Promise<Res> => lab(['host', `timeout ${Math.ceil(ms / 1000)} ${cmd}`], ms + 10_000);
export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** The reason to show: a stuck dump when there is one (with the lines printed before it), else the last two lines. */
export const tail = (s: string): string => {
  const lines = s.trim().split('\n');
  const firstStuck = lines.findIndex((l) => l.startsWith('stuck:'));
  if (firstStuck < 0) return lines.slice(-2).join(' | ');
  return [...lines.slice(Math.max(0, firstStuck - 2), firstStuck), ...lines.slice(firstStuck)].join(' | ');
};
export const oneLine = (s: string): string =>
  s
    .trim()
    .split('\n')
    .map((l) => l.trim())
    .filter(Boolean)
    .join(' | ');
