/**
 * The devices rdma_cm uses, process-wide (issue 13 module plan). librdmacm opens every RDMA device at
 * start; softroce opens one lazily, the first time an id needs the address it is bound to, and shares
 * it: `cmDevice(address)` returns an open Device with a port on that address, reusing one the
 * CM already opened (ref-counted), and `releaseCmDevice` closes it when the last id using it lets go.
 *
 * Devices the application opened itself (openDevice) are not known here: an id uses one when it is
 * given at createId({ device }), and the CM never closes it.
 *
 * A device is opened by its name when the device list (getDeviceList) has one with a port on the
 * address (so 127.0.0.1 is `softroce0`, as the tools name it), else by the address alone. UDP 4791 on
 * an address can be bound by one process only; on loopback the active side falls back to the other
 * demo address when its own is taken (`acquireCmSource`).
 */
import { openDevice, type Device } from '../verbs/device.js';
import { getDeviceList, portsOf } from '../verbs/discovery.js';
import { VerbsError } from '../verbs/errors.js';
import { addrKey } from './port-space.js';

/** Opens the device for an address (openDevice by list name or address); replaceable for tests. */
export type DeviceOpener = (address: string) => Promise<Device>;

const defaultOpener: DeviceOpener = (address) => {
  const key = addrKey(address);
  const desc = getDeviceList().find((d) => portsOf(d).some((p) => addrKey(p.address) === key));
  return desc !== undefined ? openDevice({ name: desc.name }) : openDevice({ address });
};

interface Entry {
  /** every address the device has a port on (they all map to this entry) */
  keys: string[];
  dev: Device | null;
  opening: Promise<Device> | null;
  refs: number;
}

const byAddress = new Map<string, Entry>();
const byDevice = new Map<Device, Entry>();
/** devices closing (their UDP ports are not free yet), by address: an open of the same address waits for it */
const closing = new Map<string, Promise<void>>();
let opener: DeviceOpener = defaultOpener;

/**
 * @internal for tests: how the CM opens a device for an address (e.g. on a UDP port other than 4791,
 * or over an in-memory network). `null` restores openDevice. Devices already open stay.
 */
export function setCmDeviceOpener(f: DeviceOpener | null): void {
  opener = f ?? defaultOpener;
}

/** The devices the CM has open now, with the number of ids using each (diagnostics and tests). */
export function cmDevices(): Array<{ device: Device; refs: number }> {
  return [...byDevice.entries()].map(([device, e]) => ({ device, refs: e.refs }));
}

/**
 * An open device with a port on `address`, the CM's own: the one already open, or a new one. Every
 * call takes a reference that `releaseCmDevice` gives back. Rejects with the open's VerbsError
 * (EADDRINUSE when another process has UDP 4791 on the address).
 */
export async function cmDevice(address: string): Promise<Device> {
  const key = addrKey(address);
  let e = byAddress.get(key);
  if (e === undefined) {
    const entry: Entry = { keys: [key], dev: null, opening: null, refs: 0 };
    e = entry;
    byAddress.set(key, entry);
    entry.opening = (async () => {
      const prev = closing.get(key);
      if (prev !== undefined) await prev;
      const dev = await opener(address);
      entry.dev = dev;
      entry.opening = null;
      byDevice.set(dev, entry);
      for (const p of dev.ports) {
        const k = addrKey(p.address);
        if (!entry.keys.includes(k) && !byAddress.has(k)) {
          entry.keys.push(k);
          byAddress.set(k, entry);
        }
      }
      // Closed by someone else (id.verbs.close()): forget it; its ids get DEVICE_REMOVAL from the same event.
      dev.once('close', () => forget(entry));
      return dev;
    })();
    entry.opening.catch(() => forget(entry));
  }
  e.refs++;
  if (e.dev !== null) return e.dev;
  try {
    return await e.opening!;
  } catch (err) {
    e.refs--;
    throw err;
  }
}

function forget(e: Entry): void {
  for (const k of e.keys) if (byAddress.get(k) === e) byAddress.delete(k);
  if (e.dev !== null) byDevice.delete(e.dev);
}

