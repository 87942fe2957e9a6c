/**
 * What ibv_query_device and ibv_query_port report (ibv_device_attr, ibv_port_attr), and the
 * limits a softroce device has: rxe's (rxe_param.h).
 */
import type { Mtu } from '../roce/opcode.js';

export interface DeviceAttr {
  fwVer: string;
  nodeGuid: bigint;
  sysImageGuid: bigint;
  maxMrSize: number;
  pageSizeCap: number;
  vendorId: number;
  vendorPartId: number;
  hwVer: number;
  maxQp: number;
  maxQpWr: number;
  maxSge: number;
  maxSgeRd: number;
  maxCq: number;
  maxCqe: number;
  maxMr: number;
  maxPd: number;
  maxQpRdAtom: number;
  maxQpInitRdAtom: number;
  maxResRdAtom: number;
  atomicCap: 'NONE' | 'HCA' | 'GLOB';
  maxSrq: number;
  maxSrqWr: number;
  maxSrqSge: number;
  maxInline: number;
  maxPkeys: number;
  localCaAckDelay: number;
  physPortCnt: number;
  maxMsgSize: number;
  /** UD multicast (mcast.ts): groups, QPs per group, attachments in all */
  maxMcastGrp: number;
  maxMcastQpAttach: number;
  maxTotalMcastQpAttach: number;
}

export interface PortAttr {
  state: 'ACTIVE' | 'DOWN';
  maxMtu: Mtu;
  activeMtu: Mtu;
  gidTblLen: number;
  portCapFlags: number;
  maxMsgSz: number;
  pkeyTblLen: number;
  lid: number;
  smLid: number;
  lmc: number;
  linkLayer: 'Ethernet';
  activeWidth: string;
  activeSpeed: string;
  physState: 'LINK_UP' | 'DISABLED';
  netdev: string;
  address: string;
  backend: string;
}

/** rxe's limits (rxe_param.h), which is what ibv_devinfo -v shows for rxe0. */
export const ATTR: Omit<DeviceAttr, 'nodeGuid' | 'sysImageGuid'> = {
  fwVer: '0.0.0',
  maxMrSize: 2 ** 32,
  pageSizeCap: 0xfffff000,
  vendorId: 0xffffff,
  vendorPartId: 0,
  hwVer: 0,
  maxQp: 0x10000,
  maxQpWr: 0x4000,
  maxSge: 32,
  maxSgeRd: 32,
  maxCq: 0x4000,
  maxCqe: 0x7fff,
  maxMr: 0x40000,
  maxPd: 0x7ffc,
  maxQpRdAtom: 128,
  maxQpInitRdAtom: 128,
  maxResRdAtom: 258048,
  atomicCap: 'HCA',
  maxSrq: 0x3ff0,
  maxSrqWr: 0x4000,
  maxSrqSge: 27,
  maxInline: 400,
  maxPkeys: 64,
  localCaAckDelay: 15,
  physPortCnt: 1,
  maxMsgSize: 0x80000000,
  // rxe_param.h RXE_MAX_MCAST_GRP, RXE_MAX_MCAST_QP_ATTACH, RXE_MAX_TOT_MCAST_QP_ATTACH (enforced in mcast.ts)
  maxMcastGrp: 8192,
  maxMcastQpAttach: 56,
  maxTotalMcastQpAttach: 0x70000,
};

/** The node GUID rxe derives from the netdev's MAC (EUI-64: the U/L bit flipped, FF:FE in the middle). */
export function guidFromMac(mac: Uint8Array): bigint {
  return (
    (BigInt(mac[0]! ^ 2) << 56n) |
    (BigInt(mac[1]!) << 48n) |
    (BigInt(mac[2]!) << 40n) |
    (0xfffen << 24n) |
    (BigInt(mac[3]!) << 16n) |
    (BigInt(mac[4]!) << 8n) |
    BigInt(mac[5]!)
  );
}
