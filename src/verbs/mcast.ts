/**
 * UD multicast (IBA 10.5, ibv_attach_mcast / ibv_detach_mcast), as rxe does it (rxe_mcast.c): a
 * device-wide table of groups by MGID (rxe's mcg), each with the QPs attached to it (rxe's mca). The
 * receive path (src/roce/transport/recv.ts) hands a packet to QPN 0xFFFFFF to every QP attached to
 * the group its datagram was sent to. The first QP of a group on a port makes that port's link join
 * the IP group (rxe: dev_mc_add on the netdev; here IP_ADD_MEMBERSHIP on the port's address, so the
 * kernel sends the IGMP report); the last detach leaves it. For RoCEv2 over IPv4 the MGID is
 * ::ffff:<group> with the group in 224.0.0.0/4 (rdma_cm's cma_iboe_set_mgid).
 */
import { VerbsError, type ErrnoCode } from './errors.js';
import { gidFromString, gidToIpv4Number, gidToString, isIpv4Mapped, numberToIpv4 } from '../roce/gid.js';
import type { Port } from './port.js';
import { ATTR } from './device-attr.js';
import type { Qp } from './qp.js';

/** ibv_device_attr's multicast limits as rxe reports them (rxe_param.h), enforced here. */
export const MCAST_LIMITS = { maxMcastGrp: ATTR.maxMcastGrp, maxMcastQpAttach: ATTR.maxMcastQpAttach, maxTotalMcastQpAttach: ATTR.maxTotalMcastQpAttach };

interface Group {
  /** the group address as links name it (RxHandler's `group`) */
  readonly ip: string;
  /** the attached QPs in attach order; replaced, never changed in place (the receive path iterates it) */
  qps: readonly Qp[];
  /** per attached QP, the port whose link joined for it (the QP's port at attach) */
  readonly portOf: Map<Qp, Port>;
}

/** An MGID as bytes, or a typed error naming `gid` (EINVAL: not a GID, or not a multicast one). */
export function mcastGid(op: string, gid: string | Uint8Array): Uint8Array {
  let g: Uint8Array;
  try {
    g = typeof gid === 'string' ? gidFromString(gid) : gid;
  } catch {
    throw new VerbsError('EINVAL', op, `gid ${String(gid)} is not a GID`, 'gid');
  }
  if (!(g instanceof Uint8Array) || g.length !== 16) throw new VerbsError('EINVAL', op, 'gid must be 16 bytes or a GID string', 'gid');
  // rdma_is_multicast_addr: an IPv4-mapped GID of a 224.0.0.0/4 address, else ff00::/8.
  const multicast = isIpv4Mapped(g) ? g[12]! >>> 4 === 0xe : g[0] === 0xff;
  if (!multicast) throw new VerbsError('EINVAL', op, `gid ${gidToString(g)} is not a multicast GID (ff00::/8 or ::ffff:224.0.0.0/4)`, 'gid');
  return g;
}

/** The group address a link joins and reports for an MGID: dotted IPv4 when IPv4-mapped, else the IPv6 address. */
export function mcastGroupIp(g: Uint8Array): string {
  return isIpv4Mapped(g) ? numberToIpv4(gidToIpv4Number(g)) : gidToString(g);
}

function linkErrno(r: number): ErrnoCode {
  return r === -95 ? 'EOPNOTSUPP' : r === -12 || r === -105 ? 'ENOMEM' : r === -9 ? 'EBADF' : r === -19 ? 'ENODEV' : 'EINVAL';
}

export class McastTable {
  private readonly groups = new Map<string, Group>();
  /** per QP, the groups it is attached to (close detaches them) */
  private readonly ofQp = new Map<Qp, Set<string>>();
  private attached = 0;
  private readonly ports: readonly Port[];
  constructor(ports: readonly Port[]) {
    this.ports = ports;
  }

  /** The QPs attached to the group `groupIp`, or undefined (TransportDevice.mcastQps). */
  qps(groupIp: string): readonly Qp[] | undefined {
    return this.groups.get(groupIp)?.qps;
  }

  /** Groups with at least one QP, and attachments in all (tests, ibv_devinfo). */
  get counts(): { groups: number; attachments: number } {
    return { groups: this.groups.size, attachments: this.attached };
  }

