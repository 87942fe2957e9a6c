/**
 * The port interface between the transport and the network (smoltcp's
 * `phy::Device`): send one IB packet (BTH … ICRC) as a datagram, receive
 * datagrams, report link state. One implementation per backend, same
 * signatures: `NativeLink` (the addon's own socket, native-link.ts),
 * `DgramLink` (Node dgram, dgram-link.ts; `UdpLink.open` in udp-link.ts picks
 * one) and `MemLink` (in-process, below, for deterministic tests with the fake
 * scheduler). Each declares what it can do in `caps`. Wrappers take a link and
 * are one, so they compose in any order: `FaultInjector` (fault-link.ts,
 * seeded drop/duplicate/reorder/corrupt/delay) and `PcapRecorder`
 * (pcap-recorder.ts, what a device sends and receives, as a pcap).
 *
 * Transmit buffers belong to the link: `allocTx()` hands out a pooled buffer,
 * `send()` takes it back once the datagram is out. An empty pool is
 * backpressure: the requester stops and resumes on 'drain'.
 */
import { EventEmitter } from 'node:events';
import type { Scheduler } from '../sched.js';
import { gidFromString } from '../gid.js';

/** One spelling per address (an IPv6 address has many: '::1', '0:0:0:0:0:0:0:1'), for the in-memory network's table. */
function addrKey(ip: string, port: number): string {
  return `${ip.includes(':') ? Buffer.from(gidFromString(ip.split('%')[0]!)).toString('hex') : ip}:${port}`;
}

/**
 * ipIdDf: the datagram's IPv4 `id | df << 16` when the link read its IP header (raw receive), else absent or -1;
 * with RX_ICRC_OK set, the link verified the RoCEv2 ICRC under that ID (see there).
 * group: the multicast group the datagram was sent to, as given to joinGroup (the same string); absent for a
 * datagram to the link's own address.
 */
export type RxHandler = (buf: Buffer, len: number, srcIp: string, srcPort: number, ipIdDf?: number, group?: string) => void;

/**
 * RX direct placement (issue 15): `count` consecutive packets of QP `qpn` from `firstPsn` on, all of
 * opcode `opcode` (PLACE_SEND_MIDDLE, PLACE_WRITE_MIDDLE or PLACE_READ_MIDDLE), each `pmtu` payload bytes, were verified (ICRC, as RX_ICRC_OK says), and copied by
 * the link into the memory the transport armed (Link.armPlacement); `ackReq`: the last of them asked
 * for an ACK (no other did). firstIpIdDf is the first packet's ipIdDf as RxHandler would have had it
 * (always with RX_ICRC_OK); packet j's ID is the first's plus j (the packets are segments of one
 * datagram, numbered on). The receiver applies what handling each packet would have done.
 */
export type PlacedHandler = (
  qpn: number,
  firstPsn: number,
  count: number,
  pmtu: number,
  ackReq: boolean,
  srcIp: string,
  srcPort: number,
  firstIpIdDf: number,
  opcode: number,
) => void;

/** RC SEND MIDDLE and RC RDMA WRITE MIDDLE (IBA 9.2.1 table 38): what the responder arms a link for. */
export const PLACE_SEND_MIDDLE = 0x01;
export const PLACE_WRITE_MIDDLE = 0x07;
/** RC RDMA READ RESPONSE MIDDLE: what the requester (its completer) arms a link for. */
export const PLACE_READ_MIDDLE = 0x0e;

/**
 * What the transport arms a link with (Link.armPlacement): the next full-MTU MIDDLE packets of an
 * RC SEND or WRITE in progress (the responder) or of a READ's responses (the requester). A QP may hold one
 * arm per opcode.
 */
export interface PlacementArm {
  qpn: number;
  /** PLACE_SEND_MIDDLE, PLACE_WRITE_MIDDLE or PLACE_READ_MIDDLE: the only opcode placed */
  opcode: number;
  /** the next PSN expected */
  psn: number;
  pmtu: number;
  /** where the payloads land: mem[off, off + budget) (budget: a whole number of pmtu) */
  mem: Uint8Array;
  off: number;
  budget: number;
  /** only packets from this IPv4 address (as a number) and UDP port */
  srcIpNum: number;
  srcPort: number;
}

