/**
 * Where a port's GID table gets its addresses (issue 12 item 3): the host's interface addresses,
 * which netdevs count for a port, and the trigger that says the addresses may have changed.
 *
 * Which netdevs are tied to a port follows roce_gid_mgmt.c (is_eth_port_of_netdev_filter): the
 * port's netdev itself, its alias labels (eth0:1 is eth0), and every device above it (VLAN,
 * bond, bridge, macvlan: /sys/class/net/<dev>/upper_*), except a device whose real device (a
 * VLAN's lower device, else itself) is a bond master with an active slave other than the port's
 * netdev: a bond's addresses belong to its active slave in active-backup mode, to every slave
 * in the modes without one.
 *
 * The trigger: with the addon, NETLINK_ROUTE address and link events (native/softroce.cc,
 * addrWatchStart; one socket per process, shared by every port); without it, a poll of
 * os.networkInterfaces() every 500 ms on an unref'd timer. Either way the table is then synced
 * with the whole list (gid-table.ts), so the result never depends on an event being seen.
 */
import { networkInterfaces } from 'node:os';
import { readdirSync, readFileSync } from 'node:fs';
import { gidFromString, ipv4ToGid } from '../roce/gid.js';
import { loadNative } from '../native.js';
import type { WantedGid } from './gid-table.js';

/** One interface address as getifaddrs lists it: `name` is the label (eth0:1 for an alias of eth0). */
export interface IfAddr {
  name: string;
  address: string;
  family: 4 | 6;
}

/** What the tie rules read about netdevs (/sys/class/net in the host; a fake in tests). */
export interface NetdevInfo {
  /** the devices directly above `dev` (its upper_* links) */
  uppers(dev: string): string[];
  /** the real device of a VLAN device, or null when `dev` is not a VLAN */
  vlanRealDev(dev: string): string | null;
  /** a bond master's active slave ('' when it has none), or null when `dev` is not a bond master */
  bondActiveSlave(dev: string): string | null;
}

/** A source of interface addresses and of the news that they changed. */
export interface AddressSource {
  /** every interface address now */
  list(): IfAddr[];
  readonly netdevs: NetdevInfo;
  /** calls `changed` whenever the addresses may have changed (also when they have not); returns what stops it */
  watch(changed: () => void): () => void;
}

/** How often the addresses are read again when no netlink socket tells of changes. */
export const POLL_MS = 500;

/** The netdevs whose addresses go into the GID table of a port on `netdev`, the port's own first. */
export function tiedNetdevs(netdev: string, info: NetdevInfo): string[] {
  const tied = [netdev];
  const seen = new Set(tied);
  const counts = (dev: string): boolean => {
    const real = info.vlanRealDev(dev) ?? dev;
    if (real === netdev) return true;
    const active = info.bondActiveSlave(real);
    return active === null || active === '' || active === netdev;
  };
  const walk = (dev: string, depth: number): void => {
    if (depth > 8) return; // upper chains are short; a cycle in a fake must not hang
    for (const u of info.uppers(dev)) {
      if (seen.has(u)) continue;
      seen.add(u);
      if (counts(u)) tied.push(u);
      walk(u, depth + 1);
    }
  };
  walk(netdev, 0);
  return tied;
}

/**
 * The addresses a port on `netdev` should have in its GID table, in the order new ones take
 * slots: netdev by netdev in the order the list gives them (ifindex order for getifaddrs), each
 * one's IPv4 addresses (aliases included) before its IPv6 ones, as enum_all_gids_of_dev_cb adds
 * them (IPv4 then IPv6 per netdev). The entry's netdev is the device, not the alias label.
 */
