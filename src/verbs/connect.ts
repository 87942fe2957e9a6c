/**
 * Connecting a QP from a peer's endpoint: `connectQp` (RESET -> RTS in one call, what rdma_cm
 * does with the CM's data) and `remoteOf` (an RDMA WR's `remote` from a peer's MR endpoint).
 */
import { VerbsError } from './errors.js';
import { accessBits, type Access } from './types.js';
import * as V from './validate.js';
import { Qp } from './qp.js';
import { checkRemoteEndpoint } from './qp-attrs.js';
import type { Gid } from '../roce/gid.js';
import type { Mtu } from '../roce/opcode.js';
import { checkSgidIndex } from './gid-table.js';

/**
 * The `remote` of an RDMA work request from a peer's endpoint JSON: `{ addr: BigInt(ep.addr) + offset,
 * rkey: ep.rkey }`, checked (EINVAL, argument 'remote').
 */
export function remoteOf(ep: { addr: string | bigint; rkey: number }, offset: number | bigint = 0): { addr: bigint; rkey: number } {
  const op = 'remoteOf';
  V.obj(op, 'remote', ep);
  let addr: bigint;
  try {
    addr = BigInt(ep.addr) + BigInt(offset);
  } catch {
    V.fail(op, 'remote', `addr must be a 64-bit address (bigint, decimal or 0x-hex string), got ${String(ep.addr)}`);
  }
  V.u64(op, 'remote', addr);
  V.u32(op, 'remote', ep.rkey);
  return { addr, rkey: ep.rkey };
}

export interface ConnectLocal {
  /** initial send PSN; default: the QP's random one (qp.endpoint().psn) */
  psn?: number;
  accessFlags?: readonly Access[];
  pathMtu?: Mtu;
  timeout?: number;
  retryCnt?: number;
  rnrRetry?: number;
  minRnrTimer?: number;
  maxRdAtomic?: number;
  maxDestRdAtomic?: number;
  sgidIndex?: number;
  /** the port the QP uses (set at RESET -> INIT, as ibv_modify_qp's port_num); default 1 */
  port?: number;
}

/**
 * One-call bring-up of an RC/UC QP from RESET to RTS against a peer's
 * endpoint (rust-ibverbs `handshake`, what rdma_cm does with the CM's data).
 * `remote` is the peer's `qp.endpoint()` (or its JSON). Every argument is
 * checked before the QP leaves RESET.
 */
export function connectQp(qp: Qp, local: ConnectLocal, remote: { qpn: number; psn: number; gid: Gid | string; udpPort?: number }): Qp {
  const op = 'connectQp';
  if (!(qp instanceof Qp)) V.fail(op, 'qp', 'must be a Qp');
  if (qp.type !== 'RC' && qp.type !== 'UC') V.fail(op, 'qp', `connectQp is for RC and UC QPs, not ${qp.type}`);
  V.obj(op, 'local', local);
  checkRemoteEndpoint(op, 'remote', remote, true);
  if (local.psn !== undefined) V.psn(op, 'psn', local.psn);
  if (local.accessFlags !== undefined) {
    V.list(op, 'accessFlags', local.accessFlags);
    accessBits(local.accessFlags, 'accessFlags', op, (c, o, m, arg) => new VerbsError(c, o, m, arg));
  }
  if (local.pathMtu !== undefined) V.mtu(op, 'pathMtu', local.pathMtu);
  V.optInt(op, 'timeout', local.timeout, 0, 31);
  V.optInt(op, 'retryCnt', local.retryCnt, 0, 7);
  V.optInt(op, 'rnrRetry', local.rnrRetry, 0, 7);
  V.optInt(op, 'minRnrTimer', local.minRnrTimer, 0, 31);
  V.optInt(op, 'maxRdAtomic', local.maxRdAtomic, 0, qp.device.attr.maxQpInitRdAtom);
  V.optInt(op, 'maxDestRdAtomic', local.maxDestRdAtomic, 0, qp.device.attr.maxQpRdAtom);
  V.optInt(op, 'port', local.port, 1, qp.device.ports.length);
  checkSgidIndex(op, 'sgidIndex', local.sgidIndex, qp.device.ports[(local.port ?? 1) - 1]!.gids);
  if (qp.state !== 'RESET') V.fail(op, 'qp', `QP ${qp.qpn} is in ${qp.state}, not RESET`);
  qp.toInit({ port: local.port ?? 1, accessFlags: local.accessFlags ?? ['LOCAL_WRITE', 'REMOTE_WRITE', 'REMOTE_READ', 'REMOTE_ATOMIC'] });
  const rtr: Parameters<Qp['toRtr']>[0] = { remote, pathMtu: local.pathMtu ?? 1024, rqPsn: remote.psn };
  if (local.maxDestRdAtomic !== undefined) rtr.maxDestRdAtomic = local.maxDestRdAtomic;
  if (local.minRnrTimer !== undefined) rtr.minRnrTimer = local.minRnrTimer;
  if (local.sgidIndex !== undefined) rtr.sgidIndex = local.sgidIndex;
  qp.toRtr(rtr);
  const rts: Parameters<Qp['toRts']>[0] = { sqPsn: local.psn ?? qp.sqPsn };
  if (local.timeout !== undefined) rts.timeout = local.timeout;
  if (local.retryCnt !== undefined) rts.retryCnt = local.retryCnt;
  if (local.rnrRetry !== undefined) rts.rnrRetry = local.rnrRetry;
  if (local.maxRdAtomic !== undefined) rts.maxRdAtomic = local.maxRdAtomic;
  qp.toRts(rts);
  return qp;
}