/** Whether `ip` is a multicast address: IPv4 224.0.0.0/4, IPv6 ff00::/8 (what joinGroup takes). */
export function isMulticastIp(ip: string): boolean {
  if (ip.includes(':')) return /^ff[0-9a-f]{2}:/i.test(ip);
  const first = Number.parseInt(ip, 10);
  return first >= 224 && first <= 239;
}

/** Linux errno values a link's joinGroup / leaveGroup return negated (the CM and verbs map them). */
export const LINK_EINVAL = 22;
export const LINK_EOPNOTSUPP = 95;

/**
 * The Dest UDP port of a RoCE v1 AV (the source GID is a RoCE v1 entry): v1 has no UDP header, so no
 * real port is 0; the RoCEv1 link (rocev1-link.ts) sends packets to it as Ethernet + GRH frames, and
 * hands received v1 packets up with this as their source port.
 */
export const ROCEV1_PORT = 0;
/** RxHandler's ipIdDf when the link verified the ICRC itself (RoCEv1: over the GRH, rocev1-link.ts). */
export const RX_ICRC_VERIFIED = -2;
/**
 * Set in RxHandler's ipIdDf (with `id | df << 16` in the low bits) when the link checked the RoCEv2/IPv4 ICRC
 * under that ID, to its own address and port (the addon's RX fast path, native/fast-rx.cc): recv.ts then skips
 * its CRC and does only the ID bookkeeping it would have done. The link sets it only where the JS check would
 * accept the packet with that same ID; everything else comes up without it and recv.ts checks it as before.
 */
export const RX_ICRC_OK = 0x100000;
/** With RX_ICRC_OK: the ID was not read from the IP header but is the one an ID-0 / UDP GSO sender uses (0, or k for GRO segment k). */
export const RX_ID_INFERRED = 0x200000;

/** ipIdDf as a link that changed the packet's bytes (a fault injector) must pass it on: without RX_ICRC_OK, so it is checked again. */
export function rxUnverified(ipIdDf: number | undefined): number | undefined {
  if (ipIdDf === undefined || ipIdDf < 0 || (ipIdDf & RX_ICRC_OK) === 0) return ipIdDf;
  return ipIdDf & RX_ID_INFERRED ? -1 : ipIdDf & 0x1ffff;
}

export type LinkBackend = 'native' | 'dgram' | 'memory';

/**
 * What a backend does, declared by the backend when it opens (not inferred from its fields):
 * the receive path and the tools read these.
 */
export interface LinkCaps {
  /** which datagram backend carries the port (ibv_devinfo's softroce_backend) */
  readonly backend: LinkBackend;
  readonly family: 4 | 6;
  /**
   * Sent IPv4 datagrams carry ID 0 and DF (IP_PMTUDISC_DO), the ID our ICRC is computed for
   * (a real RoCE peer drops anything else: README, "ICRC outcomes").
   */
  readonly ipv4IdZero: boolean;
  /**
   * Runs of equal-size packets to one destination go out as one UDP GSO send, each segment's ICRC
   * corrected for the IPv4 ID (1, 2, ...) the kernel gives it. Turns false for good if the kernel
   * refuses UDP GSO (then sendmmsg).
   */
  readonly gsoIcrcFixup: boolean;
  /** Sends of one event-loop turn leave together (sendmmsg). */
  readonly batchSend: boolean;
  /** Received IPv4 datagrams come with their real ID and DF (a raw socket): the ICRC check is the full CRC-32. */
  readonly rawRx: boolean;
  /** send()'s `tos` reaches the wire (IP_TOS per datagram). */
  readonly perPacketTos: boolean;
  /**
   * send()'s `srcPort` reaches the wire: a QP's datagrams leave from its flow port (flow.ts), through
   * a bounded pool of send sockets (udp-base.ts TxSockets) or, in memory, as given. Absent or false:
   * every datagram leaves from localPort (sourcePort() says which port a datagram gets).
   */
  readonly flowSrcPort?: boolean;
  /** The interface the socket is bound to (SO_BINDTODEVICE: what it sends leaves by it); absent or '': none. */
  readonly boundNetdev?: string;
  /**
   * The receiver is called for a whole receive batch (one recvmmsg) inside one callback from the
   * event loop, and microtasks run only after it returns: work queued with `sched.soon` while
   * handling a packet runs once per batch, before the loop's next phase (the native link). Absent
   * or false: one callback per datagram (Node's dgram) or per delivery (memory), so per-batch
   * coalescing needs a later loop turn (`sched.defer`).
   */
  readonly rxBatch?: boolean;
}

