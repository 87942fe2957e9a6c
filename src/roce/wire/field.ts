/**
 * Table-driven header codecs for the control path (dump, tests, tracer).
 *
 * Every header module declares its layout once as a `FieldSpec` list: the
 * field name, its byte offset, and its bit position inside the big-endian
 * word that starts at that offset. `readRepr` / `writeRepr` walk that table,
 * so parse and emit are exact inverses by construction: every bit of the
 * header, reserved bits included, belongs to exactly one field (a unit test
 * checks the coverage), and nothing is lost on a parse → emit round trip.
 *
 * The transport hot path does not use these: it uses the hand-written views
 * (BthView, ...) that read single fields in place.
 */

/** `[name, byteOffset, bitShift, bitWidth]` for integers up to 32 bits: the
 *  field lives in the big-endian word of ceil((shift + width) / 8) bytes that
 *  starts at byteOffset, `shift` bits above that word's least significant bit
 *  (so a field always ends in the word's last byte);
 *  `[name, byteOffset, 0, 64]` for 64-bit fields (bigint),
 *  `[name, byteOffset, 'bytes', length]` for raw byte strings (GIDs, MACs). */
export type FieldSpec =
  readonly [name: string, offset: number, shift: number, width: number] | readonly [name: string, offset: number, kind: 'bytes', length: number];

export interface HeaderSpec {
  readonly name: string;
  readonly length: number;
  readonly fields: readonly FieldSpec[];
}

export type ReprValue = number | bigint | Uint8Array;
export type Repr = Record<string, ReprValue>;

/** A copy of buf[start, end) as a plain Uint8Array (not a Buffer: Reprs compare equal whatever buffer they came from). */
export function copyBytes(buf: Uint8Array, start = 0, end = buf.length): Uint8Array {
  return new Uint8Array(buf.subarray(start, end));
}

function wordBytes(shift: number, width: number): number {
  return Math.ceil((shift + width) / 8);
}

/** Reads an unsigned big-endian integer of 1..4 bytes (no sign problems). */
function readWord(buf: Uint8Array, off: number, n: number): number {
  let v = 0;
  for (let i = 0; i < n; i++) v = v * 256 + buf[off + i]!;
  return v;
}

function writeWordMasked(buf: Uint8Array, off: number, n: number, shift: number, width: number, value: number): void {
  // Read-modify-write of the word so neighbouring fields are preserved.
  const word = readWord(buf, off, n);
  const cleared = word - (Math.floor(word / 2 ** shift) % 2 ** width) * 2 ** shift;
  let v = cleared + (value % 2 ** width) * 2 ** shift;
  for (let i = n - 1; i >= 0; i--) {
    buf[off + i] = v & 0xff;
    v = Math.floor(v / 256);
  }
}

export function readField(spec: FieldSpec, buf: Uint8Array, base: number): ReprValue {
  const off = base + spec[1];
  if (spec[2] === 'bytes') return copyBytes(buf, off, off + spec[3]);
  const shift = spec[2];
  const width = spec[3];
  if (width === 64) {
    const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
    return dv.getBigUint64(off, false);
  }
  const n = wordBytes(shift, width);
  return Math.floor(readWord(buf, off, n) / 2 ** shift) % 2 ** width;
}

export function writeField(spec: FieldSpec, buf: Uint8Array, base: number, value: ReprValue): void {
  const off = base + spec[1];
  if (spec[2] === 'bytes') {
    const src = value as Uint8Array;
    for (let i = 0; i < spec[3]; i++) buf[off + i] = src[i] ?? 0;
    return;
  }
  if (spec[3] === 64) {
    const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
    dv.setBigUint64(off, BigInt.asUintN(64, value as bigint), false);
    return;
  }
  writeWordMasked(buf, off, wordBytes(spec[2], spec[3]), spec[2], spec[3], Number(value));
}

/** Parses the header at `off`. The caller has checked that `spec.length` bytes are there. */
export function readRepr<T extends Repr>(spec: HeaderSpec, buf: Uint8Array, off: number): T {
  const r: Repr = {};
  for (const f of spec.fields) r[f[0]] = readField(f, buf, off);
  return r as T;
}

/** Emits `repr` at `off`; returns the number of bytes written (`spec.length`). */
export function writeRepr(spec: HeaderSpec, repr: Repr, buf: Uint8Array, off: number): number {
  for (let i = 0; i < spec.length; i++) buf[off + i] = 0;
  for (const f of spec.fields) {
    const v = repr[f[0]];
    if (v !== undefined) writeField(f, buf, off, v);
  }
  return spec.length;
}
