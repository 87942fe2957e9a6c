/**
 * Address resolution for rdma_cm (rdma_resolve_addr; the kernel's addr.c rdma_resolve_ip over
 * cma.c): which local address, device, port and source GID reach a destination.
 *
 *  - The source address is the bound one, else the one the host's routing table picks for the
 *    destination: a UDP socket connect()ed to the destination, then getsockname() (the kernel's own
 *    route lookup, ip_route_output_key, as addr4_resolve / addr6_resolve do it; connect() on a UDP
 *    socket sends nothing). A lookup the kernel refuses gives its errno (ENETUNREACH with no route,
 *    EHOSTUNREACH for an unreachable or prohibit route, EINVAL for a loopback source towards another
 *    host...), which becomes the ADDR_ERROR event's status.
 *  - There is no neighbour (ARP/ND) step: RoCEv2 here rides the host's UDP stack, which resolves the
 *    next hop when the first packet leaves. A destination that does not answer shows later (the QP's
 *    retries, the CM's REQ timeouts), not as ADDR_ERROR.
 *  - The GID is the port's live table entry of the source address (::ffff:a.b.c.d for IPv4) of the
 *    RoCE type the CM uses on that port (route.ts roceMode: v2 unless set), as cma_acquire_dev_by_src_ip
 *    looks it up in the GID cache; ENODEV when no port has it.
 */
import { createSocket, type Socket } from 'node:dgram';
import { isIP } from 'node:net';
import { readFileSync } from 'node:fs';
import { VerbsError, type ErrnoCode } from '../verbs/errors.js';
import { hostAddressSource } from '../verbs/addr-watch.js';
import type { Device } from '../verbs/device.js';
import type { GidType } from '../verbs/discovery.js';
import { gidFromString, ipv4ToGid, type Gid } from '../roce/gid.js';
import { addrKey, familyOf } from './port-space.js';

/** A socket address as rdma_cm ids hold them (struct sockaddr_in / sockaddr_in6). */
export interface CmAddr {
  readonly address: string;
  readonly port: number;
  readonly family: 4 | 6;
}

/** What callers may pass for an address: the address text, or the address and a port. */
export type CmAddrInput = string | { address: string; port?: number };

/** A checked address (EINVAL naming `arg` otherwise). */
export function parseCmAddr(op: string, arg: string, v: unknown): CmAddr {
  const o = typeof v === 'string' ? { address: v } : v;
  if (typeof o !== 'object' || o === null || Array.isArray(o)) throw new VerbsError('EINVAL', op, `${arg} must be an address string or { address, port }`, arg);
  const { address, port } = o as { address?: unknown; port?: unknown };
  if (typeof address !== 'string' || isIP(address) === 0)
    throw new VerbsError('EINVAL', op, `${arg}.address must be an IPv4 or IPv6 address, got ${JSON.stringify(address)}`, arg);
  // An IPv6 scope (fe80::1%eth0) would need the kernel's cma_check_linklocal (the scope names the netdev); not supported.
  if (address.includes('%'))
    throw new VerbsError('EINVAL', op, `${arg}.address: IPv6 scoped (link-local %netdev) addresses are not supported, got ${address}`, arg);
  if (port !== undefined && (typeof port !== 'number' || !Number.isInteger(port) || port < 0 || port > 65535))
    throw new VerbsError('EINVAL', op, `${arg}.port must be an integer in 0..65535, got ${JSON.stringify(port) ?? typeof port}`, `${arg}.port`);
  return { address, port: port ?? 0, family: familyOf(address) };
}

/** The GID of an IP address (rdma_ip2gid): IPv4-mapped for IPv4, the address itself for IPv6. */
export function ipToGid(address: string): Gid {
  return isIP(address) === 4 ? ipv4ToGid(address) : gidFromString(address);
}

/** Is `address` one of this host's (rdma_translate_ip finds a netdev with it)? All of 127/8 is loopback on Linux. */
export function isLocalAddress(address: string): boolean {
  if (isIP(address) === 4 && address.startsWith('127.')) return true;
  const key = addrKey(address);
  if (key === addrKey('::1')) return true;
  try {
    return hostAddressSource.list().some((a) => isIP(a.address) !== 0 && addrKey(a.address) === key);
  } catch {
    return false;
  }
}

