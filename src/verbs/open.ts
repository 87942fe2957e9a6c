/**
 * Opening a device (ibv_open_device): the checks of its options, the link it binds and the
 * wrappers around it (fault injector, pcap recorder), the release of all of it when the open
 * fails; and the first half of device.close(): the objects released in pyverbs' order.
 */
import { isIP } from 'node:net';
import { VerbsError, type ErrnoCode } from './errors.js';
import * as V from './validate.js';
import type { Device } from './device.js';
import type { Ah } from './objects.js';
import { RealScheduler, type Scheduler } from '../roce/sched.js';
import { UdpLink } from '../roce/link/udp-link.js';
import type { Link } from '../roce/link/link.js';
import { FaultInjector, type FaultOptions } from '../roce/link/fault-link.js';
import { PcapRecorder } from '../roce/link/pcap-recorder.js';
import { RoceV1Link } from '../roce/link/rocev1-link.js';
import { getDeviceList, portsOf, sysNetdevFor, type DeviceDescriptor } from './discovery.js';
import type { AddressSource } from './addr-watch.js';

/** One port of openDevice({ ports }): the address its socket binds, the netdev it sits on (default: the address's). */
export interface OpenPortOptions {
  address: string;
  netdev?: string;
  udpPort?: number;
}

export interface OpenDeviceOptions {
  name?: string;
  netdev?: string;
  address?: string;
  udpPort?: number;
  /** a device with several ports, port 1 first (instead of address / netdev / udpPort, which describe a one-port device) */
  ports?: readonly OpenPortOptions[];
  native?: 'auto' | 'on' | 'off';
  /** for tests: a fake clock, an in-memory link, injected faults, a capture */
  scheduler?: Scheduler;
  link?: Link;
  /** for tests: one in-memory link per port (a device with several ports; instead of `link`) */
  links?: readonly Link[];
  faults?: FaultOptions;
  pcap?: string;
  /** the pcap file's link type: 'raw' (default; RoCEv2 only) or 'ethernet' (also the RoCEv1 frames, as sent and received) */
  pcapLinkType?: 'raw' | 'ethernet';
  icrcIpv4?: 'infer-id' | 'id-zero';
  /** gid_tbl_len of the port (ibv_query_port): 128 by default, the Mellanox manual's per-port hardware limit */
  gidTblLen?: number;
  /** for tests: where the GID table's addresses come from (default: the host's, by netlink or a 500 ms poll) */
  addresses?: AddressSource;
}

/** openDevice's argument checks: all before a socket is bound. */
function checkOpenDeviceOptions(o: OpenDeviceOptions): void {
  const op = 'ibv_open_device';
  V.obj(op, 'options', o);
  V.optStr(op, 'name', o.name);
  V.optStr(op, 'netdev', o.netdev);
  V.optStr(op, 'address', o.address);
  if (o.address !== undefined && isIP(o.address) === 0) V.fail(op, 'address', `must be an IPv4 or IPv6 address, got ${JSON.stringify(o.address)}`);
  V.optInt(op, 'udpPort', o.udpPort, 1, 65535);
  V.optOneOf(op, 'native', o.native, ['auto', 'on', 'off'] as const);
  V.optOneOf(op, 'icrcIpv4', o.icrcIpv4, ['infer-id', 'id-zero'] as const);
  V.optStr(op, 'pcap', o.pcap);
  V.optOneOf(op, 'pcapLinkType', o.pcapLinkType, ['raw', 'ethernet'] as const);
  if (o.pcap === '') V.fail(op, 'pcap', 'must be a file name');
  V.optObj(op, 'scheduler', o.scheduler);
  V.optObj(op, 'link', o.link);
  if (o.ports !== undefined) {
    if (!Array.isArray(o.ports) || o.ports.length === 0 || o.ports.length > MAX_PORTS) V.fail(op, 'ports', `must be an array of 1..${MAX_PORTS} ports`);
    if (o.address !== undefined || o.link !== undefined || o.netdev !== undefined || o.udpPort !== undefined)
      V.fail(op, 'ports', 'give ports, or address / netdev / udpPort / link, not both');
    if (o.links !== undefined && (!Array.isArray(o.links) || o.links.length !== o.ports.length)) V.fail(op, 'links', 'must be one link per port');
    const ports: readonly OpenPortOptions[] = o.ports;
    ports.forEach((p, i) => {
      V.obj(op, `ports[${i}]`, p);
      if (typeof p.address !== 'string' || isIP(p.address) === 0)
        V.fail(op, `ports[${i}].address`, `must be an IPv4 or IPv6 address, got ${JSON.stringify(p.address)}`);
      V.optStr(op, `ports[${i}].netdev`, p.netdev);
      V.optInt(op, `ports[${i}].udpPort`, p.udpPort, 1, 65535);
    });
  }
  if (o.links !== undefined) {
    if (!Array.isArray(o.links) || o.links.length === 0 || o.links.length > MAX_PORTS) V.fail(op, 'links', `must be an array of 1..${MAX_PORTS} links`);
    if (o.link !== undefined) V.fail(op, 'links', 'give link or links, not both');
    o.links.forEach((l, i) => V.obj(op, `links[${i}]`, l));
  }
  V.optInt(op, 'gidTblLen', o.gidTblLen, 2, 4096);
  V.optObj(op, 'addresses', o.addresses);
  if (o.faults !== undefined) {
    const f = o.faults;
    V.obj(op, 'faults', f);
    V.int(op, 'faults.seed', f.seed, Number.MIN_SAFE_INTEGER, Number.MAX_SAFE_INTEGER);
    for (const k of ['dropPct', 'dupPct', 'reorderPct', 'corruptPct', 'delayPct'] as const) V.pct(op, `faults.${k}`, f[k]);
    if (f.delayMs !== undefined && (typeof f.delayMs !== 'number' || !Number.isFinite(f.delayMs) || f.delayMs < 0 || f.delayMs > 60_000)) {
      V.fail(op, 'faults.delayMs', `must be a number of ms in 0..60000, got ${String(f.delayMs)}`);
    }
  }
}

