/**
 * The monotonic clock the transport reads (ACK and probe deadlines, round-trip samples, the IPv4 ID
 * window, the flow-port pool), in milliseconds on performance.now()'s timeline.
 *
 * Node 20's performance.now() returns a heap number made in C++ on every call: with several reads
 * per packet that alone filled the young generation (issue 15: the 60 s heap check). With the addon
 * the clock is written into a Float64Array (native clockNow: CLOCK_MONOTONIC, the clock libuv's
 * hrtime and so performance.now() read) and stays an unboxed double in optimized code. The offset
 * to performance.now()'s origin is taken once, so both clocks can be compared (to well under a
 * microsecond). Without the addon, performance.now().
 */
import { loadNative } from '../native.js';

const cell = new Float64Array(1);
const clockNow = loadNative()?.clockNow ?? null;

function offset(): number {
  if (clockNow === null) return 0;
  clockNow(cell);
  const t = cell[0]!;
  return Number.isFinite(t) && t > 0 ? performance.now() - t : NaN;
}
const origin = offset();

/**
 * monoMs(), written to MONO[0] instead of returned. A double returned from a call the optimizer did
 * not inline is a new heap number; one stored from a Float64Array into a double field is not. The
 * link's send path reads the clock once per turn this way (issue 15's heap check: the responder's
 * ACK path, where the call is not inlined into a large caller).
 */
export const MONO = new Float64Array(1);

export const monoTick: () => void =
  clockNow !== null && Number.isFinite(origin)
    ? (): void => {
        clockNow(cell);
        MONO[0] = cell[0]! + origin;
      }
    : (): void => {
        MONO[0] = performance.now();
      };

/** Milliseconds, monotonic, on performance.now()'s timeline. */
export const monoMs: () => number =
  clockNow !== null && Number.isFinite(origin)
    ? (): number => {
        clockNow(cell);
        return cell[0]! + origin;
      }
    : (): number => performance.now();
