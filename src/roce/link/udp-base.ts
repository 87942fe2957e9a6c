/**
 * What the two UDP backends share (native-link.ts, dgram-link.ts): the tx
 * pool, the receive handler, and the addon's batched sends: packets sent in one
 * turn of the event loop leave together with sendmmsg, runs of equal-size
 * packets to one destination as one UDP GSO send. Nothing is allocated per
 * packet. A backend says what happens to what a batch could not send
 * (`sendAside`) and when it must not batch at all (`sendBlocked`).
 */
import { MONO, monoTick } from '../clock.js';
import { atTurnEnd } from '../sched.js';
import { EventEmitter } from 'node:events';
import * as dgram from 'node:dgram';
import { closeSync } from 'node:fs';
import { constants as osConstants } from 'node:os';
import { TxPool, isMulticastIp, type BatchStats, type Link, type LinkBackend, type LinkCaps, type RxHandler, type SegmentRun } from './link.js';
import { dgramFd, loadNative, type NativeAddon } from '../../native.js';
import { parseIpv4 } from '../gid.js';
import { icrcIdDelta } from '../icrc.js';
import { watchCarrier, type CarrierWatch } from './carrier.js';

/** The addon returns -errno. */
export const EAGAIN = osConstants.errno.EAGAIN;
/** An RC response (IBA 9.2.1 table 38: RDMA READ response first..only, ACKNOWLEDGE, ATOMIC ACKNOWLEDGE); `b` starts with the BTH. */
function isResponse(b: Buffer): boolean {
  const op = b[0]!;
  return op >= 0x0d && op <= 0x12;
}

/** The send queue's columns (UdpLinkBase's qBuf, qLen, ...), or a scratch of the same shape. */
interface Slots {
  buf: Buffer[];
  len: number[];
  ip: string[];
  port: number[];
  tos: number[];
  sport: number[];
}

/** d[di] = s[si], every column. */
function copySlot(d: Slots, di: number, s: Slots, si: number): void {
  d.buf[di] = s.buf[si]!;
  d.len[di] = s.len[si]!;
  d.ip[di] = s.ip[si]!;
  d.port[di] = s.port[si]!;
  d.tos[di] = s.tos[si]!;
  d.sport[di] = s.sport[si]!;
}

/** The BTH DestQP (bytes 5..7) of a packet that starts with its BTH. */
function destQp(b: Buffer): number {
  return (b[5]! << 16) | (b[6]! << 8) | b[7]!;
}

/** Send errors about the destination, not about UDP GSO: a GSO send refused with one of them keeps GSO on. */
const NOT_GSO_ERRORS: ReadonlySet<number> = new Set(
  (['ENETUNREACH', 'EHOSTUNREACH', 'ENETDOWN', 'EACCES', 'EPERM', 'ECONNREFUSED'] as const).map((n) => osConstants.errno[n]),
);

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
  /**
   * Most send sockets open at once for flow source ports (TxSockets below); default 256.
   * 0: every datagram leaves from the port's own socket (localPort).
   */
  txSockets?: number;
  /**
   * Past the cap, a send socket is closed for a new flow port only once it has gone this long
   * unchosen (default TX_SOCKET_IDLE_MS); until then the new port's datagrams leave from localPort.
   * 0: plain LRU, whatever the socket's age.
   */
  txSocketIdleMs?: number;
  /**
   * The TX fast path (issue 15, Link.sendSegments): true (default) where the addon has it (native
   * IPv4), unless SOFTROCE_NO_FASTPATH=1 (read when the link opens); false: every packet goes the
   * per-packet way (tests compare the two).
   */
  fastPath?: boolean;
  /**
   * RX direct placement (issue 15; native IPv4 link with the fast path on): on by default; false: off
   * alone, the rest of the fast path kept (tests compare the two).
   */
  rxPlacement?: boolean;
}

/**
 * One send socket of the pool: bound to (local address, flow source port), shared by every QP of
 * the link whose flow hashes to that port.
 */
