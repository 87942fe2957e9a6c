/**
 * RoCEv2 over Node's dgram socket, bound to the device's address on port 4791:
 * the backend for IPv6, for SOFTROCE_NATIVE_RX=0, and without the addon. With
 * the addon built, the socket gets the addon's options (IPv4:
 * IP_MTU_DISCOVER = IP_PMTUDISC_DO, so Linux sends DF with IPv4 ID 0, the ID
 * our ICRC assumes; IPv6: UDP_NO_CHECK6_RX, since rxe sends a zero UDP
 * checksum) and IPv4 sends are batched with sendmmsg on its fd (udp-base.ts).
 */
import * as dgram from 'node:dgram';
import { dgramFd, loadNative } from '../../native.js';
import { VerbsError } from '../errors.js';
import { parseIpv4 } from '../gid.js';
import { UdpLinkBase, type TxSocket, type UdpLinkOptions } from './udp-base.js';

export class DgramLink extends UdpLinkBase {
  private readonly sock: dgram.Socket;
  private readonly sent = new Map<Buffer, (err: Error | null) => void>();
  protected readonly dropRefused = false;

  private constructor(o: UdpLinkOptions, sock: dgram.Socket) {
    super(o, 'dgram');
    this.sock = sock;
  }

  /** Binds the socket; throws VerbsError (EADDRINUSE, EADDRNOTAVAIL, ENODEV, EOPNOTSUPP, EPERM) with nothing left open. */
  static async open(o: UdpLinkOptions): Promise<DgramLink> {
    const family = o.address.includes(':') ? 6 : 4;
    const sock = dgram.createSocket({ type: family === 6 ? 'udp6' : 'udp4', ipv6Only: family === 6 });
    const link = new DgramLink(o, sock);
    await new Promise<void>((resolve, reject) => {
      const onErr = (e: NodeJS.ErrnoException): void => {
        sock.close();
        reject(
          new VerbsError(
            e.code === 'EADDRINUSE' ? 'EADDRINUSE' : e.code === 'EADDRNOTAVAIL' ? 'EADDRNOTAVAIL' : 'ENODEV',
            'ibv_open_device',
            `cannot bind UDP ${o.address}:${o.port ?? 4791}: ${e.message}`,
            'address',
          ),
        );
      };
      sock.once('error', onErr);
      sock.bind({ address: o.address, port: o.port ?? 4791, exclusive: true }, () => {
        sock.off('error', onErr);
        resolve();
      });
    });
    try {
      link.localPort = sock.address().port;
      const bufBytes = o.socketBufferBytes ?? 4 << 20;
      try {
        sock.setRecvBufferSize(bufBytes);
        sock.setSendBufferSize(bufBytes);
      } catch {
        /* capped by rmem_max: fine */
      }
      link.applyNative(o);
      link.mcastSendSock(sock);
    } catch (e) {
      // A bound socket must not outlive a failed open (native 'on' without the addon, SO_BINDTODEVICE):
      // the address would stay taken until the process exits.
      await link.close();
      throw e;
    }
    sock.on('message', link.onMessage);
    sock.on('error', link.onSockError);
    link.followCarrier();
    return link;
  }

  // dgram socket listeners, kept so close() can take them off (see close()).
  private readonly onMessage = (msg: Buffer, rinfo: dgram.RemoteInfo): void => {
    if (this.rx && this.up) this.rx(msg, msg.length, rinfo.address, rinfo.port);
  };
  private readonly onSockError = (e: Error): void => {
    this.emit('error', e);
  };

