/**
 * RoCEv1 on the wire (IBA Annex A16): Ethernet (Ethertype 0x8915) · GRH (NxtHdr 0x1B) · IB packet,
 * sent and received through an AF_PACKET socket of the addon bound to the port's netdev (needs
 * CAP_NET_RAW). A link wrapper around the port's UDP link, so the transport stays unchanged: a QP
 * whose source GID is a RoCE v1 entry gets a Dest whose UDP port is ROCEV1_PORT (0, no UDP port
 * exists on v1: verbs/qp.ts), and this link sends those packets as v1 frames, everything else
 * through the UDP link as RoCEv2.
 *
 * Sending: the IB packet (BTH … ICRC) is copied behind an Ethernet header and a GRH built here
 * (SGID: the port's address as an IPv4-mapped GID, or the link-local default GID when the
 * destination is link-local; DGID: the destination's GID), and the ICRC is recomputed for v1
 * (icrc.ts icrcV1: the GRH masked as for IPv6, IBA 7.8.1): the one the transport wrote covered a UDP
 * header that v1 does not have. The tx buffer goes back to the pool at once (the frame is a copy),
 * so v1 sends never hold the pool. The destination MAC comes from the kernel's neighbour table
 * (the addon's RTM_GETNEIGH: ARP for IPv4-mapped GIDs, ND for IPv6 ones; /proc/net/arp without it),
 * from the EUI-64 for link-local GIDs (fe80::/64), as the kernel's rdma_addr_find_l2_eth_by_grh
 * does; an unresolved destination drops the packet (counted, the RC retry sends it again) and
 * triggers ARP / ND with a UDP datagram to the discard port.
 *
 * Receiving: the frame's GRH is checked (version 6, NxtHdr BTH, PayLen within the frame, DGID one of
 * ours), the v1 ICRC verified here, and the IB packet handed to the receive path with srcPort
 * ROCEV1_PORT and ipIdDf RX_ICRC_VERIFIED (recv.ts does not check it again as RoCEv2).
 */
import * as dgram from 'node:dgram';
import { closeSync, readFileSync } from 'node:fs';
import { loadNative, type NativeAddon } from '../../native.js';
import { gidFromString, ipv4ToGid, isIpv4Mapped, macToDefaultGid } from '../gid.js';
import { icrcV1, readIcrc, writeIcrc } from '../icrc.js';
import { GRH_LEN, GRH_NXTHDR_BTH } from '../wire/grh.js';
import { ETHERTYPE_ROCEV1, ETH_LEN } from '../wire/net.js';
import {
  LinkWrapper,
  ROCEV1_PORT,
  RX_ICRC_VERIFIED,
  TX_BUF_SIZE,
  type Link,
  type RxHandler,
  type SegmentRun,
  type PlacementArm,
  type PlacedHandler,
} from './link.js';

export { ROCEV1_PORT, RX_ICRC_VERIFIED };

/** Frames read per poll (the addon's recvmmsg bound is 64). */
const RX_SLOTS = 32;
const FRAME_MAX = ETH_LEN + GRH_LEN + TX_BUF_SIZE;
/** A neighbour entry is trusted this long before /proc/net/arp is read again (ms). */
const NEIGH_TTL_MS = 30_000;
/** At most one resolution trigger per destination this often (ms). */
const RESOLVE_EVERY_MS = 100;
const ICRC_LEN = 4;

/** What the v1 path did (tests, ibv_devinfo). */
export interface RoceV1Stats {
  txFrames: number;
  /** packets dropped because the destination MAC was not known yet (resolution triggered) */
  txNoNeigh: number;
  txErrors: number;
  rxFrames: number;
  rxIcrcErr: number;
  /** malformed GRH, or a DGID that is not ours */
  rxDropped: number;
}

export interface RoceV1Options {
  /** the addon (tests pass a fake one); default: loadNative() */
  addon?: NativeAddon | null;
  /** the netdev the packet socket binds to unless enable() names another (the port's netdev at open) */
  netdev: string;
  /** the MAC when the netdev's cannot be read: the frames' source and the link-local GID's EUI-64 */
  mac: Uint8Array;
  /** a netdev's MAC (tests); default reads /sys/class/net/NAME/address, which a netdev has even while down */
  macOf?: (netdev: string) => Uint8Array | null;
  /** the neighbour table's text (tests); default reads /proc/net/arp */
  readArp?: () => string;
  socketBufferBytes?: number;
}

/** The MAC in a link-local GID's interface ID (EUI-64 with the U/L bit flipped, RFC 4291 appendix A). */
export function macFromLinkLocal(g: Uint8Array): Uint8Array | null {
  if (g[0] !== 0xfe || (g[1]! & 0xc0) !== 0x80 || g[11] !== 0xff || g[12] !== 0xfe) return null;
  return Uint8Array.of(g[8]! ^ 0x02, g[9]!, g[10]!, g[13]!, g[14]!, g[15]!);
}

