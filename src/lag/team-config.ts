/**
 * teamd's JSON configuration (libteam, man/teamd.conf.5): parsed into a typed, frozen TeamConfig with
 * teamd's defaults, and written back the way teamd edits its own config tree at start-up so that
 * `teamdctl DEV config dump [actual]` shows the effective config. Pure: no sockets, no devices.
 *
 * What follows teamd and where it does not:
 * - Keys teamd never reads are ignored by teamd and kept in its dumps (it dumps its whole config tree); so
 *   here: kept and dumped, plus a warning naming the path (a typo such as "runer" is otherwise silent).
 * - Values teamd refuses (an unknown runner, link watch, hwaddr_policy, agg_select_policy or
 *   link_watch_policy; a negative count, interval, delay, missed_max or queue_id; sys_prio, lacp_prio,
 *   lacp_key, min_ports or vlanid out of range; an arp_ping / nsna_ping without target_host; a link watch
 *   without a name) are a TeamConfigError here too.
 * - Values of the wrong JSON type: teamd's getters (teamd_config_int_get / _bool_get / _string_get) fail
 *   and it silently uses the default; here that is a TeamConfigError, since a config whose "sticky" is
 *   "yes" means something the default does not.
 * - Where teamd only warns (an unknown tx_hash fragment: "Hash frag named ... not found", skipped) or
 *   quietly disables something (tx_balancer.name other than "basic"), a warning here.
 * Nothing is half-applied: the result is built from a private copy and returned only when all of it is
 * valid.
 */
import {
  childPath,
  deepCopy,
  dumpJson,
  fromPlain,
  isJsonObject,
  JsonReal,
  JsonSyntaxError,
  parseJson,
  toPlain,
  type JsonObject,
  type JsonValue,
} from './jansson.js';

/** A refused configuration: `path` names the offending value ("runner.tx_hash[2]", "" for the root). */
export class TeamConfigError extends Error {
  readonly path: string;
  readonly reason: string;
  constructor(path: string, reason: string) {
    super(`team config ${path === '' ? '(root)' : path}: ${reason}`);
    this.name = 'TeamConfigError';
    this.path = path;
    this.reason = reason;
  }
}

/** Something teamd accepts but ignores or only warns about. */
export interface TeamConfigWarning {
  readonly path: string;
  readonly message: string;
}

export const RUNNER_NAMES = ['broadcast', 'roundrobin', 'random', 'activebackup', 'loadbalance', 'lacp'] as const;
export type RunnerName = (typeof RUNNER_NAMES)[number];
/** teamd_hash_func.c frags[] */
export const TX_HASH_FRAGS = ['eth', 'vlan', 'ipv4', 'ipv6', 'ip', 'l3', 'l4', 'tcp', 'udp', 'sctp'] as const;
export type TxHashFrag = (typeof TX_HASH_FRAGS)[number];
export const HWADDR_POLICIES = ['same_all', 'by_active', 'only_active'] as const;
export type HwaddrPolicy = (typeof HWADDR_POLICIES)[number];
/** teamd_runner_lacp.c lacp_agg_select_policy_names_list[] */
export const AGG_SELECT_POLICIES = ['lacp_prio', 'lacp_prio_stable', 'bandwidth', 'count', 'port_config'] as const;
export type AggSelectPolicy = (typeof AGG_SELECT_POLICIES)[number];
export const LINK_WATCH_NAMES = ['ethtool', 'arp_ping', 'nsna_ping', 'tipc'] as const;
export type LinkWatchName = (typeof LINK_WATCH_NAMES)[number];
export const LINK_WATCH_POLICIES = ['any', 'all'] as const;
export type LinkWatchPolicy = (typeof LINK_WATCH_POLICIES)[number];

