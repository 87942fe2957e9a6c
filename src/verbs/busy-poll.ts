/**
 * Busy polling (issue 15, opt-in): a user who trades a core for latency spins on the device's
 * receive sockets instead of sleeping until the event loop reports them, as a C verbs user spins on
 * ibv_poll_cq while the NIC writes completions (Linux's SO_BUSY_POLL for sockets, in µs as here).
 * The spin itself is Device.busyPoll / Device.spin; CQs opt in with createCq's busyPollUs. Only the
 * native link can read its socket on demand (Link.pollRx); elsewhere the verbs fall back to events.
 */
/** The longest one busy poll may spin, in µs (100 ms): a bound, so a spin always returns. */
export const MAX_BUSY_POLL_US = 100_000;

let reported = false;

/**
 * Busy polling was asked for where it cannot run (no addon: Node's dgram; the in-memory network):
 * the CQ polls without spinning (the event path carries on), said once per process
 * as a warning (code SOFTROCE_BUSY_POLL) so a user sees why the latency did not change.
 */
export function busyPollFallback(device: string, backend: string): void {
  if (reported) return;
  reported = true;
  process.emitWarning(
    `softroce: device ${device} cannot busy-poll (it needs the native addon's socket on every port, backend ${backend}): CQ polls do not spin`,
    { code: 'SOFTROCE_BUSY_POLL' },
  );
}