/** what the batching did, for the bench and ibv_devinfo (the UDP backends) */
export interface BatchStats {
  gsoCalls: number;
  gsoPackets: number;
  mmsgCalls: number;
  mmsgPackets: number;
  dgramPackets: number;
  rxCalls: number;
  rxDatagrams: number;
  rxGroSegments: number;
  sendErrors: number;
  /** TX fast path (sendSegments): calls, and the packets they sent (absent: the link has none) */
  fastTxCalls?: number;
  fastTxPackets?: number;
  /** packets whose ICRC the addon verified in C (native link with the RX fast path) */
  rxIcrcVerified?: number;
  /** packets the addon placed straight into registered memory (RX direct placement; absent: the link has none) */
  rxPlaced?: number;
}

/** Bytes per packet in SegmentRun.hdr: the longest request header (BTH + RETH + ImmDt, 32) fits. */
export const SEG_HDR_STRIDE = 64;
/** Most packets in one SegmentRun (one requester budget). */
export const SEG_MAX_PKTS = 64;

/**
 * A run of consecutive packets of one SEND / WRITE message for Link.sendSegments (issue 15's TX
 * fast path): everything the transport decided, so the link only does per-packet mechanics. Reused
 * by the caller; the link reads it during the call only.
 */
export interface SegmentRun {
  /** packet k's headers (BTH first; PadCnt and ICRC left to the link) at k * SEG_HDR_STRIDE */
  readonly hdr: Buffer;
  /** per packet k: [2k] its header length, [2k+1] its payload length */
  readonly meta: Uint32Array;
  /** packets in the run */
  n: number;
  /** the payload (the message bytes of the run, in order): bufs[i][pieces[2i], + pieces[2i+1]) */
  readonly bufs: Buffer[];
  readonly pieces: Uint32Array;
  nPieces: number;
  /** the ICRC's addresses (IPv4, as numbers) and where the datagrams go */
  srcIpNum: number;
  dstIpNum: number;
  dstIp: string;
  dstPort: number;
  tos: number;
  /** the sending QP's flow port (the link picks the port it really leaves from, as sourcePort) */
  srcPort: number;
}

/**
 * A SegmentRun with room for SEG_MAX_PKTS packets and `maxPieces` payload pieces, and a header view
 * per packet (hdrs[k] is packet k's SEG_HDR_STRIDE bytes): each sender keeps one and refills it, so
 * building a run allocates nothing.
 */
export function newSegmentRun(maxPieces: number): { run: SegmentRun; hdrs: Buffer[] } {
  const run: SegmentRun = {
    hdr: Buffer.alloc(SEG_HDR_STRIDE * SEG_MAX_PKTS),
    meta: new Uint32Array(2 * SEG_MAX_PKTS),
    n: 0,
    bufs: [],
    pieces: new Uint32Array(2 * maxPieces),
    nPieces: 0,
    srcIpNum: 0,
    dstIpNum: 0,
    dstIp: '',
    dstPort: 0,
    tos: 0,
    srcPort: 0,
  };
  const hdrs = Array.from({ length: SEG_MAX_PKTS }, (_, k) => run.hdr.subarray(k * SEG_HDR_STRIDE, (k + 1) * SEG_HDR_STRIDE));
  return { run, hdrs };
}

export interface LinkInfo {
  readonly localIp: string;
  readonly family: 4 | 6;
  /** the UDP port datagrams arrive on, and leave from when they have no flow port of their own */
  readonly localPort: number;
  readonly caps: LinkCaps;
}