/** teamd's defaults, each where teamd defines it. */
export const TEAMD_DEFAULTS = {
  /** teamd.c TEAMD_DEFAULT_RUNNER_NAME, written back as runner.name */
  runnerName: 'roundrobin',
  /** teamd.c TEAMD_DEFAULT_DEVNAME_PREFIX "%d", the first free one, written back as device */
  devnamePrefix: 'team',
  /** teamd_link_watch.c TEAMD_DEFAULT_LINK_WATCH_NAME, written back as ports.IF.link_watch.name */
  linkWatchName: 'ethtool',
  /** teamd_hash_func.c teamd_hash_default_frags[], written back as runner.tx_hash (loadbalance, lacp) */
  txHash: ['eth', 'ipv4', 'ipv6'],
  /** teamd_runner_activebackup.c ab_init: 1, written back; the others leave the kernel's 0 */
  notifyPeersCountActiveBackup: 1,
  mcastRejoinCountActiveBackup: 1,
  /** teamd.c teamd_get_link_watch_policy */
  linkWatchPolicy: 'any',
  /** teamd_lw_ethtool.c: no delay unless configured */
  delayUp: 0,
  delayDown: 0,
  /** teamd_lw_psr.c LW_PSR_DEFAULT_INTERVAL / LW_PSR_DEFAULT_MISSED_MAX; init_wait 0 (1 ns) */
  interval: 1000,
  initWait: 0,
  missedMax: 3,
  /** teamd_lw_arp_ping.c: RFC 5227's 0.0.0.0 when source_host is absent */
  sourceHost: '0.0.0.0',
  /** teamd_runner_activebackup.c ab_assign_hwaddr_policy(NULL): the first policy */
  hwaddrPolicy: 'same_all',
  /** teamd_balancer.c tb_get_balancing_interval: 50 tenths of a second */
  balancingInterval: 50,
  /** teamd_runner_lacp.c LACP_CFG_DFLT_* */
  lacpActive: true,
  lacpFastRate: false,
  lacpSysPrio: 0xffff,
  lacpMinPorts: 1,
  lacpMinPortsMax: 1024,
  aggSelectPolicy: 'lacp_prio',
  /** LACP_PORT_CFG_DFLT_LACP_PRIO / _LACP_KEY */
  lacpPrio: 0xff,
  lacpKey: 0,
  /** teamd.c teamd_event_watch_port_added: prio 0; AB_DFLT_PORT_STICKY / LACP_PORT_CFG_DFLT_STICKY */
  prio: 0,
  sticky: false,
} as const;

export interface EthtoolLinkWatch {
  readonly name: 'ethtool';
  /** ms between the link coming up and the runner being told */
  readonly delayUp: number;
  readonly delayDown: number;
}
export interface ArpPingLinkWatch {
  readonly name: 'arp_ping';
  readonly interval: number;
  readonly initWait: number;
  readonly missedMax: number;
  readonly sourceHost: string;
  readonly targetHost: string;
  readonly validateActive: boolean;
  readonly validateInactive: boolean;
  readonly sendAlways: boolean;
  /** 802.1Q tag of the probes; undefined: untagged */
  readonly vlanId: number | undefined;
}
export interface NsnaPingLinkWatch {
  readonly name: 'nsna_ping';
  readonly interval: number;
  readonly initWait: number;
  readonly missedMax: number;
  readonly targetHost: string;
}
export interface TipcLinkWatch {
  readonly name: 'tipc';
  readonly tipcBearer: string;
}
export type LinkWatchConfig = EthtoolLinkWatch | ArpPingLinkWatch | NsnaPingLinkWatch | TipcLinkWatch;

export interface TxBalancerConfig {
  /** 'basic' enables active balancing; undefined: disabled (teamd's default) */
  readonly name: 'basic' | undefined;
  /** tenths of a second */
  readonly balancingInterval: number;
}
export interface SimpleRunnerConfig {
  readonly name: 'broadcast' | 'roundrobin' | 'random';
}
export interface ActiveBackupRunnerConfig {
  readonly name: 'activebackup';
  readonly hwaddrPolicy: HwaddrPolicy;
}
export interface LoadBalanceRunnerConfig {
  readonly name: 'loadbalance';
  /** the fragments teamd hashes on (unknown ones dropped, as teamd skips them) */
  readonly txHash: readonly TxHashFrag[];
  readonly txBalancer: TxBalancerConfig;
}
export interface LacpRunnerConfig {
  readonly name: 'lacp';
  readonly active: boolean;
  readonly fastRate: boolean;
  readonly sysPrio: number;
  readonly minPorts: number;
  readonly aggSelectPolicy: AggSelectPolicy;
  readonly txHash: readonly TxHashFrag[];
  readonly txBalancer: TxBalancerConfig;
}
export type RunnerConfig = SimpleRunnerConfig | ActiveBackupRunnerConfig | LoadBalanceRunnerConfig | LacpRunnerConfig;

