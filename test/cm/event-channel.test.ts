/**
 * rdma_event_channel semantics (issue 13 item 1): events in order, to the pull side (getEvent, the
 * async iterator) and the push side ('event' and one name per type) alike; getEvent's timeout and
 * AbortSignal; close() ends iterators and closes the ids on the channel; an id's close drops its
 * queued events; rdma_migrate_id moves them. No network: events are delivered by hand here
 * (deliver is what the ids call); the ids' own events are tested in resolve.test.ts.
 */
import t from 'tap';
import { createEventChannel, CM_EVENT_TYPES, type CmEvent, type CmEventType } from '../../src/cm/event-channel.js';
import { createId, type CmId } from '../../src/cm/cm-id.js';
import { FakeScheduler } from '../../src/roce/sched.js';

const ev = (event: CmEventType, id: CmId, status = 0): CmEvent => ({ event, id, status });

t.test('the event types are librdmacm enum rdma_cm_event_type, in order', (t) => {
  t.equal(CM_EVENT_TYPES.length, 18);
  t.equal(CM_EVENT_TYPES.indexOf('ADDR_RESOLVED'), 0);
  t.equal(CM_EVENT_TYPES.indexOf('ESTABLISHED'), 9);
  t.equal(CM_EVENT_TYPES.indexOf('DEVICE_REMOVAL'), 11);
  t.equal(CM_EVENT_TYPES.indexOf('TIMEWAIT_EXIT'), 15);
  t.equal(CM_EVENT_TYPES.indexOf('ADDRINFO_ERROR'), 17);
  t.end();
});

t.test('order: getEvent, the emitter and the iterator see the same events in the order they happened', async (t) => {
  const ch = createEventChannel();
  const id = createId(ch, { ps: 'TCP' });
  const pushed: string[] = [];
  const named: CmEvent[] = [];
  ch.on('event', (e: CmEvent) => pushed.push(e.event));
  ch.on('ROUTE_RESOLVED', (e: CmEvent) => named.push(e));
  const sent = [ev('ADDR_RESOLVED', id), ev('ROUTE_RESOLVED', id), ev('ADDR_ERROR', id, -110), ev('ROUTE_RESOLVED', id)];
  for (const e of sent) ch.deliver(e);
  t.same(pushed, ['ADDR_RESOLVED', 'ROUTE_RESOLVED', 'ADDR_ERROR', 'ROUTE_RESOLVED'], "'event' hears every event at once, in order");
  t.same(named, [sent[1], sent[3]], "'ROUTE_RESOLVED' hears only its type, the same objects");
  t.equal(ch.pending, 4);
  t.equal(await ch.getEvent(), sent[0]);
  t.equal(ch.tryGetEvent(), sent[1]);
  const rest: CmEvent[] = [];
  for await (const e of ch) {
    rest.push(e);
    if (rest.length === 2) break;
  }
  t.same(rest, [sent[2], sent[3]], 'the iterator goes on from where getEvent stopped');
  t.equal(ch.tryGetEvent(), null, 'empty: null (EAGAIN on a non-blocking channel)');
  ch.close();
});

t.test('a getEvent waiting gets the next event; two waiting get one each, in order', async (t) => {
  const ch = createEventChannel();
  const id = createId(ch);
  const p1 = ch.getEvent();
  const p2 = ch.getEvent();
  const a = ev('ADDR_RESOLVED', id),
    b = ev('ROUTE_RESOLVED', id);
  ch.deliver(a);
  ch.deliver(b);
  t.equal(await p1, a);
  t.equal(await p2, b);
  t.equal(ch.pending, 0, 'handed to readers, not queued as well');
  ch.close();
});

t.test('getEvent timeout: ETIMEDOUT naming timeoutMs, on the channel clock', async (t) => {
  const fake = new FakeScheduler();
  const ch = createEventChannel({ scheduler: fake });
  const id = createId(ch);
  let settled: unknown = null;
  const p = ch.getEvent({ timeoutMs: 50 }).then(
    () => 'resolved',
    (e: unknown) => e,
  );
  void p.then((x) => (settled = x));
  fake.advance(49);
  await Promise.resolve();
  t.equal(settled, null, 'not before 50 ms');
  fake.advance(1);
  const e = await p;
  t.match(e, { name: 'VerbsError', code: 'ETIMEDOUT', op: 'rdma_get_cm_event', argument: 'timeoutMs' });
  // A timed-out wait takes nothing: the next event is queued for the next reader.
  const a = ev('ADDR_RESOLVED', id);
  ch.deliver(a);
  t.equal(ch.pending, 1);
  t.equal(await ch.getEvent({ timeoutMs: 50 }), a, 'a queued event comes at once, timer or not');
  t.equal(fake.pendingTimers(), 0, 'no timer left behind');
  ch.close();
});