const SOCKET_ERRNOS: ReadonlySet<string> = new Set<ErrnoCode>(['ENETUNREACH', 'EHOSTUNREACH', 'EINVAL', 'EADDRNOTAVAIL', 'EACCES', 'EPERM']);

/** A socket error as the VerbsError rdma_resolve_addr's event carries (its errno when we model it, else EINVAL). */
function socketError(e: unknown, dst: string): VerbsError {
  const code = (e as NodeJS.ErrnoException | null)?.code ?? '';
  const msg = e instanceof Error ? e.message : String(e);
  return new VerbsError(SOCKET_ERRNOS.has(code) ? (code as ErrnoCode) : 'EINVAL', 'rdma_resolve_addr', `no route to ${dst}: ${msg}`, 'dst');
}

/**
 * The source address the host's routing table picks to reach `dst` (from `src` when it is a specific
 * address: the lookup is then made with that source, as addr4_resolve passes fl4.saddr). Rejects with a
 * VerbsError carrying the kernel's errno.
 */
export function routeSource(dst: string, src: string | null): Promise<string> {
  return new Promise((resolve, reject) => {
    let s: Socket;
    try {
      s = createSocket({ type: familyOf(dst) === 6 ? 'udp6' : 'udp4' });
    } catch (e) {
      reject(socketError(e, dst));
      return;
    }
    let settled = false;
    const finish = (err: unknown, addr?: string): void => {
      if (settled) return;
      settled = true;
      try {
        s.close();
      } catch {
        /* already closed */
      }
      if (err !== null) reject(socketError(err, dst));
      else resolve(addr!);
    };
    s.once('error', (e) => finish(e));
    const connect = (): void => {
      s.connect(4791, dst, (e?: Error) => {
        if (e) return finish(e);
        try {
          finish(null, s.address().address);
        } catch (e2) {
          finish(e2);
        }
      });
    };
    if (src !== null) s.bind({ address: src, port: 0, exclusive: true }, connect);
    else connect();
  });
}

/**
 * The port of `dev` bound to `address` whose GID table holds it as a GID of `type` (the type the CM
 * uses on that port), and that GID's index; null when none. Only the bound address counts, not every
 * GID of the port's netdev (a device on 127.0.0.5 also lists lo's 127.0.0.1): a softroce port sends
 * from its socket's address whatever the GID index, so a path from another address would not be the
 * one its packets take.
 */
export function portWithAddress(dev: Device, address: string, type: (port: number) => GidType): { port: number; gidIndex: number } | null {
  const key = addrKey(address);
  const gid = ipToGid(address);
  for (const p of dev.ports) {
    if (addrKey(p.address) !== key) continue;
    const i = p.gids.indexOf(gid, type(p.num));
    if (i >= 0) return { port: p.num, gidIndex: i };
  }
  return null;
}

/** Does `dev` have a port bound to `address` (its UDP socket's address)? */
export function hasPortOn(dev: Device, address: string): boolean {
  const key = addrKey(address);
  return dev.ports.some((p) => addrKey(p.address) === key);
}

/**
 * The hop limit of the route (dev_addr.hoplimit: ip4_dst_hoplimit / ip6_dst_hoplimit): the host's
 * default, net.ipv4.ip_default_ttl or net.ipv6.conf.<netdev>.hop_limit (64 when unreadable). A hop
 * limit metric on the route itself (`ip route ... hoplimit N`) is not read.
 */
export function routeHopLimit(family: 4 | 6, netdev: string): number {
  const files =
    family === 4 ? ['/proc/sys/net/ipv4/ip_default_ttl'] : [`/proc/sys/net/ipv6/conf/${netdev}/hop_limit`, '/proc/sys/net/ipv6/conf/default/hop_limit'];
  for (const f of files) {
    try {
      const n = Number(readFileSync(f, 'utf8').trim());
      if (Number.isInteger(n) && n >= 1 && n <= 255) return n;
    } catch {
      /* next */
    }
  }
  return 64;
}
