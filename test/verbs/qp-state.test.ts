/** QP transition rules: parity with the kernel's qp_state_table and typed errors. */
import t from 'tap';
import { QP_STATES, QP_TYPES, QP_TRANSITIONS, assertQpTransition, checkQpTransition, type QpState } from '../../src/verbs/qp-state.js';
import { InvalidQpAttrError, InvalidQpTransitionError, RdmaError, VerbsError } from '../../src/verbs/errors.js';

t.test("valid transitions are exactly the kernel's", (t) => {
  const valid = new Set<string>();
  for (const from of QP_STATES) for (const to of QP_STATES) if (QP_TRANSITIONS[from]?.[to]?.RC) valid.add(`${from}>${to}`);
  t.same(
    [...valid].sort(),
    [
      'ERR>ERR',
      'ERR>RESET',
      'INIT>ERR',
      'INIT>INIT',
      'INIT>RESET',
      'INIT>RTR',
      'RESET>ERR',
      'RESET>INIT',
      'RESET>RESET',
      'RTR>ERR',
      'RTR>RESET',
      'RTR>RTS',
      'RTS>ERR',
      'RTS>RESET',
      'RTS>RTS',
      'RTS>SQD',
      'SQD>ERR',
      'SQD>RESET',
      'SQD>RTS',
      'SQD>SQD',
      'SQE>ERR',
      'SQE>RESET',
    ],
    'RC: every valid (from, to)',
  );
  t.ok(QP_TRANSITIONS.SQE?.RTS?.UD && QP_TRANSITIONS.SQE?.RTS?.UC, 'SQE -> RTS exists for UD and UC only');
  // Every state can be reset and errored, for every type.
  for (const ty of QP_TYPES)
    for (const s of QP_STATES) {
      t.ok(QP_TRANSITIONS[s]?.RESET?.[ty] && QP_TRANSITIONS[s]?.ERR?.[ty], `${ty} ${s} -> RESET/ERR`);
    }
  t.end();
});

t.test('required and optional attributes, as ibv_rc_pingpong and rdma_cm use them', (t) => {
  // ibv_rc_pingpong: INIT with pkey_index, port, access; RTR with av, mtu, dest_qpn, rq_psn, max_dest_rd_atomic, min_rnr_timer.
  t.same(checkQpTransition('RC', 'RESET', 'INIT', ['pkeyIndex', 'port', 'accessFlags']), { valid: true, missing: [], notAllowed: [] });
  t.same(checkQpTransition('RC', 'INIT', 'RTR', ['av', 'pathMtu', 'destQpn', 'rqPsn', 'maxDestRdAtomic', 'minRnrTimer']).missing, []);
  t.same(checkQpTransition('RC', 'RTR', 'RTS', ['timeout', 'retryCnt', 'rnrRetry', 'sqPsn', 'maxRdAtomic']).missing, []);
  t.same(checkQpTransition('UC', 'INIT', 'RTR', ['av', 'pathMtu', 'destQpn', 'rqPsn']).missing, [], 'UC needs no rd_atomic / rnr timer');
  t.same(checkQpTransition('UD', 'RESET', 'INIT', ['pkeyIndex', 'port']).missing, ['qkey'], 'UD needs a Q_Key');
  t.same(checkQpTransition('UD', 'INIT', 'RTR', []).missing, [], 'UD RTR needs nothing');
  t.same(checkQpTransition('GSI', 'RESET', 'INIT', ['pkeyIndex', 'qkey']).missing, [], 'QP1 has no port attribute to set');
  t.same(checkQpTransition('RC', 'RTR', 'RTS', ['sqPsn']).missing, ['timeout', 'retryCnt', 'rnrRetry', 'maxRdAtomic']);
  t.same(checkQpTransition('RC', 'RESET', 'INIT', ['pkeyIndex', 'port', 'accessFlags', 'qkey']).notAllowed, ['qkey'], 'RC has no Q_Key');
  t.same(checkQpTransition('UD', 'RTS', 'RTS', ['qkey', 'curState']).notAllowed, []);
  t.same(checkQpTransition('RC', 'RTS', 'RTS', ['minRnrTimer']).notAllowed, []);
  t.same(checkQpTransition('UC', 'RTS', 'RTS', ['minRnrTimer']).notAllowed, ['minRnrTimer'], 'UC has no RNR');
  t.same(checkQpTransition('RC', 'RTS', 'SQD', ['enSqdAsyncNotify']).notAllowed, []);
  t.same(checkQpTransition('RC', 'RTS', 'ERR', ['sqPsn']).notAllowed, ['sqPsn'], 'to ERR takes no attributes');
  t.end();
});

t.test('typed errors', (t) => {
  const skip: Array<[QpState, QpState]> = [
    ['RESET', 'RTR'],
    ['INIT', 'RTS'],
    ['RESET', 'RTS'],
    ['RTR', 'SQD'],
    ['ERR', 'RTS'],
    ['RESET', 'SQD'],
  ];
  for (const [from, to] of skip) {
    t.throws(() => assertQpTransition('RC', from, to, []), { code: 'EINVAL', from, to, qpType: 'RC' }, `${from} -> ${to} is not a transition`);
  }
  t.throws(() => assertQpTransition('RC', 'SQE', 'RTS', []), InvalidQpTransitionError, 'RC QPs have no SQE -> RTS');
  let e: unknown;
  try {
    assertQpTransition('RC', 'INIT', 'RTR', ['av', 'pathMtu', 'qkey']);
  } catch (x) {
    e = x;
  }
  t.ok(e instanceof InvalidQpAttrError && e instanceof VerbsError && e instanceof RdmaError, 'class hierarchy');
  const ae = e as InvalidQpAttrError;
  t.equal(ae.code, 'EINVAL');
  t.equal(ae.errno, 22);
  t.equal(ae.op, 'ibv_modify_qp');
  t.same(ae.missing, ['destQpn', 'rqPsn', 'maxDestRdAtomic', 'minRnrTimer']);
  t.same(ae.notAllowed, ['qkey']);
  t.equal(ae.argument, 'destQpn', 'names the first offending argument');
  t.notOk(new Error('x') instanceof RdmaError, 'plain errors are not RdmaErrors');
  t.end();
});
