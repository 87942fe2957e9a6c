/**
 * `softroce teamdctl [options] TEAMDEV command [args]`: libteam's teamdctl (utils/teamdctl.c) for
 * softroce bonds, over the bond's control socket (src/lag/bond-ctl.ts): the same commands, options,
 * output (JSON dumps re-dumped as jansson does with indent 4, or 0 with -o; the state view's layout
 * and its -v levels) and messages / exit statuses, plus a "softroce:" section in the state view.
 *
 * Where it differs from teamdctl: it does not ask the kernel for TEAMDEV's ifindex first (a softroce
 * team device is not a kernel netdev), so an unknown device fails where teamdctl's connect fails; the
 * socket is ctlSocketPath(TEAMDEV) ($SOFTROCE_TEAMD_DIR, see bond-ctl.ts), not /var/run/teamd; only the
 * usock interface exists (-D / -Z: "not compiled-in", as a teamdctl built without them says).
 */
import { constants } from 'node:os';
import { ctlSocketPath, TeamdCtlClient, type UsockReply } from '../lag/bond-ctl.js';
import { dumpJson, isJsonObject, JsonSyntaxError, parseJson, toPlain, type JsonValue } from '../lag/jansson.js';

type Out = (s: string) => void;

interface Cmd {
  readonly id: string;
  readonly parent: string;
  readonly name: string;
  readonly params: readonly string[];
  readonly run?: (c: Ctx, args: readonly string[]) => number | Promise<number>;
}

interface Ctx {
  readonly tdc: TeamdCtlClient;
  /** libteamdctl's cache (teamdctl_refresh) */
  readonly cache: Map<string, string>;
  readonly oneline: boolean;
  readonly verbosity: number;
  readonly out: Out;
  readonly err: Out;
}

const ERRNO = constants.errno as Record<string, number>;
/** strerror(3) of the codes these paths produce */
const STRERROR: Record<string, string> = {
  ENOENT: 'No such file or directory',
  EINVAL: 'Invalid argument',
  ENODEV: 'No such device',
  ECONNREFUSED: 'Connection refused',
  EACCES: 'Permission denied',
  EPROTOTYPE: 'Protocol wrong type for socket',
  ETIMEDOUT: 'Connection timed out',
  EPIPE: 'Broken pipe',
  ENOMEM: 'Cannot allocate memory',
  ENOTSOCK: 'Socket operation on non-socket',
};
const strerror = (code: string): string => STRERROR[code] ?? (ERRNO[code] !== undefined ? code : 'Unknown error');

/** A failure with teamdctl's errno, for "command call failed (%s)". */
class CmdError extends Error {
  readonly code: string;
  constructor(code: string) {
    super(code);
    this.code = code;
  }
}

// ---- output, as teamdctl's pr_out with its indent ----

