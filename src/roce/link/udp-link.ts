/**
 * RoCEv2 over a UDP socket (Node dgram), bound to the device's address on
 * port 4791. With the native addon the socket gets IP_MTU_DISCOVER =
 * IP_PMTUDISC_DO, so Linux sends DF with IPv4 ID 0, the ID our ICRC assumes
 * (a real RoCE peer drops anything else; see the README, "ICRC outcomes"),
 * and UDP_NO_CHECK6_RX for IPv6, since rxe sends a zero UDP checksum.
 */
import * as dgram from 'node:dgram';
import { EventEmitter } from 'node:events';
import { TxPool, type Link, type RxHandler } from './link.js';
import { dgramFd, loadNative, type NativeAddon } from '../../native.js';
import { parseIpv4 } from '../gid.js';
import { VerbsError } from '../../verbs/errors.js';

export interface UdpLinkOptions {
  address: string;
  port?: number;
  /** 'auto' uses the addon when it is built; 'off' forces pure JS; 'on' fails without it */
  native?: 'auto' | 'on' | 'off';
  /** interface to bind to (SO_BINDTODEVICE, needs the addon and CAP_NET_RAW) */
  netdev?: string;
  txBuffers?: number;
  socketBufferBytes?: number;
}

export class UdpLink extends EventEmitter implements Link {
  readonly localIp: string;
  readonly family: 4 | 6;
  localPort: number;
  backend = 'dgram';
  ipv4IdZero = false;
  up = true;
  private readonly sock: dgram.Socket;
  private readonly pool: TxPool;
  private rx: RxHandler | null = null;
  private closed = false;
  private readonly sent = new Map<Buffer, () => void>();
  // Send batching (native only): packets sent in one turn of the event loop are flushed together.
  private native: NativeAddon | null = null;
  private fd = -1;
  /**
   * UDP GSO is off: the kernel numbers GSO segments with IPv4 IDs 0, 1, 2, ...
   * while each ICRC was computed for ID 0, so every segment after the first
   * fails the ICRC at a real peer (rxe drops it; softroce peers recover the ID
   * and do not notice). Using GSO needs each packet's ICRC corrected for its
   * segment index at flush time (the ICRC is linear in the ID: see icrc.ts);
   * until then sendmmsg sends each packet as its own datagram, with ID 0.
   * SOFTROCE_GSO=1 turns it on for softroce-only experiments.
   */
  private gso = process.env['SOFTROCE_GSO'] === '1';
  private readonly qBuf: Buffer[] = [];
  private readonly qLen: number[] = [];
  private readonly qIp: string[] = [];
  private readonly qPort: number[] = [];
  private qn = 0;
  private flushing = false;
  private readonly sb: Buffer[] = [];
  private readonly sl: number[] = [];
  private readonly flushFn = (): void => this.flush();
  /** what the batching did, for the bench and ibv_devinfo */
  readonly batchStats = { gsoCalls: 0, gsoPackets: 0, mmsgCalls: 0, mmsgPackets: 0, dgramPackets: 0 };

  private constructor(o: UdpLinkOptions, sock: dgram.Socket) {
    super();
    this.localIp = o.address;
    this.family = o.address.includes(':') ? 6 : 4;
    this.localPort = o.port ?? 4791;
    this.sock = sock;
    this.pool = new TxPool(o.txBuffers ?? 1024);
  }

  static async open(o: UdpLinkOptions): Promise<UdpLink> {
    const family = o.address.includes(':') ? 6 : 4;
    const sock = dgram.createSocket({ type: family === 6 ? 'udp6' : 'udp4', ipv6Only: family === 6 });
    const link = new UdpLink(o, sock);
    await new Promise<void>((resolve, reject) => {
      const onErr = (e: NodeJS.ErrnoException): void => {
        sock.close();
        reject(new VerbsError(e.code === 'EADDRINUSE' ? 'EADDRINUSE' : e.code === 'EADDRNOTAVAIL' ? 'EADDRNOTAVAIL' : 'ENODEV',
          'ibv_open_device', `cannot bind UDP ${o.address}:${o.port ?? 4791}: ${e.message}`, 'address'));
      };
      sock.once('error', onErr);
      sock.bind({ address: o.address, port: o.port ?? 4791, exclusive: true }, () => {
        sock.off('error', onErr);
        resolve();
      });
    });
    link.localPort = sock.address().port;
    const bufBytes = o.socketBufferBytes ?? 4 << 20;
    try { sock.setRecvBufferSize(bufBytes); sock.setSendBufferSize(bufBytes); } catch { /* capped by rmem_max: fine */ }
    link.applyNative(o);
    sock.on('message', (msg, rinfo) => { if (link.rx && link.up) link.rx(msg, msg.length, rinfo.address, rinfo.port); });
    sock.on('error', (e) => link.emit('error', e));
    return link;
  }

  private applyNative(o: UdpLinkOptions): void {
    const mode = o.native ?? 'auto';
    if (mode === 'off') return;
    const n = loadNative();
    if (!n) {
      if (mode === 'on') throw new VerbsError('EOPNOTSUPP', 'ibv_open_device', 'native addon not built (npm install builds it)', 'native');
      return;
    }
    const fd = dgramFd(this.sock);
    if (fd < 0) return;
    const c = n.constants;
    if (this.family === 4) {
      // IBA A17 / Linux: DF + ID 0 makes the ICRC predictable (lab README, "Host-side stacks").
      if (n.setIntSockopt(fd, c['IPPROTO_IP']!, c['IP_MTU_DISCOVER']!, c['IP_PMTUDISC_DO']!) === 0) this.ipv4IdZero = true;
    } else {
      n.setIntSockopt(fd, c['IPPROTO_UDP']!, c['UDP_NO_CHECK6_RX']!, 1);
    }
    if (o.netdev) {
      const r = n.bindToDevice(fd, o.netdev);
      if (r < 0) throw new VerbsError('EPERM', 'ibv_open_device', `SO_BINDTODEVICE ${o.netdev} failed (${r})`, 'netdev');
    }
    this.backend = 'native';
    if (this.family === 4 && process.env['SOFTROCE_NO_BATCH'] !== '1') {
      this.native = n;
      this.fd = fd;
    }
  }