export interface TxSocket {
  readonly port: number;
  /** the addon's socket (IPv4 with the addon), or -1 */
  fd: number;
  /** Node's socket (without the addon, IPv6), or null */
  sock: dgram.Socket | null;
  /** datagrams can leave from it (false once closed) */
  ready: boolean;
  /** the flush turn it was last chosen in (native batching: queued packets still need it) */
  lastTurn: number;
  /** when it was last chosen (performance.now(); batched: when that turn began) */
  lastMs: number;
  /** sends Node still holds a buffer for (Node's socket): closing it then would lose the buffer */
  inflight: number;
}

/** What the flow-port pool did (tests, ibv_devinfo): sockets opened, closed to stay under the cap, and datagrams that left from localPort instead. */
export interface TxSocketStats {
  opened: number;
  evicted: number;
  fallbacks: number;
  bindErrors: number;
}

/**
 * Linux's IPv4 multicast socket options (linux/in.h), not among the addon's constants: set through
 * its setIntSockopt where the addon is built.
 */
export const IP_MULTICAST_TTL = 33;
export const IP_MULTICAST_ALL = 49;
/**
 * The TTL of what a link sends to an IPv4 group: 64, the hop limit rdma_cm gives a RoCEv2 IPv4 group
 * (cma_iboe_join_multicast: IPV6_DEFAULT_HOPLIMIT), which rxe puts in the IP header. Linux's default
 * for a socket's multicast is 1. Per socket, not per AH (the AH's hop limit is not applied).
 */
export const MCAST_TTL = 64;

/** A joined multicast group: its receive socket (Node's, bound to group:localPort with SO_REUSEADDR). */
interface GroupSocket {
  readonly sock: dgram.Socket;
  refs: number;
  /** 0 once bound and joined, or -errno */
  readonly ready: Promise<number>;
}

/** Default bound on a link's flow-port send sockets (file descriptors). */
export const TX_SOCKET_CAP = 256;
/**
 * Default age (ms unchosen) before a flow-port socket may be closed for another port. More busy
 * flows than the cap made plain LRU close and open a socket for nearly every message (1,000 QPs
 * round-robin over 256 sockets all miss): ~20,000 socket()/setsockopt()/bind()/close() a second,
 * each attaching (and JIT-compiling, then freeing with a TLB flush on every CPU) the socket's
 * filter. Now the busy sockets stay and the flows beyond the cap leave from localPort.
 */
