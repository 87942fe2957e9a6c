/**
 * rdma_event_channel: where an rdma_cm id's events go, in the order they happen (librdmacm's
 * rdma_create_event_channel / rdma_get_cm_event over the kernel's per-file event list, ucma.c).
 *
 * Two ways to read it, both seeing every event:
 *  - pull: `await channel.getEvent({ signal, timeoutMs })`, `channel.tryGetEvent()` (a non-blocking
 *    channel: null where librdmacm gives EAGAIN), or `for await (const ev of channel)`; each event is
 *    handed to one reader, oldest first;
 *  - push: `channel.on('event', fn)` and `channel.on('ADDR_RESOLVED', fn)` (one event name per type),
 *    called when the event happens. A listener that throws does not unwind into the CM: its error comes
 *    back on the next tick (verbs/emit.ts).
 *
 * Events are acknowledged when they are read (rdma_ack_cm_event is implicit), and closing an id drops
 * its events still queued (as the kernel's ucma_destroy_id does with ucma_cleanup_events), so an id's
 * close() never waits for its events to be read, and a program that only listens (never pulls) keeps
 * at most the events of its live ids. Closing the channel closes the ids still on it (as closing the
 * rdma_cm file does) and ends every iterator.
 */
import { EventEmitter } from 'node:events';
import { VerbsError } from '../verbs/errors.js';
import { emitGuarded } from '../verbs/emit.js';
import type { Scheduler, TimerHandle } from '../roce/sched.js';
import type { CmId } from './cm-id.js';
import type { ConnInfo } from './conn.js';
import type { Ah } from '../verbs/objects.js';
import { RDMA_CM_EVENT_NAMES, type RdmaCmEventName } from './cm-defs.js';

/** The rdma_cm event types, in librdmacm's enum order (enum rdma_cm_event_type; roce-wire.md h.3): the index is the value (cm-defs.ts). */
export const CM_EVENT_TYPES = RDMA_CM_EVENT_NAMES;
export type CmEventType = RdmaCmEventName;

/**
 * What an event carries besides its type (struct rdma_cm_event's param). `privateData` is the private
 * data the peer sent, with its real length: librdmacm reports the transport's maximum (56 for a REQ, 196
 * for a REP...) padded with zeros, a documented difference. Connection parameters come with the
 * connection work.
 */
export interface CmEventParam {
  /**
   * The peer's private data up to its last non-zero byte: CM messages have fixed-size private data fields
   * and no length, so librdmacm reports the whole field (56 bytes of a REQ after the cma_hdr, 196 of a
   * REP...) zero-padded; trailing zero bytes the peer meant to send are lost here (use rawPrivateData).
   */
  readonly privateData?: Buffer;
  /** the whole private data field, as librdmacm reports it (private_data_len = the field's size) */
  readonly rawPrivateData?: Buffer;
  /** CONNECT_REQUEST, CONNECT_RESPONSE, ESTABLISHED of an RC id: the peer's conn param, seen from this side
   *  (responder resources and initiator depth swapped, as the kernel reports them) */
  readonly conn?: ConnInfo;
  /** ESTABLISHED of a UD id (SIDR_REP received), CONNECT_REQUEST of a UD listener: where to send */
  readonly ud?: UdParam;
  /** MULTICAST_JOIN / MULTICAST_ERROR: the context given to joinMulticast (librdmacm's private_data pointer) */
  readonly context?: unknown;
}

/** struct rdma_ud_param: the peer's QP and Q_Key, the address handle attributes, and an Ah made for them (the id's PD; closed with the id). */
export interface UdParam {
  readonly qpNum: number;
  readonly qkey: number;
  readonly ahAttr: {
    readonly dgid: string;
    readonly sgidIndex: number;
    readonly hopLimit: number;
    readonly trafficClass: number;
    readonly flowLabel: number;
    readonly port: number;
  };
  readonly ah: Ah | null;
}

