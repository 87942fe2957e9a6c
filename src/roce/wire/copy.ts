/**
 * Byte copies on the per-packet paths: a payload into registered memory (the responder's WRITE
 * and SEND execute, the completer's READ responses) and registered memory into a packet (the
 * requester's gather, READ responses).
 *
 * `Buffer.prototype.copy` of part of a buffer builds a Uint8Array view of its source on every call
 * (Node's lib/buffer.js `_copyActual`), one young-generation object per packet. With the addon the
 * copy is one call to its `copyBytes` (a memmove; nothing allocated); without it, `Buffer.copy` as
 * before (every caller's source is a Buffer: a packet, an MR's buffer, an inline copy). Small copies (a ping-pong's messages) are a loop either way: cheaper than any call.
 */
import { loadNative } from '../../native.js';

/** Up to this many bytes are copied by a loop. */
const SMALL_COPY = 64;

const nativeCopy = loadNative()?.copyBytes ?? null;

/** n bytes from src[s] to dst[d]; as `Buffer.copy`, a range past either end is cut short there. */
export function copyBytes(src: Uint8Array, s: number, dst: Uint8Array, d: number, n: number): void {
  if (n <= SMALL_COPY && s + n <= src.length && d + n <= dst.length) {
    for (let i = 0; i < n; i++) dst[d + i] = src[s + i]!;
    return;
  }
  // -1: a range runs past its array; Buffer.copy then copies what fits, as before.
  if (nativeCopy !== null && nativeCopy(src, s, dst, d, n) >= 0) return;
  (src as Buffer).copy(dst, d, s, s + n);
}
