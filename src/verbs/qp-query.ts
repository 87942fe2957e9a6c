/**
 * What a QP reports about itself: ibv_query_qp's attributes, and the endpoint an application
 * hands its peer out of band (the pingpong LID:QPN:PSN:GID message, as JSON).
 */
import { ACCESS, type Access } from './types.js';
import type { QpState, QpType } from './qp-state.js';
import type { Qp } from './qp.js';
import { Mr } from './mr.js';
import * as V from './validate.js';
import { gidToString } from '../roce/gid.js';
import type { MrEndpoint, QpAttrs, QpCap, QpEndpoint } from './qp-attrs.js';
import { checkSgidIndex } from './gid-table.js';

/** What qp.query() returns. */
export type QpInfo = Readonly<
  Omit<QpAttrs, 'accessFlags' | 'av'> & { state: QpState; accessFlags: Access[]; av: Qp['av']; qpn: number; type: QpType; cap: Required<QpCap> }
>;

/** ibv_query_qp: the attributes, and the PSNs where the requester and responder are now. */
export function queryQp(qp: Qp): QpInfo {
  const flags = (Object.keys(ACCESS) as Access[]).filter((k) => qp.accessFlags & ACCESS[k]);
  return {
    state: qp.state,
    qpn: qp.qpn,
    type: qp.type,
    cap: { ...qp.cap },
    port: qp.port,
    pkeyIndex: qp.pkeyIndex,
    qkey: qp.qkey,
    accessFlags: flags,
    av: qp.av,
    pathMtu: qp.pathMtu,
    destQpn: qp.destQpn,
    rqPsn: qp.resp.psn,
    sqPsn: qp.req.psn,
    maxDestRdAtomic: qp.maxDestRdAtomic,
    minRnrTimer: qp.minRnrTimer,
    timeout: qp.timeout,
    retryCnt: qp.retryCnt,
    rnrRetry: qp.rnrRetry,
    maxRdAtomic: qp.maxRdAtomic,
    enSqdAsyncNotify: qp.sqDrainNotify,
  };
}

/** qp.endpoint(): the QP's number, initial send PSN and GID as text; with `mr`, the region's address and R_Key. */
export function qpEndpoint(qp: Qp, o: { mr?: Mr; sgidIndex?: number; port?: number }): QpEndpoint & Partial<MrEndpoint> {
  const op = 'endpoint';
  V.obj(op, 'options', o);
  // `port`: the port the QP will be connected on (connectQp({ port })) while it is still in RESET.
  V.optInt(op, 'port', o.port, 1, qp.device.ports.length);
  const port = o.port ?? qp.port;
  const gids = qp.device.ports[port - 1]!.gids;
  checkSgidIndex(op, 'sgidIndex', o.sgidIndex, gids);
  const ep: QpEndpoint & Partial<MrEndpoint> = {
    qpn: qp.qpn,
    psn: qp.sqPsn,
    gid: gidToString(gids.get(o.sgidIndex ?? qp.device.defaultSgidIndex(port))!.gid),
  };
  if (o.mr !== undefined) {
    if (!(o.mr instanceof Mr) || o.mr.closed) V.fail(op, 'mr', 'must be a registered, open MR');
    ep.addr = '0x' + o.mr.addr.toString(16);
    ep.rkey = o.mr.rkey;
  }
  return ep;
}