export function wantedGids(netdev: string, src: AddressSource): WantedGid[] {
  const tied = new Set(tiedNetdevs(netdev, src.netdevs));
  const byDev = new Map<string, { v4: IfAddr[]; v6: IfAddr[] }>();
  for (const a of src.list()) {
    const dev = a.name.split(':')[0]!;
    if (!tied.has(dev)) continue;
    let g = byDev.get(dev);
    if (!g) byDev.set(dev, (g = { v4: [], v6: [] }));
    (a.family === 4 ? g.v4 : g.v6).push(a);
  }
  const out: WantedGid[] = [];
  for (const [dev, g] of byDev) {
    for (const a of g.v4) out.push({ gid: ipv4ToGid(a.address), netdev: dev });
    for (const a of g.v6) out.push({ gid: gidFromString(a.address.split('%')[0]!), netdev: dev });
  }
  return out;
}

/** /sys/class/net as NetdevInfo; what cannot be read counts as absent (a netdev that just went away). */
export const sysfsNetdevs: NetdevInfo = {
  uppers(dev) {
    try {
      return readdirSync(`/sys/class/net/${dev}`)
        .filter((f) => f.startsWith('upper_'))
        .map((f) => f.slice(6));
    } catch {
      return [];
    }
  },
  vlanRealDev(dev) {
    try {
      if (!/^DEVTYPE=vlan$/m.test(readFileSync(`/sys/class/net/${dev}/uevent`, 'utf8'))) return null;
      const lower = readdirSync(`/sys/class/net/${dev}`).find((f) => f.startsWith('lower_'));
      return lower ? lower.slice(6) : null;
    } catch {
      return null;
    }
  },
  bondActiveSlave(dev) {
    try {
      return readFileSync(`/sys/class/net/${dev}/bonding/active_slave`, 'utf8').trim();
    } catch {
      return null;
    }
  },
};

/**
 * Every interface address: the addon's RTM_GETADDR dump, else os.networkInterfaces() flattened. The
 * dump also lists the addresses of a link without carrier, which libuv's getifaddrs filter hides: the
 * kernel's GID table keeps those (roce_gid_mgmt.c deletes a GID when its address goes, not when the
 * link goes down), so without the addon a pulled cable empties the table until the link is back.
 */
function hostAddresses(): IfAddr[] {
  const dumped = loadNative()?.addrList?.();
  if (Array.isArray(dumped)) return dumped.map(([name, family, address]) => ({ name, family, address }));
  const out: IfAddr[] = [];
  for (const [name, addrs] of Object.entries(networkInterfaces())) {
    for (const a of addrs ?? []) out.push({ name, address: a.address, family: a.family === 'IPv4' ? 4 : 6 });
  }
  return out;
}

/** The process's one netlink watch and the ports listening to it. */
const nlListeners = new Set<() => void>();
let nlHandle: object | null = null;

function nlNotify(): void {
  for (const l of [...nlListeners]) l();
}

/** Watches with the addon's netlink socket; false when there is no addon or the socket cannot be opened. */
function watchNetlink(changed: () => void): (() => void) | null {
  const native = loadNative();
  if (!native?.addrWatchStart || !native.addrWatchStop) return null;
  if (nlHandle === null) {
    const h = native.addrWatchStart(nlNotify);
    if (typeof h === 'number') return null;
    nlHandle = h;
  }
  nlListeners.add(changed);
  return () => {
    if (!nlListeners.delete(changed)) return;
    if (nlListeners.size === 0 && nlHandle !== null) {
      native.addrWatchStop!(nlHandle);
      nlHandle = null;
    }
  };
}

/** Whether address changes reach this process by netlink (else by polling): for tools and tests. */
export function addressEventsByNetlink(): boolean {
  const stop = watchNetlink(() => undefined);
  if (stop === null) return false;
  stop();
  return true;
}

/** The host's addresses: netlink events with the addon, else a 500 ms poll. */
export const hostAddressSource: AddressSource = {
  list: hostAddresses,
  netdevs: sysfsNetdevs,
  watch(changed) {
    const nl = watchNetlink(changed);
    if (nl !== null) return nl;
    const t = setInterval(changed, POLL_MS);
    t.unref();
    return () => clearInterval(t);
  },
};
