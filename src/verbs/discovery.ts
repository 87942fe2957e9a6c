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
import { gidFromString, ipv4ToGid, macToDefaultGid, type Gid } from '../roce/gid.js';
import { MTU_VALUES, type Mtu } from '../roce/opcode.js';

export type GidType = 'RoCE v1' | 'RoCE v2';
export interface GidEntry {
  index: number;
  gid: Gid;
  type: GidType;
  netdev: string;
}

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
 * The GID table as roce_gid_mgmt builds it for a port that supports both RoCE
 * versions: the default GID (fe80::/64 + EUI-64 of the MAC) first, then every
 * address of the interface, each once per RoCE type (v1, then v2).
 */
export function buildGidTable(netdev: string, mac: Uint8Array, boundAddress: string): GidEntry[] {
  const out: GidEntry[] = [];
  const add = (gid: Gid): void => {
    if (out.some((e) => Buffer.from(e.gid).equals(Buffer.from(gid)))) return;
    for (const type of ['RoCE v1', 'RoCE v2'] as const) out.push({ index: out.length, gid, type, netdev });
  };
  add(macToDefaultGid(mac));
  const addrs = networkInterfaces()[netdev] ?? [];
  for (const a of addrs) if (a.family === 'IPv4') add(ipv4ToGid(a.address));
  for (const a of addrs) if (a.family === 'IPv6') add(gidFromString(a.address.split('%')[0]!));
  add(boundAddress.includes(':') ? gidFromString(boundAddress) : ipv4ToGid(boundAddress));
  return out;
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
