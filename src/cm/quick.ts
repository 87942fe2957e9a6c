/**
 * The quick start (issue 13 item 2): a connected RC endpoint in one call on each side, over rdma_cm.
 *
 *   const server = await listen({ port: 7471 });          // for await (const ep of server) / server.on('connection')
 *   const ep = await connect({ host: '127.0.0.1', port: 7471 });
 *   const mr = ep.pd.regMr(Buffer.from('hi'));
 *   await ep.send(mr);                                    // resolves with the completion
 *
 * An endpoint is an rdma_cm id with its QP, one CQ for sends and receives, its PD and device, and post
 * helpers that resolve when the work request completes (and reject when it completes in error). Every
 * endpoint reads its own id's events on a channel of its own (rdma_migrate_id), so a server with many
 * connections keeps no event queue growing.
 */
import { EventEmitter } from 'node:events';
import { VerbsError } from '../verbs/errors.js';
import type { Device } from '../verbs/device.js';
import type { Qp, QpCap } from '../verbs/qp.js';
import type { Cq } from '../verbs/cq.js';
import type { Mr } from '../verbs/mr.js';
import type { Pd } from '../verbs/objects.js';
import { Wc, type WcOpcode, type WcStatus } from '../verbs/types.js';
import { createEventChannel, type CmEvent, type EventChannel } from './event-channel.js';
import { createId, type CmId } from './cm-id.js';
import type { ConnParam } from './conn.js';

/** What a post helper resolves with: the completion's fields (a copy, not the CQ's slot). */
export interface Completion {
  readonly status: WcStatus;
  readonly opcode: WcOpcode;
  readonly byteLen: number;
  readonly imm: number | null;
}

/** A completion in error: the promise rejects with this, a VerbsError carrying the WC status (ECONNRESET for
 *  work flushed by a connection that went down, EPROTO for the other errors). */
export class CompletionError extends VerbsError {
  readonly status: WcStatus;
  constructor(op: string, status: WcStatus) {
    super(status === 'WR_FLUSH_ERR' ? 'ECONNRESET' : 'EPROTO', op, `the work request completed with ${status}`, 'wr');
    this.status = status;
  }
}

export interface EndpointOptions {
  /** the QP's queue sizes; default 64 sends and 64 receives */
  cap?: QpCap;
  /** conn param of connect / accept (private data, initiator depth, responder resources, retries) */
  param?: ConnParam;
}

const DEFAULT_CAP: QpCap = { maxSendWr: 64, maxRecvWr: 64 };

interface Pending {
  op: string;
  resolve(c: Completion): void;
  reject(e: Error): void;
}

/**
 * A connected RC endpoint. Events: 'disconnected' (the peer disconnected or the connection failed; the
 * QP is in ERR and posted work completes flushed), 'close'.
 */
export class Endpoint extends EventEmitter {
  readonly id: CmId;
  readonly qp: Qp;
  /** the CQ of both queues (the helpers poll it; do not poll it yourself while using them) */
  readonly cq: Cq;
  readonly pd: Pd;
  readonly device: Device;
  /** the private data the peer sent with its REQ (server side) or REP (client side) */
  readonly peerData: Buffer;
  readonly #channel: EventChannel;
  readonly #pending = new Map<number, Pending>();
  readonly #wc = [new Wc()];
  #nextWr = 1;
  #closed = false;
  #connected = true;

  /** @internal listen() / connect() */
  constructor(id: CmId, channel: EventChannel, peerData: Buffer) {
    super();
    this.id = id;
    this.qp = id.qp!;
    this.cq = this.qp.sendCq;
    this.pd = this.qp.pd;
    this.device = this.qp.device;
    this.peerData = peerData;
    this.#channel = channel;
    this.cq.on('notify', this.#drain);
    this.cq.reqNotify();
    void this.#events();
  }

  /** true until the connection goes down or close() */
  get connected(): boolean {
    return this.#connected && !this.#closed;
  }

  async #events(): Promise<void> {
    for await (const ev of this.#channel) {
      if (ev.event === 'DISCONNECTED' || ev.event === 'DEVICE_REMOVAL') {
        if (!this.#connected) continue;
        this.#connected = false;
        this.emit('disconnected', ev);
      }
    }
  }

  readonly #drain = (): void => {
    if (this.cq.closed) return;
    const w = this.#wc[0]!;
    while (this.cq.poll(this.#wc, 1) === 1) {
      const p = this.#pending.get(w.wrId);
      if (p === undefined) continue;
      this.#pending.delete(w.wrId);
      if (w.status === 'SUCCESS') p.resolve({ status: w.status, opcode: w.opcode, byteLen: w.byteLen, imm: w.withImm ? w.imm : null });
      else p.reject(new CompletionError(p.op, w.status));
    }
    this.cq.reqNotify();
  };

  #post(op: string, post: (wrId: number) => void): Promise<Completion> {
    if (this.#closed) return Promise.reject(new VerbsError('EBADF', op, 'the endpoint is closed', 'endpoint'));
    const wrId = this.#nextWr;
    this.#nextWr = (this.#nextWr % 0x7fffffff) + 1;
    return new Promise<Completion>((resolve, reject) => {
      try {
        post(wrId);
      } catch (e) {
        reject(e instanceof Error ? e : new Error(String(e)));
        return;
      }
      this.#pending.set(wrId, { op, resolve, reject });
    });
  }

  #sg(op: string, mr: Mr, offset: number, length: number | undefined): { mr: Mr; offset: number; length: number } {
    const len = length ?? mr.length - offset;
    if (!Number.isInteger(offset) || offset < 0 || !Number.isInteger(len) || len < 0 || offset + len > mr.length)
      throw new VerbsError('EINVAL', op, `offset ${offset} + length ${len} is outside the ${mr.length}-byte region`, 'offset');
    return { mr, offset, length: len };
  }

