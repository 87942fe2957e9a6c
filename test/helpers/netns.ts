/**
 * Network-namespace test harness (issue 12 item 5): namespaces, veth pairs between them with addresses in
 * 198.19.0.0/16 (inside the benchmarking range 198.18.0.0/15 of RFC 2544; the lab owns 198.18.0.0/24 and
 * 198.18.1.0/24 in its own namespace `roce-lab`, which nothing here touches), links up and down, addresses
 * added and removed, and processes run inside a namespace (`ip netns exec`).
 *
 * Why iproute2 and not a netlink library: creating a *named* namespace is not a netlink operation (it is
 * unshare(CLONE_NEWNET) plus a bind mount under /run/netns, which `ip netns add` does), and running a process
 * in one needs setns() before exec, which Node cannot do; `ip netns exec` does both. npm has no maintained
 * rtnetlink client (the package lists hold netlink libraries for Go and Python only), and for the few link
 * and address changes a test makes, one `ip` call of a few milliseconds each is simpler than a netlink codec.
 *
 * Cleanup, whatever happens to the test:
 * - a failed assertion or a thrown error: `open(t)` registers `t.teardown(cleanup)`;
 * - the test process exits (normally, by an uncaught exception, or by SIGINT/SIGTERM/SIGHUP): a process
 *   hook runs the same cleanup synchronously;
 * - the test process is SIGKILLed: children die with it (they run under `setpriv --pdeathsig KILL`), and
 *   the namespaces, which carry the owner's PID and start time in their name, are removed by the sweep
 *   that the next `open()` runs (in any test file, on either backend): a namespace of this prefix whose
 *   owner is no longer alive is stale; whatever still runs inside it is killed and the namespace deleted.
 *   Deleting a namespace destroys the veth ends in it, and with them their peers.
 *
 * Names: `srtns-<pid>-<start time, base 36>-<n|j (native or pure-JS backend)>-<tag>-<k>`. The PID and start
 * time make names unique between test files (tap runs each file in its own process, in parallel) and
 * between the suite's two backend runs; the start time also keeps a reused PID from passing for the owner.
 * veth ends are created directly inside their namespaces (`ip link add ... netns X type veth peer ... netns
 * Y`), so their short names never exist in the host's namespace and cannot collide there.
 */
import { execFileSync, spawn, spawnSync, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { readFileSync } from 'node:fs';

/** The prefix every namespace of this harness carries (and the only ones the sweep looks at). */
export const NETNS_PREFIX = 'srtns-';
const NAME_RE = /^srtns-(\d+)-([0-9a-z]+)-/;

/** The subnet this harness hands out addresses from: 198.19.0.0/16 (the lab uses 198.18.0.0/24 and /24.1). */
export const NETNS_SUBNET = '198.19.0.0/16';

/** The part of tap's Test the harness uses (teardown and the skip reason). */
export interface TeardownHost {
  teardown(fn: () => void | Promise<void>): void;
}

function ipBinary(): string | null {
  const r = spawnSync('ip', ['-V'], { encoding: 'utf8' });
  return r.error || r.status !== 0 ? null : 'ip';
}

/** Effective capabilities of this process (CapEff in /proc/self/status). */
function capEff(): bigint {
  try {
    const m = /^CapEff:\s*([0-9a-f]+)$/m.exec(readFileSync('/proc/self/status', 'utf8'));
    return m ? BigInt(`0x${m[1]!}`) : 0n;
  } catch {
    return 0n;
  }
}
const CAP_NET_ADMIN = 12n;
const CAP_SYS_ADMIN = 21n;

let availability: string | null | undefined;
/**
 * Why the harness cannot run here, or null when it can: no `ip` binary, not Linux, no CAP_NET_ADMIN (links,
 * addresses) or CAP_SYS_ADMIN (`ip netns add` mounts), or the kernel refuses a probe namespace. Tests pass
 * the reason to tap's `skip`, so a machine without them says so instead of failing or passing silently.
 */
export function netnsUnavailable(): string | null {
  if (availability !== undefined) return availability;
  availability = probe();
  return availability;
}
function probe(): string | null {
  if (process.platform !== 'linux') return `network namespaces need Linux (this is ${process.platform})`;
  if (!ipBinary()) return 'no iproute2 `ip` binary on the PATH';
  const caps = capEff();
  if (!((caps >> CAP_NET_ADMIN) & 1n)) return `no CAP_NET_ADMIN (uid ${process.getuid?.() ?? '?'}; run as root or grant the capability)`;
  if (!((caps >> CAP_SYS_ADMIN) & 1n)) return 'no CAP_SYS_ADMIN (`ip netns add` needs it to mount the namespace)';
  const name = `${NETNS_PREFIX}${process.pid}-${startTime(process.pid) ?? '0'}-probe`;
  const r = spawnSync('ip', ['netns', 'add', name], { encoding: 'utf8' });
  if (r.status !== 0) return `ip netns add failed: ${(r.stderr || String(r.error)).trim()}`;
  spawnSync('ip', ['netns', 'del', name]);
  return null;
}

/** A process's start time (field 22 of /proc/PID/stat, clock ticks since boot) in base 36; null if gone. */
function startTime(pid: number): string | null {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name (field 2) is in parentheses and may hold spaces: count fields after the last ')'.
    const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
    const t = f[19]; // field 22 is the 20th after field 2
    return t ? BigInt(t).toString(36) : null;
  } catch {
    return null;
  }
}