export interface Link extends LinkInfo {
  allocTx(): Buffer | null;
  /**
   * tos: the IPv4 TOS / IPv6 traffic class byte (DSCP + ECN) of the AV; reaches the wire when caps.perPacketTos.
   * srcPort: the UDP source port, as sourcePort() returned it for this datagram (default localPort).
   */
  send(buf: Buffer, len: number, dstIp: string, dstPort: number, tos?: number, srcPort?: number): void;
  /**
   * The UDP source port a datagram handed to send() now leaves from when its flow wants `want`:
   * `want` when the link can send from it (caps.flowSrcPort; a send socket of the pool is open or
   * opens now), else localPort. The sender computes the ICRC for the port returned (it covers the
   * UDP header) and passes that port to send(). Absent: always localPort.
   */
  sourcePort?(want: number): number;
  /**
   * TX fast path (issue 15): sends the packets of `run` (pad, ICRC, payload gathered from the
   * run's buffers with no copy) after everything handed to send() before, and returns how many
   * went: a prefix, 0..run.n. The rest was not sent (the socket is full, packets held earlier
   * still wait, an error the per-packet path reports): the caller sends it the per-packet way.
   * Present only on a plain native IPv4 link with the addon's txSegments and the fast path on
   * (not through a wrapper, which must see every packet).
   */
  sendSegments?(run: SegmentRun): number;
  /** return an unsent tx buffer */
  freeTx(buf: Buffer): void;
  setReceiver(h: RxHandler): void;
  /**
   * The receiver (recv.ts) reports each datagram it accepted (parsed, ICRC good) to the link it
   * was handed, with the IPv4 `id | df << 16` the ICRC check verified (for IPv4 without raw
   * receive the ID is known only then). Wrappers pass it down; the pcap recorder records it.
   */
  rxAccepted?(buf: Buffer, len: number, srcIp: string, srcPort: number, ipIdDf: number, group?: string): void;
  /**
   * Receive the datagrams sent to multicast group `groupIp` (IPv4 224/4 in the link's family; UDP port
   * localPort) from now on, handed to the receiver with `group` set (RxHandler). Joins are counted: the
   * n-th join of a group needs n leaves. 0, or -errno: -EINVAL for an address that is not a multicast
   * group of the link's family, -EOPNOTSUPP where the backend cannot. A UDP link's membership
   * (IP_ADD_MEMBERSHIP on the port's address) takes a few event-loop turns: groupJoined says when.
   * Sending to a group needs nothing: send() to the group address (the UDP sockets keep
   * IP_MULTICAST_LOOP on, so the host's other members, this link included, get a copy).
   */
  joinGroup?(groupIp: string): number;
  /** Undoes one joinGroup; the last leave drops the membership (IGMP leave). 0, or -EINVAL when not joined. */
  leaveGroup?(groupIp: string): number;
  /** Resolves with 0 once the membership of a joined group is in place (the socket bound and joined), or -errno if it failed. */
  groupJoined?(groupIp: string): Promise<number>;
  /**
   * Busy polling (opt-in): one non-blocking read of the receive socket, whatever it held handed to
   * the receiver before this returns (synchronously, as the event loop would have). Returns the
   * datagrams read (0: none waiting), or -1 when called from inside this link's receiver (its
   * receive buffers are in use: no polling from there). Absent where the backend cannot (Node's
   * dgram, memory); wrappers pass it through.
   */
  pollRx?(): number;
  /** Sends now what send() queued for the end of this turn (busy polling: no turn ends while it spins). */
  flush?(): void;
  /**
   * RX direct placement (issue 15; optional: only a plain native IPv4 link with the fast path on has
   * it, never a wrapper, which must see every packet). From now until disarmed, packets that are the
   * next WRITE MIDDLEs `a` describes are copied into a.mem by the link and reported to the placed
   * receiver (PlacedHandler) in runs, in order with everything else; any other packet to a.qpn
   * disarms it before it reaches the receiver. false: not armed (no room, not receiving).
   */
  armPlacement?(a: PlacementArm): boolean;
  /** Disarms qpn (-1: every QP): no byte is placed for it after this returns. */
  disarmPlacement?(qpn: number): void;
  /** Where runs of placed packets go (null: nowhere; placement then stays off). */
  setPlacedReceiver?(h: PlacedHandler | null): void;
  readonly up: boolean;
  /** what the UDP backends' batching did (perftest prints it); absent on links that do not batch */
  readonly batchStats?: BatchStats | undefined;
  /**
   * 'drain': tx buffers are free again; 'link': up/down; 'error': a socket error (the datagram is
   * lost); 'late': packets the link held (the socket was full) went out only now, `heldMs` after
   * the first of them was handed over (emitted when that was over 1 ms): ACK timers armed at
   * hand-over measure from now for those (device.ts)
   */
  on(ev: 'drain' | 'link' | 'error' | 'late', fn: (...a: unknown[]) => void): this;
  off(ev: 'drain' | 'link' | 'error' | 'late', fn: (...a: unknown[]) => void): this;
  /** a closing device takes its listeners back, so a link the caller keeps does not keep the device alive */
  off(ev: 'drain' | 'link', fn: (...a: unknown[]) => void): this;
  /** closes the link and, for a wrapper, the link it wraps */
  close(): Promise<void>;
}

