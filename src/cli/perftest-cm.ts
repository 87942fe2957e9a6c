/**
 * perftest's -R / --rdma_cm (and -z / --comm_rdma_cm) over softroce's rdma_cm (src/cm), as perftest
 * 6.06 (tag v4.5-0.18, src/perftest_communication.c) does it:
 *
 *  - The out-of-band exchange ("Data ex. method : rdma_cm") runs over an RC connection of its own made
 *    with rdma_cm on the -p port (rdma_client_connect / rdma_server_connect): conn param responder
 *    resources 0, initiator depth 0, retry count 7, RNR retry 7; one receive of sizeof(struct
 *    pingpong_dest) posted before connect / accept; the server destroys its listening id once it
 *    accepted. Every message is one SEND of exactly its size (ctx_xchg_data_rdma): the client sends then
 *    receives, the server receives then sends, each re-posting its one receive after reading. Address
 *    records travel as the raw struct pingpong_dest (56 bytes on x86-64, every field big-endian,
 *    rdma_write_keys under HAVE_ENDIAN), not the TCP exchange's text; close is one last handshake
 *    (no "done").
 *  - With -R the data QPs are made on rdma_cm ids too (create_rdma_cm_connection): a handshake, then
 *    the client resolves (2000 ms each), sets the TOS, creates the QP on the id (rdma_create_qp) and
 *    connects every QP to the same -p port; the server listens there and answers each CONNECT_REQUEST
 *    with a QP and rdma_accept (it does not wait for ESTABLISHED); then one more handshake. Conn param:
 *    responder resources = initiator depth = the outstanding reads for READ / atomics (0 otherwise),
 *    retry and RNR retry 7. Teardown: the client disconnects every data id and waits for DISCONNECTED.
 *
 * Differences, none visible on the wire: the server listens for the data connections before the first
 * of those two handshakes rather than after it (perftest's client can connect before its server
 * listens, which perftest papers over with retries), and a client whose data connection is refused
 * retries with fresh ids (10 times, 100 ms apart, as rdma_cm_client_connection means to). A server
 * also waits (at most 2 s) for its data connections' DISCONNECTED, so that the DREP for the client's
 * DREQ leaves before the device closes (the kernel answers it after perftest exits).
 */
import { createEventChannel, type CmEvent, type EventChannel } from '../cm/event-channel.js';
import { createId, type CmId } from '../cm/cm-id.js';
import { RdmaCmEvent } from '../cm/cm-defs.js';
import type { Device } from '../verbs/device.js';
import type { Cq } from '../verbs/cq.js';
import type { Mr } from '../verbs/mr.js';
import type { Ah, Pd } from '../verbs/objects.js';
import type { Qp } from '../verbs/qp.js';
import type { QpCap } from '../verbs/qp-attrs.js';
import { Wc } from '../verbs/types.js';
import { xchgBwReport, type BwReport, type PerfDest } from './perftest-comm.js';

/** sizeof(struct pingpong_dest) on x86-64: 5 ints, 4 bytes of padding, u64 vaddr, 16-byte GID, srqn, gid_index. */
export const DEST_STRUCT_LEN = 56;
/** SYNC_SPEC_ID: the wr_id of every exchange work request (perftest_communication.h) */
const SYNC_SPEC_ID = 5;
/** rdma_resolve_addr / rdma_resolve_route timeouts, and NUM_OF_RETRIES on ADDR_ERROR / ROUTE_ERROR */
const RESOLVE_MS = 2000;
const NUM_OF_RETRIES = 10;
/** rdma_cm_client_connection: attempts and the pause between them */
const CONNECT_TRIES = 10;
const CONNECT_RETRY_MS = 100;
/** how long teardown waits for a DISCONNECTED */
const DISCONNECT_MS = 2000;

/** rdma_write_keys: the struct, every field big-endian (srqn and gid_index too; the reader takes neither). */
export function destStruct(d: PerfDest, gidIndex: number): Buffer {
  const b = Buffer.alloc(DEST_STRUCT_LEN);
  b.writeInt32BE(d.lid, 0);
  b.writeInt32BE(d.outReads, 4);
  b.writeInt32BE(d.qpn, 8);
  b.writeInt32BE(d.psn, 12);
  b.writeUInt32BE(d.rkey >>> 0, 16);
  b.writeBigUInt64BE(d.vaddr, 24);
  b.set(d.gid.subarray(0, 16), 32);
  b.writeUInt32BE(d.srqn >>> 0, 48);
  b.writeInt32BE(gidIndex, 52);
  return b;
}

