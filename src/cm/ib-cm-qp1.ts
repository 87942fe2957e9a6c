/**
 * A port's QP1 as the CM uses it (the kernel's ib_mad agent for the CM class, reduced to what RoCE needs):
 * 256-byte MADs sent as UD SENDs to the peer's QP1 (Q_Key 0x80010000, P_Key 0xFFFF: roce-wire.md g.1),
 * a pool of posted receives re-posted as they complete, a ring of send buffers, and an AH cache per
 * destination. Received MADs are handed to `onMad` with the sender's address read from the GRH, on a
 * deferred turn of the device's scheduler (never on the transport's receive stack).
 */
import type { Device } from '../verbs/device.js';
import type { Qp } from '../verbs/qp.js';
import type { Cq } from '../verbs/cq.js';
import type { Mr } from '../verbs/mr.js';
import type { Ah, Pd } from '../verbs/objects.js';
import { Wc } from '../verbs/types.js';
import { gidToHex, ipv4ToGid } from '../roce/gid.js';
import { MAD_SIZE } from './mad.js';

export const GSI_QKEY = 0x80010000;
const GRH_LEN = 40;
const RECV_SLOT = GRH_LEN + MAD_SIZE;
/** Receives kept posted: MADs come one per handshake step, so this covers bursts of many connections. */
const RECV_SLOTS = 128;
/** Send buffers: a MAD's buffer is busy until its send completes. */
const SEND_SLOTS = 128;
/** AHs kept per port; the cache is cleared when it would grow past this (a peer per entry). */
const AH_CACHE_MAX = 1024;

/** Where a MAD goes: the fields of an AH (ibv_ah_attr with a GRH). */
export interface MadAv {
  dgid: Uint8Array;
  sgidIndex: number;
  trafficClass: number;
  hopLimit: number;
  flowLabel: number;
  sl: number;
}

/** The sender of a received MAD, from its GRH (for IPv4: 20 zero bytes then the IPv4 header, as rxe gives it). */
export interface MadSource {
  sgid: Uint8Array;
  dgid: Uint8Array;
  trafficClass: number;
  flowLabel: number;
  hopLimit: number;
}

/** Reads the GRH at the head of a UD receive (ib_get_rdma_header_version + ib_init_ah_attr_from_wc). */
export function readGrh(b: Buffer): MadSource {
  if (b[20]! >> 4 === 4) {
    // RoCEv2 over IPv4: the IPv4 header in the last 20 bytes; GIDs are the IPv4-mapped addresses.
    return {
      sgid: ipv4ToGid(b.readUInt32BE(32)),
      dgid: ipv4ToGid(b.readUInt32BE(36)),
      trafficClass: b[21]!,
      flowLabel: 0,
      hopLimit: b[28]!,
    };
  }
  const w = b.readUInt32BE(0);
  return {
    sgid: Uint8Array.from(b.subarray(8, 24)),
    dgid: Uint8Array.from(b.subarray(24, 40)),
    trafficClass: (w >>> 20) & 0xff,
    flowLabel: w & 0xfffff,
    hopLimit: b[7]!,
  };
}

export class CmQp1 {
  readonly dev: Device;
  readonly port: number;
  readonly pd: Pd;
  readonly sendCq: Cq;
  readonly recvCq: Cq;
  readonly qp: Qp;
  readonly #recvMem = Buffer.alloc(RECV_SLOT * RECV_SLOTS);
  readonly #sendMem = Buffer.alloc(MAD_SIZE * SEND_SLOTS);
  readonly #recvMr: Mr;
  readonly #sendMr: Mr;
  readonly #freeSend: number[] = [];
  readonly #ahs = new Map<string, Ah>();
  readonly #wc = [new Wc()];
  #draining = false;
  #closed = false;
  readonly #onMad: (mad: Buffer, src: MadSource) => void;
  readonly #count: (name: string) => void;

