/**
 * The LACPDU on the wire (IEEE 802.1AX-2014 6.4.2.3; teamd_runner_lacp.c struct lacpdu): an Ethernet
 * frame to the slow-protocols group 01:80:c2:00:00:02, Ethertype 0x8809, subtype 1 (LACP), version 1,
 * then the Actor and Partner information TLVs (type 1 / 2, length 20: system priority, system MAC,
 * key, port priority, port number, state), the Collector TLV (type 3, length 16: max delay) and the
 * Terminator (type 0, length 0), padded to 124 bytes with the Ethernet header. Multi-byte fields are
 * big-endian. The layout is a table (offsets from the frame's first byte), read and written by one
 * loop, as the wire views in src/roce/wire are.
 */

export const SLOW_PROTOCOLS_MAC: Readonly<Uint8Array> = Uint8Array.of(0x01, 0x80, 0xc2, 0x00, 0x00, 0x02);
export const ETHERTYPE_SLOW = 0x8809;
export const LACP_SUBTYPE = 0x01;
/** the whole frame: Ethernet header (14) + LACPDU (110) */
export const LACPDU_LEN = 124;

/** Actor / Partner state bits (802.1AX 6.4.2.3 Actor_State; teamd INFO_STATE_*). */
export const LACP_STATE = Object.freeze({
  ACTIVITY: 0x01,
  TIMEOUT: 0x02,
  AGGREGATION: 0x04,
  SYNCHRONIZATION: 0x08,
  COLLECTING: 0x10,
  DISTRIBUTING: 0x20,
  DEFAULTED: 0x40,
  EXPIRED: 0x80,
});

/** One side's information (Actor_ or Partner_ fields of the PDU). */
export interface LacpInfo {
  systemPriority: number;
  /** the system ID: a MAC, 6 bytes */
  system: Uint8Array;
  key: number;
  portPriority: number;
  port: number;
  state: number;
}

export interface Lacpdu {
  /** the frame's source MAC (the port's own) */
  src: Uint8Array;
  actor: LacpInfo;
  partner: LacpInfo;
  /** Collector Max Delay (tens of microseconds); teamd sends 0 */
  collectorMaxDelay: number;
}

type Kind = 'u8' | 'u16' | 'mac';
/** [field, offset in the frame, kind]: fixed values are checked / written from CONST below. */
const INFO_FIELDS: readonly (readonly [keyof LacpInfo, number, Kind])[] = [
  ['systemPriority', 0, 'u16'],
  ['system', 2, 'mac'],
  ['key', 8, 'u16'],
  ['portPriority', 10, 'u16'],
  ['port', 12, 'u16'],
  ['state', 14, 'u8'],
];
const ACTOR_INFO = 18;
const PARTNER_INFO = 38;
const COLLECTOR_MAX_DELAY = 58;
/** [offset, value]: the header's fixed bytes (TLV types and lengths); everything else not listed is zero */
const CONST: readonly (readonly [number, number])[] = [
  [14, LACP_SUBTYPE],
  [15, 0x01], // version
  [16, 0x01], // Actor TLV
  [17, 0x14],
  [36, 0x02], // Partner TLV
  [37, 0x14],
  [56, 0x03], // Collector TLV
  [57, 0x10],
  [72, 0x00], // Terminator
  [73, 0x00],
];
/** Lengths a receiver checks (802.1AX 6.4.2.3 and teamd's lacpdu_check: types, version, reserved are not checked). */
const CHECKED_LENGTHS: readonly (readonly [number, number])[] = [
  [17, 0x14],
  [37, 0x14],
  [57, 0x10],
  [73, 0x00],
];

export function emptyInfo(): LacpInfo {
  return { systemPriority: 0, system: new Uint8Array(6), key: 0, portPriority: 0, port: 0, state: 0 };
}

