/**
 * The rdma_cm id's state table (cm-states.ts) against the kernel's cma.c: invariants of the table, and
 * the rules of rdma_set_reuseaddr / rdma_set_afonly, so a row changed by later work (connect, listen)
 * cannot silently break them.
 */
import t from 'tap';
import { AFONLY_FROM, CALLS, CMA_STATES, EVENT_MOVES, callAllowed, reuseAddrAllowed, type CmaState, type CmCall } from '../../src/cm/cm-states.js';

t.test('the states are enum rdma_cm_state, in order', (t) => {
  t.same(CMA_STATES, [
    'IDLE',
    'ADDR_QUERY',
    'ADDR_RESOLVED',
    'ROUTE_QUERY',
    'ROUTE_RESOLVED',
    'CONNECT',
    'DISCONNECT',
    'ADDR_BOUND',
    'LISTEN',
    'DEVICE_REMOVAL',
    'DESTROYING',
    'ESTABLISHED',
  ]);
  t.end();
});

t.test('every row names real states; nothing is allowed on a DESTROYING id; each op is a librdmacm call', (t) => {
  for (const [call, row] of Object.entries(CALLS)) {
    for (const s of row.from) t.ok(CMA_STATES.includes(s), `${call}: ${s}`);
    if (row.to !== null) t.ok(CMA_STATES.includes(row.to), `${call} -> ${row.to}`);
    t.notOk(callAllowed(call as CmCall, 'DESTROYING'), `${call} refused on a destroyed id`);
    t.match(row.op, /^rdma_/, `${call} reports as ${row.op}`);
  }
  t.end();
});

t.test('the kernel transitions: bind IDLE→ADDR_BOUND, resolve_addr from IDLE/ADDR_BOUND, resolve_route from ADDR_RESOLVED only', (t) => {
  const allowed = (c: CmCall): CmaState[] => CMA_STATES.filter((s) => callAllowed(c, s));
  t.same(allowed('bind'), ['IDLE']);
  t.same(allowed('resolveAddr'), ['IDLE', 'ADDR_BOUND']);
  t.same(allowed('resolveRoute'), ['ADDR_RESOLVED']);
  t.equal(CALLS.resolveAddr.to, 'ADDR_QUERY');
  t.equal(CALLS.resolveRoute.to, 'ROUTE_QUERY');
  t.notOk(callAllowed('setOption', 'DEVICE_REMOVAL'), 'a removed id takes no options');
  t.ok(callAllowed('migrate', 'DEVICE_REMOVAL'), 'but may move to another channel');
  t.end();
});

t.test('events move an id out of the state its call left it in: success forward, error back to where the call started', (t) => {
  t.equal(EVENT_MOVES.ADDR_RESOLVED.from, CALLS.resolveAddr.to);
  t.equal(EVENT_MOVES.ADDR_ERROR.from, CALLS.resolveAddr.to);
  t.equal(EVENT_MOVES.ADDR_ERROR.to, 'ADDR_BOUND', 'addr_handler: back to ADDR_BOUND, so the caller may retry');
  t.equal(EVENT_MOVES.ROUTE_RESOLVED.from, CALLS.resolveRoute.to);
  t.equal(EVENT_MOVES.ROUTE_ERROR.to, 'ADDR_RESOLVED');
  for (const m of Object.values(EVENT_MOVES)) t.ok(callAllowed('setOption', m.to), `${m.to} is a live state`);
  t.end();
});

t.test('REUSEADDR: on in any state but LISTEN (and DESTROYING), off only in IDLE; AFONLY in IDLE and ADDR_BOUND', (t) => {
  for (const s of CMA_STATES) {
    t.equal(reuseAddrAllowed(s, true), s !== 'LISTEN' && s !== 'DESTROYING', `reuse on in ${s}`);
    t.equal(reuseAddrAllowed(s, false), s === 'IDLE', `reuse off in ${s}`);
  }
  t.same(AFONLY_FROM, ['IDLE', 'ADDR_BOUND']);
  t.end();
});
