/**
 * rdma_cm's port tables, one per port space (RDMA_PS_TCP, RDMA_PS_UDP, RDMA_PS_IB), per process: the
 * kernel keeps them per network namespace (cma.c cma_ps_find / bind_list); here each process is its own
 * rdma_cm, so two processes may bind the same rdma_cm port (what they cannot share is UDP 4791 on one
 * address: devices.ts). The rules are the kernel's:
 *  - cma_check_port: an id may join a port's owners unless one of them conflicts: both REUSEADDR → no
 *    conflict; both AFONLY and of different families → none; either a wildcard → EADDRNOTAVAIL; the
 *    same address → EADDRINUSE;
 *  - cma_use_port: a port below 1024 needs CAP_NET_BIND_SERVICE (EACCES);
 *  - cma_alloc_any_port: port 0 takes a free port of net.ipv4.ip_local_port_range (read each time, as
 *    the kernel does), starting at a random one and going up, never the one handed out last; EADDRNOTAVAIL
 *    when none is free. (The kernel may also share an ephemeral port between ids whose address 4-tuples
 *    differ, cma_port_is_unique; here an ephemeral port is always a fresh one.)
 */
import { readFileSync } from 'node:fs';
import { randomInt } from 'node:crypto';
import { isIP } from 'node:net';
import { VerbsError } from '../verbs/errors.js';
import { gidFromString, gidToHex } from '../roce/gid.js';

/** rdma_port_space, as createId takes it (the numbers are in cma-hdr's RdmaPortSpace: TCP 0x0106, UDP 0x0111, IB 0x013F). */
export type PortSpace = 'TCP' | 'UDP' | 'IB';
export const PORT_SPACES: readonly PortSpace[] = ['TCP', 'UDP', 'IB'];

/** An id as the port table sees it: its source address and its options. */
export interface PortOwner {
  readonly srcAddress: string;
  readonly reuseAddr: boolean;
  readonly afOnly: boolean;
}

/** Is `address` the wildcard of its family (0.0.0.0, ::)? (cma_any_addr) */
export function isAnyAddr(address: string): boolean {
  if (isIP(address) === 4) return address === '0.0.0.0';
  return gidFromString(address).every((b) => b === 0);
}

/** The family of an address, 4 or 6 (AF_INET / AF_INET6; ::ffff:a.b.c.d is AF_INET6, as a sockaddr_in6 is). */
export function familyOf(address: string): 4 | 6 {
  return isIP(address) === 6 ? 6 : 4;
}

/** A canonical key of an address (cma_addr_cmp compares bytes): IPv6 text has many spellings. */
export function addrKey(address: string): string {
  return familyOf(address) === 4 ? address : gidToHex(gidFromString(address));
}

/** net.ipv4.ip_local_port_range (inet_get_local_port_range), or Linux's default when it cannot be read. */
export function localPortRange(): [number, number] {
  try {
    const m = /^\s*(\d+)\s+(\d+)/.exec(readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8'));
    if (m) {
      const lo = Number(m[1]),
        hi = Number(m[2]);
      if (lo >= 1 && hi <= 65535 && lo <= hi) return [lo, hi];
    }
  } catch {
    /* not Linux, or no /proc: the default below */
  }
  return [32768, 60999];
}

/** capable(CAP_NET_BIND_SERVICE): bit 10 of the effective set in /proc/self/status (root without it has none either). */
function canBindLowPorts(): boolean {
  try {
    const m = /^CapEff:\s*([0-9a-f]+)/im.exec(readFileSync('/proc/self/status', 'utf8'));
    if (m) return (BigInt(`0x${m[1]!}`) & (1n << 10n)) !== 0n;
  } catch {
    /* no /proc */
  }
  return process.getuid?.() === 0;
}

/** PROT_SOCK: ports below it are privileged. */
const PROT_SOCK = 1024;

/** Who owns which port, per port space. */
export class PortTable {
  readonly #spaces = new Map<PortSpace, Map<number, Set<PortOwner>>>();
  /** the port cma_alloc_any_port handed out last (not handed out again right after it is freed) */
  #lastUsed = 0;
  /** for tests: the ephemeral range instead of the sysctl's */
  rangeOverride: [number, number] | null = null;

  #ports(ps: PortSpace): Map<number, Set<PortOwner>> {
    let m = this.#spaces.get(ps);
    if (m === undefined) this.#spaces.set(ps, (m = new Map<number, Set<PortOwner>>()));
    return m;
  }

  /** The owners of `port` in `ps` (a copy). */
  owners(ps: PortSpace, port: number): PortOwner[] {
    return [...(this.#ports(ps).get(port) ?? [])];
  }

  /**
   * Takes `port` (0: an ephemeral one) in `ps` for `o`; returns the port. Throws VerbsError EADDRINUSE,
   * EADDRNOTAVAIL or EACCES naming `arg`, changing nothing.
   */
  take(ps: PortSpace, port: number, o: PortOwner, op: string, arg: string): number {
    const ports = this.#ports(ps);
    if (port === 0) {
      const [lo, hi] = this.rangeOverride ?? localPortRange();
      let remaining = hi - lo + 1;
      let rover = lo + randomInt(remaining);
      while (remaining-- > 0) {
        if (rover !== this.#lastUsed && !ports.has(rover)) {
          ports.set(rover, new Set([o]));
          this.#lastUsed = rover;
          return rover;
        }
        rover = rover >= hi ? lo : rover + 1;
      }
      throw new VerbsError('EADDRNOTAVAIL', op, `no free port in ${ps} port space's ephemeral range ${lo}..${hi}`, arg);
    }
    if (port < PROT_SOCK && !canBindLowPorts())
      throw new VerbsError('EACCES', op, `port ${port} is below ${PROT_SOCK} and the process lacks CAP_NET_BIND_SERVICE`, arg);
    const owners = ports.get(port);
    if (owners === undefined) {
      ports.set(port, new Set([o]));
      return port;
    }
    const conflict = checkPort(owners, o);
    if (conflict !== null)
      throw new VerbsError(conflict, op, `${ps} port ${port} is taken (${conflict === 'EADDRINUSE' ? 'same address' : 'a wildcard bind on one side'})`, arg);
    owners.add(o);
    return port;
  }

  /** `o` leaves `port` in `ps`; the port is free when its last owner leaves. */
  release(ps: PortSpace, port: number, o: PortOwner): void {
    const ports = this.#ports(ps);
    const owners = ports.get(port);
    if (owners === undefined) return;
    owners.delete(o);
    if (owners.size === 0) ports.delete(port);
  }
}

/** cma_check_port: the errno `o` joining `owners` gets, or null when it may. */
function checkPort(owners: ReadonlySet<PortOwner>, o: PortOwner): 'EADDRINUSE' | 'EADDRNOTAVAIL' | null {
  const mine = o.srcAddress;
  for (const cur of owners) {
    if (cur === o) continue;
    if (o.reuseAddr && cur.reuseAddr) continue;
    if (o.afOnly && cur.afOnly && familyOf(mine) !== familyOf(cur.srcAddress)) continue;
    if (isAnyAddr(mine) || isAnyAddr(cur.srcAddress)) return 'EADDRNOTAVAIL';
    if (familyOf(mine) === familyOf(cur.srcAddress) && addrKey(mine) === addrKey(cur.srcAddress)) return 'EADDRINUSE';
  }
  return null;
}

/** The process's port tables (the kernel's per-namespace ones). */
export const portTable = new PortTable();
