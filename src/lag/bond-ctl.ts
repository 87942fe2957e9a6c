/**
 * A bond's control socket, as teamd's usock (libteam teamd/teamd_usock.c, teamd_ctl.c): the requests
 * `softroce teamdctl` (src/cli/teamdctl.ts) sends, answered with teamd's replies, and teamd's state dump
 * (teamd_state.c and the runners' and link watches' state items) built from a Bond, plus a "softroce"
 * section of our own (the RDMA device, per-port packets and bytes, QPs per port).
 *
 * The protocol (teamd_usock_common.h, libteamdctl/cli_usock.c), one message per request and per reply:
 *   request  "REQUEST\n<Method>\n<arg1>\n<arg2>\n..."   (each argument with '\\' -> "\\\\", '\n' -> "\\n")
 *   success  "REPLY_SUCCESS\n<text>"                     (the text as is: a JSON dump, or nothing)
 *   error    "REPLY_ERROR\n<ErrCode>\n<message>\n"
 * teamd sends no reply at all to a message that is not a REQUEST or names no method it knows (it logs
 * and moves on; teamdctl's client gives up after TEAMDCTL_REPLY_TIMEOUT, 5 s): so here.
 *
 * Transport. teamd's socket is AF_UNIX SOCK_SEQPACKET, which keeps message boundaries, and libteam's
 * teamdctl connects to nothing else. Node's `net` makes only SOCK_STREAM unix sockets, so the native
 * addon's seqpacketOpen / unixAccept / unixRecv / unixSend carry the messages as teamd does: one
 * message per packet, the reply's size from SIOCINQ. Without the addon (SOFTROCE_NO_NATIVE=1) the
 * socket is a SOCK_STREAM one and each message is followed by one NUL byte (no teamd message holds
 * a NUL: they are C strings); our client speaks both (a SEQPACKET connect to a stream socket fails
 * with EPROTOTYPE, and it then tries the stream), libteam's teamdctl only the first.
 *
 * Where the socket lives: teamd uses TEAMD_RUN_DIR "/var/run/teamd/" + "<device>.sock". A softroce
 * bond does not: real teamd unlinks whatever is at its path when it starts (teamd_usock_sock_open), so
 * a softroce team0 and a real teamd's team0 would take each other's socket, and /var/run/teamd needs
 * root. Instead: $SOFTROCE_TEAMD_DIR if set, else $XDG_RUNTIME_DIR/softroce/teamd (the per-user run
 * directory, as systemd gives it), else /run/softroce/teamd for root, else <tmpdir>/softroce-<uid>/teamd.
 */
import { createServer, createConnection, type Server, type Socket } from 'node:net';
import { closeSync, mkdirSync, readFileSync, unlinkSync } from 'node:fs';
import { constants, networkInterfaces, tmpdir } from 'node:os';
import { join } from 'node:path';
import { VerbsError } from '../verbs/errors.js';
import { loadNative, type NativeAddon } from '../native.js';
import { dumpJson, fromPlain, toPlain } from './jansson.js';
import { dumpConfig, effectiveConfig, type RunnerName, type TeamConfig } from './team-config.js';
import type { LinkWatchStateSource } from './link-watch.js';
import type { LagMode } from './lag-mode.js';

/** What the control socket reads of a Bond (bond.ts; declared here so that bond.ts can import this file without a cycle). */
export interface CtlBond {
  readonly name: string;
  readonly netdev: string;
  readonly config: TeamConfig;
  readonly mode: LagMode;
  readonly activePort: number | null;
  readonly stats: { readonly qpMoves: number };
  readonly ports: readonly {
    readonly lagPort: number;
    readonly netdev: string;
    readonly link: { readonly up: boolean };
    readonly up: boolean;
    readonly prio: number;
    readonly sticky: boolean;
  }[];
  portCounters(lagPort: number): { sent_pkts: number; rx_datagrams: number; rx_bytes: number };
  portLinkWatches(lagPort: number): readonly LinkWatchStateSource[];
  portQps(lagPort: number): { configured: number; active: number };
  reconfigure(config: string | object): void;
  addPort(spec: { netdev: string }): never;
}

// ---- where ----

