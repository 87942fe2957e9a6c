/**
 * ibv_modify_qp around the QP object (qp.ts): the checks that come before any change (state,
 * transition, attribute values), the attribute sets of the toInit/toRtr/toRts shortcuts, and the
 * address vector and destination a connected QP's AV gives.
 */
import { VerbsError, InvalidQpAttrError } from './errors.js';
import { ROCEV1_PORT } from '../roce/link/link.js';
import { assertQpTransition, QP_STATES, type QpState } from './qp-state.js';
import type { Access } from './types.js';
import type { Qp } from './qp.js';
import type { Port } from './port.js';
import * as V from './validate.js';
import { gidFromString, gidToIpv4Number, type Gid } from '../roce/gid.js';
import { gidToAddress } from './objects.js';
import type { Mtu } from '../roce/opcode.js';
import type { Dest } from '../roce/transport/types.js';
import { checkQpAttrValues, checkRemoteEndpoint, type Av, type QpAttrs } from './qp-attrs.js';

/** An address vector with its defaults filled in and the GID parsed: what a QP keeps (qp.av). */
export type QpAv = Required<Omit<Av, 'dgid'>> & { dgid: Gid };

/**
 * The checks of ibv_modify_qp, all before anything changes: the state the QP moves to, or null
 * when the call changes nothing (no state and no attribute).
 */
export function checkModify(qp: Qp, attrs: QpAttrs): QpState | null {
  V.obj('ibv_modify_qp', 'attrs', attrs);
  V.optOneOf('ibv_modify_qp', 'state', attrs.state, QP_STATES);
  V.optOneOf('ibv_modify_qp', 'curState', attrs.curState, QP_STATES);
  const keys = Object.keys(attrs).filter((k) => (attrs as Record<string, unknown>)[k] !== undefined && k !== 'state');
  const from = attrs.curState ?? qp.state;
  if (attrs.curState !== undefined && attrs.curState !== qp.state) {
    throw new VerbsError('EINVAL', 'ibv_modify_qp', `curState ${attrs.curState} is not the QP's state ${qp.state}`, 'curState');
  }
  const to = attrs.state ?? qp.state;
  if (attrs.state === undefined && keys.length === 0) return null;
  assertQpTransition(qp.type, from, to, keys);
  checkQpAttrValues(attrs, qp.device, qp.port);
  return to;
}

/**
 * The AV a QP keeps: the caller's with rxe's defaults. Without an sgidIndex, `defaultSgid`: the port's RoCE v2
 * GID of its address (device.defaultSgidIndex), not index 0, which holds the default GID as RoCE v1.
 */
export function qpAv(av: Av, defaultSgid: number): QpAv {
  return {
    dgid: typeof av.dgid === 'string' ? gidFromString(av.dgid) : av.dgid,
    sgidIndex: av.sgidIndex ?? defaultSgid,
    hopLimit: av.hopLimit ?? 64,
    trafficClass: av.trafficClass ?? 0,
    flowLabel: av.flowLabel ?? 0,
    sl: av.sl ?? 0,
    udpPort: av.udpPort ?? 4791,
  };
}

/**
 * Where RC/UC packets go: derived from the AV once, at modify(), not per packet; with the
 * generation of the source GID entry now, which each send compares (build.ts finishAndSend).
 */
export function destOf(av: QpAv, port: Port): Dest {
  const addr = gidToAddress(av.dgid);
  const v1 = port.gids.get(av.sgidIndex)?.type === 'RoCE v1';
  if (v1) port.v1?.prime(addr.ip);
  return {
    ip: addr.ip,
    ipNum: addr.family === 4 ? gidToIpv4Number(av.dgid) : 0,
    family: addr.family,
    // RoCE v1 has no UDP: the port's RoCEv1 link sends packets to this port as Ethernet + GRH frames
    port: v1 ? ROCEV1_PORT : av.udpPort,
    bytes: av.dgid,
    tos: av.trafficClass & 0xff,
    sgidIndex: av.sgidIndex,
    sgidGen: port.gidGen[av.sgidIndex] ?? 0,
  };
}

