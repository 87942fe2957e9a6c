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
import { getDeviceList, sysNetdevFor, type DeviceDescriptor } from './discovery.js';
import type { AddressSource } from './addr-watch.js';

export interface OpenDeviceOptions {
  name?: string;
  netdev?: string;
  address?: string;
  udpPort?: number;
  native?: 'auto' | 'on' | 'off';
  /** for tests: a fake clock, an in-memory link, injected faults, a capture */
  scheduler?: Scheduler;
  link?: Link;
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
  if (o.name && !o.address) {
    desc = getDeviceList().find((d) => d.name === o.name);
    if (!desc) throw new VerbsError('ENODEV', 'ibv_open_device', `no device named ${o.name}`, 'name');
  }
  const address = o.address ?? desc?.address ?? '127.0.0.1';
  const sched = o.scheduler ?? new RealScheduler();
  const found = sysNetdevFor(address);
  const netdev = o.netdev ?? desc?.netdev ?? found.netdev;
  // UdpLink.open releases its socket itself when it fails.
  const base: Link = o.link ?? (await UdpLink.open({ address, port: o.udpPort ?? desc?.udpPort ?? 4791, native: o.native ?? 'auto' }));
  // From here on, whatever fails releases what was taken (the socket, the injector's timers, the
  // recorder's file): a failed open must not leave UDP 4791 bound. A link the caller passed in
  // stays theirs: it is detached from the device, not closed.
  let dev: Device | null = null;
  try {
    const name = o.name ?? desc?.name ?? `softroce_${address}`;
    dev = create(name, sched, found.mac);
    // The port's link is the backend wrapped: pcap(faults(base)), so the capture holds what the
    // device received after the faults and what it sent.
    // A UDP link of ours gets the RoCEv1 path under everything (rocev1-link.ts: its packet socket
    // opens when a QP first uses a RoCE v1 GID); a caller's link keeps it if it is one.
    const v1 = o.link === undefined ? new RoceV1Link(base, { netdev: netdev || 'lo', mac: found.mac }) : base instanceof RoceV1Link ? base : null;
    let link: Link = v1 ?? base;
    if (o.faults) link = dev.faults = new FaultInjector(link, o.faults, sched);
    if (o.pcap) {
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
    if (o.icrcIpv4) dev.icrcIpv4 = o.icrcIpv4;
    return dev;
  } catch (e) {
    if (dev)
      await dev.abortOpen(o.link === undefined).catch(() => {
        /* the open's own error is the one to report */
      });
    // Not yet a port's link (the recorder's file failed), so the teardown did not close it.
    if (o.link === undefined && (dev === null || dev.ports.length === 0))
      await base.close().catch(() => {
        /* as above */
      });
    throw e;
  }
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
  for (const qp of [...dev.qps.values()]) step(() => qp.close());
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
