/**
 * Building and sending one IB packet into a link's pooled tx buffer: the
 * header offsets come from the opcode table, the ICRC is computed for the
 * IP/UDP headers the kernel will add (IPv4 ID 0 + DF, see icrc.ts).
 */
import { OPCODE_LEN, OPCODES, Hdr, OPC, TRANSPORT_PREFIX } from '../opcode.js';
import { AethView, RethView } from '../wire/exth.js';
import { padFor } from '../psn.js';
import { icrcV2Ipv4PartsS, icrcV2Ipv6PartsS, writeIcrc } from '../icrc.js';
import { Ctr } from '../counters.js';
import type { PortLike as Port, Dest, TransportQp } from './types.js';

/** Writes the BTH (IBA 9.2) at 0. */
export function writeBth(b: Buffer, opcode: number, se: boolean, padCnt: number, destQp: number, ackReq: boolean, psn: number): void {
  b[0] = opcode;
  b[1] = (se ? 0x80 : 0) | (padCnt << 4);
  b[2] = 0xff;
  b[3] = 0xff; // P_Key: default partition, full member (rxe sends 0xFFFF)
  b[4] = 0;
  b[5] = (destQp >>> 16) & 0xff;
  b[6] = (destQp >>> 8) & 0xff;
  b[7] = destQp & 0xff;
  b[8] = ackReq ? 0x80 : 0;
  b[9] = (psn >>> 16) & 0xff;
  b[10] = (psn >>> 8) & 0xff;
  b[11] = psn & 0xff;
}

const txAeth = new AethView();
const txReth = new RethView();

/** Writes the AETH (IBA 9.3.5) of a response `opcode` built at 0: syndrome and MSN. Returns where what follows it starts. */
export function writeAeth(b: Buffer, opcode: number, syndrome: number, msn: number): number {
  const off = hdrOff(opcode, Hdr.AETH);
  const a = txAeth.bind(b, off);
  a.syndrome = syndrome;
  a.msn = msn;
  return off + 4;
}

/** Writes the RETH (IBA 9.3.2) of a request `opcode` built at 0: virtual address, R_Key, DMA length. */
export function writeReth(b: Buffer, opcode: number, va: bigint, rkey: number, len: number): void {
  const r = txReth.bind(b, hdrOff(opcode, Hdr.RETH));
  r.va = va;
  r.rkey = rkey;
  r.dmaLen = len;
}

/**
 * A RETH for the address (hi, lo) + `plus` bytes, without a bigint (the requester's path, once
 * per WRITE message and per READ request; SendWqe.remoteHi/remoteLo).
 */
export function writeRethAt(b: Buffer, opcode: number, hi: number, lo: number, plus: number, rkey: number, len: number): void {
  const r = txReth.bind(b, hdrOff(opcode, Hdr.RETH));
  // hi, lo and rkey may come as int32 (`| 0`: callers pass them so, no heap number per call).
  const l = (lo >>> 0) + plus; // exact: below 2^33
  const carry = l >= 0x100000000 ? Math.floor(l / 0x100000000) : 0;
  r.setVa((hi + carry) | 0, l | 0);
  r.rkey = rkey;
  r.dmaLen = len;
}

/** The opcode prefix (top 3 bits, IBA 9.2.1 table 38) of a QP type's packets: RC, UC, or UD (also the GSI QP). */
export function qpTransportPrefix(type: string): number {
  return type === 'RC' ? TRANSPORT_PREFIX.RC : type === 'UC' ? TRANSPORT_PREFIX.UC : TRANSPORT_PREFIX.UD;
}

/** Offset of header `h` for `opcode` (caller knows it is present). */
export function hdrOff(opcode: number, h: number): number {
  return OPCODES[opcode]!.offset[h]!;
}

/** Payload offset for `opcode`. */
export function payloadOff(opcode: number): number {
  return OPCODE_LEN[opcode]!;
}

/** The port a QP's packets leave by: its TX port when a bond gave it one (TransportQp.txPort), else its port. */
export function txPortOf(qp: TransportQp): Port {
  return qp.txPort ?? qp.device.ports[qp.port - 1]!;
}

/**
 * Pads, computes the ICRC and hands the packet to the link. `end` = payload end. `srcPort`: the
 * sending QP's flow port (flow.ts); the link says which port the datagram really leaves from
 * (Link.sourcePort: its own port when it cannot send from that one), and the ICRC, which covers
 * the UDP header (IBA A17.3.3), is computed for that one.
 * A packet whose source GID entry is gone (its address left the interface, or its slot holds
 * another address since the AV was set) is not sent: the buffer goes back to the pool and
 * `sent_sgid_gone` counts it; an RC QP then retries and fails with RETRY_EXC_ERR, as rxe's does.
 */
export function finishAndSend(port: Port, b: Buffer, end: number, payloadLen: number, d: Dest, srcPort: number): void {
  if (port.gidGen[d.sgidIndex] !== d.sgidGen) {
    port.link.freeTx(b);
    port.counters.counts[Ctr.sent_sgid_gone]!++;
    return;
  }
  const pad = padFor(payloadLen);
  for (let i = 0; i < pad; i++) b[end + i] = 0;
  const icrcOff = end + pad;
  b[1] = (b[1]! & 0xcf) | (pad << 4);
  const link = port.link;
  const sp = link.sourcePort !== undefined ? link.sourcePort(srcPort) : link.localPort;
  const c =
    d.family === 4
      ? icrcV2Ipv4PartsS(port.ipNum, d.ipNum, 0, 0x4000, sp, d.port, b, 0, icrcOff)
      : icrcV2Ipv6PartsS(port.addrBytes, d.bytes, sp, d.port, b, 0, icrcOff);
  writeIcrc(b, icrcOff, c);
  const len = icrcOff + 4;
  port.counters.counts[Ctr.sent_pkts]!++;
  link.send(b, len, d.ip, d.port, d.tos, sp);
}

/**
 * An RDMA READ request for `len` bytes at `va`, with PSN `psn` (IBA 9.4.4): the completer asks again
 * for a hole in a READ's responses with it (a part of the original request, which a responder
 * replays: rxe's duplicate_request). AckReq is set, as on every READ request.
 */
export function sendReadRequest(port: Port, d: Dest, srcPort: number, destQp: number, psn: number, va: bigint, rkey: number, len: number): boolean {
  const b = port.link.allocTx();
  if (!b) return false;
  writeBth(b, OPC.RC_RDMA_READ_REQUEST, false, 0, destQp, true, psn);
  writeReth(b, OPC.RC_RDMA_READ_REQUEST, va, rkey, len);
  finishAndSend(port, b, payloadOff(OPC.RC_RDMA_READ_REQUEST), 0, d, srcPort);
  return true;
}
