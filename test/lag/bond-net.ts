/**
 * Test helpers: bonds on the in-memory network with a fake clock. Each bond's two ports are links at
 * the bond's one address on two segments ('w1', 'w2': two cables, as two veth pairs join two
 * namespaces); `net.setSegmentUp('w1', false)` pulls cable 1 (both ends lose carrier).
 */
import { FakeScheduler } from '../../src/roce/sched.js';
import { MemNetwork } from '../../src/roce/link/link.js';
import type { AddressSource, IfAddr, NetdevInfo } from '../../src/verbs/addr-watch.js';
import { createBond, type Bond, type BondResult, type CreateBondOptions } from '../../src/lag/bond.js';

/** The host's interface addresses, as a test says they are (the bond's address on its team device). */
export class FakeHost implements AddressSource {
  addrs: IfAddr[];
  readonly netdevs: NetdevInfo = { uppers: () => [], vlanRealDev: () => null, bondActiveSlave: () => null };
  private readonly cbs = new Set<() => void>();
  constructor(addrs: IfAddr[]) {
    this.addrs = addrs;
  }
  list(): IfAddr[] {
    return this.addrs.slice();
  }
  watch(cb: () => void): () => void {
    this.cbs.add(cb);
    return () => this.cbs.delete(cb);
  }
  add(name: string, address: string): void {
    this.addrs.push({ name, address, family: address.includes(':') ? 6 : 4 });
    for (const cb of [...this.cbs]) cb();
  }
}

export interface BondNet {
  fake: FakeScheduler;
  net: MemNetwork;
}

export function bondNet(): BondNet {
  const fake = new FakeScheduler();
  return { fake, net: new MemNetwork(fake) };
}

/** A team config: `runner` with ports eth1 and eth2 (plus `extra` merged in at the top level). */
export function teamConfig(runner: string | Record<string, unknown>, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { device: 'team0', runner: typeof runner === 'string' ? { name: runner } : runner, ports: { eth1: {}, eth2: {} }, ...extra };
}

/** createBond on `n` at `address` (a host of its own: the team device has that address), ports eth1 / eth2 on segments w1 / w2. */
export async function bondAt(
  n: BondNet,
  address: string,
  config: Record<string, unknown>,
  names: string[] = [],
  given?: FakeHost,
  more: Pick<CreateBondOptions, 'lacpIo' | 'systemMac' | 'keepResources'> = {},
): Promise<BondResult> {
  const host = given ?? new FakeHost([]);
  host.addrs.push({ name: typeof config['device'] === 'string' ? config['device'] : 'team0', address, family: 4 });
  return createBond(config, {
    ports: [
      { netdev: 'eth1', address },
      { netdev: 'eth2', address },
    ],
    links: [n.net.attach(address, 4791, 'w1'), n.net.attach(address, 4791, 'w2')],
    scheduler: n.fake,
    addresses: host,
    devicesInUse: names,
    ...more,
  });
}

/** The bond of a result that must be one. */
export function bondOf(r: BondResult): Bond {
  if (!r.lag) throw new Error(`not LAG: ${r.reason}`);
  return r.bond;
}
