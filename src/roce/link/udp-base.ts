/**
 * What the two UDP backends share (native-link.ts, dgram-link.ts): the tx
 * pool, the receive handler, and the addon's batched sends: packets sent in one
 * turn of the event loop leave together with sendmmsg, runs of equal-size
 * packets to one destination as one UDP GSO send. Nothing is allocated per
 * packet. A backend says what happens to what a batch could not send
 * (`sendAside`) and when it must not batch at all (`sendBlocked`).
 */
import { EventEmitter } from 'node:events';
import { constants as osConstants } from 'node:os';
import { TxPool, type BatchStats, type Link, type LinkBackend, type LinkCaps, type RxHandler } from './link.js';
import type { NativeAddon } from '../../native.js';
import { parseIpv4 } from '../gid.js';
import { icrcIdDelta } from '../icrc.js';

/** The addon returns -errno. */
export const EAGAIN = osConstants.errno.EAGAIN;

export interface UdpLinkOptions {
  address: string;
  port?: number;
  /** 'auto' uses the addon when it is built; 'off' forces pure JS; 'on' fails without it */
  native?: 'auto' | 'on' | 'off';
  /** interface to bind to (SO_BINDTODEVICE, needs the addon and CAP_NET_RAW) */
  netdev?: string;
  /**
   * Read each IPv4 datagram's IP header through a raw socket (native IPv4 only, needs CAP_NET_RAW)
   * so the ICRC is checked with the real IPv4 ID: 'auto' (default) when permitted, 'off', or 'on'
   * (fail without it).
   */
  rawRx?: 'auto' | 'on' | 'off';
  txBuffers?: number;
  socketBufferBytes?: number;
}

/** caps as the backend fills them in while it opens */
export type MutableCaps = { -readonly [K in keyof LinkCaps]: LinkCaps[K] };

export abstract class UdpLinkBase extends EventEmitter implements Link {
  readonly localIp: string;
  readonly family: 4 | 6;
  localPort: number;
  readonly caps: LinkCaps;
  protected readonly mcaps: MutableCaps;
  up = true;
  protected readonly pool: TxPool;
  protected rx: RxHandler | null = null;
  protected closed = false;
  /** set when sends are batched through the addon (sendmmsg / UDP GSO on `fd`) */
  protected native: NativeAddon | null = null;
  protected fd = -1;
  private readonly qBuf: Buffer[] = [];
  private readonly qLen: number[] = [];
  private readonly qIp: string[] = [];
  private readonly qPort: number[] = [];
  private readonly qTos: number[] = [];
  private qn = 0;
  private flushing = false;
  protected readonly sb: Buffer[] = [];
  protected readonly sl: number[] = [];
  private readonly flushFn = (): void => this.flush();
  /** what the batching did, for the bench and ibv_devinfo */
  readonly batchStats: BatchStats = {
    gsoCalls: 0,
    gsoPackets: 0,
    mmsgCalls: 0,
    mmsgPackets: 0,
    dgramPackets: 0,
    rxCalls: 0,
    rxDatagrams: 0,
    rxGroSegments: 0,
    sendErrors: 0,
  };

  protected constructor(o: UdpLinkOptions, backend: LinkBackend) {
    super();
    this.localIp = o.address;
    this.family = o.address.includes(':') ? 6 : 4;
    this.localPort = o.port ?? 4791;
    this.pool = new TxPool(o.txBuffers ?? 1024);
    this.mcaps = { backend, family: this.family, ipv4IdZero: false, gsoIcrcFixup: false, batchSend: false, rawRx: false, perPacketTos: false };
    this.caps = this.mcaps;
  }

  /** Sends batched from now on through the addon on `fd` (IPv4). */
  protected batchOn(n: NativeAddon, fd: number, gso: boolean): void {
    this.native = n;
    this.fd = fd;
    this.mcaps.batchSend = true;
    this.mcaps.perPacketTos = true;
    /**
     * UDP GSO: a run of equal-size packets to one destination goes out as one
     * send the kernel cuts into datagrams. Linux numbers the segments of a DF
     * datagram with IPv4 IDs 0, 1, 2, ..., and the ICRC covers the ID, so
     * packet k's ICRC is corrected for ID k before the send (the CRC is linear
     * in the ID bits: icrc.ts icrcIdDelta). Without the correction rxe drops
     * every segment but the first. SOFTROCE_GSO=0 turns it off.
     */
    this.mcaps.gsoIcrcFixup = gso;
  }

  /** A packet a batch did not send, in order: held for the socket (native) or handed to dgram. */
  protected abstract sendAside(buf: Buffer, len: number, ip: string, port: number, tos: number): void;
  /** Unbatched send (no addon batching). */
  protected abstract sendOne(buf: Buffer, len: number, ip: string, port: number): void;
  /** Earlier packets still wait in the backend's own queue: a batch must not overtake them. */
  protected abstract sendBlocked(): boolean;
  /** Packets still wait for the socket: true when this one queued behind them (native socket only). */
  protected abstract queueBehind(buf: Buffer, len: number, ip: string, port: number, tos: number): boolean;
  /**
   * A datagram the kernel refused (unreachable, too big, ...) is lost, as UDP would lose it
   * (native socket); false: the rest goes the unbatched way (dgram).
   */
  protected abstract readonly dropRefused: boolean;

  allocTx(): Buffer | null {
    return this.pool.alloc();
  }
  freeTx(b: Buffer): void {
    this.pool.release(b);
  }
  setReceiver(h: RxHandler): void {
    this.rx = h;
  }
  send(buf: Buffer, len: number, dstIp: string, dstPort: number, tos = 0): void {
    if (this.closed) {
      this.pool.release(buf);
      return;
    }
    if (!this.native) {
      this.sendOne(buf, len, dstIp, dstPort);
      return;
    } // dgram cannot set a per-packet TOS
    const i = this.qn++;
    this.qBuf[i] = buf;
    this.qLen[i] = len;
    this.qIp[i] = dstIp;
    this.qPort[i] = dstPort;
    this.qTos[i] = tos;
    if (this.qn === 64) this.flush();
    else if (!this.flushing) {
      this.flushing = true;
      queueMicrotask(this.flushFn);
    }
  }