  constructor(dev: Device, port: number, onMad: (mad: Buffer, src: MadSource) => void, count: (name: string) => void) {
    this.dev = dev;
    this.port = port;
    this.#onMad = onMad;
    this.#count = count;
    this.pd = dev.allocPd();
    this.sendCq = dev.createCq({ depth: SEND_SLOTS });
    this.recvCq = dev.createCq({ depth: RECV_SLOTS });
    this.qp = dev.openGsi(this.pd, { sendCq: this.sendCq, recvCq: this.recvCq, port, cap: { maxSendWr: SEND_SLOTS, maxRecvWr: RECV_SLOTS } });
    this.qp.toInit({ qkey: GSI_QKEY }).toRtr().toRts();
    this.#recvMr = this.pd.regMr(this.#recvMem, ['LOCAL_WRITE']);
    this.#sendMr = this.pd.regMr(this.#sendMem, ['LOCAL_WRITE']);
    for (let i = SEND_SLOTS - 1; i >= 0; i--) this.#freeSend.push(i);
    for (let i = 0; i < RECV_SLOTS; i++) this.#postRecv(i);
    this.recvCq.on('notify', this.#onNotify);
    this.recvCq.reqNotify();
  }

  #postRecv(slot: number): void {
    this.qp.postRecv({ wrId: slot, sg: [{ mr: this.#recvMr, offset: slot * RECV_SLOT, length: RECV_SLOT }] });
  }

  readonly #onNotify = (): void => {
    // 'notify' fires inside the transport's receive path: handle the MADs on a later turn.
    if (this.#draining || this.#closed) return;
    this.#draining = true;
    this.dev.sched.defer(this.#drain);
  };

  readonly #drain = (): void => {
    this.#draining = false;
    if (this.#closed || this.recvCq.closed) return;
    this.recvCq.reqNotify();
    const w = this.#wc[0]!;
    // Bounded: at most the posted receives per turn; the re-armed CQ brings us back for the rest.
    for (let n = 0; n < RECV_SLOTS && this.recvCq.poll(this.#wc, 1) === 1; n++) {
      const slot = w.wrId;
      if (w.status !== 'SUCCESS') {
        this.#count('rcvd_error_completion');
        continue; // a flush (QP1 going away): nothing to re-post
      }
      const base = slot * RECV_SLOT;
      if (w.byteLen < GRH_LEN + MAD_SIZE || !w.grh) this.#count('drop_short');
      else {
        try {
          this.#onMad(this.#recvMem.subarray(base + GRH_LEN, base + GRH_LEN + MAD_SIZE), readGrh(this.#recvMem.subarray(base, base + GRH_LEN)));
        } catch (err) {
          // The engine never throws on a received MAD; if it does, that is our bug: count and report it
          // without losing the receive buffer.
          this.#count('drop_internal_error');
          process.nextTick(() => {
            throw err;
          });
        }
      }
      if (!this.#closed) this.#postRecv(slot);
    }
  };

  #reapSends(): void {
    const w = this.#wc[0]!;
    while (!this.sendCq.closed && this.sendCq.poll(this.#wc, 1) === 1) {
      this.#freeSend.push(w.wrId);
      if (w.status !== 'SUCCESS') this.#count('send_error_completion');
    }
  }

  #ah(av: MadAv): Ah {
    const key = `${gidToHex(av.dgid)}/${av.sgidIndex}/${av.trafficClass}/${av.hopLimit}/${av.flowLabel}/${av.sl}`;
    let ah = this.#ahs.get(key);
    if (ah && ah.closed) {
      this.#ahs.delete(key);
      ah = undefined;
    }
    if (!ah) {
      if (this.#ahs.size >= AH_CACHE_MAX) this.#clearAhs();
      ah = this.pd.createAh({
        gid: av.dgid,
        port: this.port,
        sgidIndex: av.sgidIndex,
        trafficClass: av.trafficClass,
        hopLimit: av.hopLimit,
        flowLabel: av.flowLabel,
        sl: av.sl,
      });
      this.#ahs.set(key, ah);
    }
    return ah;
  }

  #clearAhs(): void {
    for (const ah of this.#ahs.values()) ah.close();
    this.#ahs.clear();
  }

  /** Sends one 256-byte MAD to the peer's QP1. False (and counted) when it could not be sent. */
  send(mad: Buffer, av: MadAv): boolean {
    if (this.#closed || this.dev.closed) return false;
    this.#reapSends();
    const slot = this.#freeSend.pop();
    if (slot === undefined) {
      this.#count('send_no_buffer');
      return false;
    }
    try {
      const ah = this.#ah(av);
      mad.copy(this.#sendMem, slot * MAD_SIZE, 0, MAD_SIZE);
      this.qp.postSend({
        wrId: slot,
        opcode: 'SEND',
        signaled: true,
        sg: [{ mr: this.#sendMr, offset: slot * MAD_SIZE, length: MAD_SIZE }],
        ud: { ah, remoteQpn: 1, remoteQkey: GSI_QKEY },
      });
      return true;
    } catch {
      // An AH to a GID that left the table (ENODATA), a QP1 in error: the MAD is lost as on a wire.
      this.#freeSend.push(slot);
      this.#count('send_error');
      return false;
    }
  }

  /** The index of `gid` in this port's GID table (RoCE v2 entry preferred), or -1. */
  gidIndex(gid: Uint8Array): number {
    if (this.dev.closed) return -1;
    const hex = gidToHex(gid);
    let found = -1;
    for (const e of this.dev.gidTable(this.port)) {
      if (gidToHex(e.gid) !== hex) continue;
      if (e.type === 'RoCE v2') return e.index;
      if (found < 0) found = e.index;
    }
    return found;
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.recvCq.off('notify', this.#onNotify);
    if (this.dev.closed) return; // the device took its objects with it
    this.#clearAhs();
    this.qp.close();
    this.#recvMr.close();
    this.#sendMr.close();
    this.sendCq.close();
    this.recvCq.close();
    this.pd.close();
  }
}