/** The directory of the bonds' control sockets (see the file comment for why not /var/run/teamd). */
export function ctlSocketDir(env: NodeJS.ProcessEnv = process.env): string {
  const own = env['SOFTROCE_TEAMD_DIR'];
  if (own !== undefined && own !== '') return own;
  const xdg = env['XDG_RUNTIME_DIR'];
  if (xdg !== undefined && xdg !== '') return join(xdg, 'softroce', 'teamd');
  const uid = typeof process.getuid === 'function' ? process.getuid() : -1;
  if (uid === 0) return '/run/softroce/teamd';
  return join(tmpdir(), `softroce-${uid}`, 'teamd');
}

/** The control socket of team device `netdev`: <dir>/<netdev>.sock, as teamd_usock_get_sockpath. */
export function ctlSocketPath(netdev: string, env: NodeJS.ProcessEnv = process.env): string {
  return join(ctlSocketDir(env), `${netdev}.sock`);
}

// ---- the protocol ----

export const USOCK_REQUEST = 'REQUEST';
export const USOCK_REPLY_SUCC = 'REPLY_SUCCESS';
export const USOCK_REPLY_ERR = 'REPLY_ERROR';
/** libteamdctl's TEAMDCTL_REPLY_TIMEOUT */
export const TEAMDCTL_REPLY_TIMEOUT = 5000;

/** libteamdctl cli_usock.c __strencode: '\n' and '\\' escaped, so that an argument is one line. */
export function strEncode(s: string): string {
  return s.replace(/[\\\n]/g, (c) => (c === '\n' ? '\\n' : '\\\\'));
}

/** teamd_usock.c __strdecode: the inverse; any other escape is corrupt (null). */
export function strDecode(s: string): string | null {
  let out = '';
  for (let i = 0; i < s.length; i++) {
    const c = s[i]!;
    if (c !== '\\') {
      out += c;
      continue;
    }
    const n = s[++i];
    if (n === 'n') out += '\n';
    else if (n === '\\') out += '\\';
    else return null;
  }
  return out;
}

/** teamd_usock_msg_getline: the next non-empty line (empty lines are skipped), and the rest after its '\n'. */
function getline(rest: string | null): { line: string | null; rest: string | null } {
  if (rest === null) return { line: null, rest: null };
  let i = 0;
  while (i < rest.length && rest[i] === '\n') i++;
  if (i === rest.length) return { line: null, rest: null };
  const nl = rest.indexOf('\n', i);
  // A last line without its '\n' is returned, and there is no rest after it (as the C loop does).
  if (nl < 0) return { line: rest.slice(i), rest: null };
  return { line: rest.slice(i, nl), rest: rest.slice(nl + 1) };
}

export function encodeRequest(method: string, args: readonly string[] = []): string {
  return `${USOCK_REQUEST}\n${method}\n${args.map((a) => strEncode(a) + '\n').join('')}`;
}

/** A request's method and what follows it (its arguments are read by the method, as teamd's get_args). */
export function decodeRequest(msg: string): { method: string; rest: string | null } | null {
  const a = getline(msg);
  if (a.line !== USOCK_REQUEST) return null;
  const m = getline(a.rest);
  if (m.line === null) return null;
  return { method: m.line, rest: m.rest };
}

/** `n` string arguments (teamd's get_args "s..."): null when there are fewer or one is corrupt. */
function getArgs(rest: string | null, n: number): string[] | null {
  const out: string[] = [];
  let r = rest;
  for (let i = 0; i < n; i++) {
    const g = getline(r);
    if (g.line === null) return null;
    const d = strDecode(g.line);
    if (d === null) return null;
    out.push(d);
    r = g.rest;
  }
  return out;
}

export function encodeReplySucc(text: string | null): string {
  return `${USOCK_REPLY_SUCC}\n${text ?? ''}`;
}
export function encodeReplyErr(code: string, message: string): string {
  return `${USOCK_REPLY_ERR}\n${code}\n${message}\n`;
}

export type UsockReply = { readonly ok: true; readonly text: string } | { readonly ok: false; readonly code: string; readonly message: string };

/** A reply as libteamdctl's cli_usock_process_msg reads it; null for what it calls an unsupported or incomplete message. */
export function decodeReply(msg: string): UsockReply | null {
  const a = getline(msg);
  if (a.line === USOCK_REPLY_SUCC) return { ok: true, text: a.rest ?? '' };
  if (a.line !== USOCK_REPLY_ERR) return null;
  const c = getline(a.rest);
  if (c.line === null) return null;
  const m = getline(c.rest);
  if (m.line === null) return null;
  return { ok: false, code: c.line, message: m.line };
}

