/**
 * DEVICE_REMOVAL fan-out (issue 13 hardening, item 1): the CM keeps one 'close' listener per device
 * (devices.ts watchDeviceRemoval), not one per rdma_cm id, so 50 ids on one Device (passive ones
 * made for connection requests too) raise no MaxListenersExceededWarning, every one of them still
 * hears DEVICE_REMOVAL, and the device's listener count is back to what it was once the ids are gone.
 *
 * In-memory network with a fake clock (conn-helpers.ts): nothing is sent on a real network.
 */
import t from 'tap';
import { connNet, listenerId } from './conn-helpers.js';
import { createId, type CmId } from '../../src/cm/cm-id.js';
import type { CmEvent } from '../../src/cm/event-channel.js';

const IDS = 50;
const PORT = 7471;

/** Warnings Node emits while `f` runs (process 'warning' comes on a later tick, so wait one out). */
async function warningsDuring(f: () => Promise<void>): Promise<Error[]> {
  const seen: Error[] = [];
  const on = (w: Error): void => void seen.push(w);
  process.on('warning', on);
  try {
    await f();
    await new Promise((r) => setImmediate(r));
  } finally {
    process.off('warning', on);
  }
  return seen;
}

t.test(`${IDS} resolved ids on one device: no listener-leak warning, one close listener, back to the baseline after destroy`, async (t) => {
  const n = await connNet();
  const base = n.a.listenerCount('close');
  const ids: CmId[] = [];
  const warnings = await warningsDuring(async () => {
    for (let i = 0; i < IDS; i++) {
      const id = createId(n.chA, { device: n.a });
      ids.push(id);
      await id.resolveAddr({ dst: { address: n.ipB, port: PORT }, timeoutMs: 1000 });
    }
  });
  t.same(
    warnings.map((w) => w.name),
    [],
    'no MaxListenersExceededWarning',
  );
  t.equal(n.a.listenerCount('close'), base + 1, 'one listener for all the ids');
  t.equal(n.events(n.chA).filter((e) => e.event === 'ADDR_RESOLVED').length, IDS);
  for (const id of ids) id.close();
  t.equal(n.a.listenerCount('close'), base, 'the listener went with the last id');
  await n.close();
});

t.test(`${IDS} ids on a device that closes: each hears DEVICE_REMOVAL once, no warning, no listener left`, async (t) => {
  const n = await connNet();
  const base = n.a.listenerCount('close');
  const ids: CmId[] = [];
  let removals: CmEvent[] = [];
  const warnings = await warningsDuring(async () => {
    for (let i = 0; i < IDS; i++) {
      const id = createId(n.chA, { device: n.a });
      ids.push(id);
      await id.resolveAddr({ dst: { address: n.ipB, port: PORT }, timeoutMs: 1000 });
    }
    n.events(n.chA);
    await n.a.close();
    removals = n.events(n.chA);
  });
  t.same(
    warnings.map((w) => w.name),
    [],
  );
  t.equal(removals.length, IDS);
  t.ok(
    removals.every((e) => e.event === 'DEVICE_REMOVAL' && e.status === 0),
    'all DEVICE_REMOVAL',
  );
  t.same(new Set(removals.map((e) => e.id)), new Set(ids), 'every id, once');
  t.ok(
    ids.every((id) => id.state === 'DEVICE_REMOVAL'),
    'every id is in DEVICE_REMOVAL',
  );
  for (const id of ids) id.close();
  t.equal(n.a.listenerCount('close'), base);
  n.chA.close();
  n.chB.close();
  await n.b.close();
});

t.test(`${IDS} connection requests on one listener's device (passive ids): no warning, all removed with the device`, async (t) => {
  const n = await connNet();
  const base = n.b.listenerCount('close');
  const active: CmId[] = [];
  let passive: CmId[] = [];
  let l: CmId | null = null;
  const warnings = await warningsDuring(async () => {
    l = await listenerId(n, PORT);
    for (let i = 0; i < IDS; i++) {
      const id = createId(n.chA, { device: n.a });
      active.push(id);
      await id.resolveAddr({ dst: { address: n.ipB, port: PORT }, timeoutMs: 1000 });
      await id.resolveRoute({ timeoutMs: 1000 });
      id.createQp(null, { cap: { maxSendWr: 1, maxRecvWr: 1 } });
      void id.connect({}).catch(() => {
        /* the peer's device goes away before it answers */
      });
    }
    n.flush();
    passive = n
      .events(n.chB)
      .filter((e) => e.event === 'CONNECT_REQUEST')
      .map((e) => e.id);
  });
  t.same(
    warnings.map((w) => w.name),
    [],
  );
  t.equal(passive.length, IDS, 'a passive id per request');
  t.equal(n.b.listenerCount('close'), base + 1, 'the listener and its 50 request ids: one close listener');
  await n.b.close();
  const removed = n.events(n.chB).filter((e) => e.event === 'DEVICE_REMOVAL');
  t.same(new Set(removed.map((e) => e.id)), new Set([l!, ...passive]), 'the listener and every request id');
  t.equal(n.b.listenerCount('close'), base);
  for (const id of [...passive, l!, ...active]) id.close();
  await n.close().catch(() => {
    /* b is closed already */
  });
});
