/**
 * Completion queue (IBA 11.4.2). A fixed ring of preallocated entries; poll()
 * copies into the caller's preallocated Wc objects (ibv_poll_cq), so the hot
 * path allocates nothing. Notification follows the completion-channel model:
 * reqNotify() arms once, the next completion (or the next solicited/error one
 * with solicitedOnly) fires one 'notify' event and disarms (ibv_req_notify_cq
 * + ibv_get_cq_event). Overflow is reported as the CQ_ERR async event.
 */
import { EventEmitter, on } from 'node:events';
import { Wc } from './types.js';
import { VerbsError } from './errors.js';
import * as V from './validate.js';
import type { Device } from './device.js';
import { emitGuarded } from './emit.js';
import type { CompletionSink } from '../roce/transport/types.js';
import { busyPollFallback, MAX_BUSY_POLL_US } from './busy-poll.js';

const ARM_NONE = 0,
  ARM_ANY = 1,
  ARM_SOLICITED = 2;

function copyWc(d: Wc, s: Wc): void {
  d.wrId = s.wrId;
  d.status = s.status;
  d.opcode = s.opcode;
  d.byteLen = s.byteLen;
  d.qpn = s.qpn;
  d.srcQp = s.srcQp;
  d.imm = s.imm;
  d.withImm = s.withImm;
  d.invalidatedRkey = s.invalidatedRkey;
  d.withInv = s.withInv;
  d.grh = s.grh;
  d.solicited = s.solicited;
  d.pkeyIndex = s.pkeyIndex;
  d.vendorErr = s.vendorErr;
}

export class Cq extends EventEmitter implements CompletionSink {
  readonly device: Device;
  readonly depth: number;
  private readonly ring: Wc[];
  private head = 0;
  private count = 0;
  private armed = ARM_NONE;
  #users = 0;
  #closed = false;
  #overflowed = false;

  /**
   * µs that poll() spins on the device's receive sockets while the CQ is empty (createCq's
   * busyPollUs; 0: poll() returns at once, as ibv_poll_cq). Settable (0..MAX_BUSY_POLL_US); it
   * stays 0 on a device that cannot busy-poll (Device.canBusyPoll), reported once as a warning.
   */
  get busyPollUs(): number {
    return this.#busyPollUs;
  }
  set busyPollUs(us: number) {
    V.int('softroce_cq_busy_poll', 'busyPollUs', us, 0, MAX_BUSY_POLL_US);
    if (us > 0 && !this.device.canBusyPoll) {
      busyPollFallback(this.device.name, this.device.backendName);
      us = 0;
    }
    this.#busyPollUs = us;
  }
  #busyPollUs: number;

  constructor(device: Device, depth: number, busyPollUs = 0) {
    super();
    this.device = device;
    this.depth = depth;
    this.#busyPollUs = busyPollUs;
    this.ring = Array.from({ length: depth }, () => new Wc());
  }

  /** QPs using this CQ (close() is EBUSY while any) */
  get users(): number {
    return this.#users;
  }
  /** @internal device.ts: a QP started (+1) or stopped (-1) using this CQ */
  addUser(d: 1 | -1): void {
    this.#users += d;
  }
  get closed(): boolean {
    return this.#closed;
  }
  private set closed(v: boolean) {
    this.#closed = v;
  }
  /** a completion was lost to a full CQ (CQ_ERR raised) */
  get overflowed(): boolean {
    return this.#overflowed;
  }
  private set overflowed(v: boolean) {
    this.#overflowed = v;
  }

  /** Entries waiting to be polled. */
  get length(): number {
    return this.count;
  }

  /** Fills up to `max` of the caller's Wc objects; returns how many (ibv_poll_cq). */
  poll(out: Wc[], max?: number): number {
    if (this.closed) {
      if (this.closeWakeup) return 0; // see close()
      throw new VerbsError('EBADF', 'ibv_poll_cq', 'CQ is closed', 'cq');
    }
    V.list('ibv_poll_cq', 'out', out);
    if (max === undefined) max = out.length;
    else V.int('ibv_poll_cq', 'max', max, 0, 0x7fffffff);
    // Only the entries that will be filled must be Wc objects (a C caller passes an ibv_wc array).
    // Busy polling: spin on the receive sockets until a completion lands here or the time is up
    // (the device stopped being able to: back to plain polling, reported once).
    if (this.count === 0 && this.#busyPollUs > 0 && max > 0 && this.device.spin(this.#busyPollUs, this) < 0) {
      busyPollFallback(this.device.name, this.device.backendName);
      this.#busyPollUs = 0;
    }
    for (let i = 0, k = Math.min(max, out.length, this.count); i < k; i++) if (!(out[i] instanceof Wc)) V.fail('ibv_poll_cq', 'out', `out[${i}] is not a Wc`);
    const n = Math.min(max, out.length, this.count);
    for (let i = 0; i < n; i++) {
      copyWc(out[i]!, this.ring[this.head]!);
      this.head = (this.head + 1) % this.depth;
    }
    this.count -= n;
    return n;
  }

