/**
 * Capture files: a reader for classic pcap (µs and ns, either byte order)
 * and pcapng (SHB/IDB/EPB/SPB/PB blocks, either byte order), and a writer
 * of classic pcap. Damaged files end the iteration with an error record
 * instead of throwing mid-way.
 */
export interface PcapRecord {
  /** index of the record in the file, from 1 */
  index: number;
  /** seconds since the epoch (fractional) */
  time: number;
  linkType: number;
  data: Buffer;
  /** length on the wire; > data.length when the capture was cut by the snaplen */
  origLen: number;
}

export interface PcapReadResult {
  format: 'pcap' | 'pcapng';
  records: PcapRecord[];
  /** set when the file ended inside a record or a block was inconsistent */
  error?: string;
}

export function readCapture(file: Buffer): PcapReadResult {
  if (file.length < 4) return { format: 'pcap', records: [], error: 'file too short' };
  const m = file.readUInt32LE(0);
  if (m === 0x0a0d0d0a) return readPcapng(file);
  return readPcap(file);
}

function readPcap(file: Buffer): PcapReadResult {
  const records: PcapRecord[] = [];
  if (file.length < 24) return { format: 'pcap', records, error: 'truncated pcap header' };
  const magicLE = file.readUInt32LE(0);
  let le: boolean;
  let nano: boolean;
  if (magicLE === 0xa1b2c3d4 || magicLE === 0xa1b23c4d) {
    le = true;
    nano = magicLE === 0xa1b23c4d;
  } else {
    const magicBE = file.readUInt32BE(0);
    if (magicBE === 0xa1b2c3d4 || magicBE === 0xa1b23c4d) {
      le = false;
      nano = magicBE === 0xa1b23c4d;
    } else return { format: 'pcap', records, error: 'not a pcap or pcapng file' };
  }
  const u32 = (o: number): number => (le ? file.readUInt32LE(o) : file.readUInt32BE(o));
  const linkType = u32(20) & 0x0fffffff;
  let off = 24;
  let index = 0;
  while (off < file.length) {
    if (off + 16 > file.length) return { format: 'pcap', records, error: `truncated record header at ${off}` };
    const sec = u32(off),
      frac = u32(off + 4),
      incl = u32(off + 8),
      orig = u32(off + 12);
    off += 16;
    if (off + incl > file.length) return { format: 'pcap', records, error: `truncated record ${index + 1}` };
    records.push({ index: ++index, time: sec + frac / (nano ? 1e9 : 1e6), linkType, data: file.subarray(off, off + incl), origLen: orig });
    off += incl;
  }
  return { format: 'pcap', records };
}

function readPcapng(file: Buffer): PcapReadResult {
  const records: PcapRecord[] = [];
  let le = true;
  const ifaces: Array<{ linkType: number; tsDiv: number }> = [];
  let off = 0;
  let index = 0;
  while (off + 12 <= file.length) {
    const typeLE = file.readUInt32LE(off);
    if (typeLE === 0x0a0d0d0a) {
      const bom = file.readUInt32LE(off + 8);
      if (bom === 0x1a2b3c4d) le = true;
      else if (bom === 0x4d3c2b1a) le = false;
      else return { format: 'pcapng', records, error: 'bad byte-order magic' };
      ifaces.length = 0;
    }
    const u32 = (o: number): number => (le ? file.readUInt32LE(o) : file.readUInt32BE(o));
    const u16 = (o: number): number => (le ? file.readUInt16LE(o) : file.readUInt16BE(o));
    const type = u32(off);
    const blen = u32(off + 4);
    if (blen < 12 || blen % 4 !== 0 || off + blen > file.length) return { format: 'pcapng', records, error: `bad block at ${off}` };
    const body = off + 8;
    const bodyEnd = off + blen - 4;
    if (type === 1 && bodyEnd - body >= 8) {
      // Interface Description Block: link type, snaplen, options (if_tsresol).
      let tsDiv = 1e6;
      let o = body + 8;
      while (o + 4 <= bodyEnd) {
        const code = u16(o),
          olen = u16(o + 2);
        if (code === 0) break;
        if (code === 9 && olen >= 1) {
          const v = file[o + 4]!;
          tsDiv = v & 0x80 ? 2 ** (v & 0x7f) : 10 ** v;
        }
        o += 4 + ((olen + 3) & ~3);
      }
      ifaces.push({ linkType: u16(body), tsDiv });
    } else if ((type === 6 || type === 2) && bodyEnd - body >= 20) {
      // Enhanced Packet Block (6) / obsolete Packet Block (2).
      const ifId = type === 6 ? u32(body) : u16(body);
      const tsHi = u32(body + 4),
        tsLo = u32(body + 8),
        cap = u32(body + 12),
        orig = u32(body + 16);
      const iface = ifaces[ifId];
      if (!iface || body + 20 + cap > bodyEnd) return { format: 'pcapng', records, error: `bad packet block at ${off}` };
      records.push({
        index: ++index,
        time: (tsHi * 2 ** 32 + tsLo) / iface.tsDiv,
        linkType: iface.linkType,
        data: file.subarray(body + 20, body + 20 + cap),
        origLen: orig,
      });
    } else if (type === 3 && bodyEnd - body >= 4) {
      // Simple Packet Block: interface 0, no timestamp.
      const orig = u32(body);
      const iface = ifaces[0];
      if (!iface) return { format: 'pcapng', records, error: `simple packet block before any interface at ${off}` };
      const cap = Math.min(orig, bodyEnd - body - 4);
      records.push({ index: ++index, time: 0, linkType: iface.linkType, data: file.subarray(body + 4, body + 4 + cap), origLen: orig });
    }
    off += blen;
  }
  if (off !== file.length) return { format: 'pcapng', records, error: 'trailing bytes' };
  return { format: 'pcapng', records };
}

/** Classic pcap (little-endian, µs) writer into memory or a stream-like sink. */
export class PcapWriter {
  private readonly chunks: Buffer[] = [];
  readonly linkType: number;
  readonly snaplen: number;
  private readonly sink: ((b: Buffer) => void) | undefined;
  constructor(linkType: number, snaplen = 262144, sink?: (b: Buffer) => void) {
    this.linkType = linkType;
    this.snaplen = snaplen;
    this.sink = sink;
    const h = Buffer.alloc(24);
    h.writeUInt32LE(0xa1b2c3d4, 0);
    h.writeUInt16LE(2, 4);
    h.writeUInt16LE(4, 6);
    h.writeUInt32LE(snaplen, 16);
    h.writeUInt32LE(linkType, 20);
    this.out(h);
  }
  private out(b: Buffer): void {
    if (this.sink) this.sink(b);
    else this.chunks.push(b);
  }
  write(data: Uint8Array, timeSec = Date.now() / 1000, origLen = data.length): void {
    const h = Buffer.alloc(16);
    const sec = Math.floor(timeSec);
    h.writeUInt32LE(sec >>> 0, 0);
    h.writeUInt32LE(Math.min(999999, Math.round((timeSec - sec) * 1e6)), 4);
    const incl = Math.min(data.length, this.snaplen);
    h.writeUInt32LE(incl, 8);
    h.writeUInt32LE(origLen, 12);
    this.out(h);
    this.out(Buffer.from(data.subarray(0, incl))); // a copy: callers reuse their buffers
  }
  /** The whole file (in-memory mode). */
  toBuffer(): Buffer {
    return Buffer.concat(this.chunks);
  }
}
