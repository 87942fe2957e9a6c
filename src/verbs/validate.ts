/**
 * Argument checks for the public verbs. A C verbs call gets EINVAL for a bad
 * argument before the provider touches anything (rxe's rxe_qp_chk_attr,
 * rdma-core's post checks); JavaScript callers can also pass the wrong *type*,
 * which must not surface as a TypeError from deep inside the stack or, worse,
 * be coerced (`'3'`, `1.5`, a port of 70000 that the socket takes modulo
 * 65536). Every check throws a VerbsError naming the offending argument and is
 * run before the verb changes any state.
 */
import { VerbsError, type ErrnoCode } from './errors.js';
import { gidFromString, type Gid } from '../roce/gid.js';
import { MTU_VALUES, type Mtu } from '../roce/opcode.js';

export function fail(op: string, arg: string, msg: string, code: ErrnoCode = 'EINVAL'): never {
  throw new VerbsError(code, op, `${arg}: ${msg}`, arg);
}

const show = (v: unknown): string => (typeof v === 'string' ? JSON.stringify(v) : typeof v === 'bigint' ? `${v}n` : String(v));

/** A plain object (not null, not an array): options and attribute bags. */
export function obj(op: string, arg: string, v: unknown): void {
  if (typeof v !== 'object' || v === null || Array.isArray(v))
    fail(op, arg, `must be an object, got ${v === null ? 'null' : Array.isArray(v) ? 'an array' : typeof v}`);
}
/** An optional options bag: undefined, or an object. */
export function optObj(op: string, arg: string, v: unknown): void {
  if (v !== undefined) obj(op, arg, v);
}

/** An integer in lo..hi (a number, not a numeric string; no fractions, no NaN). */
export function int(op: string, arg: string, v: unknown, lo: number, hi: number): void {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < lo || v > hi) fail(op, arg, `must be an integer in ${lo}..${hi}, got ${show(v)}`);
}
export function optInt(op: string, arg: string, v: unknown, lo: number, hi: number): void {
  if (v !== undefined) int(op, arg, v, lo, hi);
}
/** A 32-bit unsigned value (Q_Key, R_Key, immediate data). */
export function u32(op: string, arg: string, v: unknown): void {
  int(op, arg, v, 0, 0xffffffff);
}
/** A 24-bit PSN (IBA 9.7.1). */
export function psn(op: string, arg: string, v: unknown): void {
  int(op, arg, v, 0, 0xffffff);
}
/** A number usable as a percentage 0..100. */
export function pct(op: string, arg: string, v: unknown): void {
  if (v === undefined) return;
  if (typeof v !== 'number' || !Number.isFinite(v) || v < 0 || v > 100) fail(op, arg, `must be a number in 0..100, got ${show(v)}`);
}
export function optBool(op: string, arg: string, v: unknown): void {
  if (v !== undefined && typeof v !== 'boolean') fail(op, arg, `must be a boolean, got ${show(v)}`);
}
export function optStr(op: string, arg: string, v: unknown): void {
  if (v !== undefined && typeof v !== 'string') fail(op, arg, `must be a string, got ${show(v)}`);
}
export function oneOf<T extends string>(op: string, arg: string, v: unknown, allowed: readonly T[]): void {
  if (!allowed.includes(v as T)) fail(op, arg, `must be one of ${allowed.join(', ')}, got ${show(v)}`);
}
export function optOneOf<T extends string>(op: string, arg: string, v: unknown, allowed: readonly T[]): void {
  if (v !== undefined) oneOf(op, arg, v, allowed);
}
/** A 64-bit value as a bigint (remote addresses, atomic operands): 0..2^64-1. */
export function u64(op: string, arg: string, v: unknown): void {
  if (typeof v !== 'bigint' || v < 0n || v > 0xffff_ffff_ffff_ffffn) fail(op, arg, `must be a bigint in 0..2^64-1, got ${show(v)}`);
}
/** An atomic operand: any bigint that fits 64 bits, signed or unsigned (it is taken modulo 2^64). */
export function operand(op: string, arg: string, v: unknown): void {
  if (typeof v !== 'bigint' || v < -(1n << 63n) || v > 0xffff_ffff_ffff_ffffn) fail(op, arg, `must be a 64-bit bigint, got ${show(v)}`);
}
/** A work request id (ibv_send_wr.wr_id), typed as a number here. */
export function wrId(op: string, arg: string, v: unknown): void {
  if (typeof v !== 'number' || !Number.isFinite(v)) fail(op, arg, `must be a finite number, got ${show(v)}`);
}
export function mtu(op: string, arg: string, v: unknown): void {
  if (!MTU_VALUES.includes(v as Mtu)) fail(op, arg, `must be 256, 512, 1024, 2048 or 4096, got ${show(v)}`);
}
/** A GID: 16 bytes, or a string (an IPv4/IPv6 address or GID text). */
export function gid(op: string, arg: string, v: unknown): Gid {
  if (v instanceof Uint8Array) {
    if (v.length !== 16) fail(op, arg, `must be 16 bytes, got ${v.length}`);
    return v;
  }
  if (typeof v !== 'string') fail(op, arg, `must be a GID (16 bytes) or an address string, got ${show(v)}`);
  let g: Gid;
  try {
    g = gidFromString(v);
  } catch {
    fail(op, arg, `is not a GID or IP address: ${show(v)}`);
  }
  if (g.length !== 16) fail(op, arg, `is not a GID or IP address: ${show(v)}`);
  return g;
}
/** A list (a real array). */
export function list(op: string, arg: string, v: unknown): void {
  if (!Array.isArray(v)) fail(op, arg, `must be an array, got ${v === null ? 'null' : typeof v}`);
}