  /** The addon's socket options and send batching on Node's socket, when the addon is built. */
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
      if (n.setIntSockopt(fd, c['IPPROTO_IP']!, c['IP_MTU_DISCOVER']!, c['IP_PMTUDISC_DO']!) === 0) this.mcaps.ipv4IdZero = true;
    } else {
      n.setIntSockopt(fd, c['IPPROTO_UDP']!, c['UDP_NO_CHECK6_RX']!, 1);
    }
    if (o.netdev) {
      const r = n.bindToDevice(fd, o.netdev);
      if (r < 0) throw new VerbsError('EPERM', 'ibv_open_device', `SO_BINDTODEVICE ${o.netdev} failed (${r})`, 'netdev');
      this.mcaps.boundNetdev = o.netdev;
    }
    // The port reports the 'native' backend from here on (ibv_devinfo's softroce_backend: the
    // addon shapes what goes on the wire), though Node's socket carries it.
    this.mcaps.backend = 'native';
    // (no UDP GSO on Node's socket: only the addon's own socket does GSO with the ICRC fix-up)
    if (this.family === 4 && process.env['SOFTROCE_NO_BATCH'] !== '1') this.batchOn(n, fd, false);
  }

  protected sendOne(buf: Buffer, len: number, dstIp: string, dstPort: number, sport: number): void {
    let sock = this.sock;
    let via: { inflight: number } | null = null;
    if (sport !== this.localPort) {
      // A QP's flow port: its socket in the pool (udp-base.ts), Node's or the addon's.
      const e = this.txSocket(sport);
      if (e === null) {
        // closed meanwhile (the pool's cap): lost, as UDP would lose it; RC retransmits
        this.sendFailed(null);
        this.pool.release(buf);
        return;
      }
      if (e.sock === null) {
        this.sb[0] = buf;
        this.sl[0] = len;
        const r = this.native!.sendPackets(e.fd, this.sb, this.sl, 1, parseIpv4(dstIp), dstPort, 0, 0);
        if (r < 0) this.sendFailed(r);
        else this.batchStats.dgramPackets++;
        const wasEmpty = this.pool.available === 0;
        this.pool.release(buf);
        if (wasEmpty) this.emit('drain');
        return;
      }
      sock = e.sock;
      via = e;
      e.inflight++;
    }
    // dgram keeps a reference to buf until the callback: the pool buffer is not reused before.
    // One callback per pool buffer, made once, so a send allocates no closure.
    let done = this.sent.get(buf);
    if (!done) {
      // Node reports a failed sendto (ENETUNREACH with the link down, ...) only here, not as the
      // socket's 'error' event: counted as send_err like the addon's refusals (sendFailed).
      done = (err: Error | null) => {
        if (err && !this.closed) this.sendFailed(err);
        const v = this.via.get(buf);
        if (v) {
          v.inflight--;
          this.via.delete(buf);
        }
        if (this.closed) return; // the pool is gone (close()); nobody waits for 'drain'
        const wasEmpty = this.pool.available === 0;
        this.pool.release(buf);
        if (wasEmpty) this.emit('drain');
      };
      this.sent.set(buf, done);
    }
    if (via !== null) this.via.set(buf, via);
    this.batchStats.dgramPackets++;
    sock.send(buf, 0, len, dstPort, dstIp, done);
  }
  /** the flow socket each buffer Node still holds went out on (its inflight count, for the pool's eviction) */
  private readonly via = new Map<Buffer, { inflight: number }>();

  /**
   * A flow socket of Node's is bound (no addon batching: IPv6, SOFTROCE_NO_BATCH=1, no addon): it
   * gets what the port's own socket got from the addon, so its IPv4 datagrams carry ID 0 + DF too
   * (the ICRC was computed for that; rxe drops anything else).
   */
  protected override txSocketBound(sock: dgram.Socket): void {
    if (this.family !== 4 || !this.caps.ipv4IdZero) return;
    const n = loadNative();
    const fd = n ? dgramFd(sock) : -1;
    if (n && fd >= 0) n.setIntSockopt(fd, n.constants['IPPROTO_IP']!, n.constants['IP_MTU_DISCOVER']!, n.constants['IP_PMTUDISC_DO']!);
  }

  /** A flow socket's bind failed: Node dropped the sends it queued without calling back; their buffers come back here. */
  protected override txSocketFailed(e: TxSocket): void {
    const wasEmpty = this.pool.available === 0;
    for (const [buf, v] of this.via) {
      if (v !== e) continue;
      this.via.delete(buf);
      this.sendFailed(null);
      this.pool.release(buf);
    }
    e.inflight = 0;
    if (wasEmpty && this.pool.available > 0) this.emit('drain');
  }
  /** libuv still holds earlier sends queued: a batch on the fd would overtake them. */
  protected sendBlocked(): boolean {
    return this.sock.getSendQueueCount() > 0;
  }
  /** Node's socket keeps its own queue (sendBlocked): nothing waits here. */
  protected queueBehind(): boolean {
    return false;
  }
  protected sendAside(buf: Buffer, len: number, ip: string, port: number, _tos: number, sport: number): void {
    this.sendOne(buf, len, ip, port, sport);
  }

  /**
   * Releases the socket and every buffer. The dgram socket's 'close' event comes on the next
   * tick, but Node frees the socket's native handle, and with it whatever the socket's
   * listeners reach, only in libuv's close phase. A loop of awaited open()/close() calls runs
   * as one chain of microtasks and never gets there, so each closed link, with its 4 MB pool,
   * stayed reachable: 1,000 cycles kept 4.6 GB. Hence the listeners come off the socket and the
   * pool, the send callbacks and the receive slots are dropped here, whatever still holds us.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    this.flushForClose();
    this.releaseQueues();
    this.sent.clear();
    this.via.clear();
    const sock = this.sock;
    sock.off('message', this.onMessage);
    sock.off('error', this.onSockError);
    // close() of a socket whose bind failed throws ERR_SOCKET_DGRAM_NOT_RUNNING: it is closed already.
    await new Promise<void>((r) => {
      try {
        sock.close(() => r());
      } catch {
        r();
      }
    });
  }
}