export interface PeerBursts {
  readonly count: number;
  /** ms between bursts */
  readonly interval: number;
}

export interface PortConfig {
  readonly name: string;
  /** higher wins (activebackup, lacp port_config) */
  readonly prio: number;
  readonly sticky: boolean;
  /** lower wins (IEEE 802.1AX) */
  readonly lacpPrio: number;
  readonly lacpKey: number;
  /** undefined: teamd leaves the port's queue_id alone */
  readonly queueId: number | undefined;
  /** the port's own link watches (ports.IF.link_watch); undefined when it has none */
  readonly linkWatches: readonly LinkWatchConfig[] | undefined;
}

export interface TeamConfig {
  /** undefined: teamd generates team%d */
  readonly device: string | undefined;
  readonly hwaddr: string | undefined;
  readonly debugLevel: number;
  readonly runner: RunnerConfig;
  readonly notifyPeers: PeerBursts;
  readonly mcastRejoin: PeerBursts;
  /** the global link_watch (one object or a list); empty when absent */
  readonly linkWatches: readonly LinkWatchConfig[];
  /** "any": a port is up when any of its watches says so; "all": when all do */
  readonly linkWatchPolicy: LinkWatchPolicy;
  /** in the order of the config */
  readonly ports: ReadonlyMap<string, PortConfig>;
  readonly warnings: readonly TeamConfigWarning[];
  /** the config tree as given (a private copy), the base of the write-back */
  readonly source: JsonObject;
}

// ---- reading values ----

type Ctx = { warnings: TeamConfigWarning[] };

function typeName(v: JsonValue): string {
  if (v === null) return 'null';
  if (v instanceof JsonReal) return 'a real';
  if (Array.isArray(v)) return 'an array';
  if (isJsonObject(v)) return 'an object';
  if (typeof v === 'number') return 'an integer';
  return `a ${typeof v}`;
}

function wrongType(path: string, want: string, v: JsonValue): never {
  throw new TeamConfigError(path, `expected ${want}, got ${typeName(v)}`);
}

function objectAt(v: JsonValue, path: string): JsonObject {
  if (!isJsonObject(v)) wrongType(path, 'an object', v);
  return v;
}

/** An integer member; `min` / `max` are the limits teamd checks (or the int a C `int` holds). */
function int(o: JsonObject, key: string, path: string, dflt: number, min = -0x80000000, max = 0x7fffffff, why = ''): number {
  const v = o.get(key);
  if (v === undefined) return dflt;
  const p = childPath(path, key);
  if (typeof v !== 'number') wrongType(p, 'an integer', v);
  const n = v;
  if (n < min || n > max) {
    const range = max === 0x7fffffff ? `>= ${min}` : `${min}..${max}`;
    throw new TeamConfigError(p, `${n} is out of range (${range})${why}`);
  }
  return n;
}

function bool(o: JsonObject, key: string, path: string, dflt: boolean): boolean {
  const v = o.get(key);
  if (v === undefined) return dflt;
  if (typeof v !== 'boolean') wrongType(childPath(path, key), 'true or false', v);
  return v;
}

function str(o: JsonObject, key: string, path: string): string | undefined {
  const v = o.get(key);
  if (v === undefined) return undefined;
  if (typeof v !== 'string') wrongType(childPath(path, key), 'a string', v);
  return v;
}

function oneOf<T extends string>(o: JsonObject, key: string, path: string, names: readonly T[], dflt: T, what: string): T {
  const s = str(o, key, path);
  if (s === undefined) return dflt;
  if (!(names as readonly string[]).includes(s)) throw new TeamConfigError(childPath(path, key), `unknown ${what} "${s}" (one of: ${names.join(', ')})`);
  return s as T;
}

function warnUnknownKeys(ctx: Ctx, o: JsonObject, path: string, known: readonly string[], why: string): void {
  for (const k of o.keys()) if (!known.includes(k)) ctx.warnings.push({ path: childPath(path, k), message: `ignored: ${why}` });
}

// ---- sections ----