/**
 * A link that wraps another and passes everything through: a wrapper overrides what it changes.
 * Events are the inner link's (listeners go straight to it).
 */
export abstract class LinkWrapper implements Link {
  protected readonly inner: Link;
  /** Busy polling reaches the backend: what it reads comes up through this wrapper's receiver, as on the event path. */
  pollRx?: () => number;
  flush?: () => void;
  constructor(inner: Link) {
    this.inner = inner;
    if (inner.pollRx !== undefined) this.pollRx = (): number => inner.pollRx!();
    if (inner.flush !== undefined) this.flush = (): void => inner.flush!();
  }
  get localIp(): string {
    return this.inner.localIp;
  }
  get family(): 4 | 6 {
    return this.inner.family;
  }
  get localPort(): number {
    return this.inner.localPort;
  }
  get caps(): LinkCaps {
    return this.inner.caps;
  }
  get up(): boolean {
    return this.inner.up;
  }
  /** the backend's batching figures, when it has them (perftest prints them) */
  get batchStats(): BatchStats | undefined {
    return this.inner.batchStats;
  }
  allocTx(): Buffer | null {
    return this.inner.allocTx();
  }
  freeTx(buf: Buffer): void {
    this.inner.freeTx(buf);
  }
  send(buf: Buffer, len: number, dstIp: string, dstPort: number, tos?: number, srcPort?: number): void {
    this.inner.send(buf, len, dstIp, dstPort, tos, srcPort);
  }
  sourcePort(want: number): number {
    return this.inner.sourcePort !== undefined ? this.inner.sourcePort(want) : this.inner.localPort;
  }
  setReceiver(h: RxHandler): void {
    this.inner.setReceiver(h);
  }
  rxAccepted(buf: Buffer, len: number, srcIp: string, srcPort: number, ipIdDf: number, group?: string): void {
    this.inner.rxAccepted?.(buf, len, srcIp, srcPort, ipIdDf, group);
  }
  joinGroup(groupIp: string): number {
    return this.inner.joinGroup !== undefined ? this.inner.joinGroup(groupIp) : -LINK_EOPNOTSUPP;
  }
  leaveGroup(groupIp: string): number {
    return this.inner.leaveGroup !== undefined ? this.inner.leaveGroup(groupIp) : -LINK_EINVAL;
  }
  groupJoined(groupIp: string): Promise<number> {
    return this.inner.groupJoined !== undefined ? this.inner.groupJoined(groupIp) : Promise.resolve(this.inner.joinGroup !== undefined ? 0 : -LINK_EOPNOTSUPP);
  }
  on(ev: 'drain' | 'link' | 'error' | 'late', fn: (...a: unknown[]) => void): this {
    this.inner.on(ev, fn);
    return this;
  }
  off(ev: 'drain' | 'link' | 'error' | 'late', fn: (...a: unknown[]) => void): this {
    this.inner.off(ev, fn);
    return this;
  }
  /** Stops what the wrapper itself holds (timers, a file), leaving the inner link open. Idempotent. */
  abstract detach(): Promise<void>;
  async close(): Promise<void> {
    try {
      await this.detach();
    } finally {
      await this.inner.close();
    }
  }
}

/** Largest datagram: GRH-less IB packet with 4096 B payload plus headers. */
export const TX_BUF_SIZE = 4096 + 128;

export class TxPool {
  private readonly free: Buffer[] = [];
  private disposed = false;
  constructor(n: number) {
    // One slab cut into views, not n separate buffers: one allocation to make and to free per
    // link, so opening and closing devices does not fragment the heap (RSS stays flat).
    const slab = Buffer.allocUnsafeSlow(n * TX_BUF_SIZE);
    for (let i = 0; i < n; i++) this.free.push(slab.subarray(i * TX_BUF_SIZE, (i + 1) * TX_BUF_SIZE));
  }
  get available(): number {
    return this.free.length;
  }
  alloc(): Buffer | null {
    return this.free.pop() ?? null;
  }
  release(b: Buffer): void {
    if (!this.disposed) this.free.push(b);
  }
  /**
   * A closed link lets go of its buffers (1,024 of them are ~4.3 MB) at once: something may
   * still hold the link object for a while (a dgram socket stays reachable until libuv's
   * close phase, which a loop of awaited open/close calls never reaches), and the pool must
   * not ride along. Buffers still out (in a send) are dropped when they come back.
   */
  dispose(): void {
    this.disposed = true;
    this.free.length = 0;
  }
}