  /**
   * Sends what this turn queued with sendmmsg, up to 64 packets per call to
   * one destination (or, with GSO on, runs of equal-length packets as one
   * sendmsg the kernel cuts apart). Anything still queued elsewhere goes
   * first, so a batch never overtakes an earlier packet.
   */
  flush(): void {
    this.flushing = false;
    const n = this.qn;
    this.qn = 0;
    let k = 0;
    // Still waiting for the socket: everything queues behind, in order.
    while (k < n && this.queueBehind(this.qBuf[k]!, this.qLen[k]!, this.qIp[k]!, this.qPort[k]!, this.qTos[k]!)) {
      this.qBuf[k] = undefined as unknown as Buffer;
      k++;
    }
    if (k > 0) return;
    let i = 0;
    const wasEmpty = this.pool.available === 0;
    while (i < n) {
      const ip = this.qIp[i]!,
        port = this.qPort[i]!,
        tos = this.qTos[i]!;
      let j = i + 1;
      while (j < n && this.qIp[j] === ip && this.qPort[j] === port && this.qTos[j] === tos) j++;
      i = this.sendRun(i, j, ip, port, tos);
    }
    for (let m = 0; m < n; m++) {
      this.qBuf[m] = undefined as unknown as Buffer;
    }
    if (wasEmpty && this.pool.available > 0) this.emit('drain');
  }

  /** Sends queued packets [i, j) to one destination; returns j. */
  private sendRun(i: number, j: number, ip: string, port: number, tos: number): number {
    const nat = this.native!;
    const ipNum = parseIpv4(ip);
    let k = i;
    while (k < j) {
      if (ipNum < 0 || this.sendBlocked()) break;
      const L = this.qLen[k]!;
      let e = k + 1;
      const maxSeg = Math.max(1, Math.min(64, Math.floor(65000 / L)));
      while (e < j && e - k < maxSeg && this.qLen[e] === L) e++;
      if (e < j && e - k < maxSeg && this.qLen[e]! < L) e++; // a shorter last segment is allowed
      let cnt = e - k;
      let r: number;
      const sb = this.sb,
        sl = this.sl;
      if (cnt >= 2 && this.mcaps.gsoIcrcFixup) {
        for (let m = 0; m < cnt; m++) {
          sb[m] = this.qBuf[k + m]!;
          sl[m] = this.qLen[k + m]!;
        }
        // Segment m leaves with IPv4 ID m: correct its ICRC (the last 4 bytes, little-endian) for that ID.
        for (let m = 1; m < cnt; m++) xorIcrc(sb[m]!, sl[m]!, icrcIdDelta(sl[m]! + 20, m));
        r = nat.sendPackets(this.fd, sb, sl, cnt, ipNum, port, L, tos);
        if (r > 0) {
          this.batchStats.gsoCalls++;
          this.batchStats.gsoPackets += r;
        } else {
          for (let m = 1; m < cnt; m++) xorIcrc(sb[m]!, sl[m]!, icrcIdDelta(sl[m]! + 20, m)); // not sent: back to ID 0
          if (r !== -EAGAIN) {
            this.mcaps.gsoIcrcFixup = false;
            continue;
          } // no UDP GSO here: sendmmsg from now on
        }
      } else {
        // sendmmsg for everything to this destination that is left (up to 64).
        e = Math.min(j, k + 64);
        cnt = e - k;
        for (let m = 0; m < cnt; m++) {
          sb[m] = this.qBuf[k + m]!;
          sl[m] = this.qLen[k + m]!;
        }
        r = nat.sendPackets(this.fd, sb, sl, cnt, ipNum, port, 0, tos);
        if (r > 0) {
          this.batchStats.mmsgCalls++;
          this.batchStats.mmsgPackets += r;
        }
      }
      if (r < 0 && r !== -EAGAIN && this.dropRefused) {
        this.batchStats.sendErrors++;
        this.pool.release(this.qBuf[k]!);
        k++;
        continue;
      }
      if (r <= 0) break; // EAGAIN or an error: the rest goes aside, in order
      for (let m = 0; m < r; m++) this.pool.release(this.qBuf[k + m]!);
      k += r;
    }
    for (; k < j; k++) this.sendAside(this.qBuf[k]!, this.qLen[k]!, ip, port, tos);
    return j;
  }

  /** Drops every buffer and queued packet (close()): whatever still holds the link must not hold them. */
  protected releaseQueues(): void {
    this.closed = true;
    this.rx = null;
    this.pool.dispose();
    for (let k = 0; k < this.qBuf.length; k++) this.qBuf[k] = undefined as unknown as Buffer;
    this.sb.length = 0;
  }

  /** Flushes what this turn queued, then stops. */
  protected flushForClose(): void {
    if (this.qn > 0) this.flush();
  }

  abstract close(): Promise<void>;
}

/** XORs `delta` into the little-endian ICRC that ends a packet of `len` bytes. */
function xorIcrc(b: Buffer, len: number, delta: number): void {
  const o = len - 4;
  b[o] = b[o]! ^ (delta & 0xff);
  b[o + 1] = b[o + 1]! ^ ((delta >>> 8) & 0xff);
  b[o + 2] = b[o + 2]! ^ ((delta >>> 16) & 0xff);
  b[o + 3] = b[o + 3]! ^ ((delta >>> 24) & 0xff);
}
