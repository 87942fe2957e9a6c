/**
 * Building and sending one IB packet into a link's pooled tx buffer: the
 * header offsets come from the opcode table, the ICRC is computed for the
 * IP/UDP headers the kernel will add (IPv4 ID 0 + DF, see icrc.ts).
 */
import { OPCODE_LEN, OPCODES, Hdr } from '../opcode.js';
import { padFor } from '../psn.js';
import { icrcV2Ipv4Parts, icrcV2Ipv6Parts, writeIcrc } from '../icrc.js';
import { C } from '../counters.js';
import type { PortLike as Port, Dest } from './types.js';

/** Writes the BTH (IBA 9.2) at 0. */
export function writeBth(b: Buffer, opcode: number, se: boolean, padCnt: number, destQp: number, ackReq: boolean, psn: number): void {
  b[0] = opcode;
  b[1] = (se ? 0x80 : 0) | (padCnt << 4);
  b[2] = 0xff; b[3] = 0xff; // P_Key: default partition, full member (rxe sends 0xFFFF)
  b[4] = 0;
  b[5] = (destQp >>> 16) & 0xff; b[6] = (destQp >>> 8) & 0xff; b[7] = destQp & 0xff;
  b[8] = ackReq ? 0x80 : 0;
  b[9] = (psn >>> 16) & 0xff; b[10] = (psn >>> 8) & 0xff; b[11] = psn & 0xff;
}

/** Offset of header `h` for `opcode` (caller knows it is present). */
export function hdrOff(opcode: number, h: number): number {
  return OPCODES[opcode]!.offset[h]!;
}

/** Payload offset for `opcode`. */
export function payloadOff(opcode: number): number {
  return OPCODE_LEN[opcode]!;
}

/** Pads, computes the ICRC and hands the packet to the link. `end` = payload end. */
export function finishAndSend(port: Port, b: Buffer, end: number, payloadLen: number, d: Dest): void {
  const pad = padFor(payloadLen);
  for (let i = 0; i < pad; i++) b[end + i] = 0;
  const icrcOff = end + pad;
  b[1] = (b[1]! & 0xcf) | (pad << 4);
  const link = port.link;
  const c = d.family === 4
    ? icrcV2Ipv4Parts(port.ipNum, d.ipNum, 0, 0x4000, link.localPort, d.port, b, 0, icrcOff)
    : icrcV2Ipv6Parts(port.addrBytes, d.bytes, link.localPort, d.port, b, 0, icrcOff);
  writeIcrc(b, icrcOff, c);
  const len = icrcOff + 4;
  port.counters.v[C.sent_pkts]!++;
  link.send(b, len, d.ip, d.port, d.tos);
}

/**
 * An RDMA READ request for `len` bytes at `va`, with PSN `psn` (IBA 9.4.4): the completer asks again
 * for a hole in a READ's responses with it (a part of the original request, which a responder
 * replays: rxe's duplicate_request). AckReq is set, as on every READ request.
 */
export function sendReadRequest(port: Port, d: Dest, destQp: number, psn: number, va: bigint, rkey: number, len: number): boolean {
  const b = port.link.allocTx();
  if (!b) return false;
  writeBth(b, 0x0c, false, 0, destQp, true, psn);
  const r = hdrOff(0x0c, Hdr.RETH);
  b.writeBigUInt64BE(BigInt.asUintN(64, va), r);
  b.writeUInt32BE(rkey >>> 0, r + 8);
  b.writeUInt32BE(len >>> 0, r + 12);
  finishAndSend(port, b, payloadOff(0x0c), 0, d);
  return true;
}