function ip(args: string[]): string {
  try {
    return execFileSync('ip', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (e) {
    const err = e as { stderr?: string; message: string };
    throw new Error(`ip ${args.join(' ')}: ${(err.stderr ?? err.message).trim()}`, { cause: e });
  }
}

/** Every namespace name this host has (`ip netns list`: "name" or "name (id: N)"). */
export function listNamespaces(): string[] {
  return ip(['netns', 'list'])
    .split('\n')
    .map((l) => l.trim().split(' ')[0] ?? '')
    .filter(Boolean);
}

/** PIDs of the processes inside a namespace (`ip netns pids`). */
export function namespacePids(ns: string): number[] {
  const r = spawnSync('ip', ['netns', 'pids', ns], { encoding: 'utf8' });
  if (r.status !== 0) return [];
  return r.stdout
    .split('\n')
    .map((l) => Number(l.trim()))
    .filter((n) => Number.isInteger(n) && n > 0);
}

/** Kill what runs in a namespace of ours, then delete the namespace (and with it its veth ends). */
function destroyNamespace(ns: string): void {
  if (!ns.startsWith(NETNS_PREFIX)) throw new Error(`refusing to delete ${ns}: not this harness's namespace`);
  for (const pid of namespacePids(ns)) {
    if (pid === process.pid) continue;
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      /* gone already */
    }
  }
  spawnSync('ip', ['netns', 'del', ns]);
}

/** Is the owner encoded in a harness namespace name alive (same PID and same start time)? */
function ownerAlive(ns: string): boolean {
  const m = NAME_RE.exec(ns);
  if (!m) return true; // not ours to judge
  return startTime(Number(m[1])) === m[2];
}

/**
 * Remove the namespaces this harness left behind when their owner died without cleaning up (SIGKILL, OOM,
 * a machine reboot keeps none). Only names with the harness prefix and a dead owner are touched; returns
 * the names removed.
 */
export function sweepStale(): string[] {
  const gone: string[] = [];
  for (const ns of listNamespaces()) {
    if (!ns.startsWith(NETNS_PREFIX) || ownerAlive(ns)) continue;
    destroyNamespace(ns);
    gone.push(ns);
  }
  return gone;
}

// ---- the process-wide registry and its exit hooks ----

const live = new Set<Netns>();
let hooked = false;
function cleanupAllSync(): void {
  for (const n of [...live]) n.cleanupSync();
}
function installHooks(): void {
  if (hooked) return;
  hooked = true;
  process.on('exit', cleanupAllSync);
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    // First in line (prepend), and gone before the others run: a handler that re-raises the signal when it
    // is the last one left (signal-exit, which tap uses) then still does, and with no other handler the
    // process dies of the signal as if the harness had not been there.
    const onSig = (): void => {
      cleanupAllSync();
      process.off(sig, onSig);
      if (process.listenerCount(sig) === 0) process.kill(process.pid, sig);
    };
    process.prependListener(sig, onSig);
  }
}

/** A process started inside a namespace. */
export interface NsProcess {
  readonly proc: ChildProcess;
  /** Everything it wrote to stdout / stderr so far. */
  out: string;
  err: string;
  /** Resolves with the exit code (or the signal's name) when it exits. */
  readonly exited: Promise<number | string>;
  /** Resolves when stdout has a line that `match` accepts (returns that line); rejects after `ms`. */
  waitFor(match: (line: string) => boolean, ms: number): Promise<string>;
}

export interface NetnsOptions {
  /** Short tag in the namespace names (letters and digits), e.g. the test file's name. */
  tag: string;
}