/** rdma_read_keys: lid, out_reads, qpn, psn, rkey, vaddr, GID (srqn is not converted by perftest: left 0). */
export function parseDestStruct(b: Buffer): PerfDest {
  if (b.length < DEST_STRUCT_LEN) throw new Error(`Couldn't parse remote address: ${b.length} bytes, want ${DEST_STRUCT_LEN}`);
  return {
    lid: b.readInt32BE(0),
    outReads: b.readInt32BE(4),
    qpn: b.readInt32BE(8),
    psn: b.readInt32BE(12),
    rkey: b.readUInt32BE(16),
    vaddr: b.readBigUInt64BE(24),
    gid: new Uint8Array(b.subarray(32, 48)),
    srqn: 0,
  };
}

/** Sleeps until the CQ has a completion (notify) or 200 ms pass. */
function waitCq(cq: Cq): Promise<void> {
  if (cq.length > 0) return Promise.resolve();
  return new Promise((resolve) => {
    const done = (): void => {
      clearTimeout(t);
      cq.off('notify', done);
      resolve();
    };
    const t = setTimeout(done, 200);
    cq.on('notify', done);
    cq.reqNotify();
  });
}

/** One completion of `cq` (a fresh Wc), or null after `ms`. */
async function pollOne(cq: Cq, ms: number): Promise<Wc | null> {
  const w = [new Wc()];
  const end = Date.now() + ms;
  while (cq.poll(w, 1) === 0) {
    if (Date.now() >= end || cq.closed) return null;
    await waitCq(cq);
  }
  return w[0]!;
}

/** The next event of `ch` (the C tools' rdma_get_cm_event); null when the channel closed. */
async function nextEvent(ch: EventChannel, timeoutMs?: number): Promise<CmEvent | null> {
  try {
    return await ch.getEvent(timeoutMs === undefined ? {} : { timeoutMs });
  } catch {
    return null;
  }
}

/** The id's promise is not how these tools learn the outcome (they read the channel): it must not go unhandled. */
const quiet = (p: Promise<unknown>): void => {
  p.catch(() => undefined);
};

export interface CmConnOptions {
  device: Device;
  /** the rdma_cm port (perftest's -p) */
  port: number;
  /** --source_ip: the client's source address / the server's bind address */
  source?: string;
  retryCount: number;
  err: (s: string) => void;
}

/**
 * The exchange's rdma_cm connection (perftest's comm->rdma_ctx): a QP on the id, one send and one
 * receive buffer of sizeof(struct pingpong_dest), one CQ each way. Same methods as the TCP Conn.
 */
export class CmConn {
  readonly client: boolean;
  readonly #ch: EventChannel;
  readonly #id: CmId;
  readonly #pd: Pd;
  readonly #cq: { send: Cq; recv: Cq };
  readonly #sendMr: Mr;
  readonly #recvMr: Mr;
  readonly #wc = [new Wc()];
  #closed = false;
  /** the gid_index field of the address records this side sends (perftest's my_dest->gid_index) */
  gidIndex = 0;

  private constructor(client: boolean, ch: EventChannel, id: CmId, pd: Pd, send: Cq, recv: Cq, sendMr: Mr, recvMr: Mr) {
    this.client = client;
    this.#ch = ch;
    this.#id = id;
    this.#pd = pd;
    this.#cq = { send, recv };
    this.#sendMr = sendMr;
    this.#recvMr = recvMr;
  }