// ---- the state ----

/** teamd's runners' team_mode_name (the kernel team driver mode each runner sets). */
const KERNEL_TEAM_MODE: Readonly<Record<RunnerName, string>> = {
  activebackup: 'activebackup',
  loadbalance: 'loadbalance',
  lacp: 'loadbalance',
  roundrobin: 'roundrobin',
  broadcast: 'broadcast',
  random: 'random',
};

function sysfs(netdev: string, item: string): string | null {
  if (!/^[^/\0]+$/.test(netdev) || netdev === '.' || netdev === '..') return null;
  try {
    return readFileSync(`/sys/class/net/${netdev}/${item}`, 'utf8').trim();
  } catch {
    return null;
  }
}

/**
 * teamd's ifinfo items (teamd_state.c ifinfo_state_vals) of an interface: its ifindex and MAC from the
 * host when it has such an interface; an in-memory port or a team device that only softroce knows has
 * ifindex 0 and a zero MAC.
 */
function ifinfo(netdev: string): Record<string, unknown> {
  const idx = Number(sysfs(netdev, 'ifindex') ?? '0');
  const mac = networkInterfaces()[netdev]?.[0]?.mac ?? sysfs(netdev, 'address') ?? '00:00:00:00:00:00';
  return { ifindex: Number.isInteger(idx) ? idx : 0, ifname: netdev, dev_addr: mac, dev_addr_len: 6 };
}

/**
 * teamd's port link items (port_link_state_vals): the carrier (the port's link), and the speed and duplex
 * the kernel reports for the interface (sysfs; 0 and "full" when it has none, as the team driver shows
 * a port whose driver reports SPEED_UNKNOWN / DUPLEX_UNKNOWN: duplex != 0 reads "full").
 */
function portLink(netdev: string, up: boolean): Record<string, unknown> {
  const speed = Number(sysfs(netdev, 'speed') ?? '0');
  const duplex = sysfs(netdev, 'duplex');
  return { up, speed: Number.isInteger(speed) && speed > 0 ? speed : 0, duplex: duplex === 'half' ? 'half' : 'full' };
}

/**
 * teamd's state dump of `bond` (teamd_state_dump: setup, ports with ifinfo / link / link_watches, runner,
 * team_device) as a plain object, plus "softroce": the RDMA device, the LAG mode, and per port the packets
 * and bytes it carried (bond.portCounters: TX packets the QPs sent on it, RX datagrams and bytes it
 * received; TX bytes are not counted per port) and its QPs (configured / active: bond.portQps).
 */
export function teamdState(bond: CtlBond): Record<string, unknown> {
  const cfg = bond.config;
  const ports: Record<string, unknown> = {};
  const sr: Record<string, unknown> = {};
  for (const p of bond.ports) {
    const list: Record<string, unknown> = {};
    bond.portLinkWatches(p.lagPort).forEach((w, i) => {
      list[`link_watch_${i}`] = { ...w.state(), name: w.name, up: w.up, down_count: w.downCount };
    });
    ports[p.netdev] = {
      ifinfo: ifinfo(p.netdev),
      link: portLink(p.netdev, p.link.up),
      link_watches: { up: p.up, list },
    };
    const c = bond.portCounters(p.lagPort);
    const q = bond.portQps(p.lagPort);
    sr[p.netdev] = {
      lag_port: p.lagPort,
      prio: p.prio,
      sticky: p.sticky,
      tx_packets: c.sent_pkts,
      rx_packets: c.rx_datagrams,
      rx_bytes: c.rx_bytes,
      qps_configured: q.configured,
      qps_active: q.active,
    };
  }
  const state: Record<string, unknown> = {
    setup: {
      runner_name: cfg.runner.name,
      kernel_team_mode_name: KERNEL_TEAM_MODE[cfg.runner.name],
      dbus_enabled: false,
      zmq_enabled: false,
      debug_level: cfg.debugLevel,
      daemonized: false,
      pid: process.pid,
      pid_file: '',
    },
    ports,
    team_device: { ifinfo: ifinfo(bond.netdev) },
  };
  const r = cfg.runner;
  if (r.name === 'activebackup') {
    // teamd_runner_activebackup.c ab_state_active_port_get: "" with no active port
    const a = bond.activePort;
    state['runner'] = { active_port: a === null ? '' : (bond.ports[a - 1]?.netdev ?? '') };
  } else if (r.name === 'loadbalance' || r.name === 'lacp') {
    // teamd_balancer.c: the balancer is "basic" or disabled; its interval in tenths of a second
    state['runner'] = { tx_balancer: { name: r.txBalancer.name ?? '', balancing_interval: r.txBalancer.balancingInterval }, tx_hash: [...r.txHash] };
    if (r.name === 'lacp') Object.assign(state['runner'] as object, { active: r.active, fast_rate: r.fastRate, sys_prio: r.sysPrio });
  }
  state['softroce'] = { rdma_device: bond.name, lag_mode: bond.mode, qp_moves: bond.stats.qpMoves, ports: sr };
  return state;
}

