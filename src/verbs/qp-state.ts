/**
 * QP states and the attribute rules of each transition (IBA 10.3 / 11.2.5.2),
 * as the Linux kernel's qp_state_table (drivers/infiniband/core/verbs.c,
 * ib_modify_qp_is_ok) encodes them for RC, UC, UD and GSI (QP1).
 *
 * With options objects, "which keys are present" is the attribute mask:
 * `checkQpTransition` is a pure function of (type, from, to, keys) that says
 * what is missing and what is not allowed, so a failed modify never mutates.
 */
import { InvalidQpAttrError, InvalidQpTransitionError } from './errors.js';

import type { QpState, QpType } from '../roce/transport/types.js';

// The state and type names are the transport's (it moves QPs to ERR and SQD); re-exported here.
export { QP_STATES, QP_TYPES } from '../roce/transport/types.js';
export type { QpState, QpType } from '../roce/transport/types.js';

/** Attribute names: the verbs' ibv_qp_attr fields, camelCased (IBV_QP_xxx mask bits). */
export const QP_ATTRS = [
  'port',
  'pkeyIndex',
  'qkey',
  'accessFlags',
  'av',
  'pathMtu',
  'destQpn',
  'rqPsn',
  'maxDestRdAtomic',
  'minRnrTimer',
  'sqPsn',
  'timeout',
  'retryCnt',
  'rnrRetry',
  'maxRdAtomic',
  'altPath',
  'pathMigState',
  'curState',
  'enSqdAsyncNotify',
  'flowEntropy',
] as const;
export type QpAttrName = (typeof QP_ATTRS)[number];

interface Rule {
  readonly required: readonly QpAttrName[];
  readonly optional: readonly QpAttrName[];
}
type PerType = Partial<Record<QpType, Rule>>;
type Table = Partial<Record<QpState, Partial<Record<QpState, PerType>>>>;

const r = (required: readonly QpAttrName[], optional: readonly QpAttrName[] = []): Rule => ({ required, optional });
const none: Rule = r([]);
const all = (rule: Rule): PerType => ({ RC: rule, UC: rule, UD: rule, GSI: rule });
/** → RESET and → ERR: always allowed, no attributes (IBA 10.3.1: any state may be reset or errored). */
const toResetErr = { RESET: all(none), ERR: all(none) };

// flowEntropy: MLNX_OFED's IBV_EXP_QP_FLOW_ENTROPY, accepted at RESET -> INIT only (the QP's LAG port and UDP source port)
const INIT_RC: Rule = r(['pkeyIndex', 'port', 'accessFlags'], ['flowEntropy']);
const INIT_UD: Rule = r(['pkeyIndex', 'port', 'qkey'], ['flowEntropy']);
const INIT_GSI: Rule = r(['pkeyIndex', 'qkey']);
const opt = (rule: Rule): Rule => r([], rule.required);
const RTS_OPT = {
  RC: r([], ['curState', 'altPath', 'accessFlags', 'minRnrTimer', 'pathMigState']),
  UC: r([], ['curState', 'altPath', 'accessFlags', 'pathMigState']),
  UD: r([], ['curState', 'qkey']),
  GSI: r([], ['curState', 'qkey']),
};

export const QP_TRANSITIONS: Table = {
  RESET: {
    ...toResetErr,
    INIT: { RC: INIT_RC, UC: INIT_RC, UD: INIT_UD, GSI: INIT_GSI },
  },
  INIT: {
    ...toResetErr,
    INIT: { RC: opt(INIT_RC), UC: opt(INIT_RC), UD: opt(INIT_UD), GSI: opt(INIT_GSI) },
    RTR: {
      RC: r(['av', 'pathMtu', 'destQpn', 'rqPsn', 'maxDestRdAtomic', 'minRnrTimer'], ['altPath', 'accessFlags', 'pkeyIndex']),
      UC: r(['av', 'pathMtu', 'destQpn', 'rqPsn'], ['altPath', 'accessFlags', 'pkeyIndex']),
      UD: r([], ['pkeyIndex', 'qkey']),
      GSI: r([], ['pkeyIndex', 'qkey']),
    },
  },
  RTR: {
    ...toResetErr,
    RTS: {
      RC: r(['timeout', 'retryCnt', 'rnrRetry', 'sqPsn', 'maxRdAtomic'], ['curState', 'altPath', 'accessFlags', 'minRnrTimer', 'pathMigState']),
      UC: r(['sqPsn'], ['curState', 'altPath', 'accessFlags', 'pathMigState']),
      UD: r(['sqPsn'], ['curState', 'qkey']),
      GSI: r(['sqPsn'], ['curState', 'qkey']),
    },
  },
  RTS: {
    ...toResetErr,
    RTS: { RC: RTS_OPT.RC, UC: RTS_OPT.UC, UD: RTS_OPT.UD, GSI: RTS_OPT.GSI },
    SQD: all(r([], ['enSqdAsyncNotify'])),
  },
  SQD: {
    ...toResetErr,
    RTS: { RC: RTS_OPT.RC, UC: RTS_OPT.UC, UD: RTS_OPT.UD, GSI: RTS_OPT.GSI },
    SQD: {
      RC: r(
        [],
        [
          'port',
          'av',
          'timeout',
          'retryCnt',
          'rnrRetry',
          'maxRdAtomic',
          'maxDestRdAtomic',
          'altPath',
          'accessFlags',
          'pkeyIndex',
          'minRnrTimer',
          'pathMigState',
        ],
      ),
      UC: r([], ['av', 'altPath', 'accessFlags', 'pkeyIndex', 'pathMigState']),
      UD: r([], ['pkeyIndex', 'qkey']),
      GSI: r([], ['pkeyIndex', 'qkey']),
    },
  },
  // RC never enters SQE (a send error moves it to ERR), so SQE → RTS has no RC rule.
  SQE: {
    ...toResetErr,
    RTS: { UC: r([], ['curState', 'accessFlags']), UD: r([], ['curState', 'qkey']), GSI: r([], ['curState', 'qkey']) },
  },
  ERR: { ...toResetErr },
};

export interface TransitionCheck {
  valid: boolean;
  missing: QpAttrName[];
  notAllowed: string[];
}

/** Pure check of one modify: the ib_modify_qp_is_ok rules. */
export function checkQpTransition(type: QpType, from: QpState, to: QpState, keys: readonly string[]): TransitionCheck {
  const rule = QP_TRANSITIONS[from]?.[to]?.[type];
  if (!rule) return { valid: false, missing: [], notAllowed: [] };
  const present = new Set(keys);
  const missing = rule.required.filter((a) => !present.has(a));
  const allowed = new Set<string>([...rule.required, ...rule.optional]);
  // cur_state is only meaningful from RTR, RTS, SQD, SQE (ib_modify_qp_is_ok).
  const notAllowed = keys.filter((k) => !allowed.has(k));
  return { valid: true, missing, notAllowed };
}

/** Throws InvalidQpTransitionError / InvalidQpAttrError, as ibv_modify_qp returns EINVAL. */
export function assertQpTransition(type: QpType, from: QpState, to: QpState, keys: readonly string[]): void {
  const c = checkQpTransition(type, from, to, keys);
  if (!c.valid) throw new InvalidQpTransitionError(from, to, type);
  if (c.missing.length || c.notAllowed.length) throw new InvalidQpAttrError(from, to, c.missing, c.notAllowed);
}