/**
 * openDevice (device.ts): by name from the device list, or by address (binding UDP 4791 there).
 * The Device comes from `create`, so this module needs Device only as a type and device.ts can
 * re-export openDevice without an import cycle.
 */
export async function openDeviceWith(o: OpenDeviceOptions, create: (name: string, sched: Scheduler, mac: Uint8Array) => Device): Promise<Device> {
  checkOpenDeviceOptions(o);
  let desc: DeviceDescriptor | undefined;
  if (o.name && !o.address && !o.ports) {
    desc = getDeviceList().find((d) => d.name === o.name);
    if (!desc) throw new VerbsError('ENODEV', 'ibv_open_device', `no device named ${o.name}`, 'name');
  }
  const specs = portSpecs(o, desc);
  const sched = o.scheduler ?? new RealScheduler();
  const given = o.links ?? (o.link !== undefined ? [o.link] : null);
  // Each port's link: the caller's, or a UDP socket per port on its address (and its netdev: udpLinkOn).
  // A failed open releases the sockets already bound: none must stay taken.
  const bases: Link[] = [];
  if (given !== null) bases.push(...given);
  else {
    try {
      for (const p of specs) bases.push(await udpLinkOn(p.address, p.udpPort, p.netdev, specs.length > 1, o.native ?? 'auto'));
    } catch (e) {
      for (const l of bases)
        await l.close().catch(() => {
          /* the open's own error is the one to report */
        });
      throw e;
    }
  }
  // From here on, whatever fails releases what was taken (the sockets, the injector's timers, the
  // recorder's file): a failed open must not leave UDP 4791 bound. Links the caller passed in
  // stay theirs: they are detached from the device, not closed.
  let dev: Device | null = null;
  try {
    const first = sysNetdevFor(bases[0]!.localIp);
    const name = o.name ?? desc?.name ?? `softroce_${specs[0]?.address ?? bases[0]!.localIp}`;
    dev = create(name, sched, first.mac);
    for (let i = 0; i < bases.length; i++) {
      const base = bases[i]!;
      const found = sysNetdevFor(base.localIp);
      const netdev = specs[i]?.netdev ?? found.netdev;
      // A UDP link of ours gets the RoCEv1 path under everything (rocev1-link.ts: its packet socket
      // opens when a QP first uses a RoCE v1 GID); a caller's link keeps it if it is one.
      const v1 = given === null ? new RoceV1Link(base, { netdev: netdev || 'lo', mac: found.mac }) : base instanceof RoceV1Link ? base : null;
      // Port 1's link is the backend wrapped: pcap(faults(base)), so the capture holds what the
      // device received after the faults and what it sent. The other ports' links are not wrapped.
      let link: Link = v1 ?? base;
      if (i === 0 && o.faults) link = dev.faults = new FaultInjector(link, o.faults, sched);
      if (i === 0 && o.pcap) {
        const rec = await PcapRecorder.open(o.pcap, link, { ethernet: o.pcapLinkType === 'ethernet' }).catch((e: unknown) => {
          throw fsError(e, 'ibv_open_device', `pcap file ${o.pcap}`, 'pcap');
        });
        link = dev.recorder = rec;
        if (v1) v1.tap = (f, len) => rec.recordFrame(f, len);
      }
      const portOpts: { gidTblLen?: number; addresses?: AddressSource } = {};
      if (o.gidTblLen !== undefined) portOpts.gidTblLen = o.gidTblLen;
      if (o.addresses !== undefined) portOpts.addresses = o.addresses;
      dev.addPort(link, netdev || 'lo', found.mac, portOpts).v1 = v1;
    }
    if (o.icrcIpv4) dev.icrcIpv4 = o.icrcIpv4;
    return dev;
  } catch (e) {
    if (dev)
      await dev.abortOpen(given === null).catch(() => {
        /* the open's own error is the one to report */
      });
    // Not yet a port's link (the recorder's file failed, say), so the teardown did not close it.
    if (given === null)
      for (const l of bases.slice(dev === null ? 0 : dev.ports.length))
        await l.close().catch(() => {
          /* as above */
        });
    throw e;
  }
}