  /**
   * ibv_attach_mcast (rxe_attach_mcast): a QP already attached to the group stays so (0, as rxe).
   * ENOMEM past max_mcast_grp groups (rxe_get_mcg); EINVAL past max_mcast_qp_attach QPs in a group or
   * max_total_mcast_qp_attach attachments in the device (rxe_attach_mcg, since Linux 5.19; ENOMEM
   * before); the link's join refused: its errno (EOPNOTSUPP: an IPv6 group on a UDP link).
   */
  attach(op: string, qp: Qp, g: Uint8Array): void {
    const ip = mcastGroupIp(g);
    let grp = this.groups.get(ip);
    if (grp?.portOf.has(qp)) return;
    if (grp === undefined && this.groups.size >= MCAST_LIMITS.maxMcastGrp)
      throw new VerbsError('ENOMEM', op, `the device has ${MCAST_LIMITS.maxMcastGrp} multicast groups (max_mcast_grp)`, 'gid');
    if (this.attached >= MCAST_LIMITS.maxTotalMcastQpAttach)
      throw new VerbsError('EINVAL', op, `the device has ${MCAST_LIMITS.maxTotalMcastQpAttach} multicast attachments (max_total_mcast_qp_attach)`, 'qp');
    if (grp !== undefined && grp.qps.length >= MCAST_LIMITS.maxMcastQpAttach)
      throw new VerbsError('EINVAL', op, `group ${ip} has ${MCAST_LIMITS.maxMcastQpAttach} QPs attached (max_mcast_qp_attach)`, 'qp');
    const port = this.ports[qp.port - 1]!;
    if (!this.portHas(grp, port)) {
      const link = port.link;
      const r = link.joinGroup !== undefined ? link.joinGroup(ip) : -95;
      if (r < 0) throw new VerbsError(linkErrno(r), op, `port ${port.num} cannot join group ${ip} (errno ${-r})`, 'gid');
    }
    if (grp === undefined) {
      grp = { ip, qps: [], portOf: new Map() };
      this.groups.set(ip, grp);
    }
    grp.qps = [...grp.qps, qp];
    grp.portOf.set(qp, port);
    this.attached++;
    let mine = this.ofQp.get(qp);
    if (mine === undefined) this.ofQp.set(qp, (mine = new Set()));
    mine.add(ip);
  }

  /** ibv_detach_mcast (rxe_detach_mcast): EINVAL when the QP is not attached to the group. */
  detach(op: string, qp: Qp, g: Uint8Array): void {
    const ip = mcastGroupIp(g);
    if (this.groups.get(ip)?.portOf.has(qp) !== true) throw new VerbsError('EINVAL', op, `QP ${qp.qpn} is not attached to ${gidToString(g)}`, 'gid');
    this.remove(qp, ip);
  }

  /** A closing QP leaves every group it is in (uverbs detaches them before destroying it). */
  detachAll(qp: Qp): void {
    const mine = this.ofQp.get(qp);
    if (mine === undefined) return;
    for (const ip of [...mine]) this.remove(qp, ip);
  }

  /** Resolves once the link of the QP's port has the membership of the group in place (UDP: socket bound and joined). */
  async joined(op: string, qp: Qp, g: Uint8Array): Promise<void> {
    const ip = mcastGroupIp(g);
    const port = this.groups.get(ip)?.portOf.get(qp);
    if (port === undefined) throw new VerbsError('EINVAL', op, `QP ${qp.qpn} is not attached to ${gidToString(g)}`, 'gid');
    const r = port.link.groupJoined !== undefined ? await port.link.groupJoined(ip) : 0;
    if (r < 0) throw new VerbsError(linkErrno(r), op, `port ${port.num} could not join group ${ip} (errno ${-r})`, 'gid');
  }

  private portHas(grp: Group | undefined, port: Port): boolean {
    if (grp === undefined) return false;
    for (const p of grp.portOf.values()) if (p === port) return true;
    return false;
  }

  private remove(qp: Qp, ip: string): void {
    const grp = this.groups.get(ip);
    const port = grp?.portOf.get(qp);
    if (grp === undefined || port === undefined) return;
    grp.portOf.delete(qp);
    grp.qps = grp.qps.filter((q) => q !== qp);
    this.attached--;
    const mine = this.ofQp.get(qp);
    mine?.delete(ip);
    if (mine?.size === 0) this.ofQp.delete(qp);
    // The last QP of the group on this port: the link leaves the IP group (IGMP leave).
    if (!this.portHas(grp, port)) port.link.leaveGroup?.(ip);
    if (grp.qps.length === 0) this.groups.delete(ip);
  }
}
