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
import { dgramFd, loadNative } from '../../native.js';
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
    this.sock.send(buf, 0, len, dstPort, dstIp, done);
  }
  setReceiver(h: RxHandler): void {
    this.rx = h;
  }
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.rx = null;
    await new Promise<void>((r) => this.sock.close(() => r()));
  }
}