/** One rdma_cm event (struct rdma_cm_event). */
export interface CmEvent {
  readonly event: CmEventType;
  /** the id the event is about (for CONNECT_REQUEST: the new id) */
  readonly id: CmId;
  /** CONNECT_REQUEST: the listening id it arrived on */
  readonly listenId?: CmId;
  /** 0, or -errno (ADDR_ERROR, ROUTE_ERROR, UNREACHABLE...), or the REJ reason for REJECTED */
  readonly status: number;
  readonly param?: CmEventParam;
}

export interface GetEventOptions {
  /** abort the wait: the promise rejects with an AbortError whose `cause` is the signal's reason */
  signal?: AbortSignal;
  /** give up after this many ms: the promise rejects with a VerbsError ETIMEDOUT naming 'timeoutMs' */
  timeoutMs?: number;
}

export interface EventChannelOptions {
  /** the clock of the channel's timeouts and of its ids' (resolveAddr / resolveRoute); default: real timers, which keep the process alive while armed */
  scheduler?: Scheduler;
}

/** What the channel knows of an id on it: enough to close it with the channel. */
interface Member {
  close(): void;
}

interface Waiter {
  resolve(ev: CmEvent): void;
  reject(e: Error): void;
}

const OP = 'rdma_get_cm_event';

/** A timer on the channel's scheduler, or a plain (ref'd) timeout: a program awaiting an event must not exit under it. */
export interface ChannelTimers {
  set(ms: number, fn: () => void): () => void;
}

export class EventChannel extends EventEmitter {
  readonly #queue: CmEvent[] = [];
  readonly #waiters: Waiter[] = [];
  readonly #members = new Set<Member>();
  readonly #sched: Scheduler | null;
  #closed = false;

  constructor(o: EventChannelOptions = {}) {
    super();
    this.#sched = o.scheduler ?? null;
  }

  get closed(): boolean {
    return this.#closed;
  }
  /** events queued and not read yet */
  get pending(): number {
    return this.#queue.length;
  }

  /** @internal the channel's timers (ids arm their resolution timeouts with them) */
  readonly timers: ChannelTimers = {
    set: (ms, fn) => {
      const s = this.#sched;
      if (s !== null) {
        const h: TimerHandle = s.setTimer(ms, fn);
        return () => s.clearTimer(h);
      }
      const t = setTimeout(fn, Math.max(0, ms));
      return () => clearTimeout(t);
    },
  };