const LW_KEYS: Record<LinkWatchName, readonly string[]> = {
  ethtool: ['name', 'delay_up', 'delay_down'],
  arp_ping: ['name', 'interval', 'init_wait', 'missed_max', 'source_host', 'target_host', 'validate_active', 'validate_inactive', 'send_always', 'vlanid'],
  nsna_ping: ['name', 'interval', 'init_wait', 'missed_max', 'target_host'],
  tipc: ['name', 'tipc_bearer'],
};

/** One link watch object: teamd_link_watch.c link_watch_load_config_one, then the watch's load_options. */
function linkWatchOne(ctx: Ctx, v: JsonValue, path: string): LinkWatchConfig {
  const o = objectAt(v, path);
  const name = str(o, 'name', path);
  if (name === undefined) throw new TeamConfigError(childPath(path, 'name'), 'a link watch needs a name');
  if (!(LINK_WATCH_NAMES as readonly string[]).includes(name))
    throw new TeamConfigError(childPath(path, 'name'), `no link watch named "${name}" (one of: ${LINK_WATCH_NAMES.join(', ')})`);
  const lw = name as LinkWatchName;
  warnUnknownKeys(ctx, o, path, LW_KEYS[lw], `not an option of the ${lw} link watch`);
  const nonNeg = '; teamd: must not be negative';
  switch (lw) {
    case 'ethtool':
      return Object.freeze({
        name: lw,
        delayUp: int(o, 'delay_up', path, TEAMD_DEFAULTS.delayUp, 0, undefined, nonNeg),
        delayDown: int(o, 'delay_down', path, TEAMD_DEFAULTS.delayDown, 0, undefined, nonNeg),
      });
    case 'arp_ping':
    case 'nsna_ping': {
      // teamd_lw_psr.c lw_psr_load_options: interval and missed_max must not be negative; init_wait is
      // taken as is by teamd (a negative one would be a timer in the past): refused here.
      const interval = int(o, 'interval', path, TEAMD_DEFAULTS.interval, 0, undefined, nonNeg);
      const initWait = int(o, 'init_wait', path, TEAMD_DEFAULTS.initWait, 0);
      const missedMax = int(o, 'missed_max', path, TEAMD_DEFAULTS.missedMax, 0, undefined, nonNeg);
      const targetHost = str(o, 'target_host', path);
      if (targetHost === undefined) throw new TeamConfigError(childPath(path, 'target_host'), `the ${lw} link watch needs a target_host`);
      if (targetHost === '') throw new TeamConfigError(childPath(path, 'target_host'), 'empty host name');
      if (lw === 'nsna_ping') return Object.freeze({ name: lw, interval, initWait, missedMax, targetHost });
      const sourceHost = str(o, 'source_host', path) ?? TEAMD_DEFAULTS.sourceHost;
      if (sourceHost === '') throw new TeamConfigError(childPath(path, 'source_host'), 'empty host name');
      const vlan = o.has('vlanid') ? int(o, 'vlanid', path, 0, 0, 4095) : undefined;
      return Object.freeze({
        name: lw,
        interval,
        initWait,
        missedMax,
        sourceHost,
        targetHost,
        validateActive: bool(o, 'validate_active', path, false),
        validateInactive: bool(o, 'validate_inactive', path, false),
        sendAlways: bool(o, 'send_always', path, false),
        vlanId: vlan,
      });
    }
    case 'tipc': {
      const bearer = str(o, 'tipc_bearer', path);
      // teamd_lw_tipc.c: required, shorter than TIPC_MAX_BEARER_NAME (32)
      if (bearer === undefined) throw new TeamConfigError(childPath(path, 'tipc_bearer'), 'the tipc link watch needs a tipc_bearer');
      if (bearer.length >= 32) throw new TeamConfigError(childPath(path, 'tipc_bearer'), 'longer than TIPC_MAX_BEARER_NAME - 1 (31)');
      return Object.freeze({ name: lw, tipcBearer: bearer });
    }
  }
}

/** link_watch: one object or a list of them (teamd_link_watch.c link_watch_load_config). */
function linkWatchList(ctx: Ctx, v: JsonValue, path: string): readonly LinkWatchConfig[] {
  if (Array.isArray(v)) return Object.freeze(v.map((e, k) => linkWatchOne(ctx, e, childPath(path, k))));
  return Object.freeze([linkWatchOne(ctx, v, path)]);
}