/** The complete entries of /proc/net/arp as IPv4 → MAC (flags 0x2: ATF_COM). */
export function parseArp(text: string): Map<string, Uint8Array> {
  const m = new Map<string, Uint8Array>();
  for (const line of text.split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length < 6 || (parseInt(f[2]!, 16) & 0x2) === 0) continue;
    const mac = f[3]!.split(':').map((h) => parseInt(h, 16));
    if (mac.length === 6 && mac.every((x) => x >= 0 && x <= 255)) m.set(f[0]!, Uint8Array.from(mac));
  }
  return m;
}

export class RoceV1Link extends LinkWrapper {
  /** the netdev the packet socket is bound to (once open) and its MAC */
  netdev: string;
  mac: Uint8Array;
  readonly v1Stats: RoceV1Stats = { txFrames: 0, txNoNeigh: 0, txErrors: 0, rxFrames: 0, rxIcrcErr: 0, rxDropped: 0 };
  /** sees every v1 frame sent and every one received with a good ICRC (the pcap recorder's Ethernet mode) */
  tap: ((frame: Buffer, len: number) => void) | null = null;
  private readonly addon: NativeAddon | null;
  private readonly readArp: () => string;
  private readonly bufBytes: number;
  private fd = -1;
  private watch: object | null = null;
  private rx: RxHandler | null = null;
  private readonly frame = Buffer.alloc(FRAME_MAX);
  private readonly rxData = Buffer.alloc(RX_SLOTS * FRAME_MAX);
  private readonly rxMeta = new Uint32Array(RX_SLOTS * 4);
  private readonly rxPkt = Buffer.alloc(TX_BUF_SIZE);
  /** our GIDs a v1 frame may be addressed to: the address IPv4-mapped (or itself), and the link-local default GID */
  private readonly sgidAddr: Uint8Array;
  private sgidLl: Uint8Array;
  private readonly macOf: (netdev: string) => Uint8Array | null;
  private readonly neigh = new Map<string, { mac: Uint8Array; at: number }>();
  private readonly asked = new Map<string, number>();
  private readonly dgids = new Map<string, Uint8Array>();
  private probe: dgram.Socket | null = null;
  private probe6: dgram.Socket | null = null;
  private closed = false;

  constructor(inner: Link, o: RoceV1Options) {
    super(inner);
    this.addon = o.addon === undefined ? loadNative() : o.addon;
    this.netdev = o.netdev;
    this.mac = o.mac;
    this.readArp = o.readArp ?? ((): string => readFileSync('/proc/net/arp', 'utf8'));
    this.bufBytes = o.socketBufferBytes ?? 4 << 20;
    this.sgidAddr = inner.family === 4 ? ipv4ToGid(inner.localIp) : gidFromString(inner.localIp);
    this.sgidLl = macToDefaultGid(o.mac);
    this.macOf = o.macOf ?? sysMac;
    // RoCEv2 passes through untouched (send below), so the UDP link's TX fast path (issue 15) does
    // too; a v1 destination's packets need this wrapper's framing: none of them go that way.
    const fast = inner.sendSegments?.bind(inner);
    if (fast !== undefined) this.sendSegments = (run: SegmentRun): number => (run.dstPort === ROCEV1_PORT ? 0 : fast(run));
    // RoCEv2 datagrams reach the receiver straight from the UDP link (setReceiver below), so its RX
    // direct placement passes through as well; v1 frames never arm it (recv.ts arms for IPv4 sources).
    if (inner.armPlacement !== undefined && inner.disarmPlacement !== undefined && inner.setPlacedReceiver !== undefined) {
      this.armPlacement = (a: PlacementArm): boolean => inner.armPlacement!(a);
      this.disarmPlacement = (qpn: number): void => inner.disarmPlacement!(qpn);
      this.setPlacedReceiver = (h: PlacedHandler | null): void => inner.setPlacedReceiver!(h);
    }
  }

  /** Link.armPlacement and its kin of the UDP link, when it has them. */
  armPlacement?: (a: PlacementArm) => boolean;
  disarmPlacement?: (qpn: number) => void;
  setPlacedReceiver?: (h: PlacedHandler | null) => void;

  /** Link.sendSegments of the UDP link, for RoCEv2 destinations only; absent when that link has none. */
  sendSegments?: (run: SegmentRun) => number;

  /** the link RoCEv2 goes through (the port's UDP link) */
  get udp(): Link {
    return this.inner;
  }

  /** the packet socket is open: v1 frames can be sent and are received */
  get v1Open(): boolean {
    return this.fd >= 0;
  }