/**
 * Gives back a reference `cmDevice` took. The last one closes the device (in the background:
 * an id's close never waits; a later open of the same address waits for the port to be free).
 */
export function releaseCmDevice(dev: Device): void {
  const e = byDevice.get(dev);
  if (e === undefined) return;
  if (--e.refs > 0) return;
  forget(e);
  const p = dev.close().catch(() => {
    /* a failed close has released what it could (device.ts); nobody waits for it */
  });
  const keys = [...e.keys];
  for (const k of keys) closing.set(k, p);
  void p.then(() => {
    for (const k of keys) if (closing.get(k) === p) closing.delete(k);
  });
}

/**
 * Resolves when every device the CM is closing has closed (its UDP ports free). An id's close() never
 * waits for its device; a program or test that wants the ports back before going on awaits this.
 */
export async function cmDevicesClosed(): Promise<void> {
  while (closing.size > 0) await Promise.all([...closing.values()]);
}

/** One more reference on a device the CM has open (an id made for a connection request shares its listener's); false when the CM does not own it. */
export function retainCmDevice(dev: Device): boolean {
  const e = byDevice.get(dev);
  if (e === undefined) return false;
  e.refs++;
  return true;
}

/** Is the device one the CM opened (and will close)? */
export function isCmDevice(dev: Device): boolean {
  return byDevice.has(dev);
}

/**
 * Who hears that a device closed (DEVICE_REMOVAL), by device: one 'close' listener per device, whatever
 * the number of ids on it, fanned out to them (the kernel's cma_process_remove walks the device's id
 * list the same way). One listener per id tripped Node's MaxListenersExceededWarning at 11 ids on a
 * device (ucmatose -c 10). Any device is watched, the CM's own and one given at createId({ device }).
 */
const removalWatch = new Map<Device, { fns: Set<() => void>; onClose: () => void }>();

/** `fn` runs once when `dev` closes, unless unwatched first. Watching twice with the same `fn` is one watch. */
export function watchDeviceRemoval(dev: Device, fn: () => void): void {
  let w = removalWatch.get(dev);
  if (w === undefined) {
    const fns = new Set<() => void>();
    const onClose = (): void => {
      removalWatch.delete(dev);
      // A copy: each id unwatches (and may release the device) while hearing it.
      const all = [...fns];
      fns.clear();
      // Every id hears it even if one's handler throws; the first error goes on to the device's emit (emitGuarded).
      let err: { e: unknown } | null = null;
      for (const f of all) {
        try {
          f();
        } catch (e) {
          err ??= { e };
        }
      }
      if (err !== null) throw err.e;
    };
    w = { fns, onClose };
    removalWatch.set(dev, w);
    dev.once('close', onClose);
  }
  w.fns.add(fn);
}

/** Stops a watch; the device's listener goes with its last watcher. */
export function unwatchDeviceRemoval(dev: Device, fn: () => void): void {
  const w = removalWatch.get(dev);
  if (w === undefined || !w.fns.delete(fn) || w.fns.size > 0) return;
  removalWatch.delete(dev);
  dev.off('close', w.onClose);
}

/** The loopback addresses of the demo devices (softroce0, softroce1): one may stand in for the other. */
const LOOPBACK_SOURCES = ['127.0.0.1', '127.0.0.2'] as const;

/**
 * The device for an active side's source address. When the address is one of the demo loopback
 * addresses and its UDP 4791 is taken by another process (EADDRINUSE), the other demo address is
 * used instead (and reported as the source): two softroce processes on one host can then talk over
 * loopback without configuration. Returns the device and the source address actually used.
 */
export async function acquireCmSource(address: string, fallback: boolean): Promise<{ device: Device; address: string }> {
  try {
    return { device: await cmDevice(address), address };
  } catch (e) {
    const i = LOOPBACK_SOURCES.indexOf(address as (typeof LOOPBACK_SOURCES)[number]);
    if (!fallback || i < 0 || !(e instanceof VerbsError) || e.code !== 'EADDRINUSE') throw e;
    const other = LOOPBACK_SOURCES[1 - i]!;
    return { device: await cmDevice(other), address: other };
  }
}