/** One test file's namespaces, links and processes; `cleanup()` removes all of it. */
export class Netns {
  readonly tag: string;
  private readonly base: string;
  private next = 0;
  private readonly namespaces = new Set<string>();
  private readonly children = new Set<ChildProcess>();
  /** Names the startup sweep removed (stale namespaces of dead owners). */
  readonly swept: string[];

  private constructor(tag: string, swept: string[]) {
    if (!/^[a-z0-9]{1,12}$/.test(tag)) throw new Error(`netns tag "${tag}": want 1-12 lowercase letters or digits`);
    this.tag = tag;
    const backend = process.env['SOFTROCE_NO_NATIVE'] === '1' ? 'j' : 'n';
    this.base = `${NETNS_PREFIX}${process.pid}-${startTime(process.pid) ?? '0'}-${backend}-${tag}-`;
    this.swept = swept;
  }

  /**
   * Sweep stale namespaces, then start a harness. With a tap test, its teardown cleans up. Throws when the
   * harness cannot run: call `netnsUnavailable()` first and skip with its reason.
   */
  static open(opts: NetnsOptions, t?: TeardownHost): Netns {
    const why = netnsUnavailable();
    if (why) throw new Error(`netns harness unavailable: ${why}`);
    const n = new Netns(opts.tag, sweepStale());
    installHooks();
    live.add(n);
    t?.teardown(() => n.cleanup());
    return n;
  }

  /** Namespaces this harness made and has not deleted yet. */
  get names(): string[] {
    return [...this.namespaces];
  }

  /** A new namespace with its loopback up. */
  addNamespace(): string {
    const ns = `${this.base}${this.next++}`;
    ip(['netns', 'add', ns]);
    this.namespaces.add(ns);
    ip(['-n', ns, 'link', 'set', 'lo', 'up']);
    return ns;
  }

  /**
   * A veth pair from namespace `a` to namespace `b`, created inside them (names `devA` in a, `devB` in b),
   * both ends up, with the addresses given (CIDR, e.g. '198.19.1.1/24'); addresses must be in 198.19.0.0/16.
   */
  addVeth(a: string, devA: string, b: string, devB: string, addrA?: string, addrB?: string): void {
    this.own(a);
    this.own(b);
    ip(['link', 'add', 'name', devA, 'netns', a, 'type', 'veth', 'peer', 'name', devB, 'netns', b]);
    if (addrA) this.addAddress(a, devA, addrA);
    if (addrB) this.addAddress(b, devB, addrB);
    this.setLink(a, devA, 'up');
    this.setLink(b, devB, 'up');
  }

  /** Move link `dev` from namespace `from` to namespace `to` (it arrives down, without addresses). */
  moveLink(from: string, dev: string, to: string): void {
    this.own(from);
    this.own(to);
    ip(['-n', from, 'link', 'set', 'dev', dev, 'netns', to]);
  }

  /**
   * Any other iproute2 command inside one of this harness's namespaces (`ip -n ns ...args`): a bond, a VLAN,
   * a route, a qdisc. Returns its stdout; throws with its stderr. Addresses given here are the caller's to
   * keep inside 198.19.0.0/16.
   */
  ip(ns: string, args: string[]): string {
    this.own(ns);
    return ip(['-n', ns, ...args]);
  }

  setLink(ns: string, dev: string, state: 'up' | 'down'): void {
    this.own(ns);
    ip(['-n', ns, 'link', 'set', 'dev', dev, state]);
  }

  /** The link's administrative and operational state: { up: IFF_UP set, oper: 'UP' | 'DOWN' | ... }. */
  linkState(ns: string, dev: string): { up: boolean; oper: string } {
    this.own(ns);
    const j = JSON.parse(ip(['-n', ns, '-j', 'link', 'show', 'dev', dev])) as { flags: string[]; operstate: string }[];
    const l = j[0];
    if (!l) throw new Error(`no link ${dev} in ${ns}`);
    return { up: l.flags.includes('UP'), oper: l.operstate };
  }

  addAddress(ns: string, dev: string, cidr: string): void {
    this.own(ns);
    checkAddress(cidr);
    ip(['-n', ns, 'addr', 'add', cidr, 'dev', dev]);
  }

  delAddress(ns: string, dev: string, cidr: string): void {
    this.own(ns);
    ip(['-n', ns, 'addr', 'del', cidr, 'dev', dev]);
  }

