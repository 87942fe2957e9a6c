/**
 * RoCEv2 over a UDP socket bound to the device's address on port 4791: picks
 * the backend, best first:
 *  - native socket (native-link.ts; IPv4, addon built): the addon opens the
 *    socket and reads it with recvmmsg + UDP_GRO on Node's loop; batched
 *    sendmmsg / UDP GSO sends; raw receive with CAP_NET_RAW.
 *  - Node dgram (dgram-link.ts) with the addon's socket options and sendmmsg
 *    batching (IPv6, or SOFTROCE_NATIVE_RX=0; SOFTROCE_NO_BATCH=1 turns the
 *    batching off).
 *  - Node dgram alone (no addon, native 'off', SOFTROCE_NO_NATIVE=1).
 */
import { loadNative } from '../../native.js';
import { DgramLink } from './dgram-link.js';
import { NativeLink } from './native-link.js';
import type { UdpLinkOptions } from './udp-base.js';

export type { UdpLinkOptions } from './udp-base.js';
export { NativeLink } from './native-link.js';
export { DgramLink } from './dgram-link.js';

/** A UDP link of either backend; `UdpLink.open` chooses. */
export type UdpLink = NativeLink | DgramLink;

export const UdpLink = {
  /** Opens the best backend the options and the build allow; a failed open leaves nothing bound. */
  async open(o: UdpLinkOptions): Promise<UdpLink> {
    const family = o.address.includes(':') ? 6 : 4;
    if (family === 4 && (o.native ?? 'auto') !== 'off' && process.env['SOFTROCE_NATIVE_RX'] !== '0') {
      const n = loadNative();
      if (n?.udpOpen4 && n.rxStart) return NativeLink.open(o, n);
    }
    return DgramLink.open(o);
  },
};
