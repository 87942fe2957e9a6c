/**
 * Helpers for the rdmacm-utils tool tests: run a bin/ launcher as its own process (as the lab runs
 * the real tools), and read a reference capture of test/interop/reference (output lines, then "exit N").
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));

export interface ToolRun {
  code: number | null;
  out: string;
  err: string;
  child: ChildProcess;
  done: Promise<void>;
}

/** spawn bin/<tool>.js with args; `done` resolves at exit (killed after limitMs: loops bounded in time) */
export function runBin(tool: string, args: string[], limitMs = 30_000): ToolRun {
  const child = spawn(process.execPath, [`${ROOT}bin/${tool}.js`, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  const r: ToolRun = { code: null, out: '', err: '', child, done: Promise.resolve() };
  child.stdout!.on('data', (d: Buffer) => (r.out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (r.err += d.toString()));
  const timer = setTimeout(() => child.kill(), limitMs);
  r.done = new Promise((res) => {
    child.on('close', (code, sig) => {
      clearTimeout(timer);
      r.code = code ?? (sig ? -1 : null);
      res();
    });
  });
  return r;
}

/** until `text` appears in the run's stdout (or the time is up) */
export async function waitFor(r: ToolRun, text: string, limitMs = 10_000): Promise<void> {
  const end = Date.now() + limitMs;
  while (!r.out.includes(text) && r.code === null && Date.now() < end) await new Promise((res) => setTimeout(res, 20));
}

/** a reference capture: its output lines and the exit status its last line records */
export function reference(name: string): { lines: string[]; exit: number | null } {
  const lines = readFileSync(`${ROOT}test/interop/reference/${name}`, 'utf8').split('\n');
  if (lines[lines.length - 1] === '') lines.pop();
  const last = lines[lines.length - 1] ?? '';
  const m = /^exit (\d+)$/.exec(last);
  if (m) lines.pop();
  return { lines, exit: m ? Number(m[1]) : null };
}

export function lines(s: string): string[] {
  const l = s.split('\n');
  if (l[l.length - 1] === '') l.pop();
  return l;
}

/** a port for one test, away from the tools' defaults and from other test files */
let next = 24_800 + Math.floor(Math.random() * 400);
export function freshPort(): string {
  return String(next++);
}