function txHash(ctx: Ctx, r: JsonObject): readonly TxHashFrag[] {
  const v = r.get('tx_hash');
  if (v === undefined) return TEAMD_DEFAULTS.txHash;
  const path = 'runner.tx_hash';
  if (!Array.isArray(v)) wrongType(path, 'an array of strings', v);
  const out: TxHashFrag[] = [];
  v.forEach((e, k) => {
    const p = childPath(path, k);
    if (typeof e !== 'string') wrongType(p, 'a string', e);
    if ((TX_HASH_FRAGS as readonly string[]).includes(e)) out.push(e as TxHashFrag);
    // teamd_hash_func.c teamd_hash_func_init: "Hash frag named ... not found", skipped
    else ctx.warnings.push({ path: p, message: `skipped: no hash fragment named "${e}"` });
  });
  return Object.freeze(out);
}

function txBalancer(ctx: Ctx, r: JsonObject): TxBalancerConfig {
  const v = r.get('tx_balancer');
  const dflt = { name: undefined, balancingInterval: TEAMD_DEFAULTS.balancingInterval };
  if (v === undefined) return Object.freeze(dflt);
  const path = 'runner.tx_balancer';
  const o = objectAt(v, path);
  warnUnknownKeys(ctx, o, path, ['name', 'balancing_interval'], 'not a tx_balancer option');
  const name = str(o, 'name', path);
  // teamd_balancer.c tb_get_enable_tx_balancing: only "basic" enables it, anything else disables it quietly
  if (name !== undefined && name !== 'basic') ctx.warnings.push({ path: childPath(path, 'name'), message: `"${name}" is not "basic": balancing stays off` });
  // tb_get_balancing_interval falls back to 50 on a negative value; refused here
  const interval = int(o, 'balancing_interval', path, TEAMD_DEFAULTS.balancingInterval, 0);
  return Object.freeze({ name: name === 'basic' ? 'basic' : undefined, balancingInterval: interval });
}

const RUNNER_KEYS: Record<RunnerName, readonly string[]> = {
  broadcast: ['name'],
  roundrobin: ['name'],
  random: ['name'],
  activebackup: ['name', 'hwaddr_policy'],
  loadbalance: ['name', 'tx_hash', 'tx_balancer'],
  lacp: ['name', 'active', 'fast_rate', 'sys_prio', 'min_ports', 'agg_select_policy', 'tx_hash', 'tx_balancer'],
};

function runner(ctx: Ctx, root: JsonObject): RunnerConfig {
  const v = root.get('runner');
  const r = v === undefined ? new Map<string, JsonValue>() : objectAt(v, 'runner');
  const name = str(r, 'name', 'runner') ?? TEAMD_DEFAULTS.runnerName;
  if (!(RUNNER_NAMES as readonly string[]).includes(name))
    throw new TeamConfigError('runner.name', `no runner named "${name}" (one of: ${RUNNER_NAMES.join(', ')})`);
  const rn = name as RunnerName;
  // runner.addr is the zmq control address (teamd_zmq.c), read whatever the runner
  warnUnknownKeys(ctx, r, 'runner', [...RUNNER_KEYS[rn], 'addr'], `not read by the ${rn} runner`);
  if (r.has('addr')) str(r, 'addr', 'runner');
  switch (rn) {
    case 'broadcast':
    case 'roundrobin':
    case 'random':
      return Object.freeze({ name: rn });
    case 'activebackup':
      return Object.freeze({
        name: rn,
        hwaddrPolicy: oneOf(r, 'hwaddr_policy', 'runner', HWADDR_POLICIES, 'same_all', 'hwaddr_policy'),
      });
    case 'loadbalance':
      return Object.freeze({ name: rn, txHash: txHash(ctx, r), txBalancer: txBalancer(ctx, r) });
    case 'lacp':
      return Object.freeze({
        name: rn,
        active: bool(r, 'active', 'runner', TEAMD_DEFAULTS.lacpActive),
        fastRate: bool(r, 'fast_rate', 'runner', TEAMD_DEFAULTS.lacpFastRate),
        // teamd_runner_lacp.c lacp_load_config: 0..USHRT_MAX, 1..LACP_CFG_DFLT_MIN_PORTS_MAX
        sysPrio: int(r, 'sys_prio', 'runner', TEAMD_DEFAULTS.lacpSysPrio, 0, 0xffff),
        minPorts: int(r, 'min_ports', 'runner', TEAMD_DEFAULTS.lacpMinPorts, 1, TEAMD_DEFAULTS.lacpMinPortsMax),
        aggSelectPolicy: oneOf(r, 'agg_select_policy', 'runner', AGG_SELECT_POLICIES, 'lacp_prio', 'agg_select_policy'),
        txHash: txHash(ctx, r),
        txBalancer: txBalancer(ctx, r),
      });
  }
}

