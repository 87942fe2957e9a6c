/**
 * The attribute types of a QP (ibv_qp_cap, ibv_qp_init_attr, ibv_ah_attr, ibv_qp_attr), what
 * qp.endpoint() hands a peer, and the shape checks of an address vector and of a peer's endpoint.
 */
import { accessBits, type Access } from './types.js';
import { VerbsError } from './errors.js';
import type { Device } from './device.js';
import type { QpState } from './qp-state.js';
import type { Srq } from './objects.js';
import type { Cq } from './cq.js';
import * as V from './validate.js';
import type { Gid } from '../roce/gid.js';
import { checkSgidIndex, type GidTable } from './gid-table.js';
import type { Mtu } from '../roce/opcode.js';

export interface QpCap {
  maxSendWr: number;
  maxRecvWr: number;
  maxSendSge?: number;
  maxRecvSge?: number;
  maxInline?: number;
}
export interface CreateQpOptions {
  type: 'RC' | 'UC' | 'UD';
  sendCq: Cq;
  recvCq: Cq;
  srq?: Srq;
  /** every send WR generates a completion (sq_sig_all) */
  sigAll?: boolean;
  cap: QpCap;
}

/** The address vector of a connected QP (ibv_ah_attr with is_global). */
export interface Av {
  dgid: Gid | string;
  sgidIndex?: number;
  hopLimit?: number;
  trafficClass?: number;
  flowLabel?: number;
  sl?: number;
  /** destination UDP port (softroce extension; RoCEv2 is 4791) */
  udpPort?: number;
}

/** ibv_qp_attr: a key that is present is a bit in the attribute mask. */
export interface QpAttrs {
  state?: QpState;
  curState?: QpState;
  port?: number;
  pkeyIndex?: number;
  qkey?: number;
  accessFlags?: readonly Access[];
  av?: Av;
  pathMtu?: Mtu;
  destQpn?: number;
  rqPsn?: number;
  sqPsn?: number;
  maxDestRdAtomic?: number;
  minRnrTimer?: number;
  timeout?: number;
  retryCnt?: number;
  rnrRetry?: number;
  maxRdAtomic?: number;
  enSqdAsyncNotify?: boolean;
  /**
   * RESET -> INIT only (RC, UC, UD): the flow's entropy, as MLNX_OFED's ibv_exp_modify_qp takes it
   * (IBV_EXP_QP_FLOW_ENTROPY). On a bonded device its parity picks the LAG port (even: 1, odd: 2, as
   * mlx4); everywhere it is the QP's UDP source port (flow.ts) unless the AV carries a flow label.
   */
  flowEntropy?: number;
}

/** What `qp.endpoint()` returns: the JSON an application sends its peer (ibv_rc_pingpong's LID:QPN:PSN:GID). */
export interface QpEndpoint {
  qpn: number;
  psn: number;
  gid: string;
}
/** With `qp.endpoint({ mr })`: a region the peer may RDMA to; `addr` is the 64-bit VA as a 0x-hex string. */
export interface MrEndpoint {
  addr: string;
  rkey: number;
}

export function checkRemoteEndpoint(op: string, arg: string, x: unknown, needPsn = false): void {
  V.obj(op, arg, x);
  const r = x as Record<string, unknown>;
  V.int(op, arg, r['qpn'], 1, 0xfffffe);
  if (needPsn || r['psn'] !== undefined) V.psn(op, arg, r['psn']);
  V.gid(op, arg, r['gid']);
  V.optInt(op, arg, r['udpPort'], 1, 65535);
}

function checkAv(op: string, arg: string, x: unknown, gids: GidTable): void {
  V.obj(op, arg, x);
  const av = x as Record<string, unknown>;
  V.gid(op, arg, av['dgid']);
  checkSgidIndex(op, arg, av['sgidIndex'], gids);
  V.optInt(op, arg, av['hopLimit'], 0, 255);
  V.optInt(op, arg, av['trafficClass'], 0, 255);
  V.optInt(op, arg, av['flowLabel'], 0, 0xfffff);
  V.optInt(op, arg, av['sl'], 0, 15);
  V.optInt(op, arg, av['udpPort'], 1, 65535);
}

/** Value checks (rxe_qp_chk_attr, plus the types a JS caller can get wrong): all before any change. */
export function checkQpAttrValues(a: QpAttrs, dev: Device, curPort: number): void {
  const op = 'ibv_modify_qp';
  const bad = (arg: string, msg: string): never => {
    throw new VerbsError('EINVAL', op, msg, arg);
  };
  V.optInt(op, 'port', a.port, 1, dev.ports.length);
  if (a.pkeyIndex !== undefined) V.int(op, 'pkeyIndex', a.pkeyIndex, 0, 0); // the P_Key table has one entry
  if (a.qkey !== undefined) V.u32(op, 'qkey', a.qkey);
  if (a.pathMtu !== undefined) {
    V.mtu(op, 'pathMtu', a.pathMtu);
    const active = dev.ports[(a.port ?? curPort) - 1]!.activeMtu;
    if (a.pathMtu > active) bad('pathMtu', `pathMtu ${a.pathMtu} > port active_mtu ${active}`);
  }
  if (a.rqPsn !== undefined) V.psn(op, 'rqPsn', a.rqPsn);
  if (a.sqPsn !== undefined) V.psn(op, 'sqPsn', a.sqPsn);
  V.optInt(op, 'destQpn', a.destQpn, 1, 0xfffffe);
  V.optInt(op, 'maxRdAtomic', a.maxRdAtomic, 0, dev.attr.maxQpInitRdAtom);
  V.optInt(op, 'maxDestRdAtomic', a.maxDestRdAtomic, 0, dev.attr.maxQpRdAtom);
  V.optInt(op, 'minRnrTimer', a.minRnrTimer, 0, 31); // a 5-bit code (IBA 9.7.5.2.8)
  V.optInt(op, 'timeout', a.timeout, 0, 31); // 4.096 us * 2^timeout, a 5-bit field
  V.optInt(op, 'retryCnt', a.retryCnt, 0, 7);
  V.optInt(op, 'rnrRetry', a.rnrRetry, 0, 7);
  V.optBool(op, 'enSqdAsyncNotify', a.enSqdAsyncNotify);
  if (a.flowEntropy !== undefined) V.u32(op, 'flowEntropy', a.flowEntropy);
  if (a.accessFlags !== undefined) {
    V.list(op, 'accessFlags', a.accessFlags);
    accessBits(a.accessFlags, 'accessFlags', op, (c, o, m, arg) => new VerbsError(c, o, m, arg));
  }
  if (a.av !== undefined) checkAv(op, 'av', a.av, dev.ports[(a.port ?? curPort) - 1]!.gids);
}
