/**
 * LACPDUs on a real port: an AF_PACKET socket bound to the port's netdev and the slow-protocols
 * Ethertype 0x8809 (the native addon's packetOpen / packetSend / rxStart, as the RoCEv1 link uses),
 * with the slow-protocols group 01:80:c2:00:00:02 added to the netdev's multicast filter
 * (PACKET_ADD_MEMBERSHIP; teamd does SIOCADDMULTI) so a NIC does not drop them. Needs the addon and
 * CAP_NET_RAW: without them `openLacpPacketIo` throws a VerbsError saying so (EOPNOTSUPP without the
 * addon, EPERM without the capability, ENODEV for a netdev that does not exist), which the bond turns
 * into a warning: it cannot run the runner there.
 */
import { closeSync, readFileSync } from 'node:fs';
import { loadNative } from '../native.js';
import { VerbsError, type ErrnoCode } from '../verbs/errors.js';
import { ETHERTYPE_SLOW, SLOW_PROTOCOLS_MAC } from './lacpdu.js';
import type { LacpPortIo } from './lacp.js';

const SLOTS = 8;
const SLOT = 256; // a LACPDU frame is 124 bytes; other slow protocols fit too
const ERRNO: Record<number, ErrnoCode> = { 1: 'EPERM', 13: 'EACCES', 19: 'ENODEV', 22: 'EINVAL', 95: 'EOPNOTSUPP' };

function fail(netdev: string, r: number, what: string): never {
  const code = ERRNO[-r] ?? 'EINVAL';
  const why = code === 'EPERM' || code === 'EACCES' ? ' (AF_PACKET needs CAP_NET_RAW)' : code === 'ENODEV' ? ' (no such netdev)' : '';
  throw new VerbsError(code, 'lacp', `${what} on ${netdev} failed: ${code}${why}; the lacp runner cannot run on this port`, 'runner');
}

function macOf(netdev: string): Uint8Array {
  try {
    const m = readFileSync(`/sys/class/net/${netdev}/address`, 'utf8').trim().split(':');
    if (m.length === 6) return Uint8Array.from(m.map((h) => parseInt(h, 16)));
  } catch {
    // below
  }
  throw new VerbsError('ENODEV', 'lacp', `${netdev} has no MAC address in sysfs; the lacp runner cannot run on this port`, 'runner');
}

/** The LACP I/O of port `netdev`: throws a typed VerbsError (argument 'runner') when it cannot be had. */
export function openLacpPacketIo(netdev: string): LacpPortIo {
  const a = loadNative();
  if (!a?.packetOpen || !a.packetSend || !a.rxStart || !a.rxStop)
    throw new VerbsError('EOPNOTSUPP', 'lacp', 'LACPDUs need an AF_PACKET socket: the native addon is not loaded (SOFTROCE_NO_NATIVE or not built)', 'runner');
  const mac = macOf(netdev);
  const fd = a.packetOpen(netdev, ETHERTYPE_SLOW, 0);
  if (fd < 0) fail(netdev, fd, 'the AF_PACKET socket (Ethertype 0x8809)');
  if (a.packetAddMulticast) {
    const r = a.packetAddMulticast(fd, netdev, Buffer.from(SLOW_PROTOCOLS_MAC));
    if (r < 0) {
      closeSync(fd);
      fail(netdev, r, 'joining 01:80:c2:00:00:02');
    }
  }
  const data = Buffer.alloc(SLOTS * SLOT);
  const meta = new Uint32Array(SLOTS * 4);
  const tx = Buffer.alloc(SLOT);
  let rx: ((f: Uint8Array, len: number) => void) | null = null;
  let closed = false;
  const watch = a.rxStart(fd, data, meta, SLOTS, SLOT, (n) => {
    if (n < 0 || closed) return;
    for (let i = 0; i < n; i++) rx?.(data.subarray(i * SLOT, (i + 1) * SLOT), Math.min(meta[i * 4]!, SLOT));
  });
  if (watch === null) {
    closeSync(fd);
    throw new VerbsError('EINVAL', 'lacp', `cannot watch the packet socket on ${netdev}`, 'runner');
  }
  return {
    mac,
    send(frame: Uint8Array): void {
      if (closed) return;
      tx.set(frame.subarray(0, SLOT));
      // EAGAIN (a full socket buffer) loses one LACPDU: the next period sends another.
      a.packetSend!(fd, tx, Math.min(frame.length, SLOT));
    },
    setReceiver(fn): void {
      rx = fn;
    },
    close(): void {
      if (closed) return;
      closed = true;
      // The watch owns and closes the fd.
      a.rxStop!(watch);
    },
  };
}