  /**
   * The next event (rdma_get_cm_event), oldest first. Rejects with a VerbsError EBADF when the channel
   * is closed (or closes while waiting), ETIMEDOUT after `timeoutMs`, an AbortError when `signal` aborts.
   */
  getEvent(o: GetEventOptions = {}): Promise<CmEvent> {
    if (typeof o !== 'object' || o === null) return Promise.reject(new VerbsError('EINVAL', OP, 'options must be an object', 'options'));
    const { signal, timeoutMs } = o;
    if (timeoutMs !== undefined && (typeof timeoutMs !== 'number' || !(timeoutMs >= 0) || !Number.isFinite(timeoutMs)))
      return Promise.reject(new VerbsError('EINVAL', OP, `timeoutMs must be a number of ms >= 0, got ${String(timeoutMs)}`, 'timeoutMs'));
    if (signal !== undefined && !(signal instanceof AbortSignal))
      return Promise.reject(new VerbsError('EINVAL', OP, 'signal must be an AbortSignal', 'signal'));
    if (this.#closed) return Promise.reject(closedError());
    const ev = this.#queue.shift();
    if (ev !== undefined) return Promise.resolve(ev);
    if (signal?.aborted) return Promise.reject(abortError(signal));
    return new Promise<CmEvent>((resolve, reject) => {
      let cancelTimer: (() => void) | null = null;
      const done = (): void => {
        const i = this.#waiters.indexOf(w);
        if (i >= 0) this.#waiters.splice(i, 1);
        if (cancelTimer !== null) cancelTimer();
        signal?.removeEventListener('abort', onAbort);
      };
      const w: Waiter = {
        resolve: (e) => {
          done();
          resolve(e);
        },
        reject: (e) => {
          done();
          reject(e);
        },
      };
      const onAbort = (): void => w.reject(abortError(signal!));
      this.#waiters.push(w);
      signal?.addEventListener('abort', onAbort, { once: true });
      if (timeoutMs !== undefined)
        cancelTimer = this.timers.set(timeoutMs, () => w.reject(new VerbsError('ETIMEDOUT', OP, `no event within ${timeoutMs} ms`, 'timeoutMs')));
    });
  }

  /** The next event if one is queued, else null (rdma_get_cm_event on a non-blocking channel gives EAGAIN). */
  tryGetEvent(): CmEvent | null {
    if (this.#closed) throw closedError();
    return this.#queue.shift() ?? null;
  }

  /** Every event in order until the channel closes (the loop then ends; events still queued are dropped). */
  async *[Symbol.asyncIterator](): AsyncGenerator<CmEvent, void, undefined> {
    for (;;) {
      let ev: CmEvent;
      try {
        ev = await this.getEvent();
      } catch (e) {
        if (this.#closed) return;
        throw e;
      }
      yield ev;
    }
  }

  /**
   * rdma_destroy_event_channel: closes the ids still on the channel (the kernel destroys them when the
   * rdma_cm file closes), drops the queued events, ends the iterators and rejects the getEvent() calls
   * waiting (EBADF). Idempotent; never blocks.
   */
  close(): void {
    if (this.#closed) return;
    for (const m of [...this.#members]) {
      try {
        m.close();
      } catch {
        /* an id's close never throws; nothing must stop the rest */
      }
    }
    this.#closed = true;
    this.#members.clear();
    this.#queue.length = 0;
    for (const w of [...this.#waiters]) w.reject(closedError());
  }

  /** @internal an id created on (or moved to) this channel */
  attach(m: Member): void {
    if (this.#closed) throw closedError();
    this.#members.add(m);
  }

  /** @internal an id closed or moved away: off the channel, and its queued events with it (returned, oldest first) */
  detach(m: Member, id: CmId): CmEvent[] {
    this.#members.delete(m);
    const mine: CmEvent[] = [];
    for (let i = 0; i < this.#queue.length;) {
      const ev = this.#queue[i]!;
      if (ev.id === id) {
        mine.push(ev);
        this.#queue.splice(i, 1);
      } else i++;
    }
    return mine;
  }

  /** @internal events moved here with their id (rdma_migrate_id): queued behind what is here, not announced again */
  adopt(events: readonly CmEvent[]): void {
    if (this.#closed) return;
    for (const ev of events) {
      const w = this.#waiters[0];
      if (w !== undefined) w.resolve(ev);
      else this.#queue.push(ev);
    }
  }

  /**
   * @internal an event happened: to the first reader waiting, else queued; and to the listeners of
   * 'event' and of its type. Dropped once the channel is closed.
   */
  deliver(ev: CmEvent): void {
    if (this.#closed) return;
    const w = this.#waiters[0];
    if (w !== undefined) w.resolve(ev);
    else this.#queue.push(ev);
    emitGuarded(this, 'event', ev);
    emitGuarded(this, ev.event, ev);
  }
}

function closedError(): VerbsError {
  return new VerbsError('EBADF', OP, 'the event channel is closed', 'channel');
}

/** What Node's own APIs reject with on abort (events.once, timers/promises): an AbortError carrying the signal's reason. */
function abortError(signal: AbortSignal): Error {
  const e = new Error(`${OP}: aborted`, { cause: signal.reason as unknown });
  e.name = 'AbortError';
  (e as Error & { code: string }).code = 'ABORT_ERR';
  return e;
}

/** rdma_create_event_channel. */
export function createEventChannel(o: EventChannelOptions = {}): EventChannel {
  if (typeof o !== 'object' || o === null) throw new VerbsError('EINVAL', 'rdma_create_event_channel', 'options must be an object', 'options');
  if (o.scheduler !== undefined && (typeof o.scheduler !== 'object' || o.scheduler === null))
    throw new VerbsError('EINVAL', 'rdma_create_event_channel', 'scheduler must be a Scheduler', 'scheduler');
  return new EventChannel(o);
}