function bursts(ctx: Ctx, root: JsonObject, key: string, countDflt: number): PeerBursts {
  const v = root.get(key);
  if (v === undefined) return Object.freeze({ count: countDflt, interval: 0 });
  const o = objectAt(v, key);
  warnUnknownKeys(ctx, o, key, ['count', 'interval'], `not a ${key} option`);
  // teamd.c teamd_post_runner_init: "must not be negative number"
  return Object.freeze({
    count: int(o, 'count', key, countDflt, 0, undefined, '; teamd: must not be negative'),
    interval: int(o, 'interval', key, 0, 0, undefined, '; teamd: must not be negative'),
  });
}

const PORT_KEYS = ['prio', 'sticky', 'lacp_prio', 'lacp_key', 'queue_id', 'link_watch'];

function port(ctx: Ctx, name: string, v: JsonValue, path: string): PortConfig {
  const o = objectAt(v, path);
  warnUnknownKeys(ctx, o, path, PORT_KEYS, 'not a port option');
  const lw = o.get('link_watch');
  return Object.freeze({
    name,
    prio: int(o, 'prio', path, TEAMD_DEFAULTS.prio),
    sticky: bool(o, 'sticky', path, TEAMD_DEFAULTS.sticky),
    // teamd_runner_lacp.c lacp_port_load_config: 0..USHRT_MAX
    lacpPrio: int(o, 'lacp_prio', path, TEAMD_DEFAULTS.lacpPrio, 0, 0xffff),
    lacpKey: int(o, 'lacp_key', path, TEAMD_DEFAULTS.lacpKey, 0, 0xffff),
    queueId: o.has('queue_id') ? int(o, 'queue_id', path, 0, 0, undefined, '; teamd: must not be negative') : undefined,
    linkWatches: lw === undefined ? undefined : linkWatchList(ctx, lw, childPath(path, 'link_watch')),
  });
}

const TOP_KEYS = ['device', 'debug_level', 'hwaddr', 'runner', 'notify_peers', 'mcast_rejoin', 'link_watch', 'link_watch_policy', 'ports'];

/** Linux's IFNAMSIZ is 16 with the NUL: names up to 15 bytes, no '/', ':' or whitespace (dev_valid_name). */
function checkIfname(path: string, name: string): void {
  if (name === '' || name === '.' || name === '..') throw new TeamConfigError(path, `"${name}" is not a valid interface name`);
  if (Buffer.byteLength(name, 'utf8') > 15) throw new TeamConfigError(path, `"${name}" is longer than 15 bytes (IFNAMSIZ)`);
  if (/[/:\s]/.test(name)) throw new TeamConfigError(path, `"${name}" contains '/', ':' or whitespace`);
}

/**
 * Reads teamd's config (a JSON text or an already parsed object) as teamd does, with its defaults.
 * Throws TeamConfigError (path + reason) for anything teamd would refuse and for values of the wrong type.
 */