t.test('getEvent timeout with real timers', async (t) => {
  const ch = createEventChannel();
  const t0 = performance.now();
  await t.rejects(ch.getEvent({ timeoutMs: 30 }), { code: 'ETIMEDOUT' });
  t.ok(performance.now() - t0 >= 25, 'waited about 30 ms');
  ch.close();
});

t.test('getEvent abort: an AbortError carrying the reason; the event that comes after is not lost', async (t) => {
  const ch = createEventChannel();
  const id = createId(ch);
  const ac = new AbortController();
  const p = ch.getEvent({ signal: ac.signal, timeoutMs: 10_000 });
  ac.abort(new Error('user gave up'));
  const e = (await p.catch((x: unknown) => x)) as Error & { code: string };
  t.equal(e.name, 'AbortError');
  t.equal(e.code, 'ABORT_ERR');
  t.match(e.cause, { message: 'user gave up' });
  await t.rejects(ch.getEvent({ signal: ac.signal }), { name: 'AbortError' }, 'an aborted signal rejects at once');
  const a = ev('ADDR_RESOLVED', id);
  ch.deliver(a);
  t.equal(await ch.getEvent(), a, 'the aborted wait did not take it');
  await t.rejects(ch.getEvent({ timeoutMs: -1 }), { code: 'EINVAL', argument: 'timeoutMs' });
  await t.rejects(ch.getEvent({ signal: {} as AbortSignal }), { code: 'EINVAL', argument: 'signal' });
  ch.close();
});

t.test('close(): ends the iterator, rejects waiting getEvent (EBADF), drops queued events, closes the ids on it', async (t) => {
  const ch = createEventChannel();
  const id = createId(ch);
  const other = createEventChannel();
  const elsewhere = createId(other);
  const seen: string[] = [];
  const loop = (async () => {
    for await (const e of ch) seen.push(e.event);
    return 'ended';
  })();
  ch.deliver(ev('ADDR_RESOLVED', id));
  await new Promise((r) => setImmediate(r));
  const waiting = ch.getEvent();
  ch.close();
  t.equal(await loop, 'ended', 'the for-await loop ends');
  t.same(seen, ['ADDR_RESOLVED']);
  await t.rejects(waiting, { code: 'EBADF', argument: 'channel' });
  await t.rejects(ch.getEvent(), { code: 'EBADF' });
  t.throws(() => ch.tryGetEvent(), { code: 'EBADF' });
  t.equal(id.state, 'DESTROYING', 'the id on the channel is closed with it');
  t.equal(elsewhere.state, 'IDLE', 'an id on another channel is not');
  t.throws(() => createId(ch), { code: 'EBADF', argument: 'channel' });
  ch.deliver(ev('ADDR_RESOLVED', id));
  t.equal(ch.pending, 0, 'nothing is queued on a closed channel');
  ch.close(); // idempotent
  other.close();
});

t.test("an id's close drops its queued events, not the others'", async (t) => {
  const ch = createEventChannel();
  const a = createId(ch),
    b = createId(ch);
  ch.deliver(ev('ADDR_RESOLVED', a));
  ch.deliver(ev('ADDR_RESOLVED', b));
  ch.deliver(ev('ROUTE_RESOLVED', a));
  a.close();
  t.equal(ch.pending, 1);
  t.equal((await ch.getEvent()).id, b);
  ch.close();
});

t.test('migrate (rdma_migrate_id): the id and its unread events move, in order, behind what is there', async (t) => {
  const from = createEventChannel(),
    to = createEventChannel();
  const a = createId(from),
    b = createId(from),
    c = createId(to);
  const e1 = ev('ADDR_RESOLVED', a),
    e2 = ev('ADDR_RESOLVED', b),
    e3 = ev('ROUTE_RESOLVED', a),
    e0 = ev('ADDR_RESOLVED', c);
  from.deliver(e1);
  from.deliver(e2);
  from.deliver(e3);
  to.deliver(e0);
  a.migrate(to);
  t.equal(a.channel, to);
  t.equal(from.pending, 1);
  t.equal(await to.getEvent(), e0);
  t.equal(await to.getEvent(), e1);
  t.equal(await to.getEvent(), e3);
  from.close();
  t.equal(a.state, 'IDLE', 'closing the old channel leaves a migrated id alone');
  t.equal(b.state, 'DESTROYING');
  t.throws(() => a.migrate(from), { code: 'EBADF', argument: 'channel' });
  to.close();
  t.equal(a.state, 'DESTROYING');
});

t.test("a listener that throws does not stop delivery: its error comes back on the next tick as the channel's 'error'", async (t) => {
  const ch = createEventChannel();
  const id = createId(ch);
  const errors: unknown[] = [];
  ch.on('error', (e) => errors.push(e));
  ch.on('event', () => {
    throw new Error('handler bug');
  });
  const a = ev('ADDR_RESOLVED', id);
  ch.deliver(a);
  t.equal(await ch.getEvent(), a, 'still queued for the pull side');
  await new Promise((r) => process.nextTick(r));
  t.match(errors, [{ message: 'handler bug' }]);
  ch.close();
});