  /** IP_TOS / IPV6_TCLASS for the traffic class of the next datagrams (addon only). */
  setTrafficClass(tc: number): boolean {
    const n = loadNative();
    if (!n) return false;
    const c = n.constants;
    const fd = dgramFd(this.sock);
    return this.family === 4
      ? n.setIntSockopt(fd, c['IPPROTO_IP']!, c['IP_TOS']!, tc) === 0
      : n.setIntSockopt(fd, c['IPPROTO_IPV6']!, c['IPV6_TCLASS']!, tc) === 0;
  }

  allocTx(): Buffer | null {
    return this.pool.alloc();
  }
  freeTx(b: Buffer): void {
    this.pool.release(b);
  }
  send(buf: Buffer, len: number, dstIp: string, dstPort: number): void {
    if (this.closed) { this.pool.release(buf); return; }
    if (!this.native) { this.dgramSend(buf, len, dstIp, dstPort); return; }
    const i = this.qn++;
    this.qBuf[i] = buf; this.qLen[i] = len; this.qIp[i] = dstIp; this.qPort[i] = dstPort;
    if (this.qn === 64) this.flush();
    else if (!this.flushing) { this.flushing = true; queueMicrotask(this.flushFn); }
  }

  private dgramSend(buf: Buffer, len: number, dstIp: string, dstPort: number): void {
    // dgram keeps a reference to buf until the callback: the pool buffer is not reused before.
    // One callback per pool buffer, made once, so a send allocates no closure.
    let done = this.sent.get(buf);
    if (!done) {
      done = () => {
        const wasEmpty = this.pool.available === 0;
        this.pool.release(buf);
        if (wasEmpty) this.emit('drain');
      };
      this.sent.set(buf, done);
    }
    this.batchStats.dgramPackets++;
    this.sock.send(buf, 0, len, dstPort, dstIp, done);
  }

  /**
   * Sends what this turn queued with sendmmsg, up to 64 packets per call to
   * one destination (or, with GSO on, runs of equal-length packets as one
   * sendmsg the kernel cuts apart). Anything libuv still holds queued goes
   * first, so a batch never overtakes an earlier packet.
   */
  flush(): void {
    this.flushing = false;
    const n = this.qn;
    this.qn = 0;
    let i = 0;
    const wasEmpty = this.pool.available === 0;
    while (i < n) {
      const ip = this.qIp[i]!, port = this.qPort[i]!;
      let j = i + 1;
      while (j < n && this.qIp[j] === ip && this.qPort[j] === port) j++;
      i = this.sendRun(i, j, ip, port);
    }
    for (let k = 0; k < n; k++) { this.qBuf[k] = undefined as unknown as Buffer; }
    if (wasEmpty && this.pool.available > 0) this.emit('drain');
  }

  /** Sends queued packets [i, j) to one destination; returns j. */
  private sendRun(i: number, j: number, ip: string, port: number): number {
    const nat = this.native!;
    const ipNum = parseIpv4(ip);
    let k = i;
    while (k < j) {
      if (ipNum < 0 || this.sock.getSendQueueCount() > 0) break;
      const L = this.qLen[k]!;
      let e = k + 1;
      const maxSeg = Math.max(1, Math.min(64, Math.floor(65000 / L)));
      while (e < j && e - k < maxSeg && this.qLen[e] === L) e++;
      if (e < j && e - k < maxSeg && this.qLen[e]! < L) e++; // a shorter last segment is allowed
      let cnt = e - k;
      let r: number;
      const sb = this.sb, sl = this.sl;
      if (cnt >= 2 && this.gso) {
        for (let m = 0; m < cnt; m++) { sb[m] = this.qBuf[k + m]!; sl[m] = this.qLen[k + m]!; }
        r = nat.sendPackets(this.fd, sb, sl, cnt, ipNum, port, L);
        if (r > 0) { this.batchStats.gsoCalls++; this.batchStats.gsoPackets += r; }
        else if (r !== -11) { this.gso = false; continue; } // no UDP GSO here: sendmmsg from now on
      } else {
        // sendmmsg for everything to this destination that is left (up to 64).
        e = Math.min(j, k + 64);
        cnt = e - k;
        for (let m = 0; m < cnt; m++) { sb[m] = this.qBuf[k + m]!; sl[m] = this.qLen[k + m]!; }
        r = nat.sendPackets(this.fd, sb, sl, cnt, ipNum, port, 0);
        if (r > 0) { this.batchStats.mmsgCalls++; this.batchStats.mmsgPackets += r; }
      }
      if (r <= 0) break; // EAGAIN or an error: dgram below queues the rest in order
      for (let m = 0; m < r; m++) this.pool.release(this.qBuf[k + m]!);
      k += r;
    }
    for (; k < j; k++) this.dgramSend(this.qBuf[k]!, this.qLen[k]!, ip, port);
    return j;
  }

  setReceiver(h: RxHandler): void {
    this.rx = h;
  }
  async close(): Promise<void> {
    if (this.closed) return;
    if (this.qn > 0) this.flush();
    this.closed = true;
    this.rx = null;
    await new Promise<void>((r) => this.sock.close(() => r()));
  }
}