  /**
   * Opens the packet socket on `netdev` (the netdev of the RoCE v1 GID entry: the port's netdev at
   * open may have been a guess, made before the interface was up) once; later calls return 0 for
   * the same netdev. 0, or -errno: EOPNOTSUPP without the addon, EPERM without CAP_NET_RAW, ENODEV
   * when the netdev is gone, EXDEV when the socket is already bound to another netdev (one per
   * port). The caller (verbs) turns it into a typed error naming the argument that asked for v1.
   */
  enable(netdev = this.netdev): number {
    if (this.fd >= 0) return netdev === this.netdev ? 0 : -18; // EXDEV
    if (this.closed) return -9; // EBADF
    const a = this.addon;
    if (!a?.packetOpen || !a.packetSend || !a.rxStart) return -95; // EOPNOTSUPP
    const fd = a.packetOpen(netdev, ETHERTYPE_ROCEV1, this.bufBytes);
    if (fd < 0) return fd;
    this.netdev = netdev;
    const mac = this.macOf(netdev);
    if (mac) {
      this.mac = mac;
      this.sgidLl = macToDefaultGid(mac);
    }
    const w = a.rxStart(fd, this.rxData, this.rxMeta, RX_SLOTS, FRAME_MAX, (n) => this.onFrames(n));
    if (!w) {
      closeSync(fd);
      return -22; // EINVAL
    }
    this.fd = fd;
    this.watch = w;
    return 0;
  }

  /** Starts resolving `ip`'s MAC ahead of the first packet (verbs calls it when a v1 AV is set). */
  prime(ip: string): void {
    if (!macFromLinkLocal(this.dgidOf(ip))) this.lookup(ip, Date.now());
  }

  override setReceiver(h: RxHandler): void {
    this.rx = h;
    this.inner.setReceiver(h);
  }

  override send(buf: Buffer, len: number, dstIp: string, dstPort: number, tos?: number, srcPort?: number): void {
    if (dstPort !== ROCEV1_PORT) {
      this.inner.send(buf, len, dstIp, dstPort, tos, srcPort);
      return;
    }
    try {
      this.sendV1(buf, len, dstIp, tos ?? 0);
    } finally {
      this.inner.freeTx(buf);
    }
  }

  private dgidOf(ip: string): Uint8Array {
    let g = this.dgids.get(ip);
    if (!g) {
      g = ip.includes(':') ? gidFromString(ip.split('%')[0]!) : ipv4ToGid(ip);
      if (this.dgids.size > 4096) this.dgids.clear();
      this.dgids.set(ip, g);
    }
    return g;
  }

  private sendV1(buf: Buffer, len: number, dstIp: string, tos: number): void {
    if (this.fd < 0 || !this.addon?.packetSend || len > TX_BUF_SIZE || len < 12 + ICRC_LEN) {
      this.v1Stats.txErrors++;
      return;
    }
    const dgid = this.dgidOf(dstIp);
    const ll = macFromLinkLocal(dgid);
    const dmac = ll ?? this.lookup(dstIp, Date.now());
    if (!dmac) {
      this.v1Stats.txNoNeigh++;
      return;
    }
    const f = this.frame;
    f.set(dmac, 0);
    f.set(this.mac, 6);
    f.writeUInt16BE(ETHERTYPE_ROCEV1, 12);
    // GRH (IBA 8.3): IPVer 6, TClass, Flow Label 0, PayLen = the IB packet with its ICRC, NxtHdr
    // 0x1B (BTH), HopLmt 64 (rdma-core's default for an AV without one), SGID, DGID.
    const g = ETH_LEN;
    f.writeUInt32BE((6 << 28) | ((tos & 0xff) << 20), g);
    f.writeUInt16BE(len, g + 4);
    f[g + 6] = GRH_NXTHDR_BTH;
    f[g + 7] = 64;
    f.set(ll ? this.sgidLl : this.sgidAddr, g + 8);
    f.set(dgid, g + 24);
    buf.copy(f, g + GRH_LEN, 0, len);
    const end = g + GRH_LEN + len;
    writeIcrc(f, end - ICRC_LEN, icrcV1(f, g, end - ICRC_LEN));
    const r = this.addon.packetSend(this.fd, f, end);
    if (r < 0) {
      this.v1Stats.txErrors++;
      return;
    }
    this.v1Stats.txFrames++;
    this.tap?.(f, end);
  }

  /** The MAC of `ip` (IPv4 or IPv6) from the neighbour table, or null (resolution triggered, rate-limited). */
  private lookup(ip: string, now: number): Uint8Array | null {
    const e = this.neigh.get(ip);
    if (e && now - e.at < NEIGH_TTL_MS) return e.mac;
    const last = this.asked.get(ip);
    if (e === undefined && last !== undefined && now - last < RESOLVE_EVERY_MS) return null;
    const mac = this.readNeigh(ip);
    if (mac) {
      this.neigh.set(ip, { mac, at: now });
      return mac;
    }
    if (e) return e.mac; // stale but still the best we know while the kernel re-resolves
    this.asked.set(ip, now);
    this.trigger(ip);
    return null;
  }