  #send(
    op: string,
    wr: { opcode: 'SEND' } | { opcode: 'RDMA_WRITE' | 'RDMA_READ'; remote: { addr: bigint; rkey: number } },
    mr: Mr,
    offset: number,
    length: number | undefined,
  ): Promise<Completion> {
    return this.#post(op, (wrId) => {
      const sg = [this.#sg(op, mr, offset, length)];
      this.qp.postSend({ ...wr, wrId, sg, signaled: true });
    });
  }

  /** A SEND of `mr[offset, offset + length)` (default: the rest of the region). */
  send(mr: Mr, offset = 0, length?: number): Promise<Completion> {
    return this.#send('send', { opcode: 'SEND' }, mr, offset, length);
  }
  /** A receive into `mr[offset, offset + length)`; resolves when a SEND from the peer lands there. */
  recv(mr: Mr, offset = 0, length?: number): Promise<Completion> {
    return this.#post('recv', (wrId) => this.qp.postRecv({ wrId, sg: [this.#sg('recv', mr, offset, length)] }));
  }
  /** An RDMA WRITE of `mr[offset, offset + length)` to the peer's `remote` (its MR's addr and rkey). */
  write(mr: Mr, remote: { addr: bigint; rkey: number }, offset = 0, length?: number): Promise<Completion> {
    return this.#send('write', { opcode: 'RDMA_WRITE', remote }, mr, offset, length);
  }
  /** An RDMA READ of the peer's `remote` into `mr[offset, offset + length)`. */
  read(mr: Mr, remote: { addr: bigint; rkey: number }, offset = 0, length?: number): Promise<Completion> {
    return this.#send('read', { opcode: 'RDMA_READ', remote }, mr, offset, length);
  }

  /**
   * Disconnects (a DREQ to the peer) and frees the id, its QP, CQ and PD (MRs still registered on the PD
   * keep it until the device closes). Work still posted completes in error (its promises reject). Never
   * waits for the peer.
   */
  close(): Promise<void> {
    if (this.#closed) return Promise.resolve();
    this.#closed = true;
    this.#connected = false;
    this.cq.off('notify', this.#drain);
    this.id.close();
    if (!this.cq.closed && this.cq.users === 0) this.cq.close();
    this.#channel.close();
    for (const p of this.#pending.values()) p.reject(new VerbsError('EBADF', p.op, 'the endpoint was closed', 'endpoint'));
    this.#pending.clear();
    this.emit('close');
    return Promise.resolve();
  }
  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

export interface ListenOptions extends EndpointOptions {
  /** the rdma_cm port (TCP port space) */
  port: number;
  /** the address to listen on; default 0.0.0.0 (every device the CM can open) */
  host?: string;
  /** a device the application opened, instead of the CM's own */
  device?: Device;
  backlog?: number;
}

/**
 * A listening endpoint factory: accepts every connection request (createQp, accept) and yields each
 * connection once ESTABLISHED, as 'connection' events and through `for await (const ep of server)`.
 * Events: 'connection' (Endpoint), 'error' (a request that could not be accepted; it is rejected).
 */
export class Server extends EventEmitter implements AsyncIterable<Endpoint> {
  readonly id: CmId;
  readonly #channel: EventChannel;
  readonly #o: EndpointOptions;
  readonly #ready: Endpoint[] = [];
  readonly #waiting: Array<(ep: Endpoint | null) => void> = [];
  #closed = false;

  /** @internal listen() */
  constructor(id: CmId, channel: EventChannel, o: EndpointOptions) {
    super();
    this.id = id;
    this.#channel = channel;
    this.#o = o;
    void this.#loop();
  }

  /** the rdma_cm port listened on */
  get port(): number {
    return this.id.getSrcPort();
  }

  async #loop(): Promise<void> {
    for await (const ev of this.#channel) {
      if (ev.event === 'CONNECT_REQUEST') void this.#take(ev);
    }
  }

  async #take(req: CmEvent): Promise<void> {
    const id = req.id;
    const channel = createEventChannel();
    try {
      id.migrate(channel);
      createEndpointQp(id, this.#o.cap);
    } catch (e) {
      this.#refuse(id, channel, e);
      return;
    }
    try {
      await id.accept(this.#o.param);
    } catch (e) {
      this.#refuse(id, channel, e);
      return;
    }
    if (this.#closed) {
      id.close();
      channel.close();
      return;
    }
    const ep = new Endpoint(id, channel, req.param?.privateData ?? Buffer.alloc(0));
    const w = this.#waiting.shift();
    if (w !== undefined) w(ep);
    else if (this.listenerCount('connection') === 0) this.#ready.push(ep);
    this.emit('connection', ep);
  }

  #refuse(id: CmId, channel: EventChannel, e: unknown): void {
    try {
      if (id.state === 'CONNECT') id.reject();
    } catch {
      /* already answered */
    }
    id.close();
    channel.close();
    if (this.listenerCount('error') > 0) this.emit('error', e);
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<Endpoint, void, undefined> {
    for (;;) {
      const ep = this.#ready.shift() ?? (this.#closed ? null : await new Promise<Endpoint | null>((r) => this.#waiting.push(r)));
      if (ep === null) return;
      yield ep;
    }
  }

  /** Stops listening (connections already made stay up; close them yourself). */
  close(): Promise<void> {
    if (this.#closed) return Promise.resolve();
    this.#closed = true;
    this.#channel.close();
    for (const w of this.#waiting.splice(0)) w(null);
    return Promise.resolve();
  }
  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

/** The endpoint's QP: one CQ for both queues (the endpoint closes it after the id). */
function createEndpointQp(id: CmId, cap: QpCap | undefined): void {
  const c = cap ?? DEFAULT_CAP;
  const cq = id.verbs!.createCq({ depth: c.maxSendWr + c.maxRecvWr });
  try {
    id.createQp(null, { cap: c, sendCq: cq, recvCq: cq });
  } catch (e) {
    cq.close();
    throw e;
  }
}

/** Listens for RC connections on `port` (rdma_create_id, rdma_bind_addr, rdma_listen). */
export async function listen(o: ListenOptions): Promise<Server> {
  if (typeof o !== 'object' || o === null) throw new VerbsError('EINVAL', 'listen', 'options must be an object', 'options');
  const channel = createEventChannel();
  const id = createId(channel, { ps: 'TCP', ...(o.device !== undefined ? { device: o.device } : {}) });
  try {
    await id.bind({ address: o.host ?? '0.0.0.0', port: o.port });
    await id.listen(o.backlog ?? 0);
  } catch (e) {
    channel.close();
    throw e;
  }
  const eo: EndpointOptions = {};
  if (o.cap !== undefined) eo.cap = o.cap;
  if (o.param !== undefined) eo.param = o.param;
  return new Server(id, channel, eo);
}

export interface ConnectOptions extends EndpointOptions {
  host: string;
  port: number;
  /** the source address (default: the routing table's choice; on loopback the CM's fallback applies) */
  source?: string;
  device?: Device;
  /** the whole connect (address, route, handshake) must be done within this; default 30000 ms */
  timeoutMs?: number;
  signal?: AbortSignal;
}

/** Connects an RC endpoint to `host:port` (rdma_resolve_addr, rdma_resolve_route, rdma_create_qp, rdma_connect). */
export async function connect(o: ConnectOptions): Promise<Endpoint> {
  if (typeof o !== 'object' || o === null) throw new VerbsError('EINVAL', 'connect', 'options must be an object', 'options');
  const deadline = Date.now() + (o.timeoutMs ?? 30_000);
  const left = (): number => Math.max(0, deadline - Date.now());
  const channel = createEventChannel();
  const id = createId(channel, { ps: 'TCP', ...(o.device !== undefined ? { device: o.device } : {}) });
  const wait = { ...(o.signal !== undefined ? { signal: o.signal } : {}) };
  try {
    o.signal?.throwIfAborted();
    await id.resolveAddr({ dst: { address: o.host, port: o.port }, ...(o.source !== undefined ? { src: o.source } : {}), timeoutMs: left() });
    o.signal?.throwIfAborted();
    await id.resolveRoute({ timeoutMs: left() });
    createEndpointQp(id, o.cap);
    const est = await id.connect(o.param, { ...wait, timeoutMs: left() });
    // The events already answered by the promises (ADDR_RESOLVED ... ESTABLISHED) are not the endpoint's.
    while (channel.tryGetEvent() !== null);
    return new Endpoint(id, channel, est.param?.privateData ?? Buffer.alloc(0));
  } catch (e) {
    id.close();
    channel.close();
    throw e;
  }
}
