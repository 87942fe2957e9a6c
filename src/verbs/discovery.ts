/**
 * Device discovery: the device list (SOFTROCE_DEVICES, the JSON config file, or two loopback
 * defaults), the netdev and MAC of an address, the netdev's MTU, and the GID table the kernel's
 * roce_gid_mgmt would build for a port. Everything here reads the host (environment, files,
 * network interfaces); device.ts builds devices from what it finds.
 */
import { networkInterfaces, homedir } from 'node:os';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { VerbsError } from './errors.js';
import { gidFromString, ipv4ToGid } from '../roce/gid.js';
import { MTU_VALUES, type Mtu } from '../roce/opcode.js';
import { DEFAULT_GID_TBL_LEN, GidTable, type GidEntry, type WantedGid } from './gid-table.js';
import { hostAddressSource, wantedGids, type AddressSource } from './addr-watch.js';

export type { GidType, GidEntry } from './gid-table.js';

export interface DeviceDescriptor {
  name: string;
  netdev: string;
  address: string;
  udpPort?: number;
}

export function sysNetdevFor(address: string): { netdev: string; mac: Uint8Array } {
  const ifs = networkInterfaces();
  for (const [name, addrs] of Object.entries(ifs)) {
    for (const a of addrs ?? []) {
      if (a.address === address) return { netdev: name, mac: new Uint8Array(Buffer.from(a.mac.replace(/:/g, ''), 'hex')) };
    }
  }
  // 127.0.0.0/8 is all loopback on Linux, though `lo` lists only 127.0.0.1.
  if (address.startsWith('127.') || address === '::1') return { netdev: 'lo', mac: new Uint8Array(6) };
  return { netdev: '', mac: new Uint8Array(6) };
}

export function netdevMtu(netdev: string): number {
  try {
    return Number(readFileSync(`/sys/class/net/${netdev}/mtu`, 'utf8').trim()) || 1500;
  } catch {
    return netdev === 'lo' ? 65536 : 1500;
  }
}

/** rxe: the largest IB MTU that fits the netdev MTU less RoCE headers (rxe_param.h). */
export function activeMtuFor(netdevMtu: number): Mtu {
  let m: Mtu = 256;
  for (const v of MTU_VALUES) if (v <= netdevMtu - 80) m = v;
  return m;
}

/**
 * The addresses a port's GID table holds: those of the netdevs tied to the port (addr-watch.ts),
 * and the port's bound address when it is not among them (a 127/8 address other than 127.0.0.1,
 * which `lo` does not list; an in-memory link's address). Such a pinned address stays for the
 * port's life; an address the interface lists comes and goes with it.
 */
export function portGids(netdev: string, boundAddress: string, src: AddressSource): { want: WantedGid[]; pinned: WantedGid | null } {
  const want = wantedGids(netdev, src);
  const gid = boundAddress.includes(':') ? gidFromString(boundAddress) : ipv4ToGid(boundAddress);
  const listed = want.some((w) => Buffer.from(w.gid).equals(Buffer.from(gid)));
  const pinned = listed ? null : { gid, netdev };
  if (pinned) want.push(pinned);
  return { want, pinned };
}

/**
 * The GID table as roce_gid_mgmt builds it for a port that supports both RoCE
 * versions: the default GID (fe80::/64 + EUI-64 of the MAC) first, then every
 * address of the interface, each once per RoCE type (v1, then v2). A snapshot of
 * what a port opened now would start with (gid-table.ts keeps it live).
 */
export function buildGidTable(netdev: string, mac: Uint8Array, boundAddress: string, src: AddressSource = hostAddressSource): GidEntry[] {
  const t = new GidTable(DEFAULT_GID_TBL_LEN, netdev, mac);
  t.sync(portGids(netdev, boundAddress, src).want);
  return t.entries();
}

/**
 * The device list (ibv_get_device_list): SOFTROCE_DEVICES="name=netdev:address,..."
 * or the JSON file SOFTROCE_CONFIG (default ~/.config/softroce/devices.json,
 * `{ "devices": [{ "name", "netdev", "address" }] }`); without either, two
 * loopback devices that need no configuration: softroce0 on 127.0.0.1 and
 * softroce1 on 127.0.0.2.
 */
export function getDeviceList(env: NodeJS.ProcessEnv = process.env): DeviceDescriptor[] {
  const spec = env['SOFTROCE_DEVICES'];
  if (spec) {
    return spec
      .split(',')
      .filter(Boolean)
      .map((s) => {
        const m = /^([^=]+)=([^:]*):(.+)$/.exec(s.trim());
        if (!m) throw new VerbsError('EINVAL', 'ibv_get_device_list', `bad SOFTROCE_DEVICES entry "${s}" (want name=netdev:address)`, 'SOFTROCE_DEVICES');
        return { name: m[1]!, netdev: m[2]!, address: m[3]! };
      });
  }
  const file = env['SOFTROCE_CONFIG'] ?? join(homedir(), '.config', 'softroce', 'devices.json');
  try {
    const j = JSON.parse(readFileSync(file, 'utf8')) as { devices?: DeviceDescriptor[] };
    if (Array.isArray(j.devices) && j.devices.length) return j.devices;
  } catch {
    /* no file: defaults */
  }
  return [
    { name: 'softroce0', netdev: 'lo', address: '127.0.0.1' },
    { name: 'softroce1', netdev: 'lo', address: '127.0.0.2' },
  ];
}
