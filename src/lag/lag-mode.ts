/**
 * When a team becomes a bonded RDMA device, as the Mellanox manual's RoCE LAG section and mlx5 decide it
 * (drivers/net/ethernet/mellanox/mlx5/core/lag: the tracker counts the bond's slaves, checks they are the
 * ports of one device and that the bond's TX type is active-backup or hash): exactly two ports, both of one
 * device, and a runner that maps to bonding mode 1 (active-backup), 2 (balance-xor, hash) or 4 (802.3ad).
 * Anything else leaves the ports as two ordinary devices. Pure: it names the outcome, it changes nothing.
 */
import { TeamConfigError, type RunnerName, type TeamConfig } from './team-config.js';

/** The LAG modes of the manual (mlx5 MLX5_LAG_MODE_ROCE with TX type active-backup, hash, or LACP). */
export type LagMode = 'active-backup' | 'hash' | '802.3ad';

/**
 * The runner's mode, as the team driver reports it to lower devices (NETDEV_LAG_TX_TYPE_ACTIVEBACKUP for
 * activebackup, _HASH for loadbalance; lacp is 802.3ad with hash TX); roundrobin, broadcast and random have
 * no LAG mode in mlx5 (TX types ROUNDROBIN / BROADCAST / RANDOM are refused).
 */
export const RUNNER_LAG_MODE: Readonly<Record<RunnerName, LagMode | undefined>> = Object.freeze({
  activebackup: 'active-backup',
  loadbalance: 'hash',
  lacp: '802.3ad',
  roundrobin: undefined,
  broadcast: undefined,
  random: undefined,
});

export type LagRefusalReason = 'port-count' | 'ports-of-different-devices' | 'unsupported-runner';

export interface LagRefusal {
  readonly reason: LagRefusalReason;
  readonly detail: string;
}

/** A team port: its interface name (the key in the config's ports) and the RDMA device port behind it. */
export interface LagPortRef {
  readonly name: string;
  /** the RDMA device the port belongs to */
  readonly device: string;
  /** its port number on that device (1-based) */
  readonly port: number;
}

export type LagDecision =
  | {
      readonly lag: true;
      readonly mode: LagMode;
      /** the device whose two ports are bonded */
      readonly device: string;
      /** the two ports, by port number */
      readonly ports: readonly [LagPortRef, LagPortRef];
    }
  | {
      readonly lag: false;
      /** the first refusal (port count, then devices, then runner) */
      readonly reason: LagRefusalReason;
      /** every rule the configuration breaks */
      readonly refusals: readonly LagRefusal[];
    };

/**
 * Decides whether `cfg` with the ports it names makes a LAG device. `ports` says which device port each
 * interface is; a configured port that `ports` does not describe is a TeamConfigError (teamd could not add
 * a port that does not exist). Ports listed in `ports` but not in the config are not part of the team.
 */
export function lagMode(cfg: TeamConfig, ports: Iterable<LagPortRef>): LagDecision {
  const byName = new Map<string, LagPortRef>();
  for (const p of ports) byName.set(p.name, p);
  const members: LagPortRef[] = [];
  for (const name of cfg.ports.keys()) {
    const p = byName.get(name);
    if (p === undefined) throw new TeamConfigError(`ports.${name}`, 'no device port with this interface name');
    if (!Number.isInteger(p.port) || p.port < 1) throw new TeamConfigError(`ports.${name}`, `port number ${p.port} is not a port (1-based)`);
    members.push(p);
  }
  const refusals: LagRefusal[] = [];
  const distinct = new Set(members.map((p) => `${p.device}\u0000${p.port}`));
  if (members.length !== 2) refusals.push({ reason: 'port-count', detail: `${members.length} ports; LAG needs exactly two` });
  else if (distinct.size !== 2) refusals.push({ reason: 'port-count', detail: `${members.map((p) => p.name).join(' and ')} are the same device port` });
  const devices = [...new Set(members.map((p) => p.device))];
  if (devices.length > 1) refusals.push({ reason: 'ports-of-different-devices', detail: `ports of ${devices.join(', ')}; LAG needs both on one device` });
  const mode = RUNNER_LAG_MODE[cfg.runner.name];
  if (mode === undefined)
    refusals.push({
      reason: 'unsupported-runner',
      detail: `runner ${cfg.runner.name} has no LAG mode (activebackup, loadbalance or lacp)`,
    });
  const first = refusals[0];
  if (first !== undefined) return { lag: false, reason: first.reason, refusals };
  const [a, b] = members.sort((x, y) => x.port - y.port) as [LagPortRef, LagPortRef];
  return { lag: true, mode: mode!, device: a.device, ports: [a, b] };
}

/**
 * The bonded device's name, as mlx5 names its LAG IB device "mlx5_bond_%d" (the first free index):
 * `<driver>_bond_<n>`, e.g. softroce_bond_0, given the RDMA device names in use.
 */
export function bondDeviceName(driver: string, inUse: Iterable<string>): string {
  if (!/^[A-Za-z0-9_-]+$/.test(driver)) throw new TypeError(`bondDeviceName: bad driver name "${driver}"`);
  const taken = new Set(inUse);
  for (let n = 0; ; n++) {
    const name = `${driver}_bond_${n}`;
    if (!taken.has(name)) return name;
  }
}

/**
 * The bonded device's GID table length: half the per-port one, since the driver keeps the other half for
 * the duplicate entries carrying the second port's MAC (the Mellanox manual, RoCE LAG).
 */
export function bondGidTableSize(portGidTableLen: number): number {
  if (!Number.isInteger(portGidTableLen) || portGidTableLen < 2) throw new RangeError(`bondGidTableSize: ${portGidTableLen} is not a GID table length (>= 2)`);
  return Math.floor(portGidTableLen / 2);
}