// ------------------------------------------------------------- in-memory ---

/** An in-process network: links addressed by ip:port, delivery deferred through the scheduler. */
export class MemNetwork {
  readonly links = new Map<string, MemLink>();
  readonly sched: Scheduler;
  /** Tests: see every datagram (with its UDP ports); return false to drop it. */
  filter: ((pkt: Buffer, srcIp: string, dstIp: string, srcPort: number, dstPort: number) => boolean) | null = null;
  /** Tests: one-way delay of every datagram in (fake) ms; 0 delivers on the next deferred turn. */
  latencyMs = 0;
  constructor(sched: Scheduler) {
    this.sched = sched;
  }
  /** Tests: deliver raw bytes as if `srcIp:srcPort` had sent them. */
  inject(srcIp: string, srcPort: number, dstIp: string, dstPort: number, bytes: Uint8Array): void {
    const dst = this.links.get(addrKey(dstIp, dstPort));
    const copy = Buffer.from(bytes);
    this.sched.defer(() => dst?.receive(copy, copy.length, srcIp, srcPort));
  }
  /** multicast group (addrKey of group:port) -> the links that joined it, with their join counts */
  readonly groups = new Map<string, Map<MemLink, number>>();
  /**
   * A link at ip:port. With `segment` (a wire, as a veth pair or a cable to one switch port is), the
   * link sits on that segment: several links may then share one address, one per segment (a bond's
   * ports carry the bond's one address), and a datagram a segment's link sends goes to the
   * destination's link on the same segment (else to a link on no segment).
   */
  attach(ip: string, port = 4791, segment?: string): MemLink {
    const l = new MemLink(this, ip, port, segment);
    this.links.set(l.key, l);
    return l;
  }
  /** @internal the link a datagram from `segment` to ip:port reaches */
  lookup(ip: string, port: number, segment: string | undefined): MemLink | undefined {
    const k = addrKey(ip, port);
    return (segment !== undefined ? this.links.get(`${segment}/${k}`) : undefined) ?? this.links.get(k);
  }
  /** Tests: pull (or plug back) a segment's cable: every link on it loses (or regains) carrier, as both ends of a veth pair do. */
  setSegmentUp(segment: string, up: boolean): void {
    for (const l of [...this.links.values()]) if (l.segment === segment && l.up !== up) l.setUp(up);
  }
}