  /** Arm the CQ: the next completion (solicitedOnly: the next solicited or error completion) fires 'notify'. */
  reqNotify(solicitedOnly = false): void {
    if (this.closed) {
      if (this.closeWakeup) return; // see close()
      throw new VerbsError('EBADF', 'ibv_req_notify_cq', 'CQ is closed', 'cq');
    }
    V.optBool('ibv_req_notify_cq', 'solicitedOnly', solicitedOnly);
    this.armed = solicitedOnly ? ARM_SOLICITED : ARM_ANY;
  }

  /** Async iterator over notification events; re-arms itself after each (arm → event → poll). */
  async *notifications(o: { solicitedOnly?: boolean; signal?: AbortSignal } = {}): AsyncGenerator<void> {
    V.obj('ibv_req_notify_cq', 'options', o);
    V.optBool('ibv_req_notify_cq', 'solicitedOnly', o.solicitedOnly);
    if (o.signal !== undefined && !(o.signal instanceof AbortSignal)) V.fail('ibv_req_notify_cq', 'signal', 'must be an AbortSignal');
    this.reqNotify(o.solicitedOnly ?? false);
    const it = on(this, 'notify', o.signal ? { signal: o.signal } : {});
    for await (const _ of it) {
      // The wake-up of close() (or one queued before it) ends the iteration instead of handing
      // the loop body a closed CQ to poll.
      if (this.closed) return;
      yield;
      if (this.closed) return;
      this.reqNotify(o.solicitedOnly ?? false);
    }
  }

  /** Convenience for examples and tests: every completion as a new Wc (allocates). */
  async *[Symbol.asyncIterator](): AsyncGenerator<Wc> {
    const one = [new Wc()];
    for (;;) {
      if (this.closed) return; // woken by close(): the entries went with the CQ
      while (this.poll(one, 1) === 1) {
        const w = new Wc();
        copyWc(w, one[0]!);
        yield w;
      }
      if (this.closed) return;
      this.reqNotify();
      if (this.count === 0) await new Promise<void>((r) => this.once('notify', r));
    }
  }

  /** Transport: the slot to fill for the next completion, or null on overflow. */
  slot(): Wc | null {
    if (this.closed) return null;
    if (this.count === this.depth) {
      if (!this.overflowed) {
        this.overflowed = true;
        this.device.asyncEvent({ type: 'CQ_ERR', cq: this });
      }
      return null;
    }
    const w = this.ring[(this.head + this.count) % this.depth]!;
    w.withImm = false;
    w.withInv = false;
    w.grh = false;
    w.solicited = false;
    w.imm = 0;
    w.invalidatedRkey = 0;
    w.srcQp = 0;
    w.byteLen = 0;
    w.vendorErr = 0;
    w.pkeyIndex = 0;
    return w;
  }

  /** Transport: the slot from slot() is filled. */
  commit(solicitedOrError: boolean): void {
    this.count++;
    if (this.armed === ARM_ANY || (this.armed === ARM_SOLICITED && solicitedOrError)) {
      this.armed = ARM_NONE;
      emitGuarded(this, 'notify'); // a throwing handler must not stop the transport half-way (emit.ts)
    }
  }

  /** true only while close() wakes its waiters */
  private closeWakeup = false;

  /**
   * ibv_destroy_cq. Release first, then notify: the CQ is closed and unregistered before its
   * waiters get the last 'notify' (what ends `for await` loops and `notifications()`). That
   * wake-up is synchronous, and inside it poll() returns 0 and reqNotify() does nothing instead
   * of throwing EBADF: a handler written as "poll, then re-arm" sees an empty CQ and can check
   * `closed`; the entries went with the CQ, as ibv_destroy_cq discards them. (Deferring the
   * wake-up instead would have such a handler poll a closed CQ later and get EBADF.) Outside the
   * wake-up a closed CQ still throws EBADF. A handler's exception is re-raised on the next tick
   * (emit.ts), never thrown out of close(): libibverbs' ibv_destroy_cq never runs user code.
   */
  close(): void {
    if (this.closed) return;
    if (this.users > 0) throw new VerbsError('EBUSY', 'ibv_destroy_cq', `${this.users} QP(s) still use this CQ`, 'cq');
    this.closed = true;
    this.armed = ARM_NONE;
    this.count = 0;
    this.device.forget(this);
    this.closeWakeup = true;
    try {
      emitGuarded(this, 'notify');
    } finally {
      this.closeWakeup = false;
    }
  }
  [Symbol.dispose](): void {
    this.close();
  }
}