export function parseTeamConfig(json: string | object): TeamConfig {
  let tree: JsonValue;
  try {
    tree = typeof json === 'string' ? parseJson(json) : fromPlain(json, '');
  } catch (e) {
    if (e instanceof JsonSyntaxError) throw new TeamConfigError(e.path, e.reason);
    throw e;
  }
  const root = objectAt(tree, '');
  const ctx: Ctx = { warnings: [] };
  warnUnknownKeys(ctx, root, '', TOP_KEYS, 'not a teamd option');

  const device = str(root, 'device', '');
  if (device !== undefined) checkIfname('device', device);
  const hwaddr = str(root, 'hwaddr', '');
  // teamd.c parse_hwaddr: hex bytes separated by ':'; the length must be the device's (6 for Ethernet)
  if (hwaddr !== undefined && !/^[0-9a-fA-F]{1,2}(:[0-9a-fA-F]{1,2}){5}$/.test(hwaddr))
    throw new TeamConfigError('hwaddr', `"${hwaddr}" is not a 6-byte hardware address (xx:xx:xx:xx:xx:xx)`);
  const debugLevel = int(root, 'debug_level', '', 0, 0);
  const run = runner(ctx, root);
  const ab = run.name === 'activebackup';
  const notifyPeers = bursts(ctx, root, 'notify_peers', ab ? TEAMD_DEFAULTS.notifyPeersCountActiveBackup : 0);
  const mcastRejoin = bursts(ctx, root, 'mcast_rejoin', ab ? TEAMD_DEFAULTS.mcastRejoinCountActiveBackup : 0);
  const lwv = root.get('link_watch');
  const linkWatches = lwv === undefined ? Object.freeze([]) : linkWatchList(ctx, lwv, 'link_watch');
  const linkWatchPolicy = oneOf(root, 'link_watch_policy', '', LINK_WATCH_POLICIES, 'any', 'link_watch_policy');

  const ports = new Map<string, PortConfig>();
  const pv = root.get('ports');
  if (pv !== undefined) {
    const po = objectAt(pv, 'ports');
    for (const [name, v] of po) {
      const path = childPath('ports', name);
      checkIfname(path, name);
      const p = port(ctx, name, v, path);
      // A port whose own link_watch is an empty list and no global one: teamd finds no watch and tries to
      // write ports.IF.link_watch.name into that list, which fails; so the port cannot be added.
      if (p.linkWatches !== undefined && p.linkWatches.length === 0 && linkWatches.length === 0)
        throw new TeamConfigError(childPath(path, 'link_watch'), 'an empty list and no global link_watch: no watch for the port');
      ports.set(name, p);
    }
  }
  return Object.freeze({
    device,
    hwaddr,
    debugLevel,
    runner: run,
    notifyPeers,
    mcastRejoin,
    linkWatches,
    linkWatchPolicy,
    ports,
    warnings: Object.freeze(ctx.warnings),
    source: deepCopy(root) as JsonObject,
  });
}

/**
 * The link watches teamd runs on a port, in the order of their state ids (link_watch_0, _1, ...):
 * teamd_link_watch.c link_watch_event_watch_port_added loads the port's own link_watch and then the
 * global one, both (a port's watch does not replace the global one; with link_watch_policy "any" the
 * port is up when one of them says so); only when neither exists does it use an implicit ethtool watch.
 */
export function portLinkWatches(cfg: TeamConfig, portName: string): readonly LinkWatchConfig[] {
  const own = cfg.ports.get(portName)?.linkWatches ?? [];
  const all = [...own, ...cfg.linkWatches];
  if (all.length > 0) return all;
  return [{ name: 'ethtool', delayUp: TEAMD_DEFAULTS.delayUp, delayDown: TEAMD_DEFAULTS.delayDown }];
}

/** The first free team%d (teamd.c teamd_generate_devname), given the interface names in use. */
export function generateTeamDevname(inUse: Iterable<string> = []): string {
  const taken = new Set(inUse);
  for (let n = 0; ; n++) if (!taken.has(`${TEAMD_DEFAULTS.devnamePrefix}${n}`)) return `team${n}`;
}

export interface WriteBackOptions {
  /** the device name teamd runs with (`teamd -t NAME` overrides the config's); else the config's, else generated */
  readonly device?: string;
  /** interface names that exist, for generating team%d */
  readonly netdevsInUse?: Iterable<string>;
  /** the ports present in the team (default: the config's ports, which teamd adds at start-up) */
  readonly presentPorts?: Iterable<string>;
}

function objAt(o: JsonObject, key: string): JsonObject {
  const v = o.get(key);
  if (isJsonObject(v)) return v;
  const n: JsonObject = new Map();
  o.set(key, n);
  return n;
}

