/**
 * Loads the optional native addon (native/, built by `npm install`). The addon
 * only provides what Node's dgram lacks (socket options, sendmmsg and UDP GSO
 * sends, a recvmmsg + UDP GRO receive path); everything works without it.
 * SOFTROCE_NO_NATIVE=1 disables it.
 */
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export interface NativeAddon {
  setIntSockopt(fd: number, level: number, name: number, value: number): number;
  bindToDevice(fd: number, ifname: string): number;
  /** tos > 0: every datagram carries IP_TOS = tos (a cmsg; the AV's traffic class) */
  sendPackets(fd: number, bufs: Buffer[], lens: number[], n: number, ipv4: number, port: number, gsoSize: number, tos?: number): number;
  /** memmove of src[s, s+n) to dst[d, d+n) with no view allocated; n, or -1 (nothing copied) if a range is outside its array */
  copyBytes?: (src: Uint8Array, s: number, dst: Uint8Array, d: number, n: number) => number;
  /** writes CLOCK_MONOTONIC (performance.now()'s clock) in ms into f64[0]; returns nothing, allocates nothing */
  clockNow?: (f64: Float64Array) => void;
  /** a check-phase callback (setImmediate's phase) for cb, armed by deferArm; null if the loop has none */
  deferStart?: (cb: () => void) => object | null;
  /** cb runs once in the coming check phase (a no-op while armed) */
  deferArm?: (h: object) => void;
  /**
   * state: Int32Array(2) over an ArrayBuffer; while a callback of the addon runs, state[0] > 0, and
   * if state[1] is set when it returns (after Node's microtasks and ticks), fn() runs. 0, or -1.
   */
  turnEndStart?: (state: Int32Array, fn: () => void) => number;
  /** a bound, non-blocking IPv4 UDP socket (IP_PMTUDISC_DO, UDP_GRO), or -errno */
  udpOpen4?(ipv4: number, port: number, bufBytes: number, netdev: string): number;
  /** a send-only IPv4 UDP socket bound to ipv4:port for a flow source port (IP_PMTUDISC_DO, SO_REUSEADDR, receives nothing), or -errno */
  udpOpenTx4?(ipv4: number, port: number, bufBytes: number, netdev: string): number;
  localPort?(fd: number): number;
  /** watch fd on Node's loop: cb(n) with n datagrams in data/meta, cb(-1) when writable again */
  rxStart?(fd: number, data: Buffer, meta: Uint32Array, slots: number, slotSize: number, cb: (n: number) => void): object | null;
  /**
   * busy polling: one non-blocking recvmmsg pass on watch h; n > 0 datagrams are handed to its cb(n)
   * before this returns (a plain call: no microtask checkpoint); 0: none waited; -1: the watch is closing
   */
  rxPoll?(h: object): number;
  rxWantWrite?(h: object): void;
  rxStop?(h: object, done?: () => void): void;
  /** a raw IPPROTO_UDP socket that sees the headers + BTH of datagrams to ipv4:port, or -errno (EPERM without CAP_NET_RAW) */
  rawOpen4?(ipv4: number, port: number, netdev: string, bufBytes?: number): number;
  /** rx watch `h` also reads rawFd and reports each datagram's IPv4 ID in meta (the watch closes rawFd); keepGro: on loopback */
  rxAttachRaw?(h: object, rawFd: number, keepGro?: boolean): number;
  /**
   * RX fast path (native/fast-rx.cc): from the next read on, ok[2i], ok[2i+1] (low word first) are the bitmap of
   * datagram i's segments whose RoCEv2/IPv4 ICRC verified in C as sent to dstIpv4:dstPort; 0 or -EINVAL
   */
  rxIcrcStart?(h: object, ok: Uint32Array, dstIpv4: number, dstPort: number): number;
  /**
   * RX direct placement (native/place-rx.cc; needs rxIcrcStart first): ctl (8 words) is where placement
   * reports: [0] arms, [1] QPN, [2] first PSN, [3] packets, [4] bytes each, [5] the last asked for an ACK,
   * [6] the packets' opcode
   */
  rxPlaceStart?(h: object, ctl: Uint32Array): number;
  /** arms qpn (see place-rx.cc); slot >= 0: places at once from packet seg of slot of the batch being handed over; placed or -errno */
  rxArm?(
    h: object,
    qpn: number,
    psn: number,
    pmtu: number,
    buf: Uint8Array,
    off: number,
    budget: number,
    srcIpv4: number,
    srcPort: number,
    slot: number,
    seg: number,
    opcode: number,
  ): number;
  /** places what it can from packet seg of slot of the batch being handed over: packets placed */
  rxPlace?(h: object, slot: number, seg: number): number;
  /** qpn disarmed when this returns (-1: every QP) */
  rxDisarm?(h: object, qpn: number): void;
  /**
   * native/crc32.cc, the CRC-32 both fast paths use, over `bytes` bytes `rounds` times: ns per call, GB/s and which
   * CRC ran for that size. `which`: true for the portable one, or a CrcImplName to time that implementation alone
   * (null if this machine lacks it). SOFTROCE_CRC=<CrcImplName> forces one everywhere.
   */
  crcBench?(bytes: number, rounds: number, which?: boolean | CrcImplName): { nsPerCall: number; gbps: number; crc: number; impl: string } | null;
  /** which CRC-32 the addon runs for long pieces, what SOFTROCE_CRC asked for, and the names this machine can run */
  crcInfo?(): { impl: string; requested: string | null; available: CrcImplName[] };
  /** fast-rx.cc's ICRC verdict on one datagram (tests): [low, high] words of its bitmap of verified segments */
  icrcVerify?(
    buf: Buffer,
    off: number,
    len: number,
    seg: number,
    src: number,
    sport: number,
    dst: number,
    dport: number,
    knownIdDf: number,
  ): [number, number] | null;
  /**
   * a NETLINK_ROUTE socket on the address and link groups, watched on Node's loop (unref'd):
   * cb(addrMsgs, linkMsgs, overflows) after each batch of RTM_NEWADDR/DELADDR/NEWLINK/DELLINK; or -errno
   */
  addrWatchStart?(cb: (addr: number, link: number, lost: number) => void): object | number;
  addrWatchStop?(h: object): void;
  /**
   * an AF_PACKET socket bound to `ifname` and `ethertype` (RoCEv1: 0x8915), non-blocking, our own sends not
   * looped back; read it with rxStart (meta's address words are meaningless for it); or -errno (EPERM without
   * CAP_NET_RAW, ENODEV)
   */
  packetOpen?(ifname: string, ethertype: number, bufBytes: number): number;
  /** one Ethernet frame (frame[0..len), header included) out of a packetOpen socket: bytes sent or -errno */
  packetSend?(fd: number, frame: Buffer, len: number): number;
  /** the netdev accepts frames to multicast `mac` (6 bytes) while packet socket fd is open: 0 or -errno */
  packetAddMulticast?(fd: number, ifname: string, mac: Buffer): number;
  /** the neighbour table's MAC of `addr` (4 or 16 bytes) on `ifname` when usable, else null; or -errno */
  neighLookup?(family: 4 | 6, addr: Buffer, ifname: string): Buffer | null | number;
  /** every interface address by an RTM_GETADDR dump, links without carrier included: [label, family, address][], or -errno */
  addrList?(): [string, 4 | 6, string][] | number;
  /** an AF_UNIX SOCK_SEQPACKET socket at `path`, non-blocking: bound and listening, or connected; or -errno (a bond's control socket, as teamd's usock) */
  seqpacketOpen?(path: string, listen: boolean): number;
  /** accept4 on a listening unix socket: the connection's fd (non-blocking) or -errno (-EAGAIN: none waiting) */
  unixAccept?(fd: number): number;
  /** the next message of a SEQPACKET socket, null at its end, or -errno (-EAGAIN: none yet) */
  unixRecv?(fd: number): Buffer | null | number;
  /** one message: bytes sent or -errno */
  unixSend?(fd: number, msg: Buffer): number;
  /** watch fd on Node's loop (unref'd): cb(status) when readable or hung up; or -errno */
  fdWatchStart?(fd: number, cb: (status: number) => void): object | number;
  /** stops the watch and closes its fd */
  fdWatchStop?(h: object): void;
  /**
   * The TX fast path (fast-tx.cc): n packets of one message, packet k's headers at hdr[k * TX_HDR_STRIDE]
   * (meta[2k] bytes; meta[2k+1] payload bytes), the payload the concatenation of bufs[i][pieces[2i],
   * + pieces[2i+1]); C writes the pad, the ICRC (for srcIp:srcPort -> dstIp:dstPort and, with gso,
   * each segment's IPv4 ID) and sends them with one sendmmsg of UDP GSO runs. Packets sent, or
   * -errno (none sent; EAGAIN: the socket is full).
   */
  txSegments?(
    fd: number,
    dstIp: number,
    dstPort: number,
    tos: number,
    srcIp: number,
    srcPort: number,
    gso: number,
    hdr: Buffer,
    meta: Uint32Array,
    n: number,
    bufs: Buffer[],
    pieces: Uint32Array,
    nPieces: number,
  ): number;
  /**
   * the chained CRC-32 both fast paths compute ICRCs with (native/crc32.cc; the same CRC as zlib.crc32); `impl`:
   * that implementation's own function at any size (null if this machine lacks it)
   */
  txCrc32?(crc: number, buf: Buffer, off: number, len: number, impl?: CrcImplName): number | null;
  /** the header stride of txSegments' `hdr` */
  TX_HDR_STRIDE?: number;
  constants: Record<string, number>;
}

/** native/crc32.cc's implementations, as SOFTROCE_CRC names them, in its order of preference */
export type CrcImplName = 'vpclmul' | 'pclmul' | 'armv8' | 'zlib' | 'slice8';

let cached: NativeAddon | null | undefined;

export function loadNative(): NativeAddon | null {
  if (cached !== undefined) return cached;
  cached = null;
  if (process.env['SOFTROCE_NO_NATIVE'] === '1') return cached;
  try {
    const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
    const req = createRequire(import.meta.url);
    const gypBuild = req('node-gyp-build') as (dir: string) => NativeAddon;
    cached = gypBuild(join(root, 'native'));
  } catch {
    cached = null;
  }
  return cached;
}

/** The fd of a bound dgram socket (Linux), without touching the deprecated `_handle`. */
export function dgramFd(sock: object): number {
  for (const s of Object.getOwnPropertySymbols(sock)) {
    const st = (sock as Record<symbol, unknown>)[s] as { handle?: { fd?: number } } | undefined;
    if (st && typeof st === 'object' && st.handle && typeof st.handle.fd === 'number') return st.handle.fd;
  }
  return -1;
}
