/**
 * Big-endian 32-bit stores as four byte stores, for the packet builders and the ICRC's masked
 * copy. Buffer's writeUInt32BE is a call V8 does not always inline into the builders, and a value
 * of 2^31 or more (R_Keys, VA halves, IPv4 addresses) crossing a call is a heap number: one per
 * header field per message (issue 15's heap check). `v` may be a uint32 or the same bits as an
 * int32 (`| 0`, which never boxes).
 */
export function putU32(b: Uint8Array, o: number, v: number): void {
  b[o] = v >>> 24;
  b[o + 1] = v >>> 16;
  b[o + 2] = v >>> 8;
  b[o + 3] = v;
}