/**
 * teamd's config tree after start-up (`teamdctl DEV config dump`): the config as given plus what teamd
 * writes into it, each where teamd does it:
 * - device, when not in the config (teamd.c teamd_get_devname: teamd_config_string_set "$.device");
 * - runner.name "roundrobin" when absent (teamd.c teamd_runner_init);
 * - notify_peers.count and mcast_rejoin.count 1 for activebackup when absent (teamd_runner_activebackup.c ab_init);
 * - runner.tx_hash ["eth","ipv4","ipv6"] for loadbalance and lacp when absent (teamd_hash_func.c
 *   teamd_hash_func_set, called from lb_init and lacp_init);
 * - ports.IF.link_watch.name "ethtool" for each present port with no link watch of its own or global
 *   (teamd_link_watch.c link_watch_event_watch_port_added).
 * Nothing else: the other defaults stay implicit.
 */
function writeBack(cfg: TeamConfig, opts: WriteBackOptions): { tree: JsonObject; present: Set<string> } {
  const tree = deepCopy(cfg.source) as JsonObject;
  const device = opts.device ?? cfg.device ?? generateTeamDevname(opts.netdevsInUse);
  if (opts.device !== undefined) checkIfname('device', opts.device);
  if (opts.device !== undefined || cfg.device === undefined) tree.set('device', device);
  const runner = objAt(tree, 'runner');
  if (!runner.has('name')) runner.set('name', TEAMD_DEFAULTS.runnerName);
  if (cfg.runner.name === 'activebackup') {
    for (const key of ['notify_peers', 'mcast_rejoin']) {
      const o = objAt(tree, key);
      if (!o.has('count')) o.set('count', 1);
    }
  }
  if ((cfg.runner.name === 'loadbalance' || cfg.runner.name === 'lacp') && !runner.has('tx_hash')) runner.set('tx_hash', [...TEAMD_DEFAULTS.txHash]);
  const present = new Set(opts.presentPorts ?? cfg.ports.keys());
  for (const p of present) checkIfname(childPath('ports', p), p);
  const hasGlobal = cfg.linkWatches.length > 0;
  for (const p of present) {
    const own = cfg.ports.get(p)?.linkWatches;
    if (hasGlobal || (own !== undefined && own.length > 0)) continue;
    const po = objAt(objAt(tree, 'ports'), p);
    objAt(po, 'link_watch').set('name', TEAMD_DEFAULTS.linkWatchName);
  }
  return { tree, present };
}

/**
 * teamd_config.c teamd_config_actual_dump: the written-back tree with an (empty) object for every present
 * port and without the ports that are not present.
 */
function actualTree(tree: JsonObject, present: Set<string>): JsonObject {
  for (const p of present) objAt(objAt(tree, 'ports'), p);
  const ports = tree.get('ports');
  if (isJsonObject(ports)) for (const name of [...ports.keys()]) if (!present.has(name)) ports.delete(name);
  return tree;
}

/** What `teamdctl DEV config dump actual` prints, as a plain JSON object. */
export function effectiveConfig(cfg: TeamConfig, opts: WriteBackOptions = {}): Record<string, unknown> {
  const { tree, present } = writeBack(cfg, opts);
  return toPlain(actualTree(tree, present)) as Record<string, unknown>;
}

export interface DumpOptions extends WriteBackOptions {
  /** `config dump actual`: only the present ports */
  readonly actual?: boolean;
  /** `config dump noports`: without "ports" (utils/teamdctl.c jsonnoportsdump) */
  readonly noports?: boolean;
  /** `teamdctl --oneline`: JSON_INDENT(0) */
  readonly oneline?: boolean;
}

/**
 * The text teamdctl prints for `config dump [actual|noports]`: jansson's json_dumps with JSON_INDENT(4)
 * (0 with --oneline) | JSON_ENSURE_ASCII | JSON_SORT_KEYS, then a newline (utils/teamdctl.c __jsondump).
 */
export function dumpConfig(cfg: TeamConfig, opts: DumpOptions = {}): string {
  const { tree, present } = writeBack(cfg, opts);
  const out = opts.actual === true ? actualTree(tree, present) : tree;
  if (opts.noports === true) out.delete('ports');
  return dumpJson(out, opts.oneline === true ? 0 : 4) + '\n';
}