class Printer {
  #indent = 0;
  readonly lines: string[] = [];
  readonly #verbosity: number;
  constructor(verbosity: number) {
    this.#verbosity = verbosity;
  }
  /** pr_outx(level): printed when level <= verbosity (VERB1 = 0) */
  out(level: number, s: string): void {
    if (level <= this.#verbosity) this.lines.push(' '.repeat(this.#indent) + s);
  }
  inc(): void {
    if (this.#indent + 2 <= 32) this.#indent += 2;
  }
  dec(): void {
    if (this.#indent - 2 >= 0) this.#indent -= 2;
  }
}

/** __jsonload: teamdctl loads replies with JSON_REJECT_DUPLICATES */
function jsonLoad(c: Ctx, text: string): JsonValue {
  try {
    return parseJson(text);
  } catch (e) {
    if (!(e instanceof JsonSyntaxError)) throw e;
    c.err('Failed to parse JSON dump.');
    throw new CmdError('EINVAL');
  }
}

function jsonDump(c: Ctx, v: JsonValue): number {
  c.out(dumpJson(v, c.oneline ? 0 : 4));
  return 0;
}

const yesno = (b: unknown): string => (b === true ? 'yes' : 'no');
const updown = (b: unknown): string => (b === true ? 'up' : 'down');
type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);

/** json_unpack's check: every key present with the type asked ('s', 'i', 'b', 'o'), else teamdctl's parse error. */
function unpack(c: Ctx, o: unknown, spec: Record<string, 's' | 'i' | 'b' | 'o'>, what: string): Obj {
  const ok =
    isObj(o) &&
    Object.entries(spec).every(([k, t]) => {
      const v = o[k];
      if (t === 's') return typeof v === 'string';
      if (t === 'i') return typeof v === 'number' && Number.isInteger(v);
      if (t === 'b') return typeof v === 'boolean';
      return isObj(v);
    });
  if (!ok) {
    c.err(`Failed to parse JSON ${what} dump.`);
    throw new CmdError('EINVAL');
  }
  return o;
}

function linkWatchInfo(c: Ctx, p: Printer, name: string, lw: Obj): void {
  if (name === 'ethtool') {
    const x = unpack(c, lw, { delay_up: 'i', delay_down: 'i' }, 'ethtool link watch');
    p.out(1, `link up delay: ${String(x['delay_up'])}`);
    p.out(1, `link down delay: ${String(x['delay_down'])}`);
  } else if (name === 'arp_ping') {
    const x = unpack(
      c,
      lw,
      {
        source_host: 's',
        target_host: 's',
        interval: 'i',
        init_wait: 'i',
        validate_active: 'b',
        validate_inactive: 'b',
        send_always: 'b',
        missed_max: 'i',
        missed: 'i',
      },
      'arp_ping link watch',
    );
    p.out(1, `source host: ${String(x['source_host'])}`);
    p.out(1, `target host: ${String(x['target_host'])}`);
    p.out(1, `interval: ${String(x['interval'])}`);
    p.out(1, `missed packets: ${String(x['missed'])}/${String(x['missed_max'])}`);
    p.out(1, `validate_active: ${yesno(x['validate_active'])}`);
    p.out(1, `validate_inactive: ${yesno(x['validate_inactive'])}`);
    p.out(1, `send_always: ${yesno(x['send_always'])}`);
    p.out(1, `initial wait: ${String(x['init_wait'])}`);
  } else if (name === 'nsna_ping') {
    const x = unpack(c, lw, { target_host: 's', interval: 'i', init_wait: 'i', missed_max: 'i', missed: 'i' }, 'nsna_ping link watch');
    p.out(1, `target host: ${String(x['target_host'])}`);
    p.out(1, `interval: ${String(x['interval'])}`);
    p.out(1, `missed packets: ${String(x['missed'])}/${String(x['missed_max'])}`);
    p.out(1, `initial wait: ${String(x['init_wait'])}`);
  } else if (name === 'tipc') {
    const x = unpack(c, lw, { tipc_bearer: 's' }, 'tipc_bearer link watch');
    p.out(1, `tipc bearer: ${String(x['tipc_bearer'])}`);
  } else {
    c.err('Failed to parse JSON unknown link watch info dump.');
    throw new CmdError('EINVAL');
  }
}

/**
 * teamdctl's state view (stateview_json_process): setup, ports (link watches and their instances),
 * runner; then softroce's section (RDMA device, LAG mode, per port: packets, bytes, QPs).
 */
export function stateView(c: Ctx, dumpText: string): string[] {
  const p = new Printer(c.verbosity);
  const j = toPlain(jsonLoad(c, dumpText)) as Obj;
  p.out(0, 'setup:');
  const setup = unpack(
    c,
    j['setup'],
    { runner_name: 's', kernel_team_mode_name: 's', dbus_enabled: 'b', zmq_enabled: 'b', debug_level: 'i', daemonized: 'b', pid: 'i', pid_file: 's' },
    'setup',
  );
  const runner = String(setup['runner_name']);
  p.inc();
  p.out(0, `runner: ${runner}`);
  p.out(1, `kernel team mode: ${String(setup['kernel_team_mode_name'])}`);
  p.out(1, `D-BUS enabled: ${yesno(setup['dbus_enabled'])}`);
  p.out(1, `ZeroMQ enabled: ${yesno(setup['zmq_enabled'])}`);
  p.out(1, `debug level: ${String(setup['debug_level'])}`);
  p.out(1, `daemonized: ${yesno(setup['daemonized'])}`);
  p.out(1, `PID: ${String(setup['pid'])}`);
  p.out(1, `PID file: ${String(setup['pid_file'])}`);
  p.dec();
  const ports = j['ports'];
  if (isObj(ports)) {
    p.out(0, 'ports:');
    for (const [name, pj] of Object.entries(ports)) {
      p.inc();
      const port = unpack(c, pj, { ifinfo: 'o', link: 'o', link_watches: 'o' }, 'port');
      const ifi = unpack(c, port['ifinfo'], { dev_addr: 's', dev_addr_len: 'i', ifindex: 'i', ifname: 's' }, 'port');
      const link = unpack(c, port['link'], { duplex: 's', speed: 'i', up: 'b' }, 'port');
      p.out(0, name);
      p.inc();
      p.out(1, `ifindex: ${String(ifi['ifindex'])}`);
      p.out(1, `addr: ${String(ifi['dev_addr'])}`);
      p.out(1, `ethtool link: ${String(link['speed'])}mbit/${String(link['duplex'])}duplex/${updown(link['up'])}`);
      const lws = unpack(c, port['link_watches'], { up: 'b' }, 'port link watches');
      p.out(0, 'link watches:');
      p.inc();
      p.out(0, `link summary: ${updown(lws['up'])}`);
      if (isObj(lws['list'])) {
        for (const [key, lwj] of Object.entries(lws['list'])) {
          const lw = unpack(c, lwj, { up: 'b', name: 's', down_count: 'i' }, 'port link watch');
          p.out(0, `instance[${key}]:`);
          p.inc();
          p.out(0, `name: ${String(lw['name'])}`);
          p.out(0, `link: ${updown(lw['up'])}`);
          p.out(0, `down count: ${String(lw['down_count'])}`);
          linkWatchInfo(c, p, String(lw['name']), lw);
          p.dec();
        }
      }
      p.dec();
      // (lacp's per-port runner section: not yet, no lacp runner)
      p.dec();
      p.dec();
    }
  }
  if (runner === 'activebackup') {
    p.out(0, 'runner:');
    const r = unpack(c, j['runner'], { active_port: 's' }, 'runner');
    p.inc();
    p.out(0, `active port: ${String(r['active_port'])}`);
    p.dec();
  } else if (runner === 'lacp') {
    p.out(0, 'runner:');
    const r = unpack(c, j['runner'], { active: 'b', sys_prio: 'i', fast_rate: 'b' }, 'runner');
    p.inc();
    p.out(0, `active: ${yesno(r['active'])}`);
    p.out(0, `fast rate: ${yesno(r['fast_rate'])}`);
    p.out(1, `system priority: ${String(r['sys_prio'])}`);
    p.dec();
  }
  // softroce's own part (not teamd's): the RDMA device and what each physical port carried
  const sr = j['softroce'];
  if (isObj(sr)) {
    p.out(0, 'softroce:');
    p.inc();
    p.out(0, `rdma device: ${String(sr['rdma_device'])}`);
    p.out(0, `lag mode: ${String(sr['lag_mode'])}`);
    p.out(1, `QP moves: ${String(sr['qp_moves'])}`);
    if (isObj(sr['ports'])) {
      p.out(0, 'ports:');
      p.inc();
      for (const [name, v] of Object.entries(sr['ports'])) {
        if (!isObj(v)) continue;
        p.out(0, `${name} (lag port ${String(v['lag_port'])})`);
        p.inc();
        p.out(0, `tx packets: ${String(v['tx_packets'])}`);
        p.out(0, `rx packets: ${String(v['rx_packets'])}, bytes: ${String(v['rx_bytes'])}`);
        p.out(0, `QPs: ${String(v['qps_configured'])} configured, ${String(v['qps_active'])} active`);
        p.out(1, `prio: ${String(v['prio'])}, sticky: ${yesno(v['sticky'])}`);
        p.dec();
      }
      p.dec();
    }
    p.dec();
  }
  return p.lines;
}

// ---- commands (utils/teamdctl.c command_types) ----

/** A method call; a REPLY_ERROR is libteamdctl's messages and EINVAL. */
async function call(c: Ctx, method: string, args: readonly string[] = []): Promise<string> {
  let r: UsockReply;
  try {
    r = await c.tdc.call(method, args);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code ?? 'EINVAL';
    if (code === 'EINVAL') c.err(`libteamdctl: cli_usock_process_msg: ${(e as Error).message}`);
    throw new CmdError(code);
  }
  if (!r.ok) {
    c.err(`libteamdctl: cli_usock_process_msg: usock: Error message received: "${r.code}"`);
    c.err(`libteamdctl: cli_usock_process_msg: usock: Error message content: "${r.message}"`);
    throw new CmdError('EINVAL');
  }
  return r.text;
}

const cached = (c: Ctx, id: string): string => c.cache.get(id) ?? '';

const COMMANDS: readonly Cmd[] = [
  { id: 'C', parent: '', name: 'config', params: [] },
  { id: 'C_D', parent: 'C', name: 'dump', params: [], run: (c) => jsonDump(c, jsonLoad(c, cached(c, 'ConfigDump'))) },
  {
    id: 'C_D_N',
    parent: 'C_D',
    name: 'noports',
    params: [],
    run: (c) => {
      const j = jsonLoad(c, cached(c, 'ConfigDump'));
      if (isJsonObject(j)) j.delete('ports');
      return jsonDump(c, j);
    },
  },
  { id: 'C_D_A', parent: 'C_D', name: 'actual', params: [], run: (c) => jsonDump(c, jsonLoad(c, cached(c, 'ConfigDumpActual'))) },
  { id: 'S', parent: '', name: 'state', params: [], run: (c) => viewCmd(c) },
  { id: 'S_D', parent: 'S', name: 'dump', params: [], run: (c) => jsonDump(c, jsonLoad(c, cached(c, 'StateDump'))) },
  { id: 'S_V', parent: 'S', name: 'view', params: [], run: (c) => viewCmd(c) },
  { id: 'S_I', parent: 'S', name: 'item', params: [] },
  {
    id: 'S_I_G',
    parent: 'S_I',
    name: 'get',
    params: ['ITEMPATH'],
    run: async (c, a) => {
      c.out(await call(c, 'StateItemValueGet', [a[0]!]));
      return 0;
    },
  },
  {
    id: 'S_I_S',
    parent: 'S_I',
    name: 'set',
    params: ['ITEMPATH', 'VALUE'],
    run: async (c, a) => {
      await call(c, 'StateItemValueSet', [a[0]!, a[1]!]);
      return 0;
    },
  },
  { id: 'P', parent: '', name: 'port', params: [] },
  {
    id: 'P_A',
    parent: 'P',
    name: 'add',
    params: ['PORTDEV'],
    run: async (c, a) => {
      await call(c, 'PortAdd', [a[0]!]);
      return 0;
    },
  },
  {
    id: 'P_R',
    parent: 'P',
    name: 'remove',
    params: ['PORTDEV'],
    run: async (c, a) => {
      await call(c, 'PortRemove', [a[0]!]);
      return 0;
    },
  },
  {
    id: 'P_P',
    parent: 'P',
    name: 'present',
    params: ['PORTDEV'],
    // state_json_port_present: ENODEV when the state has no such port; nothing printed when it has
    run: (c, a) => {
      const j = toPlain(jsonLoad(c, cached(c, 'StateDump'))) as Obj;
      const ports = j['ports'];
      if (!isObj(ports) || !isObj(ports[a[0]!])) throw new CmdError('ENODEV');
      return 0;
    },
  },
  { id: 'P_C', parent: 'P', name: 'config', params: [] },
  {
    id: 'P_C_U',
    parent: 'P_C',
    name: 'update',
    params: ['PORTDEV', 'PORTCONFIG'],
    run: async (c, a) => {
      await call(c, 'PortConfigUpdate', [a[0]!, a[1]!]);
      return 0;
    },
  },
  {
    id: 'P_C_D',
    parent: 'P_C',
    name: 'dump',
    params: ['PORTDEV'],
    run: async (c, a) => jsonDump(c, jsonLoad(c, await call(c, 'PortConfigDump', [a[0]!]))),
  },
];

function viewCmd(c: Ctx): number {
  for (const l of stateView(c, cached(c, 'StateDump'))) c.out(l);
  return 0;
}

const cmdLine = (cmd: Cmd): string => {
  const parent = COMMANDS.find((x) => x.id === cmd.parent);
  return (parent !== undefined ? cmdLine(parent) + ' ' : '') + cmd.name;
};

function help(argv0: string): string {
  const lines = [
    `${argv0} [options] teamdevname command [command args]`,
    '    -h --help                Show this help',
    '    -v --verbose             Increase output verbosity',
    '    -o --oneline             Force output to one line if possible',
    '    -D --force-dbus          Force to use D-Bus interface',
    '    -Z --force-zmq=ADDRESS   Force to use ZeroMQ interface [-Z[Address]]',
    '    -U --force-usock         Force to use UNIX domain socket interface',
    'Commands:',
  ];
  for (const c of COMMANDS) if (c.run !== undefined) lines.push(`    ${cmdLine(c)}${c.params.map((p) => ' ' + p).join('')}`);
  return lines.join('\n');
}

/** find_command: walk the words down the command tree to the first runnable command that takes the rest. */
function findCommand(words: string[], err: Out): { cmd: Cmd; args: string[] } | null {
  let parent = '';
  let rest = words;
  for (;;) {
    if (rest.length === 0) {
      err('None or incomplete command');
      return null;
    }
    const name = rest[0]!;
    rest = rest.slice(1);
    const cmd = COMMANDS.find((x) => x.parent === parent && x.name === name);
    if (cmd === undefined) {
      err(`Unknown command "${name}".`);
      return null;
    }
    if (cmd.run !== undefined && cmd.params.length >= rest.length) return { cmd, args: rest };
    parent = cmd.id;
  }
}

export interface TeamdctlIo {
  out?: Out;
  err?: Out;
  env?: NodeJS.ProcessEnv;
  argv0?: string;
}

/** teamdctl's main: the exit status (0, or 1 with teamdctl's message on stderr). */
export async function teamdctl(argv: readonly string[], io: TeamdctlIo = {}): Promise<number> {
  const out: Out = io.out ?? ((s) => process.stdout.write(s + '\n'));
  const err: Out = io.err ?? ((s) => process.stderr.write(s + '\n'));
  const argv0 = io.argv0 ?? 'teamdctl';
  let verbosity = 0;
  let oneline = false;
  let usock = false;
  const words: string[] = [];
  // getopt_long "hvoDZ:U", with GNU permutation: options anywhere before "--"
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--') {
      words.push(...argv.slice(i + 1));
      break;
    }
    if (!a.startsWith('-') || a === '-') {
      words.push(a);
      continue;
    }
    const long: Record<string, string> = { help: 'h', verbose: 'v', oneline: 'o', 'force-dbus': 'D', 'force-zmq': 'Z', 'force-usock': 'U' };
    const flags = a.startsWith('--') ? [long[a.slice(2).split('=')[0]!] ?? '?'] : [...a.slice(1)];
    for (const f of flags) {
      switch (f) {
        case 'h':
          out(help(argv0));
          return 0;
        case 'v':
          verbosity++;
          break;
        case 'o':
          oneline = true;
          break;
        case 'D':
          err('D-Bus support is not compiled-in');
          return 1;
        case 'Z':
          err('ZeroMQ support is not compiled-in');
          return 1;
        case 'U':
          usock = true;
          break;
        default:
          err('unknown option.');
          out(help(argv0));
          return 1;
      }
    }
  }
  const devname = words.shift();
  if (devname === undefined) {
    err('No team device specified.');
    out(help(argv0));
    return 1;
  }
  const found = findCommand(words, err);
  if (found === null) {
    out(help(argv0));
    return 1;
  }
  if (found.args.length < found.cmd.params.length) {
    err(`Command line parameter "${found.cmd.params[found.args.length]!}" expected.`);
    out(help(argv0));
    return 1;
  }
  const path = ctlSocketPath(devname, io.env ?? process.env);
  let tdc: TeamdCtlClient;
  try {
    tdc = await TeamdCtlClient.connect(path);
  } catch (e) {
    // libteamdctl's messages: with -U the usock client's and "Failed to connect using CLI"; without,
    // every client tried silently and "Failed to connect using all CLIs" (EINVAL).
    const code = (e as NodeJS.ErrnoException).code ?? 'EINVAL';
    if (usock) {
      err(`libteamdctl: cli_usock_init: usock: Failed to connect socket (${path}).`);
      err('libteamdctl: teamdctl_connect: Failed to connect using CLI "usock".');
      err(`teamdctl_connect failed (${strerror(code)})`);
    } else {
      err('libteamdctl: teamdctl_connect: Failed to connect using all CLIs.');
      err(`teamdctl_connect failed (${strerror('EINVAL')})`);
    }
    return 1;
  }
  const c: Ctx = { tdc, cache: new Map(), oneline, verbosity, out, err };
  try {
    try {
      // teamdctl_refresh: the three dumps, cached
      for (const m of ['ConfigDump', 'ConfigDumpActual', 'StateDump']) c.cache.set(m, await call(c, m));
    } catch (e) {
      err(`teamdctl_connect failed (${strerror(e instanceof CmdError ? e.code : 'EINVAL')})`);
      return 1;
    }
    // check_teamd_team_devname
    const cfg = toPlain(jsonLoad(c, cached(c, 'ConfigDump'))) as Obj;
    if (typeof cfg['device'] !== 'string') {
      err('Failed to parse device name from config.');
      return 1;
    }
    if (cfg['device'] !== devname) {
      err(`Unable to access to ${devname} through connected teamd daemon because it controls ${cfg['device']}.`);
      return 1;
    }
    try {
      return await found.cmd.run!(c, found.args);
    } catch (e) {
      if (!(e instanceof CmdError)) throw e;
      err(`command call failed (${strerror(e.code)})`);
      return 1;
    }
  } finally {
    tdc.close();
  }
}
