/**
 * rdma_cm's own wire pieces (roce-wire.md h.1, h.2): the service IDs it puts in REQ / SIDR_REQ, and the
 * 36-byte header it prepends to the user's private data in a REQ or SIDR_REQ (kernel cma.c struct cma_hdr,
 * cma_format_hdr / cma_get_ip_ver / cma_save_ip4_info). With AF_IB addressing there is no header: not here.
 */
import { isIP } from 'node:net';
import { gidFromString, gidToString, numberToIpv4 } from '../roce/gid.js';

export const CMA_HDR_LEN = 36;
/** cma_hdr.cma_version (CMA_VERSION in cma.c). */
export const CMA_VERSION = 0x00;

/** rdma_cm port spaces (librdmacm rdma_cma.h enum rdma_port_space). */
export const RdmaPortSpace = { IPOIB: 0x0002, TCP: 0x0106, UDP: 0x0111, IB: 0x013f } as const;
export type RdmaPortSpaceName = keyof typeof RdmaPortSpace;

/** rdma_cm service IDs are `0x00000000_01XX_PPPP` (IB_CMA_SERVICE_ID / IB_CMA_SERVICE_ID_MASK in cma.c). */
export const IB_CMA_SERVICE_ID = 0x0000000001000000n;
export const IB_CMA_SERVICE_ID_MASK = 0xffffffffff000000n;

export type CmaHdrErrorReason = 'short-buffer' | 'version' | 'ip-version' | 'address' | 'port' | 'output-too-small';

/** A cma_hdr or service ID that cannot be decoded or encoded. `decodeCmaHdr` returns it; encoders throw it. */
export class CmaHdrError extends Error {
  readonly reason: CmaHdrErrorReason;
  readonly field: string | undefined;
  constructor(reason: CmaHdrErrorReason, message: string, field?: string) {
    super(`cma_hdr: ${message}`);
    this.name = 'CmaHdrError';
    this.reason = reason;
    this.field = field;
  }
}

/** `(ps << 16) + port` (cma.c cma_get_service_id). The port is the destination / listening port. */
export function serviceId(ps: number, port: number): bigint {
  if (!Number.isInteger(ps) || ps < 0 || ps > 0xffff) throw new CmaHdrError('port', `port space ${ps} is not 16-bit`, 'ps');
  if (!Number.isInteger(port) || port < 0 || port > 0xffff) throw new CmaHdrError('port', `port ${port} is not 0..65535`, 'port');
  return (BigInt(ps) << 16n) + BigInt(port);
}

export interface ParsedServiceId {
  ps: number;
  /** the port space's name, when it is one of librdmacm's */
  portSpace: RdmaPortSpaceName | undefined;
  port: number;
}

const PS_NAME = new Map<number, RdmaPortSpaceName>(Object.entries(RdmaPortSpace).map(([k, v]) => [v, k as RdmaPortSpaceName]));

/** The port space and port of an rdma_cm service ID; null when the ID is not in rdma_cm's range
 *  (what cma.c's listener matching checks), e.g. a raw ib_cm service or RDMA_PS_IPOIB's 0x0002 prefix. */
export function parseServiceId(sid: bigint): ParsedServiceId | null {
  if ((sid & IB_CMA_SERVICE_ID_MASK) !== IB_CMA_SERVICE_ID) return null;
  const ps = Number((sid >> 16n) & 0xffffn);
  return { ps, portSpace: PS_NAME.get(ps), port: Number(sid & 0xffffn) };
}

/** The decoded header. Addresses are strings as node:net writes them ('198.18.0.11', 'fe80::1'). */
export interface CmaHdr {
  ipVersion: 4 | 6;
  /** the active side's rdma_cm source port */
  port: number;
  src: string;
  dst: string;
}

function writeAddr(out: Uint8Array, off: number, ipVersion: 4 | 6, addr: string, field: string): void {
  const fam = isIP(addr);
  if (fam !== ipVersion) throw new CmaHdrError('address', `${field} ${JSON.stringify(addr)} is not an IPv${ipVersion} address`, field);
  // IPv4 goes in the last 4 bytes after 12 zeros (cma_hdr's union's ip4 member sits at pad[3]).
  const g = gidFromString(addr);
  if (fam === 4) for (let i = 0; i < 12; i++) g[i] = 0;
  out.set(g, off);
}

function readAddr(b: Uint8Array, off: number, ipVersion: 4 | 6): string {
  if (ipVersion === 4) return numberToIpv4(((b[off + 12]! << 24) | (b[off + 13]! << 16) | (b[off + 14]! << 8) | b[off + 15]!) >>> 0);
  return gidToString(b.subarray(off, off + 16));
}

/** Writes the 36-byte header at `out[off]` (a new buffer when none is given). Throws CmaHdrError. */
export function encodeCmaHdr(h: CmaHdr, out?: Uint8Array, off = 0): Uint8Array {
  if (h.ipVersion !== 4 && h.ipVersion !== 6) throw new CmaHdrError('ip-version', `ip_version ${String(h.ipVersion)} is not 4 or 6`, 'ipVersion');
  if (!Number.isInteger(h.port) || h.port < 0 || h.port > 0xffff) throw new CmaHdrError('port', `port ${h.port} is not 0..65535`, 'port');
  const b = out ?? new Uint8Array(CMA_HDR_LEN);
  if (b.length - off < CMA_HDR_LEN) throw new CmaHdrError('output-too-small', `${b.length - off} bytes left, the header is ${CMA_HDR_LEN}`);
  const tmp = new Uint8Array(CMA_HDR_LEN);
  tmp[0] = CMA_VERSION;
  tmp[1] = h.ipVersion << 4;
  tmp[2] = h.port >>> 8;
  tmp[3] = h.port & 0xff;
  writeAddr(tmp, 4, h.ipVersion, h.src, 'src');
  writeAddr(tmp, 20, h.ipVersion, h.dst, 'dst');
  b.set(tmp, off);
  return b;
}

/**
 * Reads the header at the start of `pd` (a REQ's or SIDR_REQ's private data). Returns a CmaHdrError when
 * the buffer is short, the version is not 0, or the IP version nibble is not 4 or 6 (the checks cma.c's
 * cma_check_req_qp_type / cma_save_net_info make before it believes the addresses). The low nibble of the
 * ip_version byte is ignored, as the kernel does (cma_get_ip_ver shifts it away).
 */
export function decodeCmaHdr(pd: Uint8Array): CmaHdr | CmaHdrError {
  if (pd.length < CMA_HDR_LEN) return new CmaHdrError('short-buffer', `${pd.length} bytes, the header is ${CMA_HDR_LEN}`);
  if (pd[0] !== CMA_VERSION) return new CmaHdrError('version', `cma_version ${pd[0]}, expected ${CMA_VERSION}`, 'version');
  const v = pd[1]! >>> 4;
  if (v !== 4 && v !== 6) return new CmaHdrError('ip-version', `ip_version nibble ${v}, expected 4 or 6`, 'ipVersion');
  return { ipVersion: v, port: (pd[2]! << 8) | pd[3]!, src: readAddr(pd, 4, v), dst: readAddr(pd, 20, v) };
}

/** User private-data limits once the header is in (h.2): connect on TCP 56, on UDP (SIDR_REQ) 180. */
export const CMA_USER_PRIVATE_DATA = { REQ: 92 - CMA_HDR_LEN, SIDR_REQ: 216 - CMA_HDR_LEN, REP: 196, SIDR_REP: 136, REJ: 148 } as const;
