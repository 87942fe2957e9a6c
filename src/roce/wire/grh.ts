/**
 * Global Route Header (IBA 8.3, 40 bytes). On RoCEv1 it follows the Ethernet
 * header (Ethertype 0x8915) with NxtHdr 0x1B; on RoCEv2 it is "virtual": the
 * IP header plays its role, and UD receive buffers get it rebuilt (grh.ts is
 * also where the 40-byte UD receive prefix is made, see udRecvGrh in framing).
 *
 *  bits 31-28 IPVer (6) | 27-20 TClass | 19-0 Flow Label
 *  bytes 4-5 PayLen (bytes after the GRH, ICRC included) | 6 NxtHdr | 7 HopLmt
 *  bytes 8-23 SGID | 24-39 DGID
 */
import type { HeaderSpec } from './field.js';

export const GRH_LEN = 40;
/** NxtHdr value meaning "a BTH follows" (IBA 8.3.1). */
export const GRH_NXTHDR_BTH = 0x1b;

export const GRH_SPEC: HeaderSpec = {
  name: 'GRH',
  length: GRH_LEN,
  fields: [
    ['ipVer', 0, 4, 4],
    ['tclass', 0, 4, 8],
    ['flowLabel', 1, 0, 20],
    ['payLen', 4, 0, 16],
    ['nxtHdr', 6, 0, 8],
    ['hopLmt', 7, 0, 8],
    ['sgid', 8, 'bytes', 16],
    ['dgid', 24, 'bytes', 16],
  ],
};

export interface GrhRepr {
  ipVer: number;
  tclass: number;
  flowLabel: number;
  payLen: number;
  nxtHdr: number;
  hopLmt: number;
  sgid: Uint8Array;
  dgid: Uint8Array;
}