/** The most ports a device has here (rxe has one; a bonded device two; this leaves room). */
export const MAX_PORTS = 16;

/** What each port binds: openDevice({ ports }), else address / netdev / udpPort, else the device list's entry, else 127.0.0.1. */
function portSpecs(o: OpenDeviceOptions, desc: DeviceDescriptor | undefined): OpenPortOptions[] {
  // ports with links (tests): each port's netdev from ports, its link given.
  if (o.ports !== undefined) return o.ports.map((p) => ({ ...p }));
  if (o.links !== undefined) return o.links.map((l) => ({ address: l.localIp }));
  if (desc !== undefined && o.address === undefined) {
    const ps: OpenPortOptions[] = portsOf(desc).map((p) => ({ ...p }));
    if (o.netdev !== undefined) ps[0]!.netdev = o.netdev;
    if (o.udpPort !== undefined) ps[0]!.udpPort = o.udpPort;
    return ps;
  }
  const p: OpenPortOptions = { address: o.address ?? o.link?.localIp ?? '127.0.0.1' };
  if (o.netdev !== undefined) p.netdev = o.netdev;
  if (o.udpPort !== undefined) p.udpPort = o.udpPort;
  return [p];
}

/**
 * A port's UDP socket. A port of a device with several ports is bound to its netdev too
 * (SO_BINDTODEVICE, through the addon), so what it sends leaves by that interface whatever the
 * routing table prefers, as rxe sends through the port's netdev. Binding to a device needs the addon
 * and CAP_NET_RAW; without them (EPERM, or no addon) the socket stays bound to the address only,
 * which on distinct subnets takes the same way. A one-port device keeps its address binding alone.
 */
async function udpLinkOn(
  address: string,
  udpPort: number | undefined,
  netdev: string | undefined,
  multi: boolean,
  native: 'auto' | 'on' | 'off',
): Promise<Link> {
  const port = udpPort ?? 4791;
  const dev = netdev ?? sysNetdevFor(address).netdev;
  if (multi && dev !== '' && dev !== 'lo' && native !== 'off') {
    try {
      return await UdpLink.open({ address, port, native, netdev: dev });
    } catch (e) {
      if (!(e instanceof VerbsError) || e.argument !== 'netdev') throw e;
    }
  }
  return UdpLink.open({ address, port, native });
}

const FS_ERRNO: ReadonlySet<string> = new Set<ErrnoCode>(['ENOENT', 'EACCES', 'EPERM', 'EEXIST', 'ENOSPC', 'EINVAL', 'EBUSY']);

/** A Node fs error as the VerbsError a C caller would see: its errno when we model it, else EINVAL (e.g. EISDIR). */
function fsError(e: unknown, op: string, what: string, argument: string): VerbsError {
  const code = (e as NodeJS.ErrnoException | null)?.code ?? '';
  const msg = e instanceof Error ? e.message : String(e);
  return new VerbsError(FS_ERRNO.has(code) ? (code as ErrnoCode) : 'EINVAL', op, `cannot open ${what}: ${msg}`, argument);
}

/**
 * Teardown (device.close), the objects: QPs, AHs, MRs, SRQs, PDs, CQs, in pyverbs' order, each
 * step's error collected by `step` so one failure does not stop the rest; then the tables are emptied.
 */
export function releaseObjects(dev: Device, step: (f: () => void) => void): void {
  for (const qp of [...dev.qps.values(), ...dev.gsis]) step(() => qp.close());
  for (const pd of [...dev.pds]) {
    for (const ah of [...pd.ahs] as Ah[]) step(() => ah.close());
    for (const mr of [...pd.mrs]) step(() => mr.close());
    for (const s of [...pd.srqs]) step(() => s.close());
  }
  for (const pd of [...dev.pds]) step(() => pd.close());
  for (const cq of [...dev.cqs]) step(() => cq.close());
  dev.qps.clear();
  dev.mrByLkey.clear();
  dev.mrByRkey.clear();
  dev.pds.clear();
  dev.cqs.clear();
}

/**
 * Teardown (device.close), the links: the wrappers stop (the injector's timers, the recorder's
 * file) whether or not the links below them close; the device's listeners come off every link
 * (`unwire`); the links close only when the device opened them (`closeLinks`).
 */
export async function releaseLinks(
  dev: Device,
  unwire: Array<() => void>,
  closeLinks: boolean,
  step: (f: () => void) => void,
  failures: unknown[],
): Promise<void> {
  // The wrappers stop (timers, the file) whether or not the links below them close.
  if (dev.faults) step(() => void dev.faults!.detach()); // synchronous: nothing arrives after it
  for (const u of unwire) step(u);
  unwire.length = 0;
  try {
    await dev.recorder?.detach();
  } catch (e) {
    failures.push(e);
  }
  if (closeLinks) {
    for (const p of dev.ports) {
      try {
        await p.link.close();
      } catch (e) {
        failures.push(e);
      }
    }
  }
}