export class MemLink extends EventEmitter implements Link {
  readonly localIp: string;
  readonly localPort: number;
  readonly family: 4 | 6;
  readonly caps: LinkCaps;
  up = true;
  /** the wire the link is on (MemNetwork.attach), if any */
  readonly segment: string | undefined;
  /** @internal its key in MemNetwork.links */
  readonly key: string;
  private readonly net: MemNetwork;
  private readonly pool = new TxPool(512);
  private rx: RxHandler | null = null;
  constructor(net: MemNetwork, ip: string, port: number, segment?: string) {
    super();
    this.net = net;
    this.localIp = ip;
    this.localPort = port;
    this.segment = segment;
    this.key = segment !== undefined ? `${segment}/${addrKey(ip, port)}` : addrKey(ip, port);
    this.family = ip.includes(':') ? 6 : 4;
    // The in-memory network carries the packet as built: ID 0 + DF is what the ICRC assumed, and
    // the source port the sender gave (no sockets: every flow port is available).
    this.caps = {
      backend: 'memory',
      family: this.family,
      ipv4IdZero: true,
      gsoIcrcFixup: false,
      batchSend: false,
      rawRx: false,
      perPacketTos: false,
      flowSrcPort: true,
    };
  }
  allocTx(): Buffer | null {
    return this.pool.alloc();
  }
  freeTx(b: Buffer): void {
    this.pool.release(b);
  }
  receive(buf: Buffer, len: number, srcIp: string, srcPort: number): void {
    if (this.up && this.rx) this.rx(buf, len, srcIp, srcPort);
  }
  sourcePort(want: number): number {
    return want;
  }
  /** A joined group's key -> the group string as joined (what the receiver is handed). */
  private readonly joined = new Map<string, string>();
  joinGroup(groupIp: string): number {
    if (!isMulticastIp(groupIp) || groupIp.includes(':') !== (this.family === 6)) return -LINK_EINVAL;
    const key = addrKey(groupIp, this.localPort);
    let members = this.net.groups.get(key);
    if (members === undefined) this.net.groups.set(key, (members = new Map<MemLink, number>()));
    members.set(this, (members.get(this) ?? 0) + 1);
    if (!this.joined.has(key)) this.joined.set(key, groupIp);
    return 0;
  }
  leaveGroup(groupIp: string): number {
    const key = addrKey(groupIp, this.localPort);
    const members = this.net.groups.get(key);
    const n = members?.get(this);
    if (members === undefined || n === undefined) return -LINK_EINVAL;
    if (n > 1) members.set(this, n - 1);
    else {
      members.delete(this);
      this.joined.delete(key);
      if (members.size === 0) this.net.groups.delete(key);
    }
    return 0;
  }
  groupJoined(groupIp: string): Promise<number> {
    return Promise.resolve(this.joined.has(addrKey(groupIp, this.localPort)) ? 0 : -LINK_EINVAL);
  }
  /**
   * A datagram to a group: a copy to every link that joined it, the sender's own included (as a UDP
   * socket with IP_MULTICAST_LOOP on hands the host's members theirs), each told which group.
   */
  private sendGroup(buf: Buffer, len: number, dstIp: string, dstPort: number, srcPort: number): void {
    const key = addrKey(dstIp, dstPort);
    const copy = Buffer.from(buf.subarray(0, len));
    const deliver = (): void => {
      const members = this.net.groups.get(key);
      if (members === undefined || !this.up) return;
      for (const m of [...members.keys()]) {
        const pass = this.net.filter ? this.net.filter(copy, this.localIp, dstIp, srcPort, dstPort) : true;
        const group = m.joined.get(key);
        if (pass && m.up && m.rx && group !== undefined) m.rx(Buffer.from(copy), len, this.localIp, srcPort, undefined, group);
      }
    };
    this.net.sched.defer(() => {
      const wasEmpty = this.pool.available === 0;
      this.pool.release(buf);
      if (wasEmpty) this.emit('drain');
    });
    if (this.net.latencyMs > 0) this.net.sched.setTimer(this.net.latencyMs, deliver);
    else this.net.sched.defer(deliver);
  }
  send(buf: Buffer, len: number, dstIp: string, dstPort: number, _tos?: number, srcPort = this.localPort): void {
    if (isMulticastIp(dstIp)) {
      this.sendGroup(buf, len, dstIp, dstPort, srcPort);
      return;
    }
    const dst = this.net.lookup(dstIp, dstPort, this.segment);
    const deliver = (b: Buffer): void => {
      const pass = this.net.filter ? this.net.filter(b.subarray(0, len), this.localIp, dstIp, srcPort, dstPort) : true;
      if (pass && dst && dst.up && this.up && dst.rx) dst.rx(b, len, this.localIp, srcPort);
    };
    const release = (): void => {
      const wasEmpty = this.pool.available === 0;
      this.pool.release(buf);
      if (wasEmpty) this.emit('drain');
    };
    if (this.net.latencyMs > 0) {
      // The datagram is on the wire: the tx buffer is free now, a copy arrives later.
      const copy = Buffer.from(buf.subarray(0, len));
      this.net.sched.defer(release);
      this.net.sched.setTimer(this.net.latencyMs, () => deliver(copy));
      return;
    }
    this.net.sched.defer(() => {
      deliver(buf);
      release();
    });
  }
  setReceiver(h: RxHandler): void {
    this.rx = h;
  }
  /** Tests: take the link down / up (port events). */
  setUp(up: boolean): void {
    this.up = up;
    this.emit('link', up);
  }
  // eslint-disable-next-line @typescript-eslint/require-await -- Link.close() is async; the in-memory link has nothing to wait for, and async keeps a throw a rejection as on the socket links
  async close(): Promise<void> {
    // Only our own entry: a new link may already have taken the address.
    if (this.net.links.get(this.key) === this) this.net.links.delete(this.key);
    for (const k of this.joined.keys()) {
      const members = this.net.groups.get(k);
      members?.delete(this);
      if (members?.size === 0) this.net.groups.delete(k);
    }
    this.joined.clear();
    this.rx = null;
    this.pool.dispose();
  }
}
