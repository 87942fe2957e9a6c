/**
 * The checks of ibv_create_qp (pd.createQp) and of opening QP1 (device.openGsi), made before
 * anything is allocated; each returns the QP's capabilities with their defaults filled in.
 */
import { VerbsError } from './errors.js';
import { Cq } from './cq.js';
import { Pd, Srq } from './objects.js';
import * as V from './validate.js';
import type { Device } from './device.js';
import type { CreateQpOptions, QpCap } from './qp-attrs.js';

/** What device.openGsi takes. */
export interface GsiOptions {
  sendCq: Cq;
  recvCq: Cq;
  cap?: Partial<QpCap>;
  /** the port this QP1 serves (each port has its own, as each has its own GSI agent in ib_mad); default 1 */
  port?: number;
}

export function checkCreateQp(dev: Device, pd: Pd, o: CreateQpOptions): Required<QpCap> {
  const op = 'ibv_create_qp';
  const a = dev.attr;
  if (!o || (o.type !== 'RC' && o.type !== 'UC' && o.type !== 'UD')) throw new VerbsError('EINVAL', op, `type must be RC, UC or UD`, 'type');
  if (!(o.sendCq instanceof Cq) || o.sendCq.closed || o.sendCq.device !== dev)
    throw new VerbsError('EINVAL', op, 'sendCq must be an open CQ of this device', 'sendCq');
  if (!(o.recvCq instanceof Cq) || o.recvCq.closed || o.recvCq.device !== dev)
    throw new VerbsError('EINVAL', op, 'recvCq must be an open CQ of this device', 'recvCq');
  if (o.srq !== undefined && (!(o.srq instanceof Srq) || o.srq.closed || o.srq.pd.device !== dev))
    throw new VerbsError('EINVAL', op, 'srq must be an open SRQ of this device', 'srq');
  if (o.srq !== undefined && o.srq.pd !== pd) throw new VerbsError('EINVAL', op, 'srq must be of the same PD', 'srq');
  V.optBool(op, 'sigAll', o.sigAll);
  V.obj(op, 'cap', o.cap);
  const c = o.cap;
  const cap: Required<QpCap> = {
    maxSendWr: c.maxSendWr,
    maxRecvWr: o.srq ? 0 : c.maxRecvWr,
    maxSendSge: c.maxSendSge ?? 1,
    maxRecvSge: c.maxRecvSge ?? 1,
    maxInline: c.maxInline ?? 0,
  };
  const chk = (v: number, lo: number, hi: number, name: string): void => {
    if (!Number.isInteger(v) || v < lo || v > hi) throw new VerbsError('EINVAL', op, `cap.${name} = ${v} not in ${lo}..${hi}`, `cap.${name}`);
  };
  chk(cap.maxSendWr, 1, a.maxQpWr, 'maxSendWr');
  if (!o.srq) chk(cap.maxRecvWr, 1, a.maxQpWr, 'maxRecvWr');
  chk(cap.maxSendSge, 1, a.maxSge, 'maxSendSge');
  chk(cap.maxRecvSge, 1, a.maxSge, 'maxRecvSge');
  chk(cap.maxInline, 0, a.maxInline, 'maxInline');
  if (dev.qps.size >= a.maxQp) throw new VerbsError('ENOMEM', op, 'too many QPs', 'qp');
  return cap;
}

export function checkOpenGsi(dev: Device, pd: Pd, o: GsiOptions): Required<QpCap> {
  const op = 'ibv_create_qp';
  if (!(pd instanceof Pd) || pd.closed || pd.device !== dev) V.fail(op, 'pd', 'must be an open PD of this device');
  V.obj(op, 'options', o);
  if (!(o.sendCq instanceof Cq) || o.sendCq.closed || o.sendCq.device !== dev) V.fail(op, 'sendCq', 'must be an open CQ of this device');
  if (!(o.recvCq instanceof Cq) || o.recvCq.closed || o.recvCq.device !== dev) V.fail(op, 'recvCq', 'must be an open CQ of this device');
  if (o.cap !== undefined) {
    V.obj(op, 'cap', o.cap);
    V.optInt(op, 'cap.maxSendWr', o.cap.maxSendWr, 1, dev.attr.maxQpWr);
    V.optInt(op, 'cap.maxRecvWr', o.cap.maxRecvWr, 1, dev.attr.maxQpWr);
  }
  V.optInt(op, 'port', o.port, 1, dev.ports.length);
  if (dev.gsiOn(o.port ?? 1)) throw new VerbsError('EBUSY', 'ibv_create_qp', `QP1 of port ${o.port ?? 1} is already open`, 'qp');
  const cap: Required<QpCap> = { maxSendWr: o.cap?.maxSendWr ?? 256, maxRecvWr: o.cap?.maxRecvWr ?? 256, maxSendSge: 1, maxRecvSge: 1, maxInline: 0 };
  return cap;
}