/** teamd's dumps: json_dumps with TEAMD_JSON_DUMPS_FLAGS (indent 4, sorted keys, ASCII). */
function dump(v: unknown): string {
  return dumpJson(fromPlain(v, ''), 4);
}

/** teamd_state_item_value_get: a leaf of the state by its dotted path, as teamd prints it ("%d", "%s", true/false). */
function stateItem(state: Record<string, unknown>, path: string): string | null {
  let v: unknown = state;
  for (const k of path.split('.')) {
    if (typeof v !== 'object' || v === null || Array.isArray(v) || !Object.prototype.hasOwnProperty.call(v, k)) return null;
    v = (v as Record<string, unknown>)[k];
  }
  if (typeof v === 'boolean') return v ? 'true' : 'false';
  if (typeof v === 'number' || typeof v === 'string') return String(v);
  return null;
}

/**
 * One request to `bond`, answered as teamd_ctl.c's methods answer it: the reply message, or null where
 * teamd sends none (not a request; a method it does not have).
 */
export function handleRequest(bond: CtlBond, msg: string): string | null {
  const req = decodeRequest(msg);
  if (req === null) return null;
  const bad = encodeReplyErr('InvalidArgs', 'Did not receive correct message arguments.');
  const present = (name: string): boolean => bond.ports.some((p) => p.netdev === name);
  const wb = { device: bond.netdev, presentPorts: bond.ports.map((p) => p.netdev) };
  switch (req.method) {
    case 'ConfigDump':
      return encodeReplySucc(dumpConfig(bond.config, wb).replace(/\n$/, ''));
    case 'ConfigDumpActual':
      return encodeReplySucc(dumpConfig(bond.config, { ...wb, actual: true }).replace(/\n$/, ''));
    case 'StateDump':
      return encodeReplySucc(dump(teamdState(bond)));
    case 'StateItemValueGet': {
      const a = getArgs(req.rest, 1);
      if (a === null) return bad;
      const v = stateItem(teamdState(bond), a[0]!);
      return v === null ? encodeReplyErr('PathDoesNotExist', 'Item path does not exist.') : encodeReplySucc(v);
    }
    case 'StateItemValueSet': {
      const a = getArgs(req.rest, 2);
      if (a === null) return bad;
      if (stateItem(teamdState(bond), a[0]!) === null) return encodeReplyErr('PathDoesNotExist', 'Item path does not exist.');
      return encodeReplyErr('OpNotSupp', 'Operation not supported.');
    }
    case 'PortConfigDump': {
      const a = getArgs(req.rest, 1);
      if (a === null) return bad;
      if (!present(a[0]!)) return encodeReplyErr('NoSuchDev', 'No such device.');
      const ports = effectiveConfig(bond.config, wb)['ports'] as Record<string, unknown> | undefined;
      return encodeReplySucc(dump(ports?.[a[0]!] ?? {}));
    }
    case 'PortConfigUpdate': {
      const a = getArgs(req.rest, 2);
      if (a === null) return bad;
      if (!present(a[0]!)) return encodeReplyErr('NoSuchDev', 'No such device.');
      try {
        // teamd_config_port_update: the port's object replaced by the new one, then applied (here: reconfigure)
        const src = toPlain(bond.config.source) as Record<string, unknown>;
        const ports = { ...((src['ports'] as Record<string, unknown> | undefined) ?? {}), [a[0]!]: JSON.parse(a[1]!) as unknown };
        bond.reconfigure({ ...src, ports });
      } catch {
        return encodeReplyErr('ConfigUpdateFail', 'Failed to update config.');
      }
      return encodeReplySucc(null);
    }
    case 'PortAdd': {
      const a = getArgs(req.rest, 1);
      if (a === null) return bad;
      try {
        bond.addPort({ netdev: a[0]! });
      } catch {
        // a LAG bond has exactly two ports: always refused (bond.addPort)
      }
      return encodeReplyErr('PortAddFail', 'Failed to add port.');
    }
    case 'PortRemove': {
      const a = getArgs(req.rest, 1);
      if (a === null) return bad;
      if (!present(a[0]!)) return encodeReplyErr('NoSuchDev', 'No such device.');
      // a bond of one port is not a LAG: the manual's rules (lag-mode.ts) refuse it
      return encodeReplyErr('PortRemoveFail', 'Failed to del port.');
    }
    default:
      return null;
  }
}

