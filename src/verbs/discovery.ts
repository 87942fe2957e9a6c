/**
 * Device discovery: the device list (SOFTROCE_DEVICES, the JSON config file, or the loopback
 * defaults and one device per interface), the netdev and MAC of an address, the netdev's MTU, and the GID table the kernel's
 * roce_gid_mgmt would build for a port. Everything here reads the host (environment, files,
 * network interfaces); device.ts builds devices from what it finds.
 */
import { networkInterfaces, homedir, type NetworkInterfaceInfo } from 'node:os';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { VerbsError } from './errors.js';
import { gidFromString, ipv4ToGid } from '../roce/gid.js';
import { MTU_VALUES, type Mtu } from '../roce/opcode.js';
import { DEFAULT_GID_TBL_LEN, GidTable, type GidEntry, type WantedGid } from './gid-table.js';
import { hostAddressSource, wantedGids, type AddressSource } from './addr-watch.js';

export type { GidType, GidEntry } from './gid-table.js';

/** One port of a device: the netdev it sits on and the address its UDP 4791 socket binds. */
export interface PortDescriptor {
  netdev: string;
  address: string;
  udpPort?: number;
}

/**
 * A device of the list. `netdev` / `address` / `udpPort` are its port 1; `ports`, when present, lists
 * every port in order (port 1 first, the same as the fields above), as `rdma link add` makes one rxe
 * device per netdev but a bonded or multi-port HCA has several (issue 12 item 2).
 */
export interface DeviceDescriptor {
  name: string;
  netdev: string;
  address: string;
  udpPort?: number;
  ports?: PortDescriptor[];
}

/** The ports of a device descriptor, port 1 first. */
export function portsOf(d: DeviceDescriptor): PortDescriptor[] {
  if (d.ports !== undefined && d.ports.length > 0) return d.ports;
  const p: PortDescriptor = { netdev: d.netdev, address: d.address };
  if (d.udpPort !== undefined) p.udpPort = d.udpPort;
  return [p];
}

/** A descriptor from its ports: the one-port shape when there is one (what the list held before ports). */
function deviceOf(name: string, ports: PortDescriptor[]): DeviceDescriptor {
  const d: DeviceDescriptor = { name, netdev: ports[0]!.netdev, address: ports[0]!.address };
  if (ports[0]!.udpPort !== undefined) d.udpPort = ports[0]!.udpPort;
  if (ports.length > 1) d.ports = ports;
  return d;
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

const ENV_ENTRY = 'name=netdev:address[+netdev2:address2...]';

/** One SOFTROCE_DEVICES entry: `name=netdev:address`, ports joined by `+` (an IPv6 address has no `+`). */
function parseEntry(s: string): DeviceDescriptor {
  const bad = (): never => {
    throw new VerbsError('EINVAL', 'ibv_get_device_list', `bad SOFTROCE_DEVICES entry "${s}" (want ${ENV_ENTRY})`, 'SOFTROCE_DEVICES');
  };
  const m = /^([^=+]+)=(.+)$/.exec(s.trim());
  if (!m) return bad();
  const ports = m[2]!.split('+').map((p) => {
    const pm = /^([^:]*):(.+)$/.exec(p);
    if (!pm) return bad();
    return { netdev: pm[1]!, address: pm[2]! };
  });
  return deviceOf(m[1]!, ports);
}

/** A device of the config file: `{ name, netdev, address, udpPort? }`, or `{ name, ports: [{ netdev, address, udpPort? }, ...] }`. */
function fileEntry(e: unknown, file: string): DeviceDescriptor {
  const d = (typeof e === 'object' && e !== null ? e : {}) as DeviceDescriptor;
  const ok = (p: unknown): p is PortDescriptor =>
    typeof p === 'object' && p !== null && typeof (p as PortDescriptor).netdev === 'string' && typeof (p as PortDescriptor).address === 'string';
  if (typeof d.name !== 'string') throw new VerbsError('EINVAL', 'ibv_get_device_list', `${file}: a device without a name`, 'SOFTROCE_CONFIG');
  if (Array.isArray(d.ports) && d.ports.length > 0) {
    if (!d.ports.every(ok))
      throw new VerbsError('EINVAL', 'ibv_get_device_list', `${file}: device ${d.name}: each port needs netdev and address`, 'SOFTROCE_CONFIG');
    return deviceOf(d.name, d.ports);
  }
  const name = d.name;
  if (!ok(d)) throw new VerbsError('EINVAL', 'ibv_get_device_list', `${file}: device ${name} needs netdev and address (or ports)`, 'SOFTROCE_CONFIG');
  return d;
}

/** The loopback devices of the demo: no configuration needed. */
export const LOOPBACK_DEVICES: readonly DeviceDescriptor[] = [
  { name: 'softroce0', netdev: 'lo', address: '127.0.0.1' },
  { name: 'softroce1', netdev: 'lo', address: '127.0.0.2' },
];

/**
 * One device per interface that is up and has an address, as `rdma link add rxe_<netdev> type rxe
 * netdev <netdev>` would make: named `softroce_<netdev>`, one port on the netdev, bound to its first
 * IPv4 address, else its first IPv6 address that is not link-local. os.networkInterfaces() lists only
 * interfaces that are up (and running); loopback ones (the demo devices cover them) and alias labels
 * (eth0:1 is eth0's) are left out. Sorted by name, so the list is the same on every call.
 */
export function interfaceDevices(ifs: NodeJS.Dict<NetworkInterfaceInfo[]> = networkInterfaces()): DeviceDescriptor[] {
  const out: DeviceDescriptor[] = [];
  for (const [netdev, addrs] of Object.entries(ifs)) {
    if (!addrs || netdev.includes(':') || addrs.some((a) => a.internal)) continue;
    const a = addrs.find((x) => x.family === 'IPv4') ?? addrs.find((x) => x.family === 'IPv6' && !/^fe80:/i.test(x.address));
    if (a) out.push({ name: `softroce_${netdev}`, netdev, address: a.address });
  }
  return out.sort((x, y) => (x.name < y.name ? -1 : x.name > y.name ? 1 : 0));
}

/**
 * The device list (ibv_get_device_list): SOFTROCE_DEVICES="name=netdev:address,..." (a device with
 * several ports: "name=netdev:address+netdev2:address2") or the JSON file SOFTROCE_CONFIG (default
 * ~/.config/softroce/devices.json, `{ "devices": [{ "name", "netdev", "address" } or { "name",
 * "ports": [{ "netdev", "address" }, ...] }] }`); without either, the two loopback devices of the
 * demo (softroce0 on 127.0.0.1, softroce1 on 127.0.0.2) and one device per interface that is up and
 * has an address (interfaceDevices: softroce_<netdev>).
 */
export function getDeviceList(env: NodeJS.ProcessEnv = process.env, ifs?: NodeJS.Dict<NetworkInterfaceInfo[]>): DeviceDescriptor[] {
  const spec = env['SOFTROCE_DEVICES'];
  if (spec) {
    return spec
      .split(',')
      .filter(Boolean)
      .map((s) => parseEntry(s));
  }
  const file = env['SOFTROCE_CONFIG'] ?? join(homedir(), '.config', 'softroce', 'devices.json');
  let j: { devices?: unknown[] } | null = null;
  try {
    j = JSON.parse(readFileSync(file, 'utf8')) as { devices?: unknown[] };
  } catch {
    /* no file: defaults */
  }
  if (j !== null && Array.isArray(j.devices) && j.devices.length) return j.devices.map((d) => fileEntry(d, file));
  return [...LOOPBACK_DEVICES.map((d) => ({ ...d })), ...interfaceDevices(ifs)];
}
