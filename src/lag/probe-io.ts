/**
 * The probe I/O of the arp_ping / nsna_ping link watches (link-watch-psr.ts), behind a small
 * interface so tests fake it: `send()` one probe, replies handed to the watch as parsed packets.
 *
 * The real one is an AF_PACKET socket of the addon bound to the port's netdev (packetOpen /
 * packetSend / rxStart, as RoCEv1 uses them): ARP frames (Ethertype 0x0806) for arp_ping, IPv6
 * frames (0x86DD) for nsna_ping, the frames built in probe-wire.ts from the port's MAC. teamd uses a
 * packet socket too (teamd_packet_sock_open, with a BPF filter; here the filter is the parse), and an
 * ICMPv6 raw socket to send NS; a packet socket sends the whole NS frame here (the addon has no
 * ICMPv6 socket), from the port's link-local address as the kernel would pick it.
 *
 * What cannot run is a typed VerbsError naming the link watch, never a crash: EOPNOTSUPP without
 * the addon (the pure-JS backend) or for a vlanid (tagged probes are not built here: a packet
 * socket sees a tagged frame's tag only as auxdata, which the addon does not read), EPERM without
 * CAP_NET_RAW, ENODEV when the netdev does not exist.
 */
import { closeSync, readFileSync } from 'node:fs';
import { constants } from 'node:os';
import { loadNative, type NativeAddon } from '../native.js';
import { gidFromString, macToDefaultGid } from '../roce/gid.js';
import { VerbsError, type ErrnoCode } from '../verbs/errors.js';
import { buildArpRequest, buildNs, ETHERTYPE_ARP, ETHERTYPE_IPV6, parseArpFrame, parseNaFrame, PROBE_FRAME_MAX, type ProbeReply } from './probe-wire.js';

/** What a watch asks its probe I/O for. */
export interface ProbeSpec {
  readonly kind: 'arp_ping' | 'nsna_ping';
  /** the port's netdev */
  readonly netdev: string;
  /** arp_ping: source_host (an IPv4 address); nsna_ping: unused (the port's link-local address) */
  readonly source: string;
  /** target_host, resolved: an IPv4 address (arp_ping) or an IPv6 one (nsna_ping) */
  readonly target: string;
  readonly vlanId?: number | undefined;
}

export interface ProbeIo {
  /** one probe out: 0, or -errno (the link is down, the socket buffer is full) */
  send(): number;
  close(): void;
}

/** Opens a watch's probe I/O; throws a VerbsError when it cannot (the watch then says it cannot run). */
export type ProbeIoFactory = (spec: ProbeSpec, onReply: (p: ProbeReply) => void) => ProbeIo;

const RX_SLOTS = 16;
/** enough for the headers teamd looks at; longer frames (other IPv6 traffic on the NS socket) are cut */
const RX_SLOT_SIZE = 256;

function errnoName(n: number): string {
  for (const [k, v] of Object.entries(constants.errno)) if (v === n) return k;
  return `errno ${n}`;
}

function sysMac(netdev: string): Uint8Array | null {
  try {
    const s = readFileSync(`/sys/class/net/${netdev}/address`, 'utf8').trim();
    const b = s.split(':').map((h) => parseInt(h, 16));
    return b.length === 6 && b.every((x) => x >= 0 && x <= 255) ? Uint8Array.from(b) : null;
  } catch {
    return null;
  }
}

/** The netdev's link-local IPv6 address (/proc/net/if_inet6, scope 0x20), else the MAC's EUI-64 one. */
function linkLocal(netdev: string, mac: Uint8Array): Uint8Array {
  try {
    for (const line of readFileSync('/proc/net/if_inet6', 'utf8').split('\n')) {
      const f = line.trim().split(/\s+/);
      if (f.length >= 6 && f[5] === netdev && f[3] === '20' && /^[0-9a-f]{32}$/.test(f[0]!)) return Uint8Array.from(Buffer.from(f[0]!, 'hex'));
    }
  } catch {
    /* no IPv6 on this host: the EUI-64 address below */
  }
  return macToDefaultGid(mac);
}

/**
 * The real probe I/O over the addon's packet sockets. `addon` (tests) defaults to loadNative();
 * `macOf` to /sys/class/net/NAME/address.
 */
export function packetProbeIo(o: { addon?: NativeAddon | null; macOf?: (netdev: string) => Uint8Array | null } = {}): ProbeIoFactory {
  return (spec, onReply) => {
    const op = `link_watch ${spec.kind}`;
    const fail = (code: ErrnoCode, msg: string): never => {
      throw new VerbsError(code, op, `${spec.netdev}: ${msg}`, 'link_watch');
    };
    const a = o.addon === undefined ? loadNative() : o.addon;
    if (!a?.packetOpen || !a.packetSend || !a.rxStart) fail('EOPNOTSUPP', `the ${spec.kind} link watch needs the native addon (AF_PACKET sockets)`);
    if (spec.vlanId !== undefined) fail('EOPNOTSUPP', 'vlanid: tagged probes are not supported');
    const addon = a!;
    const mac = (o.macOf ?? sysMac)(spec.netdev);
    if (mac === null) fail('ENODEV', 'no such network interface (no MAC address)');
    const arp = spec.kind === 'arp_ping';
    const fd = addon.packetOpen!(spec.netdev, arp ? ETHERTYPE_ARP : ETHERTYPE_IPV6, 1 << 18);
    if (fd < 0) {
      if (fd === -constants.errno.EPERM || fd === -constants.errno.EACCES) fail('EPERM', `the ${spec.kind} link watch needs CAP_NET_RAW (AF_PACKET socket)`);
      if (fd === -constants.errno.ENODEV) fail('ENODEV', 'no such network interface');
      fail('EINVAL', `AF_PACKET socket: ${errnoName(-fd)}`);
    }
    const frame = Buffer.alloc(PROBE_FRAME_MAX);
    let len: number;
    try {
      len = arp ? buildArpRequest(frame, mac!, spec.source, spec.target) : buildNs(frame, mac!, linkLocal(spec.netdev, mac!), gidFromString(spec.target));
    } catch (e) {
      closeSync(fd);
      throw new VerbsError('EINVAL', op, `${spec.netdev}: ${(e as Error).message}`, 'link_watch');
    }
    const rxData = Buffer.alloc(RX_SLOTS * RX_SLOT_SIZE);
    const rxMeta = new Uint32Array(RX_SLOTS * 4);
    let closed = false;
    const h = addon.rxStart!(fd, rxData, rxMeta, RX_SLOTS, RX_SLOT_SIZE, (n) => {
      if (closed || n < 0) return;
      for (let i = 0; i < n; i++) {
        const f = rxData.subarray(i * RX_SLOT_SIZE, (i + 1) * RX_SLOT_SIZE);
        const l = Math.min(rxMeta[i * 4]!, RX_SLOT_SIZE);
        const p = arp ? parseArpFrame(f, l) : parseNaFrame(f, l);
        if (p !== null) onReply(p);
      }
    });
    if (!h) {
      closeSync(fd);
      fail('EINVAL', 'cannot watch the AF_PACKET socket');
    }
    return {
      send: () => (closed ? -constants.errno.EBADF : addon.packetSend!(fd, frame, len)),
      close: () => {
        if (closed) return;
        closed = true;
        if (addon.rxStop) addon.rxStop(h!);
        else closeSync(fd);
      },
    };
  };
}