  /** One read of the kernel's table: the addon's RTM_GETNEIGH on our netdev (IPv4, IPv6), else /proc/net/arp (IPv4). */
  private readNeigh(ip: string): Uint8Array | null {
    const v6 = ip.includes(':');
    const a = this.addon;
    if (a?.neighLookup) {
      const dg = this.dgidOf(ip);
      const r = a.neighLookup(v6 ? 6 : 4, Buffer.from(v6 ? dg : dg.subarray(12)), this.netdev);
      return r instanceof Uint8Array ? r : null;
    }
    if (v6) return null;
    try {
      return parseArp(this.readArp()).get(ip) ?? null;
    } catch {
      return null;
    }
  }

  /** A UDP datagram to the discard port makes the kernel resolve `ip` (ARP / ND); its answer, if any, is ignored. */
  private trigger(ip: string): void {
    if (this.closed) return;
    const v6 = ip.includes(':');
    let s = v6 ? this.probe6 : this.probe;
    if (!s) {
      s = dgram.createSocket(v6 ? 'udp6' : 'udp4');
      s.on('error', () => {
        /* an ICMP unreachable or no route: resolution is all we wanted */
      });
      s.unref();
      if (v6) this.probe6 = s;
      else this.probe = s;
    }
    s.send(Buffer.alloc(1), 9, ip, () => {
      /* as above */
    });
  }

  private ours(b: Buffer, o: number): boolean {
    const mine = (g: Uint8Array): boolean => {
      for (let i = 0; i < 16; i++) if (b[o + i] !== g[i]) return false;
      return true;
    };
    return mine(this.sgidAddr) || mine(this.sgidLl);
  }

  private onFrames(n: number): void {
    if (n < 0 || this.closed) return;
    const d = this.rxData;
    for (let i = 0; i < n; i++) {
      const base = i * FRAME_MAX;
      const len = this.rxMeta[i * 4]!;
      const g = base + ETH_LEN;
      this.v1Stats.rxFrames++;
      if (len < ETH_LEN + GRH_LEN + 12 + ICRC_LEN || d.readUInt16BE(base + 12) !== ETHERTYPE_ROCEV1) {
        this.v1Stats.rxDropped++;
        continue;
      }
      const payLen = d.readUInt16BE(g + 4);
      if (
        d[g]! >> 4 !== 6 ||
        d[g + 6] !== GRH_NXTHDR_BTH ||
        payLen < 12 + ICRC_LEN ||
        ETH_LEN + GRH_LEN + payLen > len ||
        payLen > TX_BUF_SIZE ||
        !this.ours(d, g + 24)
      ) {
        this.v1Stats.rxDropped++;
        continue;
      }
      const icrcOff = g + GRH_LEN + payLen - ICRC_LEN;
      if (icrcV1(d, g, icrcOff) !== readIcrc(d, icrcOff)) {
        this.v1Stats.rxIcrcErr++;
        continue;
      }
      this.tap?.(d.subarray(base, base + ETH_LEN + GRH_LEN + payLen), ETH_LEN + GRH_LEN + payLen);
      const sgid = d.subarray(g + 8, g + 24);
      const srcIp = isIpv4Mapped(sgid) ? `${sgid[12]}.${sgid[13]}.${sgid[14]}.${sgid[15]}` : gidString(sgid);
      // The receive path takes the IB packet at offset 0 of a buffer it may keep until it returns.
      d.copy(this.rxPkt, 0, g + GRH_LEN, g + GRH_LEN + payLen);
      this.rx?.(this.rxPkt, payLen, srcIp, ROCEV1_PORT, RX_ICRC_VERIFIED);
    }
  }

  detach(): Promise<void> {
    this.closed = true;
    this.probe?.close();
    this.probe6?.close();
    this.probe = this.probe6 = null;
    const w = this.watch;
    this.watch = null;
    this.fd = -1;
    if (!w || !this.addon?.rxStop) return Promise.resolve();
    return new Promise<void>((r) => this.addon!.rxStop!(w, r));
  }
}

function sysMac(netdev: string): Uint8Array | null {
  try {
    const m = readFileSync(`/sys/class/net/${netdev}/address`, 'utf8').trim().split(':');
    return m.length === 6 ? Uint8Array.from(m.map((h) => parseInt(h, 16))) : null;
  } catch {
    return null;
  }
}

function gidString(g: Uint8Array): string {
  const w: string[] = [];
  for (let i = 0; i < 16; i += 2) w.push(((g[i]! << 8) | g[i + 1]!).toString(16));
  return w.join(':');
}