// ---- the transport ----

type SeqNative = Required<Pick<NativeAddon, 'seqpacketOpen' | 'unixAccept' | 'unixRecv' | 'unixSend' | 'fdWatchStart' | 'fdWatchStop'>>;

/** The addon's SOCK_SEQPACKET calls, or null (no addon, or one built before them): then the stream transport. */
function seqNative(): SeqNative | null {
  const n = loadNative();
  if (n === null || n.seqpacketOpen === undefined || n.unixAccept === undefined || n.unixRecv === undefined) return null;
  if (n.unixSend === undefined || n.fdWatchStart === undefined || n.fdWatchStop === undefined) return null;
  return n as SeqNative;
}

const ERRNO = constants.errno as Record<string, number>;
const EAGAIN = ERRNO['EAGAIN'] ?? 11;
function errnoName(neg: number): string {
  for (const [k, v] of Object.entries(ERRNO)) if (v === -neg) return k;
  return 'EIO';
}
function errnoError(neg: number, what: string): NodeJS.ErrnoException {
  const code = errnoName(neg);
  return Object.assign(new Error(`${what}: ${code}`), { code, errno: neg });
}

/** Reads every message waiting on a SEQPACKET fd: false when the peer is gone (or the socket failed). */
function drainSeq(n: SeqNative, fd: number, onMsg: (m: string) => void): boolean {
  // Bounded per readable event; the poll is level-triggered, so anything left comes back next turn.
  for (let i = 0; i < 64; i++) {
    const m = n.unixRecv(fd);
    if (m === null) return false;
    if (typeof m === 'number') return m === -EAGAIN;
    onMsg(m.toString('utf8'));
  }
  return true;
}

/**
 * The stream transport's framing (no addon: SOCK_STREAM, one message per NUL), both ways: `onMsg` gets
 * each whole message. A peer that sends a megabyte without a NUL is not a teamdctl: dropped.
 */
function onNulFrames(s: Socket, onMsg: (msg: string) => void): void {
  let buf = '';
  s.setEncoding('utf8');
  s.on('data', (d: string) => {
    buf += d;
    let z: number;
    while ((z = buf.indexOf('\0')) >= 0) {
      const msg = buf.slice(0, z);
      buf = buf.slice(z + 1);
      onMsg(msg);
    }
    if (buf.length > 1 << 20) s.destroy();
  });
}

// ---- the server ----

/** The bond's control socket: each message answered by handleRequest. */
export class BondCtlServer {
  readonly #bond: CtlBond;
  #server: Server | null = null;
  #path = '';
  readonly #conns = new Set<Socket>();
  /** SEQPACKET: the listening socket's watch and the connections' */
  #seqListen: object | null = null;
  readonly #seqConns = new Set<object>();
  #closed = false;

  constructor(bond: CtlBond) {
    this.#bond = bond;
  }

  get path(): string {
    return this.#path;
  }

  /** 'seqpacket' (teamd's, with the native addon) or 'stream' (NUL-terminated messages); '' before listen */
  get transport(): 'seqpacket' | 'stream' | '' {
    return this.#seqListen !== null ? 'seqpacket' : this.#server !== null ? 'stream' : '';
  }

