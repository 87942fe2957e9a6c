/**
 * Records what a device sends and receives as a classic pcap (LINKTYPE_RAW; or
 * LINKTYPE_ETHERNET in the v1 mode, where RoCEv1 frames are recorded as the
 * RoCEv1 link sent and received them, recordFrame),
 * synthesising the IPv4/IPv6 + UDP headers the socket never shows: sent
 * packets with IPv4 ID 0 and DF (what the ICRC was computed for), received
 * ones with the ID recovered from their ICRC, so `softroce dump` and
 * Wireshark verify every ICRC in the recording.
 *
 * A link wrapper: it takes a link and is one. Sends are recorded as they pass
 * through; received datagrams when the device accepted them (Link.rxAccepted:
 * after the ICRC check, which is where an IPv4 ID the socket did not show
 * becomes known), so a capture holds what the device took in, whether the
 * recorder sits above or below a fault injector.
 */
import { createWriteStream, type WriteStream } from 'node:fs';
import { PcapWriter } from '../pcap.js';
import { LinkType } from '../framing.js';
import { ETHERTYPE_IPV4, ETHERTYPE_IPV6, ipv4HeaderChecksum } from '../wire/net.js';
import { gidFromString, ipv4ToNumber } from '../gid.js';
import { LinkWrapper, ROCEV1_PORT, type Link } from './link.js';

const EMPTY = Buffer.alloc(0);
/** The Ethernet header of a RoCEv2 record in the Ethernet mode: the socket never shows the MACs, so they are zero. */
function ethHeader(ethertype: number): Buffer {
  const e = Buffer.alloc(14);
  e.writeUInt16BE(ethertype, 12);
  return e;
}

export class PcapRecorder extends LinkWrapper {
  private readonly w: PcapWriter;
  private readonly stream: WriteStream;
  private readonly hdr = Buffer.alloc(48);
  private closing: Promise<void> | null = null;
  /** the first write error (disk full, ...): recording stopped there; the device keeps running */
  error: Error | null = null;
  /** LINKTYPE_ETHERNET (the v1 mode: RoCEv1 frames recorded as sent, RoCEv2 behind a zero-MAC header) or LINKTYPE_RAW */
  readonly ethernet: boolean;
  private constructor(stream: WriteStream, inner: Link, ethernet: boolean) {
    super(inner);
    this.stream = stream;
    this.ethernet = ethernet;
    this.w = new PcapWriter(ethernet ? LinkType.ETHERNET : LinkType.RAW, 65535, (b) => {
      if (this.error === null) stream.write(b);
    });
    // Without a listener a write error would be an uncaught 'error' event that takes the process down.
    stream.on('error', (e) => {
      this.error ??= e;
    });
  }
  /** Rejects with the fs error (ENOENT, EACCES, ...) when the file cannot be created; nothing stays open then. */
  static async open(path: string, inner: Link, o: { ethernet?: boolean } = {}): Promise<PcapRecorder> {
    const s = createWriteStream(path);
    await new Promise<void>((res, rej) => {
      s.once('open', () => res());
      s.once('error', rej);
    });
    return new PcapRecorder(s, inner, o.ethernet ?? false);
  }
  /** srcPort: the port the datagram leaves from (the sender's sourcePort() answer), which its ICRC covers */
  override send(buf: Buffer, len: number, dstIp: string, dstPort: number, tos?: number, srcPort?: number): void {
    // A RoCEv1 packet has no IP/UDP header to synthesise: the v1 link hands its real frame to recordFrame.
    if (!this.closing && dstPort !== ROCEV1_PORT) this.record(buf, len, this.inner.localIp, srcPort ?? this.inner.localPort, dstIp, dstPort, 0, 1);
    this.inner.send(buf, len, dstIp, dstPort, tos, srcPort);
  }
  /** ipIdDf: `id | df << 16` as the receiver's ICRC check verified it */
  override rxAccepted(buf: Buffer, len: number, srcIp: string, srcPort: number, ipIdDf: number, group?: string): void {
    // A datagram to a joined multicast group is recorded with the group as its destination (the ICRC covers it).
    if (!this.closing && srcPort !== ROCEV1_PORT)
      this.record(buf, len, srcIp, srcPort, group ?? this.inner.localIp, this.inner.localPort, ipIdDf & 0xffff, ipIdDf >>> 16);
    this.inner.rxAccepted?.(buf, len, srcIp, srcPort, ipIdDf, group);
  }
  private record(buf: Buffer, len: number, src: string, sport: number, dst: string, dport: number, id: number, df: number): void {
    const h = this.hdr;
    let hl: number;
    if (!src.includes(':')) {
      hl = 28;
      h.fill(0, 0, 28);
      h[0] = 0x45;
      h.writeUInt16BE(28 + len, 2);
      h.writeUInt16BE(id, 4);
      h.writeUInt16BE(df ? 0x4000 : 0, 6);
      h[8] = 64;
      h[9] = 17;
      h.writeUInt32BE(ipv4ToNumber(src), 12);
      h.writeUInt32BE(ipv4ToNumber(dst), 16);
      h.writeUInt16BE(ipv4HeaderChecksum(h, 0), 10);
      h.writeUInt16BE(sport, 20);
      h.writeUInt16BE(dport, 22);
      h.writeUInt16BE(8 + len, 24);
    } else {
      hl = 48;
      h.fill(0, 0, 48);
      h[0] = 0x60;
      h.writeUInt16BE(8 + len, 4);
      h[6] = 17;
      h[7] = 64;
      h.set(gidFromString(src), 8);
      h.set(gidFromString(dst), 24);
      h.writeUInt16BE(sport, 40);
      h.writeUInt16BE(dport, 42);
      h.writeUInt16BE(8 + len, 44);
    }
    const eth = this.ethernet ? ethHeader(src.includes(':') ? ETHERTYPE_IPV6 : ETHERTYPE_IPV4) : EMPTY;
    this.w.write(Buffer.concat([eth, h.subarray(0, hl), buf.subarray(0, len)]));
  }
  /** A whole Ethernet frame (a RoCEv1 frame as the v1 link sent or received it); recorded in the Ethernet mode only. */
  recordFrame(frame: Buffer, len: number): void {
    if (!this.closing && this.ethernet) this.w.write(frame.subarray(0, len));
  }
  /**
   * Flushes what is buffered and closes the file; resolves once the descriptor is closed
   * ('close', not just 'finish'), also when the stream failed earlier. Idempotent. The inner
   * link stays open (close() closes both).
   */
  detach(): Promise<void> {
    return (this.closing ??= new Promise<void>((r) => {
      const s = this.stream;
      if (s.closed) {
        r();
        return;
      }
      s.once('close', () => r());
      if (!s.destroyed) s.end();
    }));
  }
}