  /** ctx_init for the exchange (tx and rx depth 1, SEND of pingpong_dest size) on the id, and its first receive. */
  static #setup(client: boolean, ch: EventChannel, id: CmId, dev: Device): CmConn {
    const pd = dev.allocPd();
    const send = dev.createCq({ depth: 2 });
    const recv = dev.createCq({ depth: 2 });
    id.createQp(pd, { sendCq: send, recvCq: recv, cap: { maxSendWr: 1, maxRecvWr: 1, maxSendSge: 1, maxRecvSge: 1 } });
    const c = new CmConn(client, ch, id, pd, send, recv, pd.regMr(Buffer.alloc(DEST_STRUCT_LEN), []), pd.regMr(Buffer.alloc(DEST_STRUCT_LEN), ['LOCAL_WRITE']));
    c.#postRecv();
    return c;
  }

  /**
   * rdma_client_connect: resolve the address (retried on ADDR_ERROR) and the route (on ROUTE_ERROR),
   * the QP and its receive, rdma_connect, and the next event must be ESTABLISHED. Returns null after
   * printing what perftest prints when it is not.
   */
  static async connect(host: string, o: CmConnOptions): Promise<CmConn | null> {
    const ch = createEventChannel();
    const id = createId(ch, { ps: 'TCP', device: o.device });
    const fail = (msg: string): null => {
      o.err(msg);
      id.close();
      ch.close();
      return null;
    };
    const src = o.source ?? o.device.ports[0]?.address;
    let retries = NUM_OF_RETRIES;
    for (;;) {
      if (retries === 0) return fail(`Received ${NUM_OF_RETRIES} times ADDR_ERROR`);
      try {
        quiet(
          id.resolveAddr({ ...(src !== undefined ? { src: { address: src, port: 0 } } : {}), dst: { address: host, port: o.port }, timeoutMs: RESOLVE_MS }),
        );
      } catch {
        return fail('rdma_resolve_addr failed');
      }
      const ev = await nextEvent(ch);
      if (ev === null) return fail('rdma_get_cm_events failed');
      if (ev.event === 'ADDR_ERROR') {
        retries--;
        continue;
      }
      if (ev.event !== 'ADDR_RESOLVED') return fail(`unexpected CM event ${RdmaCmEvent[ev.event]}`);
      break;
    }
    for (;;) {
      if (retries <= 0) return fail(`Received ${NUM_OF_RETRIES} times ADDR_ERROR - aborting`);
      try {
        quiet(id.resolveRoute({ timeoutMs: RESOLVE_MS }));
      } catch {
        return fail('rdma_resolve_route failed');
      }
      const ev = await nextEvent(ch);
      if (ev === null) return fail('rdma_get_cm_events failed');
      if (ev.event === 'ROUTE_ERROR') {
        retries--;
        continue;
      }
      if (ev.event !== 'ROUTE_RESOLVED') return fail(`unexpected CM event ${RdmaCmEvent[ev.event]}`);
      break;
    }
    let c: CmConn;
    try {
      c = CmConn.#setup(true, ch, id, o.device);
    } catch {
      return fail(' Unable to create the resources needed by comm struct');
    }
    try {
      quiet(id.connect({ responderResources: 0, initiatorDepth: 0, retryCount: o.retryCount, rnrRetryCount: 7 }));
    } catch {
      c.destroy();
      o.err('Function rdma_connect failed');
      return null;
    }
    const ev = await nextEvent(ch);
    if (ev?.event !== 'ESTABLISHED') {
      c.destroy();
      o.err(ev === null ? 'rdma_get_cm_events failed' : `Unexpected CM event bl blka ${RdmaCmEvent[ev.event]}`);
      return null;
    }
    return c;
  }

  /** rdma_server_connect: bind, listen, the first CONNECT_REQUEST gets the QP, its receive and rdma_accept; the listening id goes. */
  static async accept(o: CmConnOptions): Promise<CmConn | null> {
    const ch = createEventChannel();
    const listen = createId(ch, { ps: 'TCP', device: o.device });
    try {
      await listen.bind({ address: o.source ?? '0.0.0.0', port: o.port });
    } catch {
      o.err(' rdma_bind_addr failed');
      ch.close();
      return null;
    }
    try {
      await listen.listen(1);
    } catch {
      o.err('rdma_listen failed');
      ch.close();
      return null;
    }
    const ev = await nextEvent(ch);
    if (ev === null) {
      o.err('rdma_get_cm_events failed');
      ch.close();
      return null;
    }
    if (ev.event !== 'CONNECT_REQUEST') {
      o.err(`bad event waiting for connect request ${RdmaCmEvent[ev.event]}`);
      ch.close();
      return null;
    }
    const c = CmConn.#setup(false, ch, ev.id, o.device);
    try {
      quiet(ev.id.accept({ responderResources: 0, initiatorDepth: 0, retryCount: o.retryCount, rnrRetryCount: 7 }));
    } catch {
      o.err('Function rdma_accept failed');
      c.destroy();
      return null;
    }
    listen.close();
    return c;
  }

  #postRecv(): void {
    this.#id.qp!.postRecv({ wrId: SYNC_SPEC_ID, sg: [{ mr: this.#recvMr, offset: 0, length: DEST_STRUCT_LEN }] });
  }

  /** rdma_write_data: one signalled SEND of exactly the message, waited for. */
  async #write(b: Buffer): Promise<void> {
    b.copy(this.#sendMr.buffer, 0, 0, Math.min(b.length, DEST_STRUCT_LEN));
    const qp = this.#id.qp!;
    qp.postSend({ wrId: SYNC_SPEC_ID, opcode: 'SEND', signaled: true, sg: [{ mr: this.#sendMr, offset: 0, length: Math.min(b.length, DEST_STRUCT_LEN) }] });
    const w = this.#wc[0]!;
    while (this.#cq.send.poll(this.#wc, 1) === 0) {
      if (this.#closed) throw new Error('the rdma_cm exchange closed');
      await waitCq(this.#cq.send);
    }
    if (w.status !== 'SUCCESS' || w.wrId !== SYNC_SPEC_ID) throw new Error(` Bad wc status ${w.status}`);
  }

  /** rdma_read_data: the next receive's first `len` bytes, then the receive is posted again. */
  async #read(len: number): Promise<Buffer> {
    const w = this.#wc[0]!;
    while (this.#cq.recv.poll(this.#wc, 1) === 0) {
      if (this.#closed) throw new Error('the rdma_cm exchange closed');
      await waitCq(this.#cq.recv);
    }
    if (w.status !== 'SUCCESS' || w.wrId !== SYNC_SPEC_ID) throw new Error(`Bad wc status -- ${w.status} -- ${w.wrId} `);
    const out = Buffer.from(this.#recvMr.buffer.subarray(0, len));
    this.#postRecv();
    return out;
  }

  /** ctx_xchg_data_rdma: the client writes then reads, the server reads then writes. */
  async xchg(mine: Buffer, len = mine.length): Promise<Buffer> {
    if (this.client) {
      await this.#write(mine);
      return this.#read(len);
    }
    const theirs = await this.#read(len);
    await this.#write(mine);
    return theirs;
  }

  /** ctx_hand_shake over rdma_cm: the raw struct pingpong_dest each way. */
  async handshake(my: PerfDest, gidIndex = this.gidIndex): Promise<PerfDest> {
    return parseDestStruct(await this.xchg(destStruct(my, gidIndex), DEST_STRUCT_LEN));
  }

  /** xchg_bw_reports over the exchange connection. */
  xchgReport(mine: BwReport): Promise<BwReport> {
    return xchgBwReport((b, n) => this.xchg(b, n), mine);
  }

  /** ctx_close_connection: with rdma_cm, one last handshake only. A peer that already left is not an error here. */
  async close(my: PerfDest): Promise<void> {
    try {
      await this.handshake(my);
    } catch {
      /* the peer went first */
    }
  }

  /**
   * The exchange's connection goes: perftest leaves it to the process's exit (the kernel destroys the id,
   * a DREQ goes out); here the DREQ is sent and its DREP (or the peer's DREQ) waited for briefly, so it
   * leaves before the device closes.
   */
  async shutdown(): Promise<void> {
    if (this.#closed) return;
    try {
      await this.#id.disconnect({ timeoutMs: 500 });
    } catch {
      /* already down, or no answer */
    }
    this.destroy();
  }

  destroy(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#id.destroyQp();
    this.#sendMr.close();
    this.#recvMr.close();
    this.#cq.send.close();
    this.#cq.recv.close();
    this.#pd.close();
    this.#id.close();
    this.#ch.close();
  }
}

/** What the data QPs need from the tool (create_rdma_cm_connection's user_param and ctx). */
export interface CmDataOptions {
  device: Device;
  /** UD: the ids are in the UDP port space and connect with SIDR */
  ud: boolean;
  /**
   * UD latency tests (rdma_cm_{request,initialize,send}_ud_connection_parameters): the client sends a
   * SEND_WITH_IMM carrying its QPN to the server once its SIDR_REP came; the server posts the receive
   * for it before accepting and takes it off its receive CQ after. `mr` offset 0 is the scratch buffer.
   */
  udQpnExchange: boolean;
  mr: Mr;
  port: number;
  source?: string;
  numQps: number;
  pd: Pd;
  sendCq: Cq;
  recvCq: Cq;
  cap: QpCap;
  /** outstanding reads for READ / atomics (the conn param's responder resources and initiator depth), else 0 */
  rdAtomic: number;
  retryCount: number;
  tos: number | null;
  err: (s: string) => void;
}

/** GRH room of a UD receive (UD_ADDITION) */
const UD_ADDITION = 40;

/** The data QPs' rdma_cm ids (ctx->cma_master). */
export class CmData {
  readonly ch: EventChannel;
  readonly ids: CmId[] = [];
  /** UD, client: each QP's peer as the SIDR_REP gave it (remote_qpn, remote_qkey, the AH) */
  readonly ud: Array<{ qpn: number; qkey: number; ah: Ah }> = [];
  #listen: CmId | null = null;

  private constructor(ch: EventChannel) {
    this.ch = ch;
  }

  get qps(): Qp[] {
    return this.ids.map((id) => id.qp!);
  }

  /** The server's listening id, before the first handshake (see the file's comment). */
  static async listen(o: CmDataOptions): Promise<CmData | null> {
    const d = new CmData(createEventChannel());
    const l = createId(d.ch, { ps: o.ud ? 'UDP' : 'TCP', device: o.device });
    d.#listen = l;
    try {
      await l.bind({ address: o.source ?? '0.0.0.0', port: o.port });
      await l.listen(o.numQps);
    } catch (e) {
      o.err(`Failed to bind RDMA CM address on the server.\nERRNO: ${(e as Error).message}.`);
      d.close();
      return null;
    }
    return d;
  }

  /**
   * rdma_cm_connect_events on the server: each CONNECT_REQUEST gets a QP (ctx_init's CQs and PD) and
   * rdma_accept; other events (an earlier connection's ESTABLISHED) are passed over, as perftest's
   * dispatcher does for RC. A request beyond the QP count is rejected.
   */
  async serve(o: CmDataOptions): Promise<boolean> {
    while (this.ids.length < o.numQps) {
      const ev = await nextEvent(this.ch);
      if (ev === null) return false;
      if (ev.event !== 'CONNECT_REQUEST') {
        if (ev.event === 'ESTABLISHED' || ev.event === 'DISCONNECTED' || ev.event === 'TIMEWAIT_EXIT') continue;
        o.err(`RDMA CM event error:\nEvent: RDMA_CM_EVENT_${ev.event}; error: ${ev.status}.\n`);
        return false;
      }
      try {
        const qp = ev.id.createQp(o.pd, { sendCq: o.sendCq, recvCq: o.recvCq, cap: o.cap });
        if (o.udQpnExchange) qp.postRecv({ wrId: 0, sg: [{ mr: o.mr, offset: 0, length: UD_ADDITION + 4 }] });
        quiet(ev.id.accept({ responderResources: o.rdAtomic, initiatorDepth: o.rdAtomic, retryCount: o.retryCount, rnrRetryCount: o.retryCount }));
        if (o.udQpnExchange) {
          const w = await pollOne(o.recvCq, 10_000);
          if (w === null || w.status !== 'SUCCESS' || w.wrId !== 0)
            throw new Error(
              `Failed to poll CQ.\nBad WQE status when trying to create AH for UD connection in RDMA CM:\n Status: ${w?.status ?? 'timeout'} ; ID: ${w?.wrId ?? -1}.`,
            );
        }
      } catch (e) {
        o.err(`Failed to accept RDMA CM connection.\nERRNO: ${(e as Error).message}.`);
        try {
          ev.id.reject();
        } catch {
          /* gone */
        }
        return false;
      }
      this.ids.push(ev.id);
    }
    this.#listen?.close();
    this.#listen = null;
    return true;
  }

  /** rdma_cm_client_connection: every QP connected in turn (address, TOS, route, QP on the id, connect, ESTABLISHED), retried on failure. */
  static async connect(host: string, o: CmDataOptions): Promise<CmData | null> {
    let last = '';
    for (let attempt = 0; attempt < CONNECT_TRIES; attempt++) {
      if (attempt > 0) await new Promise((r) => setTimeout(r, CONNECT_RETRY_MS));
      const d = new CmData(createEventChannel());
      const why = await d.#connectAll(host, o);
      if (why === null) return d;
      last = why;
      d.close();
    }
    o.err(`${last}\nFailed to connect RDMA CM client, tried ${CONNECT_TRIES} times.`);
    return null;
  }

  async #connectAll(host: string, o: CmDataOptions): Promise<string | null> {
    const src = o.source ?? o.device.ports[0]?.address;
    const want = async (call: () => Promise<unknown>, ok: CmEvent['event'], got?: (ev: CmEvent) => void): Promise<string | null> => {
      try {
        quiet(call());
      } catch (e) {
        return (e as Error).message;
      }
      const ev = await nextEvent(this.ch);
      if (ev === null) return 'Failed to get RDMA CM event.';
      if (ev.event !== ok) return `RDMA CM event error:\nEvent: RDMA_CM_EVENT_${ev.event}; error: ${ev.status}.`;
      got?.(ev);
      return null;
    };
    for (let i = 0; i < o.numQps; i++) {
      const id = createId(this.ch, { ps: o.ud ? 'UDP' : 'TCP', device: o.device });
      this.ids.push(id);
      let why = await want(
        () => id.resolveAddr({ ...(src !== undefined ? { src: { address: src, port: 0 } } : {}), dst: { address: host, port: o.port }, timeoutMs: RESOLVE_MS }),
        'ADDR_RESOLVED',
      );
      if (why !== null) return why;
      if (o.tos !== null) id.setOption({ tos: o.tos });
      why = await want(() => id.resolveRoute({ timeoutMs: RESOLVE_MS }), 'ROUTE_RESOLVED');
      if (why !== null) return why;
      try {
        id.createQp(o.pd, { sendCq: o.sendCq, recvCq: o.recvCq, cap: o.cap });
      } catch (e) {
        return `Failed to create QP.\nERRNO: ${(e as Error).message}.`;
      }
      let est: CmEvent | null = null;
      why = await want(
        () => id.connect({ responderResources: o.rdAtomic, initiatorDepth: o.rdAtomic, retryCount: o.retryCount, rnrRetryCount: o.retryCount }),
        'ESTABLISHED',
        (ev) => (est = ev),
      );
      if (why !== null) return why;
      if (o.ud) {
        const u = (est as CmEvent | null)?.param?.ud;
        if (u?.ah == null) return 'Failed to create AH for RDMA CM connection.';
        this.ud.push({ qpn: u.qpNum, qkey: u.qkey, ah: u.ah });
        if (o.udQpnExchange) {
          // rdma_cm_send_ud_connection_parameters: our QPN as the immediate data, 4 bytes of payload
          id.qp!.postSend({
            wrId: 0,
            opcode: 'SEND_WITH_IMM',
            imm: id.qp!.qpn,
            signaled: true,
            sg: [{ mr: o.mr, offset: 0, length: 4 }],
            ud: { ah: u.ah, remoteQpn: u.qpNum, remoteQkey: u.qkey },
          });
          const w = await pollOne(o.sendCq, 10_000);
          if (w === null || w.status !== 'SUCCESS')
            return `Failed to poll CQ.\nBad WQE status when trying to send UD connection parameters in RDMA CM:\n Status: ${w?.status ?? 'timeout'} ; ID: ${w?.wrId ?? -1}.`;
        }
      }
    }
    return null;
  }

  /**
   * destroy_ctx's rdma_cm part: the client disconnects every id and waits for DISCONNECTED
   * (rdma_cm_disconnect_nodes); the server, which perftest lets go without waiting, waits too (see the
   * file's comment). Then the QPs and ids go.
   */
  async teardown(): Promise<void> {
    // UD ids have no connection to take down (rdma_cm_disconnect_nodes returns at once for UD)
    if (this.ids.some((id) => id.qpType === 'UD')) {
      this.close();
      return;
    }
    await Promise.all(
      this.ids.map((id) =>
        id.disconnect({ timeoutMs: DISCONNECT_MS }).then(
          () => undefined,
          () => undefined,
        ),
      ),
    );
    this.close();
  }

  close(): void {
    for (const id of this.ids) {
      try {
        id.destroyQp();
      } catch {
        /* gone */
      }
      id.close();
    }
    this.#listen?.close();
    this.#listen = null;
    this.ch.close();
  }
}
