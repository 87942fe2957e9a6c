/**
 * The carrier of a real netdev, as a link bound to it reports it (`up`, 'link' events): what teamd's
 * ethtool link watch reads (src/lag/link-watch.ts). teamd's ethtool watch follows the port's link-up
 * flag, which the kernel's team driver takes from netif_oper_up() on NETDEV_UP / NETDEV_CHANGE (and
 * false on NETDEV_DOWN); `ip link` shows it as LOWER_UP/RUNNING. So a netdev is up here when it has
 * carrier (/sys/class/net/<dev>/carrier reads 1; reading it fails with EINVAL while the device is
 * administratively down) AND its operstate is `up` or `unknown` (netif_oper_up: IF_OPER_UP or
 * IF_OPER_UNKNOWN, which `lo` and dummy devices report). A netdev that is gone reads as down.
 *
 * When to read: with the addon, a NETLINK_ROUTE socket on the link group (the addon's addrWatchStart,
 * a socket of our own, separate from the GID table's in verbs/addr-watch.ts, which this layer may not
 * import): every RTM_NEWLINK / RTM_DELLINK, and every overflow (ENOBUFS: messages lost), re-reads every
 * watched netdev. The kernel sends RTM_NEWLINK for a carrier change from linkwatch after it set the
 * operstate (linkwatch_do_dev: rfc2863_policy, then netdev_state_change), so the read after the message
 * sees the new state. But linkwatch holds a carrier change back by up to 1 s (its rate limit) unless the
 * event is "urgent" (linkwatch_urgent_event): a LAG port's is (which is why teamd, whose ports are the
 * team driver's, hears at once), a veth whose peer's ifindex differs from its own is; a veth pair made
 * fresh in two new namespaces has ifindex 2 at both ends (iflink == ifindex), and a softroce bond's
 * members are no kernel LAG ports, so the message can come up to a second late (measured: 536 ms).
 * The carrier bit itself (netif_carrier_off) changes at once, so the sysfs files are ALSO read every
 * CARRIER_POLL_MS (100 ms, the bonding driver's usual miimon and the interval Linux's bonding selftests
 * use), with or without the addon: a lost carrier is seen within 100 ms (the operstate catches up
 * later; a netdev is up only when both say so), inside the 1 s failover the bond must meet, for two
 * small sysfs reads per watched netdev per tick, on an unref'd timer. Without the addon the poll alone.
 *
 * Inside a network namespace (`ip netns exec`, which remounts /sys) /sys/class/net is the namespace's.
 * One watcher per process, shared by every link; it stops when the last link lets go.
 */
import { readFileSync } from 'node:fs';
import { loadNative } from '../../native.js';

/** How often the carrier is read when no netlink socket tells of link changes (ms). */
export const CARRIER_POLL_MS = 100;

const SYS_NET = '/sys/class/net';

/** Whether `netdev` exists (in this process's namespace view of /sys/class/net). */
export function netdevExists(netdev: string): boolean {
  if (!validName(netdev)) return false;
  try {
    readFileSync(`${SYS_NET}/${netdev}/ifindex`, 'utf8');
    return true;
  } catch {
    return false;
  }
}

/** Linux interface names: 1..15 bytes, no '/', no whitespace, not '.' or '..'. */
function validName(n: string): boolean {
  return n.length > 0 && n.length < 16 && n !== '.' && n !== '..' && !/[/\s]/.test(n);
}

/**
 * The netdev's link as teamd's ethtool watch sees it: carrier on and operstate up (or unknown).
 * False when the device is administratively down (the carrier read fails), has no carrier, or is gone.
 */
export function readCarrier(netdev: string): boolean {
  if (!validName(netdev)) return false;
  try {
    if (readFileSync(`${SYS_NET}/${netdev}/carrier`, 'utf8').trim() !== '1') return false;
    const oper = readFileSync(`${SYS_NET}/${netdev}/operstate`, 'utf8').trim();
    return oper === 'up' || oper === 'unknown';
  } catch {
    return false;
  }
}

/** How the process learns of changes: 'netlink' (the addon's socket, and the poll) or 'poll' (CARRIER_POLL_MS alone). */
export type CarrierTrigger = 'netlink' | 'poll';

interface Watched {
  up: boolean;
  readonly listeners: Set<(up: boolean) => void>;
}

const watched = new Map<string, Watched>();
let stopTrigger: (() => void) | null = null;
let trigger: CarrierTrigger | null = null;

/** Re-reads every watched netdev; tells the listeners of the ones that changed. */
function rescan(): void {
  for (const [dev, w] of [...watched]) {
    const up = readCarrier(dev);
    if (up === w.up) continue;
    w.up = up;
    for (const l of [...w.listeners]) l(up);
  }
}

function startTrigger(): void {
  const t = setInterval(rescan, CARRIER_POLL_MS);
  t.unref();
  const n = loadNative();
  if (n?.addrWatchStart && n.addrWatchStop) {
    const h = n.addrWatchStart((_addr, link, lost) => {
      if (link > 0 || lost > 0) rescan();
    });
    if (typeof h !== 'number') {
      trigger = 'netlink';
      stopTrigger = () => {
        n.addrWatchStop!(h);
        clearInterval(t);
      };
      // A change between the first read and the socket's bind would go unseen until the next tick: read now.
      rescan();
      return;
    }
  }
  trigger = 'poll';
  stopTrigger = () => clearInterval(t);
}

/** What a link holds while it follows a netdev's carrier. */
export interface CarrierWatch {
  /** the carrier now (as last read) */
  readonly up: boolean;
  /** stops calling back (idempotent) */
  stop(): void;
}

/**
 * Follows `netdev`'s carrier: `changed(up)` on every change from now on. null when the netdev does not
 * exist here (then there is nothing to follow: the caller keeps its link up, as before).
 */
export function watchCarrier(netdev: string, changed: (up: boolean) => void): CarrierWatch | null {
  if (!netdevExists(netdev)) return null;
  let w = watched.get(netdev);
  if (w === undefined) {
    w = { up: readCarrier(netdev), listeners: new Set() };
    watched.set(netdev, w);
  }
  const rec = w;
  // One function object per watch, so the same callback twice is two watches.
  const cb = (up: boolean): void => changed(up);
  rec.listeners.add(cb);
  if (stopTrigger === null) startTrigger();
  let stopped = false;
  return {
    get up() {
      return rec.up;
    },
    stop() {
      if (stopped) return;
      stopped = true;
      rec.listeners.delete(cb);
      if (rec.listeners.size === 0 && watched.get(netdev) === rec) watched.delete(netdev);
      if (watched.size === 0 && stopTrigger !== null) {
        stopTrigger();
        stopTrigger = null;
        trigger = null;
      }
    },
  };
}

/** How carrier changes reach this process now ('netlink' or 'poll'), or null while nothing is watched. */
export function carrierTrigger(): CarrierTrigger | null {
  return trigger;
}
