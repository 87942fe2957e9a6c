/**
 * The UDP source port of a flow (RoCEv2, IBA A17.4.3: the source port is the sender's choice and
 * carries the flow's entropy for ECMP/RSS; the destination is always 4791). Every packet of a QP,
 * requests and the responses and ACKs its responder sends alike, leaves from one port, as in rxe.
 */

/** rxe's RXE_ROCE_V2_SPORT: the base of the per-QP source ports (top two bits set, 0xC000-0xFFFF). */
export const FLOW_SPORT_BASE = 0xc000;

/** GOLDEN_RATIO_32 of linux/hash.h. */
const GOLDEN_RATIO_32 = 0x61c88647;

/** Linux hash_32 (hash_32_generic): the top `bits` bits of val * GOLDEN_RATIO_32 mod 2^32. */
export function hash32(val: number, bits: number): number {
  return Math.imul(val, GOLDEN_RATIO_32) >>> (32 - bits);
}

/**
 * rxe's default: `RXE_ROCE_V2_SPORT + (hash_32(qp_num, 14) & 0x3fff)` (rxe_qp.c, rxe_qp_init_req),
 * of the QP's own (local) QPN, set when the QP is created.
 */
export function qpSourcePort(qpn: number): number {
  return FLOW_SPORT_BASE + (hash32(qpn >>> 0, 14) & 0x3fff);
}

/**
 * A 20-bit flow label to a source port (rdma_flow_label_to_udp_sport, ib_verbs.h; mlx5 and rxe
 * after modify_qp with a GRH flow label): the low 14 bits XOR the high 6, in 0xC000-0xFFFF.
 */
export function flowLabelToSourcePort(flowLabel: number): number {
  const fl = flowLabel & 0xfffff;
  return ((fl & 0x3fff) ^ (fl >>> 14)) | FLOW_SPORT_BASE;
}

/**
 * The flow label the kernel derives for a connection whose AV has none (rdma_calc_flow_label,
 * ib_verbs.h): the product of the two QPNs folded to 20 bits. 48-bit arithmetic, hence BigInt; it
 * runs once per modify_qp, not per packet.
 */
export function calcFlowLabel(lqpn: number, rqpn: number): number {
  let fl = BigInt(lqpn >>> 0) * BigInt(rqpn >>> 0);
  fl ^= fl >> 20n;
  fl ^= fl >> 40n;
  return Number(fl & 0xfffffn);
}

/**
 * A connected (RC/UC) QP's source port once its AV is set, as rxe_modify_qp sets it:
 * rdma_get_udp_sport(flow_label, qp_num, dest_qp_num), i.e. the AV's flow label mapped to a port,
 * or, when the AV has none, the label derived from both QPNs (calcFlowLabel). Seen on the wire:
 * rxe's QP 0x11 talking to QP 0x11 sends from 0xC121 (17 x 17 = 0x121), not from hash_32(0x11).
 * Before that (and for UD, whose AV comes per WR) the QP keeps qpSourcePort.
 */
export function flowSourcePort(qpn: number, flowLabel: number, destQpn: number): number {
  return flowLabelToSourcePort(flowLabel !== 0 ? flowLabel : calcFlowLabel(qpn, destQpn));
}