  /** Binds `path` (default ctlSocketPath(bond.netdev)); a stale socket file (nobody answers) is replaced. */
  async listen(path?: string): Promise<void> {
    const op = 'bond.listen';
    const p = path ?? ctlSocketPath(this.#bond.netdev);
    if (typeof p !== 'string' || p === '') throw new VerbsError('EINVAL', op, 'the socket path must be a non-empty string', 'path');
    // sun_path holds 108 bytes with the NUL
    if (Buffer.byteLength(p) > 107) throw new VerbsError('EINVAL', op, `${p} is longer than a unix socket path can be (107 bytes)`, 'path');
    try {
      mkdirSync(join(p, '..'), { recursive: true, mode: 0o755 });
    } catch (e) {
      throw new VerbsError('EACCES', op, `cannot make ${join(p, '..')}: ${(e as Error).message}`, 'path');
    }
    this.#path = p;
    const first = await this.tryListen(p);
    if (first === null) return;
    if (first.code !== 'EADDRINUSE') throw new VerbsError('EACCES', op, `cannot listen on ${p}: ${first.message}`, 'path');
    // Something is there: a live server keeps it (EADDRINUSE), a stale socket file is removed (teamd unlinks unconditionally).
    if (await answers(p)) throw new VerbsError('EADDRINUSE', op, `${p}: another bond's control socket answers there`, 'path');
    try {
      unlinkSync(p);
    } catch {
      /* gone meanwhile */
    }
    const again = await this.tryListen(p);
    if (again !== null) throw new VerbsError('EADDRINUSE', op, `cannot listen on ${p}: ${again.message}`, 'path');
  }

  private tryListen(p: string): Promise<NodeJS.ErrnoException | null> {
    const n = seqNative();
    if (n !== null) return Promise.resolve(this.listenSeq(n, p));
    return new Promise((resolve) => {
      const srv = createServer((s) => this.serve(s));
      srv.once('error', (e: NodeJS.ErrnoException) => resolve(e));
      srv.listen(p, () => {
        srv.removeAllListeners('error');
        srv.on('error', () => undefined);
        // The control socket must not keep a tool's process alive on its own.
        srv.unref();
        this.#server = srv;
        if (this.#closed) void this.close();
        resolve(null);
      });
    });
  }

  private listenSeq(n: SeqNative, p: string): NodeJS.ErrnoException | null {
    const fd = n.seqpacketOpen(p, true);
    if (fd < 0) return errnoError(fd, `listen ${p}`);
    const h = n.fdWatchStart(fd, () => this.acceptSeq(n, fd));
    if (typeof h === 'number') {
      closeSync(fd);
      return errnoError(h, `watch ${p}`);
    }
    this.#seqListen = h;
    return null;
  }

  private acceptSeq(n: SeqNative, lfd: number): void {
    for (let i = 0; i < 16; i++) {
      const c = n.unixAccept(lfd);
      if (c < 0) return;
      if (this.#closed) {
        closeSync(c);
        continue;
      }
      const h: object | number = n.fdWatchStart(c, () => {
        const alive = drainSeq(n, c, (msg) => {
          const reply = this.answer(msg);
          if (reply !== null) n.unixSend(c, Buffer.from(reply, 'utf8'));
        });
        if (!alive && typeof h === 'object' && this.#seqConns.delete(h)) n.fdWatchStop(h);
      });
      if (typeof h === 'number') closeSync(c);
      else this.#seqConns.add(h);
    }
  }

  private answer(msg: string): string | null {
    try {
      return handleRequest(this.#bond, msg);
    } catch (e) {
      // teamd's dump functions fail with their own error codes; ours should not fail at all
      return encodeReplyErr('StateDumpFail', `Failed to dump state: ${(e as Error).message}`);
    }
  }

  private serve(s: Socket): void {
    if (this.#closed) {
      s.destroy();
      return;
    }
    this.#conns.add(s);
    s.unref();
    onNulFrames(s, (msg) => {
      const reply = this.answer(msg);
      if (reply !== null) s.write(reply + '\0');
    });
    s.on('error', () => undefined);
    s.on('close', () => this.#conns.delete(s));
  }

  /** Stops listening, drops the connections, removes the socket file (teamd_usock_sock_close). */
  async close(): Promise<void> {
    this.#closed = true;
    const n = seqNative();
    if (this.#seqListen !== null && n !== null) {
      n.fdWatchStop(this.#seqListen);
      for (const h of this.#seqConns) n.fdWatchStop(h);
      this.#seqConns.clear();
      this.#seqListen = null;
      try {
        unlinkSync(this.#path);
      } catch {
        /* removed by someone else */
      }
    }
    const srv = this.#server;
    this.#server = null;
    for (const c of this.#conns) c.destroy();
    this.#conns.clear();
    if (srv === null) return;
    // net.Server.close unlinks the socket file it bound
    await new Promise<void>((resolve) => srv.close(() => resolve()));
  }
}

/** Whether a control socket answers at `path` (connect succeeds, either transport). */
async function answers(path: string): Promise<boolean> {
  try {
    (await TeamdCtlClient.connect(path)).close();
    return true;
  } catch {
    return false;
  }
}

// ---- the client ----

/** A connection to a bond's control socket (libteamdctl's usock client). */
export class TeamdCtlClient {
  readonly path: string;
  readonly transport: 'seqpacket' | 'stream';
  readonly #send: (msg: string) => void;
  readonly #close: () => void;
  readonly #queue: string[] = [];
  #waiting: ((msg: string | null) => void) | null = null;
  #ended = false;

  private constructor(path: string, transport: 'seqpacket' | 'stream', send: (msg: string) => void, close: () => void) {
    this.path = path;
    this.transport = transport;
    this.#send = send;
    this.#close = close;
  }

  private push(msg: string): void {
    this.#queue.push(msg);
    this.deliver();
  }
  private end(): void {
    this.#ended = true;
    this.deliver();
  }

  private deliver(): void {
    const w = this.#waiting;
    if (w === null) return;
    const msg = this.#queue.shift();
    if (msg !== undefined) {
      this.#waiting = null;
      w(msg);
    } else if (this.#ended) {
      this.#waiting = null;
      w(null);
    }
  }

  /**
   * Connects (SOCK_SEQPACKET with the native addon, as teamdctl; SOCK_STREAM without it, or when the
   * socket is a stream one), or rejects with the connect error (its code: ENOENT, ECONNREFUSED, ...).
   */
  static async connect(path: string): Promise<TeamdCtlClient> {
    const n = seqNative();
    if (n !== null) {
      const fd = n.seqpacketOpen(path, false);
      if (fd >= 0) {
        let h: object | null = null;
        const c: TeamdCtlClient = new TeamdCtlClient(
          path,
          'seqpacket',
          (msg) => {
            const r = n.unixSend(fd, Buffer.from(msg, 'utf8'));
            if (r < 0) c.end();
          },
          () => {
            if (h !== null) n.fdWatchStop(h);
            h = null;
          },
        );
        const w = n.fdWatchStart(fd, () => {
          if (!drainSeq(n, fd, (m) => c.push(m))) c.end();
        });
        if (typeof w === 'number') {
          closeSync(fd);
          throw errnoError(w, `watch ${path}`);
        }
        h = w;
        return c;
      }
      if (fd !== -(ERRNO['EPROTOTYPE'] ?? 91)) throw errnoError(fd, `connect ${path}`);
      // a stream socket (a server without the addon): the stream transport below
    }
    return new Promise((resolve, reject) => {
      const s = createConnection(path);
      s.once('connect', () => {
        s.removeAllListeners('error');
        const c = new TeamdCtlClient(
          path,
          'stream',
          (msg) => s.write(msg + '\0'),
          () => s.destroy(),
        );
        onNulFrames(s, (msg) => c.push(msg));
        const end = (): void => c.end();
        s.on('end', end);
        s.on('close', end);
        s.on('error', end);
        resolve(c);
      });
      s.once('error', (e) => reject(e));
    });
  }

  /**
   * One method call: its reply, or an Error with code ETIMEDOUT (no reply within `timeoutMs`, as
   * cli_usock_wait_recv), EPIPE (the server went away) or EINVAL (an unreadable reply).
   */
  async call(method: string, args: readonly string[] = [], timeoutMs = TEAMDCTL_REPLY_TIMEOUT): Promise<UsockReply> {
    if (this.#waiting !== null) throw new Error('TeamdCtlClient: one call at a time');
    this.#send(encodeRequest(method, args));
    const TIMEOUT = Symbol('timeout');
    const msg = await new Promise<string | null | typeof TIMEOUT>((resolve) => {
      const t = setTimeout(() => {
        this.#waiting = null;
        resolve(TIMEOUT);
      }, timeoutMs);
      this.#waiting = (m) => {
        clearTimeout(t);
        resolve(m);
      };
      this.deliver();
    });
    const fail = (code: string, what: string): never => {
      throw Object.assign(new Error(what), { code });
    };
    if (msg === TIMEOUT) return fail('ETIMEDOUT', 'usock: Wait for reply timed-out.');
    if (msg === null) return fail('EPIPE', 'usock: the connection was closed');
    const r = decodeReply(msg);
    if (r === null) return fail('EINVAL', 'usock: Unsupported message type.');
    return r;
  }

  close(): void {
    this.#close();
  }
}