function writeInfo(f: Uint8Array, base: number, i: LacpInfo): void {
  for (const [k, off, kind] of INFO_FIELDS) {
    const o = base + off;
    if (kind === 'mac') f.set((i[k] as Uint8Array).subarray(0, 6), o);
    else if (kind === 'u16') {
      const v = i[k] as number;
      f[o] = (v >>> 8) & 0xff;
      f[o + 1] = v & 0xff;
    } else f[o] = (i[k] as number) & 0xff;
  }
}

function readInfo(f: Uint8Array, base: number): LacpInfo {
  const r = emptyInfo() as unknown as Record<string, number | Uint8Array>;
  for (const [k, off, kind] of INFO_FIELDS) {
    const o = base + off;
    r[k] = kind === 'mac' ? f.slice(o, o + 6) : kind === 'u16' ? (f[o]! << 8) | f[o + 1]! : f[o]!;
  }
  return r as unknown as LacpInfo;
}

/** Writes the LACPDU frame into `out` (LACPDU_LEN bytes, zeroed here first); returns its length. */
export function emitLacpdu(pdu: Lacpdu, out: Uint8Array = new Uint8Array(LACPDU_LEN)): Uint8Array {
  if (out.length < LACPDU_LEN) throw new RangeError(`emitLacpdu: ${out.length} bytes, a LACPDU frame is ${LACPDU_LEN}`);
  out.fill(0, 0, LACPDU_LEN);
  out.set(SLOW_PROTOCOLS_MAC, 0);
  out.set(pdu.src.subarray(0, 6), 6);
  out[12] = ETHERTYPE_SLOW >>> 8;
  out[13] = ETHERTYPE_SLOW & 0xff;
  for (const [o, v] of CONST) out[o] = v;
  writeInfo(out, ACTOR_INFO, pdu.actor);
  writeInfo(out, PARTNER_INFO, pdu.partner);
  out[COLLECTOR_MAX_DELAY] = (pdu.collectorMaxDelay >>> 8) & 0xff;
  out[COLLECTOR_MAX_DELAY + 1] = pdu.collectorMaxDelay & 0xff;
  return out.subarray(0, LACPDU_LEN);
}

/**
 * Parses a received frame: null for a frame that is not a LACPDU (another Ethertype, another slow
 * protocol subtype such as Marker or OAM: silently ignored, as 802.3 Annex 57A says) or a malformed one
 * (short, or a TLV length other than 802.1AX's: teamd logs "malformed LACP PDU" and drops it).
 * A frame padded past 124 bytes (a NIC's minimum) is fine.
 */
export function parseLacpdu(f: Uint8Array, len = f.length): Lacpdu | null {
  if (len < LACPDU_LEN) return null;
  if (((f[12]! << 8) | f[13]!) !== ETHERTYPE_SLOW || f[14] !== LACP_SUBTYPE) return null;
  for (const [o, v] of CHECKED_LENGTHS) if (f[o] !== v) return null;
  return {
    src: f.slice(6, 12),
    actor: readInfo(f, ACTOR_INFO),
    partner: readInfo(f, PARTNER_INFO),
    collectorMaxDelay: (f[COLLECTOR_MAX_DELAY]! << 8) | f[COLLECTOR_MAX_DELAY + 1]!,
  };
}

export function infoEqual(a: LacpInfo, b: LacpInfo): boolean {
  if (a.systemPriority !== b.systemPriority || a.key !== b.key || a.portPriority !== b.portPriority || a.port !== b.port || a.state !== b.state) return false;
  for (let i = 0; i < 6; i++) if (a.system[i] !== b.system[i]) return false;
  return true;
}

export function copyInfo(i: LacpInfo): LacpInfo {
  return { ...i, system: Uint8Array.from(i.system) };
}

/** The state bits by name, as teamdctl prints them (tests, state views). */
export function stateNames(s: number): string[] {
  return (Object.keys(LACP_STATE) as (keyof typeof LACP_STATE)[]).filter((k) => (s & LACP_STATE[k]) !== 0).map((k) => k.toLowerCase());
}
