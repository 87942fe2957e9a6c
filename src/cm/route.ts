/**
 * rdma_resolve_route on RoCE: no subnet manager to ask, so the path record is built locally, as the
 * kernel's cma_resolve_iboe_route does (roce-wire.md h.4, cm-and-lag.md "Path fields on RoCE"):
 *
 * | field             | value                                                                          |
 * | ----------------- | ------------------------------------------------------------------------------ |
 * | sgid / dgid       | rdma_ip2gid of the source and destination addresses                            |
 * | hopLimit          | the route's (addr.ts routeHopLimit: ip_default_ttl, 64)                        |
 * | trafficClass      | the id's TOS (setOption({ tos })), else the port's default_roce_tos, 0         |
 * | sl                | iboe_tos_to_sl: 0 (the netdev's prio→TC map is only set for VLANs / mqprio)    |
 * | flowLabel         | (sport·31 + dport) & 0xFFFFF over the rdma_cm ports (cma_get_roce_udp_flow_label) |
 * | pkey              | 0xFFFF                                                                         |
 * | mtu               | iboe_get_mtu(netdev MTU): the MTU less 96 header bytes, down to an IB MTU      |
 * | packetLifeTime    | ACK_TIMEOUT − 1 when setOption({ ackTimeout }) set a non-zero one, else 18     |
 * | gidType           | the CM's RoCE type on the port (setRoceMode; v2 unless set, as cma_roce_mode)  |
 *
 * The RoCE type is per device port and process-wide, like the kernel's configfs
 * /sys/kernel/config/rdma_cm/<dev>/ports/<n>/default_roce_mode.
 */
import type { Device } from '../verbs/device.js';
import { netdevMtu, type GidType } from '../verbs/discovery.js';
import { VerbsError } from '../verbs/errors.js';
import type { Mtu } from '../roce/opcode.js';
import { gidFromString, gidToString } from '../roce/gid.js';
import { ipToGid, type CmAddr } from './addr.js';
import { CMA_IBOE_PACKET_LIFETIME, flowLabelFromPorts, ibMtuFromBytes, ibMtuToBytes, iboeGetMtu, tosToSl } from './cm-defs.js';
import type { CmPath } from './ib-cm.js';

export { CMA_IBOE_PACKET_LIFETIME };
/** The P_Key of every RoCE path (the default partition). */
export const ROCE_PKEY = 0xffff;

/** iboe_get_mtu in bytes (cm-defs.ts iboeGetMtu gives the IB MTU enum): 0 when not even 256 fits. */
export function iboeMtu(netdevMtuBytes: number): Mtu | 0 {
  return ibMtuToBytes(iboeGetMtu(netdevMtuBytes)) as Mtu | 0;
}

/** The path's packet life time: ACK_TIMEOUT − 1 when one was set and is not 0, else CMA_IBOE_PACKET_LIFETIME. */
export function packetLifeTime(ackTimeout: number | null): number {
  return ackTimeout !== null && ackTimeout > 0 ? ackTimeout - 1 : CMA_IBOE_PACKET_LIFETIME;
}

/** A RoCE path record (struct ibv_sa_path_rec, the fields RoCE uses). GIDs are text, as endpoints carry them. */
export interface PathRecord {
  readonly sgid: string;
  readonly dgid: string;
  /** the source GID's index in the port's table (what the QP's AV will use) */
  readonly sgidIndex: number;
  readonly gidType: GidType;
  readonly flowLabel: number;
  readonly hopLimit: number;
  readonly trafficClass: number;
  readonly sl: number;
  readonly pkey: number;
  readonly mtu: Mtu;
  readonly packetLifeTime: number;
  readonly reversible: true;
  readonly numbPath: 1;
}

/** What buildPath needs of a resolved id. */
export interface PathInput {
  src: CmAddr;
  dst: CmAddr;
  sgidIndex: number;
  gidType: GidType;
  netdev: string;
  hopLimit: number;
  tos: number;
  ackTimeout: number | null;
}

/** cma_resolve_iboe_route's path record; EINVAL (as the kernel's) when the netdev's MTU leaves no IB MTU. */
export function buildPath(i: PathInput): PathRecord {
  const mtu = iboeMtu(netdevMtu(i.netdev));
  if (mtu === 0) throw new VerbsError('EINVAL', 'rdma_resolve_route', `netdev ${i.netdev} has an MTU too small for RoCE`, 'id');
  return {
    sgid: gidToString(ipToGid(i.src.address)),
    dgid: gidToString(ipToGid(i.dst.address)),
    sgidIndex: i.sgidIndex,
    gidType: i.gidType,
    flowLabel: flowLabelFromPorts(i.src.port, i.dst.port),
    hopLimit: i.hopLimit,
    trafficClass: i.tos,
    // iboe_tos_to_sl: rt_tos2priority(tos) through the netdev's egress map, which only a VLAN or an
    // mqprio qdisc has (not read here); on a plain netdev (and on lo) it is 0, so the SL is 0 whatever the TOS.
    sl: tosToSl(i.tos),
    pkey: ROCE_PKEY,
    mtu,
    packetLifeTime: packetLifeTime(i.ackTimeout),
    reversible: true,
    numbPath: 1,
  };
}

/** The path as the IB CM engine takes it (ib-cm.ts CmPath, for REQ / REP): GIDs as bytes, the MTU as the IB enum. */
export function cmPathOf(p: PathRecord, port: number): CmPath {
  return {
    port,
    sgidIndex: p.sgidIndex,
    sgid: gidFromString(p.sgid),
    dgid: gidFromString(p.dgid),
    trafficClass: p.trafficClass,
    hopLimit: p.hopLimit,
    flowLabel: p.flowLabel,
    sl: p.sl,
    mtu: ibMtuFromBytes(p.mtu) as CmPath['mtu'],
    packetLifeTime: p.packetLifeTime,
    pkey: p.pkey,
  };
}

// ---- the RoCE type the CM uses per device port (cma_roce_mode) ----

export type RoceMode = 'v1' | 'v2';
const roceModes = new Map<string, RoceMode>();
const modeKey = (device: Device | string, port: number): string => `${typeof device === 'string' ? device : device.name}/${port}`;

/**
 * The RoCE type rdma_cm ids use on a device port from now on (the kernel's configfs default_roce_mode):
 * the GID they take at resolveAddr is the source address's entry of that type. Keyed by the device's
 * name, so it holds for devices the CM opens later. v2 unless set.
 */
export function setRoceMode(device: Device | string, port: number, mode: RoceMode): void {
  const op = 'cma_set_default_roce_mode';
  if (typeof device !== 'string' && (typeof device !== 'object' || device === null || typeof device.name !== 'string'))
    throw new VerbsError('EINVAL', op, 'device must be a Device or a device name', 'device');
  if (!Number.isInteger(port) || port < 1 || port > 255) throw new VerbsError('EINVAL', op, `port must be an integer in 1..255, got ${String(port)}`, 'port');
  if (mode !== 'v1' && mode !== 'v2') throw new VerbsError('EINVAL', op, `mode must be 'v1' or 'v2', got ${String(mode)}`, 'mode');
  if (mode === 'v2') roceModes.delete(modeKey(device, port));
  else roceModes.set(modeKey(device, port), mode);
}

/** The RoCE type the CM uses on a device port (cma_get_default_gid_type). */
export function roceMode(device: Device | string, port: number): RoceMode {
  return roceModes.get(modeKey(device, port)) ?? 'v2';
}

/** The GID type of a RoCE mode. */
export function gidTypeOf(mode: RoceMode): GidType {
  return mode === 'v1' ? 'RoCE v1' : 'RoCE v2';
}