  /** The IPv4 addresses of a link, as CIDR strings. */
  addresses(ns: string, dev: string): string[] {
    this.own(ns);
    const j = JSON.parse(ip(['-n', ns, '-j', '-4', 'addr', 'show', 'dev', dev])) as { addr_info?: { local: string; prefixlen: number }[] }[];
    return (j[0]?.addr_info ?? []).map((a) => `${a.local}/${a.prefixlen}`);
  }

  /**
   * Run `argv` inside namespace `ns` (`ip netns exec`), under `setpriv --pdeathsig KILL` when util-linux has
   * it, so the child dies with the test process even when that is SIGKILLed. stdin is a pipe (write
   * commands to `proc.stdin`); the child is killed by cleanup if it is still running.
   */
  spawn(ns: string, argv: string[], opts: { env?: NodeJS.ProcessEnv } = {}): NsProcess {
    this.own(ns);
    const pre = hasPdeathsig() ? ['setpriv', '--pdeathsig', 'KILL', '--'] : [];
    const so: SpawnOptions = { stdio: ['pipe', 'pipe', 'pipe'], env: opts.env ?? process.env };
    const proc = spawn('ip', ['netns', 'exec', ns, ...pre, ...argv], so);
    this.children.add(proc);
    const waiters: { match: (l: string) => boolean; res: (l: string) => void }[] = [];
    let partial = '';
    const r: NsProcess = {
      proc,
      out: '',
      err: '',
      exited: new Promise((res) => {
        proc.on('exit', (code, sig) => {
          this.children.delete(proc);
          res(code ?? sig ?? 'unknown');
        });
      }),
      waitFor: (match, ms) => {
        const seen = r.out.split('\n').find(match);
        if (seen !== undefined) return Promise.resolve(seen);
        return new Promise((res, rej) => {
          const w = {
            match,
            res: (l: string): void => {
              clearTimeout(timer);
              res(l);
            },
          };
          const timer = setTimeout(() => {
            waiters.splice(waiters.indexOf(w), 1);
            rej(new Error(`no matching line from ${argv.join(' ')} in ${ms} ms; stdout:\n${r.out}\nstderr:\n${r.err}`));
          }, ms);
          waiters.push(w);
        });
      },
    };
    proc.stdout!.on('data', (d: Buffer) => {
      r.out += d.toString();
      partial += d.toString();
      let nl;
      while ((nl = partial.indexOf('\n')) >= 0) {
        const line = partial.slice(0, nl);
        partial = partial.slice(nl + 1);
        for (const w of [...waiters]) {
          if (w.match(line)) {
            waiters.splice(waiters.indexOf(w), 1);
            w.res(line);
          }
        }
      }
    });
    proc.stderr!.on('data', (d: Buffer) => {
      r.err += d.toString();
    });
    proc.stdin!.on('error', () => {
      /* the child exited while we were writing: its exit code tells */
    });
    return r;
  }

  /** Kill the children still running (SIGKILL, by PID), then delete the namespaces. Idempotent. */
  cleanupSync(): void {
    for (const c of this.children) {
      if (c.exitCode === null && c.signalCode === null && c.pid !== undefined) {
        try {
          process.kill(c.pid, 'SIGKILL');
        } catch {
          /* already gone */
        }
      }
    }
    this.children.clear();
    for (const ns of this.namespaces) destroyNamespace(ns);
    this.namespaces.clear();
    live.delete(this);
  }

  /** As cleanupSync; async so tap's teardown can await it. */
  cleanup(): Promise<void> {
    this.cleanupSync();
    return Promise.resolve();
  }

  private own(ns: string): void {
    if (!this.namespaces.has(ns)) throw new Error(`namespace ${ns} is not one of this harness's`);
  }
}

let pdeath: boolean | undefined;
function hasPdeathsig(): boolean {
  if (pdeath === undefined) {
    const r = spawnSync('setpriv', ['--help'], { encoding: 'utf8' });
    pdeath = r.status === 0 && r.stdout.includes('--pdeathsig');
  }
  return pdeath;
}

/** Addresses this harness assigns must be in 198.19.0.0/16 (never the lab's 198.18.0.0/24, 198.18.1.0/24). */
function checkAddress(cidr: string): void {
  const m = /^198\.19\.(\d{1,3})\.(\d{1,3})\/(\d{1,2})$/.exec(cidr);
  if (!m || Number(m[1]) > 255 || Number(m[2]) > 255 || Number(m[3]) < 16 || Number(m[3]) > 32) {
    throw new Error(`address ${cidr}: the netns harness assigns only addresses in ${NETNS_SUBNET} (prefix /16 to /32)`);
  }
}