/** qp.toInit's options. */
export interface InitOptions {
  port?: number;
  pkeyIndex?: number;
  accessFlags?: readonly Access[];
  qkey?: number;
  /** the flow's entropy (QpAttrs.flowEntropy): LAG port parity on a bond, and the UDP source port */
  flowEntropy?: number;
}

/** RESET → INIT: UD and GSI QPs take a Q_Key, RC and UC access flags; GSI has no port attribute. */
export function initAttrs(qp: Qp, o: InitOptions): QpAttrs {
  V.obj('ibv_modify_qp', 'options', o);
  const a: QpAttrs = { state: 'INIT', port: o.port ?? 1, pkeyIndex: o.pkeyIndex ?? 0 };
  if (qp.type === 'UD' || qp.type === 'GSI') a.qkey = o.qkey ?? 0;
  else a.accessFlags = o.accessFlags ?? [];
  if (qp.type === 'GSI') delete a.port;
  if (o.flowEntropy !== undefined) a.flowEntropy = o.flowEntropy;
  return a;
}

/** qp.toRtr's options. */
export interface RtrOptions {
  remote?: { qpn: number; psn?: number; gid: Gid | string; udpPort?: number };
  pathMtu?: Mtu;
  rqPsn?: number;
  maxDestRdAtomic?: number;
  minRnrTimer?: number;
  sgidIndex?: number;
  hopLimit?: number;
  trafficClass?: number;
}

/** RESET/INIT → RTR (qp.toRtr): for RC/UC the AV, path MTU, destination QPN and receive PSN from the peer's endpoint. */
export function rtrAttrs(qp: Qp, o: RtrOptions): QpAttrs {
  const op = 'ibv_modify_qp';
  V.obj(op, 'options', o);
  if (qp.type === 'UD' || qp.type === 'GSI') return { state: 'RTR' };
  if (o.remote === undefined) throw new InvalidQpAttrError(qp.state, 'RTR', ['av', 'destQpn'], []);
  checkRemoteEndpoint(op, 'remote', o.remote);
  V.optInt(op, 'sgidIndex', o.sgidIndex, 0, 0xffff);
  V.optInt(op, 'hopLimit', o.hopLimit, 0, 255);
  V.optInt(op, 'trafficClass', o.trafficClass, 0, 255);
  const rqPsn = o.rqPsn ?? o.remote.psn;
  if (rqPsn === undefined) V.fail(op, 'rqPsn', "the peer's initial PSN is required (rqPsn or remote.psn)");
  const av: Av = {
    dgid: o.remote.gid,
    sgidIndex: o.sgidIndex ?? qp.device.defaultSgidIndex(qp.port),
    hopLimit: o.hopLimit ?? 64,
    trafficClass: o.trafficClass ?? 0,
  };
  if (o.remote.udpPort !== undefined) av.udpPort = o.remote.udpPort;
  const a: QpAttrs = { state: 'RTR', av, pathMtu: o.pathMtu ?? 1024, destQpn: o.remote.qpn, rqPsn };
  if (qp.type === 'RC') {
    a.maxDestRdAtomic = o.maxDestRdAtomic ?? 1;
    a.minRnrTimer = o.minRnrTimer ?? 12;
  }
  return a;
}

/** qp.toRts's options. */
export interface RtsOptions {
  sqPsn?: number;
  timeout?: number;
  retryCnt?: number;
  rnrRetry?: number;
  maxRdAtomic?: number;
}

/** RTR → RTS (qp.toRts): `sqPsn` defaults to the QP's random initial PSN, the one endpoint() gave the peer. */
export function rtsAttrs(qp: Qp, o: RtsOptions): QpAttrs {
  V.obj('ibv_modify_qp', 'options', o);
  const a: QpAttrs = { state: 'RTS', sqPsn: o.sqPsn ?? qp.sqPsn };
  if (qp.type === 'RC') {
    a.timeout = o.timeout ?? 14;
    a.retryCnt = o.retryCnt ?? 7;
    a.rnrRetry = o.rnrRetry ?? 7;
    a.maxRdAtomic = o.maxRdAtomic ?? 1;
  }
  return a;
}