export const TX_SOCKET_IDLE_MS = 1000;

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
  private readonly qSport: number[] = [];
  private qn = 0;
  /** the send queue's columns as one value, for copying an entry (requestsFirst) */
  private readonly q: Slots = { buf: this.qBuf, len: this.qLen, ip: this.qIp, port: this.qPort, tos: this.qTos, sport: this.qSport };
  /** requestsFirst's scratch (the run's responses while its requests move up), kept for reuse */
  private readonly resp: Slots = { buf: [], len: [], ip: [], port: [], tos: [], sport: [] };
  /**
   * The flow-port pool: a send socket per flow source port, opened on demand, at most `txCap`
   * open. Past the cap the least recently chosen socket that nothing waits on is closed for the
   * new port if it has gone txIdleMs unchosen; when every open one is busy (chosen in this turn,
   * or Node holds a send on it) or was chosen more recently, the datagram leaves from localPort instead (counted: txStats.fallbacks) with its ICRC computed for
   * that port, so it is still a valid RoCEv2 packet. A port that cannot be bound (another
   * program's socket holds it without SO_REUSEADDR) falls back the same way, for good.
   */
  protected readonly txs = new Map<number, TxSocket>();
  private readonly failedPorts = new Set<number>();
  protected readonly txCap: number;
  private readonly txIdleMs: number;
  private turn = 0;
  /** performance.now() when turn `turnMsOf` first chose a socket (one clock read per turn) */
  private turnMs = 0;
  private turnMsOf = -1;
  /** evictOne: no socket may go before this time */
  private noEvictBefore = 0;
  protected readonly socketBufferBytes: number;
  protected readonly netdev: string;
  readonly txStats: TxSocketStats = { opened: 0, evicted: 0, fallbacks: 0, bindErrors: 0 };
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
    this.txCap = o.txSockets ?? TX_SOCKET_CAP;
    this.txIdleMs = o.txSocketIdleMs ?? TX_SOCKET_IDLE_MS;
    this.socketBufferBytes = o.socketBufferBytes ?? 4 << 20;
    this.netdev = o.netdev ?? '';
    this.mcaps = {
      backend,
      family: this.family,
      ipv4IdZero: false,
      gsoIcrcFixup: false,
      batchSend: false,
      rawRx: false,
      perPacketTos: false,
      flowSrcPort: this.txCap > 0,
    };
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
  protected abstract sendAside(buf: Buffer, len: number, ip: string, port: number, tos: number, sport: number): void;
  /** The TX fast path (Link.sendSegments), set when the link opens with it on (NativeLink.open). */
  sendSegments?: (run: SegmentRun) => number;

  /**
   * Link.sendSegments: what this turn queued goes first (order), nothing may overtake packets held
   * for the socket (then 0: the caller's per-packet sends queue behind them). The datagrams leave
   * from the flow port's socket (sourcePort, as finishAndSend asks it per packet: the pool's
   * figures count the same), with GSO as sendRun would use it. A refusal that is not EAGAIN sends
   * nothing and returns 0, so the per-packet path meets it and reports it as before; one that says
   * the kernel has no UDP GSO turns GSO off for the link, as sendRun does, and the run goes again.
   */
  protected sendRunFast(run: SegmentRun): number {
    const nat = this.native;
    if (this.closed || nat === null || nat.txSegments === undefined || run.n <= 0) return 0;
    if (this.qn > 0) this.flush();
    if (this.sendBlocked() || this.heldPackets()) return 0;
    const sp = this.sourcePort(run.srcPort);
    const fd = this.fdFor(sp);
    let r = -EAGAIN;
    if (fd >= 0) {
      for (;;) {
        const gso = this.mcaps.gsoIcrcFixup;
        r = nat.txSegments(fd, run.dstIpNum, run.dstPort, run.tos, run.srcIpNum, sp, gso ? 1 : 0, run.hdr, run.meta, run.n, run.bufs, run.pieces, run.nPieces);
        if (r < 0 && gso && r !== -EAGAIN && !NOT_GSO_ERRORS.has(-r) && r !== -osConstants.errno.E2BIG && r !== -osConstants.errno.EINVAL) {
          this.mcaps.gsoIcrcFixup = false;
          continue;
        }
        break;
      }
    }
    const sent = r > 0 ? r : 0;
    // sourcePort counted one fallback; the per-packet path counts one per datagram.
    if (sp !== run.srcPort && run.srcPort !== this.localPort) this.txStats.fallbacks += sent - 1;
    if (sent > 0) {
      this.batchStats.fastTxCalls = (this.batchStats.fastTxCalls ?? 0) + 1;
      this.batchStats.fastTxPackets = (this.batchStats.fastTxPackets ?? 0) + sent;
    }
    return sent;
  }
  /** Packets still wait for the socket (native: its hold queue); a fast run must not overtake them. */
  protected heldPackets(): boolean {
    return false;
  }

  /** Unbatched send (no addon batching), from flow port `sport` (localPort: the port's own socket). */
  protected abstract sendOne(buf: Buffer, len: number, ip: string, port: number, sport: number): void;
  /** Earlier packets still wait in the backend's own queue: a batch must not overtake them. */
  protected abstract sendBlocked(): boolean;
  /** Packets still wait for the socket: true when this one queued behind them (native socket only). */
  protected abstract queueBehind(buf: Buffer, len: number, ip: string, port: number, tos: number, sport: number): boolean;
  /**
   * A datagram the kernel refused (unreachable, too big, ...) is lost, as UDP would lose it
   * (native socket); false: the rest goes the unbatched way (dgram).
   */
  protected abstract readonly dropRefused: boolean;

  /**
   * A datagram the kernel refused (ENETUNREACH with the link down, EMSGSIZE, ...) or that had no
   * socket left to leave from is lost, as UDP loses it; rxe counts such a failed transmit as send_err
   * (rxe_xmit_packet). Counted here in the backend's figure and reported as 'error', which the
   * device's port counts as send_err (port.ts wireLink). Not the hot path: an Error per failure is fine.
   */
  protected sendFailed(errno: number | Error | null): void {
    this.batchStats.sendErrors++;
    if (this.listenerCount('error') === 0) return;
    const e = errno instanceof Error ? errno : new Error(`send failed (${errno === null ? 'no socket' : `errno ${-errno}`})`);
    this.emit('error', e);
  }

  allocTx(): Buffer | null {
    return this.pool.alloc();
  }
  freeTx(b: Buffer): void {
    this.pool.release(b);
  }
  setReceiver(h: RxHandler): void {
    this.rx = h;
  }

  private readonly groups = new Map<string, GroupSocket>();

  /**
   * Link.joinGroup for IPv4: a socket of Node's bound to group:localPort (SO_REUSEADDR, so several
   * devices of the host can each have theirs) that joins the group on the port's address
   * (IP_ADD_MEMBERSHIP with imr_interface = localIp: the IGMP report leaves by that interface). Its
   * datagrams go to the receiver like the unicast socket's, with `group` set. With the addon the socket
   * also gets IP_MULTICAST_ALL off (else Linux hands it the group's datagrams that arrived on any
   * interface where anyone on the host joined the group) and the port's netdev (SO_BINDTODEVICE) when
   * the link has one. IPv6 groups: -EOPNOTSUPP (rdma_cm has no RoCEv2 IPv6 multicast either).
   */
  joinGroup(groupIp: string): number {
    if (this.closed) return -osConstants.errno.EBADF;
    if (!isMulticastIp(groupIp) || groupIp.includes(':') !== (this.family === 6)) return -osConstants.errno.EINVAL;
    const had = this.groups.get(groupIp);
    if (had !== undefined) {
      had.refs++;
      return 0;
    }
    if (this.family === 6) return -osConstants.errno.EOPNOTSUPP;
    const sock = dgram.createSocket({ type: 'udp4', reuseAddr: true });
    const ready = new Promise<number>((resolve) => {
      const fail = (e: NodeJS.ErrnoException): void => {
        const code = e.code !== undefined ? osConstants.errno[e.code as keyof typeof osConstants.errno] : undefined;
        resolve(-(code ?? osConstants.errno.EINVAL));
        if (this.groups.get(groupIp)?.sock === sock) this.groups.delete(groupIp);
        try {
          sock.close();
        } catch {
          /* never bound */
        }
      };
      sock.once('error', fail);
      sock.bind({ address: groupIp, port: this.localPort }, () => {
        try {
          const n = loadNative();
          const fd = n !== null ? dgramFd(sock) : -1;
          if (n !== null && fd >= 0) {
            n.setIntSockopt(fd, n.constants['IPPROTO_IP']!, IP_MULTICAST_ALL, 0);
            if (this.netdev !== '') n.bindToDevice(fd, this.netdev);
          }
          sock.addMembership(groupIp, this.localIp);
          sock.off('error', fail);
          sock.on('error', () => {
            /* a receive socket's late error: its datagrams are lost, as UDP loses them */
          });
          resolve(0);
        } catch (e) {
          fail(e as NodeJS.ErrnoException);
        }
      });
    });
    sock.on('message', (msg: Buffer, rinfo: dgram.RemoteInfo) => {
      if (this.rx !== null && this.up) this.rx(msg, msg.length, rinfo.address, rinfo.port, -1, groupIp);
    });
    this.groups.set(groupIp, { sock, refs: 1, ready });
    return 0;
  }

  leaveGroup(groupIp: string): number {
    const g = this.groups.get(groupIp);
    if (g === undefined) return -osConstants.errno.EINVAL;
    if (--g.refs > 0) return 0;
    this.groups.delete(groupIp);
    closeGroupSocket(g.sock);
    return 0;
  }

  groupJoined(groupIp: string): Promise<number> {
    return this.groups.get(groupIp)?.ready ?? Promise.resolve(-osConstants.errno.EINVAL);
  }

  /** close(): every group socket goes (closing a socket drops its memberships: IGMP leave). */
  protected closeGroups(): void {
    for (const g of this.groups.values()) closeGroupSocket(g.sock);
    this.groups.clear();
  }

  /** Multicast sends from the addon's socket `fd` leave with MCAST_TTL (IP_MULTICAST_LOOP is on by default). */
  protected mcastSendFd(fd: number): void {
    const n = this.native ?? loadNative();
    if (n !== null && this.family === 4) n.setIntSockopt(fd, n.constants['IPPROTO_IP']!, IP_MULTICAST_TTL, MCAST_TTL);
  }
  /** The same for a socket of Node's (bound): TTL, and the port's address as the multicast interface. */
  protected mcastSendSock(sock: dgram.Socket): void {
    try {
      sock.setMulticastTTL(MCAST_TTL);
      if (this.family === 4) sock.setMulticastInterface(this.localIp);
    } catch {
      /* not bound any more */
    }
  }
  /** The open send socket of flow port `sport`, or null (localPort's own socket is not in the pool). */
  protected txSocket(sport: number): TxSocket | null {
    const e = this.txs.get(sport);
    return e !== undefined && e.ready ? e : null;
  }

  /** The number of file descriptors the flow-port pool holds now (tests and the fd figure of issue 12). */
  get txSocketCount(): number {
    return this.txs.size;
  }

  sourcePort(want: number): number {
    if (want === this.localPort || this.closed) return this.localPort;
    let e = this.txs.get(want);
    this.tickClock();
    if (e === undefined) {
      if (this.txCap <= 0 || this.failedPorts.has(want) || (this.txs.size >= this.txCap && !this.evictOne(this.turnMs))) {
        this.txStats.fallbacks++;
        return this.localPort;
      }
      const opened = this.openTxSocket(want);
      if (opened === null) {
        this.failedPorts.add(want);
        this.txStats.bindErrors++;
        this.txStats.fallbacks++;
        return this.localPort;
      }
      e = opened;
      this.txs.set(want, e);
      this.txStats.opened++;
    }
    e.lastTurn = this.turn;
    // A field to a field: a clock value returned from a call that is not inlined is a heap number,
    // one per turn on a responder sending ACKs (issue 15's heap check).
    e.lastMs = this.turnMs;
    return want;
  }

  /** Sets turnMs, the time a socket chosen now is stamped with: batched, one clock read per flush turn. */
  private tickClock(): void {
    if (this.native !== null && this.turnMsOf === this.turn) return;
    this.turnMsOf = this.turn;
    monoTick();
    this.turnMs = MONO[0]!;
  }

  private clockMs(): number {
    this.tickClock();
    return this.turnMs;
  }

  /** Node's send socket is bound: the backend applies the options its own socket has (DgramLink: IP_PMTUDISC_DO). */
  protected txSocketBound(_sock: dgram.Socket): void {}

  /** Node's send socket `e` failed (its bind): the buffers it held will never come back by callback. */
  protected txSocketFailed(_e: TxSocket): void {}

  /**
   * Closes the least recently chosen send socket nothing waits on (LRU) if it has gone txIdleMs
   * unchosen; false when none may go (all busy, or all chosen too recently).
   */
  private evictOne(now: number): boolean {
    // No socket can have gone txIdleMs unchosen before this (a socket's lastMs only grows): the
    // flows past the cap miss at every packet, and each miss scanned all the sockets.
    if (now < this.noEvictBefore) return false;
    let victim: TxSocket | null = null;
    let oldest = Infinity;
    for (const e of this.txs.values()) {
      if (e.lastMs < oldest) oldest = e.lastMs;
      // Batched (the addon): packets of this turn wait in the queue for the sockets chosen in it.
      // Unbatched: send() follows sourcePort() at once; Node holds only what `inflight` counts.
      if ((this.native !== null && e.lastTurn >= this.turn) || e.inflight > 0 || !e.ready) continue;
      if (victim === null || e.lastMs < victim.lastMs) victim = e;
    }
    if (victim === null || now - victim.lastMs < this.txIdleMs) {
      this.noEvictBefore = oldest + this.txIdleMs;
      return false;
    }
    this.txs.delete(victim.port);
    this.closeTxSocket(victim);
    this.txStats.evicted++;
    return true;
  }

  /**
   * A send socket bound to (localIp, port): the addon's (IPv4, sync) when batching through it,
   * else Node's (a bind error closes it and marks the port failed). null when the addon's bind fails.
   */
  private openTxSocket(port: number): TxSocket | null {
    const n = this.native;
    if (n !== null && n.udpOpenTx4 !== undefined && this.family === 4) {
      const fd = n.udpOpenTx4(parseIpv4(this.localIp), port, this.socketBufferBytes, this.netdev);
      if (fd < 0) return null;
      this.mcastSendFd(fd);
      return { port, fd, sock: null, ready: true, lastTurn: this.turn, lastMs: this.clockMs(), inflight: 0 };
    }
    // Node's socket binds asynchronously but queues what is sent meanwhile and sends it once bound,
    // so the port is usable at once. If the bind fails (a foreign socket holds the port without
    // SO_REUSEADDR), Node drops that queue without calling back: txSocketFailed gives the buffers back.
    const sock = dgram.createSocket({ type: this.family === 6 ? 'udp6' : 'udp4', reuseAddr: true, ipv6Only: this.family === 6 });
    const e: TxSocket = { port, fd: -1, sock, ready: true, lastTurn: this.turn, lastMs: this.clockMs(), inflight: 0 };
    let failed = false;
    sock.on('error', () => {
      if (failed) return;
      failed = true;
      if (this.txs.get(port) === e) this.txs.delete(port);
      this.failedPorts.add(port);
      this.txStats.bindErrors++;
      this.closeTxSocket(e);
      if (!this.closed) this.txSocketFailed(e);
    });
    // The bind callback runs before Node sends what it queued (both wait for 'listening', this first).
    sock.bind({ address: this.localIp, port, exclusive: true }, () => {
      try {
        sock.setSendBufferSize(this.socketBufferBytes);
      } catch {
        /* capped by wmem_max: fine */
      }
      this.mcastSendSock(sock);
      if (!failed) this.txSocketBound(sock);
    });
    return e;
  }

  private closeTxSocket(e: TxSocket): void {
    e.ready = false;
    if (e.fd >= 0) {
      closeSync(e.fd);
      e.fd = -1;
    }
    if (e.sock !== null) {
      const sock = e.sock;
      e.sock = null;
      try {
        sock.close();
      } catch {
        /* never bound */
      }
    }
  }

  /** Closes every send socket of the pool (close()). */
  protected closeTxSockets(): void {
    for (const e of this.txs.values()) this.closeTxSocket(e);
    this.txs.clear();
  }

  /** The fd a batch to flow port `sport` goes out on: the port's own for localPort, -1 when its socket is gone. */
  protected fdFor(sport: number): number {
    if (sport === this.localPort) return this.fd;
    const e = this.txs.get(sport);
    return e !== undefined && e.ready ? e.fd : -1;
  }

  send(buf: Buffer, len: number, dstIp: string, dstPort: number, tos = 0, srcPort = this.localPort): void {
    if (this.closed) {
      this.pool.release(buf);
      return;
    }
    if (!this.native) {
      this.sendOne(buf, len, dstIp, dstPort, srcPort);
      return;
    } // dgram cannot set a per-packet TOS
    const i = this.qn++;
    this.qBuf[i] = buf;
    this.qLen[i] = len;
    this.qIp[i] = dstIp;
    this.qPort[i] = dstPort;
    this.qTos[i] = tos;
    this.qSport[i] = srcPort;
    if (this.qn === 64) this.flush();
    else if (!this.flushing) {
      this.flushing = true;
      // At the end of the turn's work (sched.ts atTurnEnd), after every promise continuation of
      // this turn: a coalesced ACK (queued at the end of a receive batch) then leaves in one
      // sendmmsg with the application's answer to the request it acknowledges (posted from an
      // awaiting continuation): one syscall instead of two, and the peer reads both in one batch
      // (issue 15, ib_send_lat).
      atTurnEnd(this.flushFn);
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
    if (n === 0) return; // flushed already (a full batch, or busy polling): the tick finds nothing
    this.qn = 0;
    let k = 0;
    // Still waiting for the socket: everything queues behind, in order.
    while (k < n && this.queueBehind(this.qBuf[k]!, this.qLen[k]!, this.qIp[k]!, this.qPort[k]!, this.qTos[k]!, this.qSport[k]!)) {
      this.qBuf[k] = undefined as unknown as Buffer;
      k++;
    }
    if (k > 0) {
      this.turn++;
      return;
    }
    this.responsesLast(n);
    let i = 0;
    const wasEmpty = this.pool.available === 0;
    while (i < n) {
      const ip = this.qIp[i]!,
        port = this.qPort[i]!,
        tos = this.qTos[i]!,
        sport = this.qSport[i]!;
      let j = i + 1;
      while (j < n && this.qIp[j] === ip && this.qPort[j] === port && this.qTos[j] === tos && this.qSport[j] === sport) j++;
      i = this.sendRun(i, j, ip, port, tos, sport);
    }
    for (let m = 0; m < n; m++) {
      this.qBuf[m] = undefined as unknown as Buffer;
    }
    // The sockets chosen for this turn's packets may be closed for other ports from now on.
    this.turn++;
    if (wasEmpty && this.pool.available > 0) this.emit('drain');
  }

  /**
   * Moves RC responses (READ responses, ACK/NAK, ATOMIC ACK: BTH opcodes 0x0d..0x12) behind the
   * requests that follow them in a run of the batch to one QP (same destination address, port
   * and BTH DestQP), each kind keeping its order. A ping-pong's coalesced ACK is queued at the end
   * of the receive batch, before the application's answer: sent first as its own datagram, it
   * woke the peer, which read the ACK alone and then waited for the answer (ib_send_lat 64 B and
   * ib_write_lat 2 B took ~1.8x ib_send_lat 2 B, whose ACK and answer are one GSO send). A QP's
   * requester and responder are separate streams (IBA 9.7: the requester's PSNs and the
   * responder's are unrelated), so only their relative order changes, never a stream's own. Other
   * QPs' packets keep their order against these: a DREQ on QP1 still follows the ACKs queued
   * before it (ucmatose: the peer flushed sends whose ACKs came after its disconnect).
   */
  private responsesLast(n: number): void {
    const b = this.qBuf;
    let g = 0;
    while (g < n) {
      const ip = this.qIp[g]!,
        port = this.qPort[g]!,
        dqp = destQp(b[g]!);
      let h = g + 1;
      while (h < n && this.qIp[h] === ip && this.qPort[h] === port && destQp(b[h]!) === dqp) h++;
      if (h - g >= 2) this.requestsFirst(g, h);
      g = h;
    }
  }

  /** The stable partition of queued packets [from, to): requests, then responses. */
  private requestsFirst(from: number, to: number): void {
    const b = this.qBuf;
    let r = from;
    while (r < to && !isResponse(b[r]!)) r++;
    let next = r + 1;
    while (next < to && isResponse(b[next]!)) next++;
    if (next >= to) return; // no request behind a response: nothing moves
    let w = r,
      m = 0;
    for (let i = r; i < to; i++) {
      if (isResponse(b[i]!)) copySlot(this.resp, m++, this.q, i);
      else if (w === i) w++;
      else copySlot(this.q, w++, this.q, i);
    }
    for (let i = 0; i < m; i++) {
      copySlot(this.q, w++, this.resp, i);
      this.resp.buf[i] = undefined as unknown as Buffer;
    }
  }

  /** Sends queued packets [i, j) to one destination from flow port `sport`; returns j. */
  private sendRun(i: number, j: number, ip: string, port: number, tos: number, sport: number): number {
    const nat = this.native!;
    const ipNum = parseIpv4(ip);
    const fd = this.fdFor(sport);
    let k = i;
    while (k < j) {
      if (ipNum < 0 || fd < 0 || this.sendBlocked()) break;
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
        r = nat.sendPackets(fd, sb, sl, cnt, ipNum, port, L, tos);
        if (r > 0) {
          this.batchStats.gsoCalls++;
          this.batchStats.gsoPackets += r;
        } else {
          for (let m = 1; m < cnt; m++) xorIcrc(sb[m]!, sl[m]!, icrcIdDelta(sl[m]! + 20, m)); // not sent: back to ID 0
          // no UDP GSO here: sendmmsg from now on. Not for a refusal that says nothing about GSO
          // (no route with the link down or an unreachable route, a firewall's EPERM): that one turned
          // GSO off for the link's life after any outage; it is a lost datagram (below), GSO stays.
          if (r !== -EAGAIN && !NOT_GSO_ERRORS.has(-r)) {
            this.mcaps.gsoIcrcFixup = false;
            continue;
          }
        }
      } else {
        // sendmmsg for everything to this destination that is left (up to 64).
        e = Math.min(j, k + 64);
        cnt = e - k;
        for (let m = 0; m < cnt; m++) {
          sb[m] = this.qBuf[k + m]!;
          sl[m] = this.qLen[k + m]!;
        }
        r = nat.sendPackets(fd, sb, sl, cnt, ipNum, port, 0, tos);
        if (r > 0) {
          this.batchStats.mmsgCalls++;
          this.batchStats.mmsgPackets += r;
        }
      }
      if (r < 0 && r !== -EAGAIN && this.dropRefused) {
        this.sendFailed(r);
        this.pool.release(this.qBuf[k]!);
        k++;
        continue;
      }
      if (r <= 0) break; // EAGAIN or an error: the rest goes aside, in order
      for (let m = 0; m < r; m++) this.pool.release(this.qBuf[k + m]!);
      k += r;
    }
    for (; k < j; k++) this.sendAside(this.qBuf[k]!, this.qLen[k]!, ip, port, tos, sport);
    return j;
  }

  /** the netdev's carrier, followed while the link is open (followCarrier) */
  private carrier: CarrierWatch | null = null;
  /**
   * A link opened on a netdev reports that netdev's carrier (carrier.ts): `up` and 'link' events, as
   * MemNetwork's links report their cable's, which is what a bond's ethtool link watch follows. Called
   * at the end of a successful open; a netdev that does not exist here leaves the link up, as before.
   */
  protected followCarrier(): void {
    if (this.netdev === '' || this.closed || this.carrier !== null) return;
    this.carrier = watchCarrier(this.netdev, (up) => {
      if (this.closed || up === this.up) return;
      this.up = up;
      this.emit('link', up);
    });
    if (this.carrier !== null) this.up = this.carrier.up;
  }

  /** Drops every buffer and queued packet (close()): whatever still holds the link must not hold them. */
  protected releaseQueues(): void {
    this.closed = true;
    this.carrier?.stop();
    this.carrier = null;
    this.closeTxSockets();
    this.closeGroups();
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

function closeGroupSocket(sock: dgram.Socket): void {
  sock.removeAllListeners('message');
  try {
    sock.close();
  } catch {
    /* never bound, or closed */
  }
}

/** XORs `delta` into the little-endian ICRC that ends a packet of `len` bytes. */
function xorIcrc(b: Buffer, len: number, delta: number): void {
  const o = len - 4;
  b[o] = b[o]! ^ (delta & 0xff);
  b[o + 1] = b[o + 1]! ^ ((delta >>> 8) & 0xff);
  b[o + 2] = b[o + 2]! ^ ((delta >>> 16) & 0xff);
  b[o + 3] = b[o + 3]! ^ ((delta >>> 24) & 0xff);
}
