/**
 * GIDs (IBA 4.1.1) as RoCE uses them: an IPv6 address, an IPv4-mapped IPv6
 * address for IPv4 (`::ffff:a.b.c.d`, rdma_ip2gid), or the default GID
 * fe80::/64 + EUI-64 of the MAC (cache.c make_default_gid).
 */
export type Gid = Uint8Array;

export function ipv4ToGid(ip: string | number): Gid {
  const g = new Uint8Array(16);
  g[10] = 0xff;
  g[11] = 0xff;
  const n = typeof ip === 'number' ? ip : ipv4ToNumber(ip);
  g[12] = (n >>> 24) & 0xff;
  g[13] = (n >>> 16) & 0xff;
  g[14] = (n >>> 8) & 0xff;
  g[15] = n & 0xff;
  return g;
}

/** Dotted-quad to number without allocating (the receive path calls it per packet); -1 if it is not one. */
export function parseIpv4(s: string): number {
  let n = 0,
    part = 0,
    digits = 0,
    dots = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c === 46) {
      if (digits === 0 || part > 255) return -1;
      n = n * 256 + part;
      part = 0;
      digits = 0;
      dots++;
    } else if (c >= 48 && c <= 57) {
      part = part * 10 + (c - 48);
      digits++;
      if (digits > 3) return -1;
    } else return -1;
  }
  if (dots !== 3 || digits === 0 || part > 255) return -1;
  return (n * 256 + part) >>> 0;
}

export function ipv4ToNumber(ip: string): number {
  const n = parseIpv4(ip);
  if (n < 0) throw new RangeError(`not an IPv4 address: ${ip}`);
  return n;
}

export function numberToIpv4(n: number): string {
  return `${(n >>> 24) & 0xff}.${(n >>> 16) & 0xff}.${(n >>> 8) & 0xff}.${n & 0xff}`;
}

export function isIpv4Mapped(g: Uint8Array): boolean {
  for (let i = 0; i < 10; i++) if (g[i] !== 0) return false;
  return g[10] === 0xff && g[11] === 0xff;
}

/** The IPv4 address in an IPv4-mapped GID, as a number. */
export function gidToIpv4Number(g: Uint8Array): number {
  return ((g[12]! << 24) | (g[13]! << 16) | (g[14]! << 8) | g[15]!) >>> 0;
}

/** Default GID from a MAC: fe80::/64 with the EUI-64 interface id (U/L bit flipped). */
export function macToDefaultGid(mac: Uint8Array): Gid {
  const g = new Uint8Array(16);
  g[0] = 0xfe;
  g[1] = 0x80;
  g[8] = mac[0]! ^ 0x02;
  g[9] = mac[1]!;
  g[10] = mac[2]!;
  g[11] = 0xff;
  g[12] = 0xfe;
  g[13] = mac[3]!;
  g[14] = mac[4]!;
  g[15] = mac[5]!;
  return g;
}

/** inet_ntop(AF_INET6) as glibc prints it (also how ibv_rc_pingpong prints GIDs). */
export function gidToString(g: Uint8Array): string {
  const w: number[] = [];
  for (let i = 0; i < 16; i += 2) w.push((g[i]! << 8) | g[i + 1]!);
  let bestBase = -1,
    bestLen = 0,
    curBase = -1,
    curLen = 0;
  for (let i = 0; i < 8; i++) {
    if (w[i] === 0) {
      if (curBase < 0) {
        curBase = i;
        curLen = 1;
      } else curLen++;
      if (curLen > bestLen) {
        bestBase = curBase;
        bestLen = curLen;
      }
    } else curBase = -1;
  }
  if (bestLen < 2) bestBase = -1;
  let s = '';
  for (let i = 0; i < 8; i++) {
    if (bestBase >= 0 && i >= bestBase && i < bestBase + bestLen) {
      if (i === bestBase) s += ':';
      continue;
    }
    if (i !== 0) s += ':';
    if (i === 6 && bestBase === 0 && (bestLen === 6 || (bestLen === 5 && w[5] === 0xffff))) {
      s += `${g[12]}.${g[13]}.${g[14]}.${g[15]}`;
      break;
    }
    s += w[i]!.toString(16);
  }
  if (bestBase >= 0 && bestBase + bestLen === 8) s += ':';
  return s;
}

/** Parses an IPv6 / GID string (`fe80::1`, `::ffff:10.0.0.1`), or a plain IPv4 address (mapped). */
export function gidFromString(s: string): Gid {
  if (/^\d+\.\d+\.\d+\.\d+$/.test(s)) return ipv4ToGid(s);
  const g = new Uint8Array(16);
  let tail4: number | undefined;
  let str = s;
  const m = /^(.*:)(\d+\.\d+\.\d+\.\d+)$/.exec(s);
  if (m) {
    tail4 = ipv4ToNumber(m[2]!);
    str = m[1]! + '0:0';
  }
  const halves = str.split('::');
  if (halves.length > 2) throw new RangeError(`not a GID: ${s}`);
  const parse = (h: string): number[] =>
    h === ''
      ? []
      : h.split(':').map((x) => {
          if (!/^[0-9a-fA-F]{1,4}$/.test(x)) throw new RangeError(`not a GID: ${s}`);
          return parseInt(x, 16);
        });
  const head = parse(halves[0]!);
  const tail = halves.length === 2 ? parse(halves[1]!) : [];
  const words = halves.length === 2 ? [...head, ...new Array<number>(8 - head.length - tail.length).fill(0), ...tail] : head;
  if (words.length !== 8) throw new RangeError(`not a GID: ${s}`);
  words.forEach((w, i) => {
    g[2 * i] = w >>> 8;
    g[2 * i + 1] = w & 0xff;
  });
  if (tail4 !== undefined) {
    g[12] = tail4 >>> 24;
    g[13] = (tail4 >>> 16) & 0xff;
    g[14] = (tail4 >>> 8) & 0xff;
    g[15] = tail4 & 0xff;
  }
  return g;
}

/** 32 hex digits, as the ibv_*_pingpong exchange carries a GID. */
export function gidToHex(g: Uint8Array): string {
  return Buffer.from(g).toString('hex');
}
export function gidFromHex(h: string): Gid {
  if (!/^[0-9a-fA-F]{32}$/.test(h)) throw new RangeError(`not a 32-digit GID: ${h}`);
  return new Uint8Array(Buffer.from(h, 'hex'));
}
