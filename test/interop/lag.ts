/**
 * The LAG cases of the interop suite (issue 14), on the lab's LAG topology (LAB_NICS=2; the lab
 * README's "LAG topology"):
 *
 * - host bond: softroce's own bond (createBond, activebackup, teamd's default ethtool watch) on two
 *   host-side ports labhp1 / labhp2 (the bond's one address 198.18.0.2 and one MAC on both, as a
 *   bond's slaves carry them) against rxe on a Linux bond (active-backup, miimon 100) in guest 1:
 *   ibv_rc_pingpong and ib_write_bw with softroce in both roles, each port's cable pulled and plugged
 *   again mid-run (`lab hostport down|up N`). Passes when both sides exit 0 with their result lines
 *   and the bond saw each port go down and the active port move.
 * - guest follow: softroce inside guest 1 (the project copied to the guest's share), following
 *   guest 1's Linux bond (linux-bond.ts) as softroce_bond_0, against rxe in guest 2; the guest bond's
 *   active slave pulled mid-run (`lab link 1 N down`). Passes when both exit 0 and the follower saw
 *   the slave go down and the active slave change. (rxe on the bond loses its QP on that same
 *   failover: the lab README; so this pairing has softroce on the bond, rxe on a plain NIC.)
 *
 * The tools open the bond by name as a user would: a SOFTROCE_BONDS entry (src/cli/open-device.ts),
 * with "log" naming the file the bond's events go to (the timeline each case checks). ARP: with two NICs per guest on one bridge, a guest answers ARP for its address on the NIC
 * without it too (arp_ignore 0) and rxe, which takes RoCE only on its own netdev, then drops what
 * arrives on the other one: `arpFlux` (run.ts) sets arp_ignore 1 / arp_announce 2 in the guests.
 */
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GUEST_IP, ROOT, guest, host, lab, sleep, tail, type Res } from './lab.js';

/** the bond's address on the host side (both ports), and its ports */
export const BOND_IP = '198.18.0.2';
const HP = [1, 2] as const;
const LAB_RUN = process.env['LAB_RUN'] ?? '/run/roce-lab';

export interface LagCase {
  kind: 'host-bond' | 'guest-follow';
  tool: 'ibv_rc_pingpong' | 'ib_write_bw';
  args: string;
  role: 'softroce-server' | 'softroce-client';
  /** cuts after the softroce device opened: [seconds after the previous one, lab command] */
  cuts: readonly (readonly [number, string])[];
}

export function lagCases(): LagCase[] {
  // A second apart: the carrier events reach the bond within ~100 ms, and the four cuts land while
  // the shortest run (ibv_rc_pingpong against rxe in the TCG guest: 500 to 900 iterations/s, so -n 10000
  // is 11 to 20 s; ib_write_bw -n 3000: ~10 s) is still moving data.
  const hostCuts = [
    [2, 'hostport down 1'],
    [1, 'hostport up 1'],
    [1, 'hostport down 2'],
    [1, 'hostport up 2'],
  ] as const;
  const c: LagCase[] = [];
  for (const role of ['softroce-server', 'softroce-client'] as const) {
    c.push({ kind: 'host-bond', tool: 'ibv_rc_pingpong', args: '-n 10000', role, cuts: hostCuts });
    c.push({ kind: 'host-bond', tool: 'ib_write_bw', args: '-n 3000', role, cuts: hostCuts });
  }
  // {active}: the guest bond's active slave when the cut comes (eth0 -> NIC 1, eth1 -> NIC 2). -n 1500:
  // ~70 iterations/s between two TCG guests, so the run outlasts both cuts (300 ended before the first).
  c.push({
    kind: 'guest-follow',
    tool: 'ibv_rc_pingpong',
    args: '-n 1500',
    role: 'softroce-client',
    cuts: [
      [4, 'link 1 {active} down'],
      [5, 'link 1 {active} up'],
    ],
  });
  return c;
}

export const lagName = (c: LagCase): string =>
  `lag ${c.kind} ${c.tool} ${c.args} cut ${c.kind === 'host-bond' ? 'host ports 1, 2' : "guest 1's active slave"} ${c.role}`;

/** Sets arp_ignore 1 / arp_announce 2 in both guests: each NIC answers only for its own addresses (see above). */
export async function arpFlux(guests: readonly number[]): Promise<void> {
  for (const g of guests) await guest(g, 'sysctl -qw net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2; ip neigh flush all', 20_000);
}

export interface LagLab {
  /** rxe's GID index on guest 1's bond */
  rxeGidx: number;
  /** softroce's RoCE v2 GID index of BOND_IP on softroce_bond_0 */
  bondGidx: number;
}

/** softroce_bond_0 as the tools open it: teamd's activebackup (ethtool watch) on labhp1 + labhp2, its events to `log`. */
const bondEnv = (log: string): string => {
  const entry = {
    config: { device: 'team0', runner: { name: 'activebackup' }, ports: { labhp1: {}, labhp2: {} } },
    ports: [
      { netdev: 'labhp1', address: BOND_IP },
      { netdev: 'labhp2', address: BOND_IP },
    ],
    log,
  };
  return `SOFTROCE_BONDS='${JSON.stringify([entry])}'`;
};

/**
 * The LAG topology: rxe on an active-backup bond in guest 1, host ports 1 and 2 with the bond's
 * address and one MAC (arp_ignore 1 in the namespace, so the bridge's own port does not answer for
 * it; arp_announce 2, so the namespace's own traffic leaving by the bridge port (the tools' TCP
 * exchange) ARPs from 198.18.0.1, not from the bond's address: an ARP request from the bond's
 * address with the bridge port's MAC repointed guest 1's neighbour entry for it at the bridge, and
 * rxe's packets stopped reaching the bond until that entry went stale: seen as a 2 to 40 s stall of
 * the pingpong-server case after a cut). Returns null and why when something is missing.
 */
export async function lagSetup(): Promise<LagLab | string> {
  const nics = existsSync(join(LAB_RUN, 'nics')) ? readFileSync(join(LAB_RUN, 'nics'), 'utf8').trim() : '1';
  if (nics !== '2') return `the lab runs ${nics} NIC per guest (LAB_NICS=2 is needed)`;
  const b = await lab(['bond', '1', 'active-backup', 'miimon', '100']);
  const m = /RoCE v2 GID index (\d+)/.exec(b.out);
  if (b.code !== 0 || !m) return `lab bond 1 failed: ${tail(b.err || b.out)}`;
  for (const n of HP) {
    await lab(['hostport', 'del', String(n)]); // a fresh port: no address or MAC left from an earlier run
    const r = await lab(['hostport', 'add', String(n)]);
    if (r.code !== 0) return `lab hostport add ${n} failed: ${tail(r.err || r.out)}`;
  }
  const net = await lab([
    'host',
    `ip link set labhp2 address $(cat /sys/class/net/labhp1/address) && ip addr add ${BOND_IP}/24 dev labhp1 && ip addr add ${BOND_IP}/24 dev labhp2 && sysctl -qw net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2 net.ipv4.conf.labbr0.arp_announce=2`,
  ]);
  if (net.code !== 0) return `host ports: ${tail(net.err || net.out)}`;
  const gids = await host(`env ${bondEnv('/dev/null')} node ${join(ROOT, 'bin', 'show_gids.js')}`, 30_000);
  const row = gids.out.split('\n').find((l) => l.includes(BOND_IP) && /\tv2\t/.test(l));
  const gidx = row ? Number(row.split('\t')[2]) : NaN;
  if (!Number.isInteger(gidx)) return `no RoCE v2 GID for ${BOND_IP} on softroce_bond_0: ${tail(gids.out + gids.err)}`;
  return { rxeGidx: Number(m[1]), bondGidx: gidx };
}

/** Undoes lagSetup's host side (the guest's bond stays: the LAG cases are the suite's last). */
export async function lagTeardown(): Promise<void> {
  for (const n of HP) await lab(['hostport', 'del', String(n)]);
  await lab(['host', 'sysctl -qw net.ipv4.conf.all.arp_ignore=0 net.ipv4.conf.all.arp_announce=0 net.ipv4.conf.labbr0.arp_announce=0']);
}

async function waitListen(where: 'host' | number, ms = 60_000): Promise<boolean> {
  const end = Date.now() + ms;
  const probe = "ss -Hltn 'sport = :18515' | grep -q .";
  while (Date.now() < end) {
    const r = where === 'host' ? await lab(['host', probe], 10_000) : await lab(['exec', String(where), probe], 10_000);
    if (r.code === 0) return true;
    await sleep(300);
  }
  return false;
}

async function waitFile(file: string, re: RegExp, ms: number): Promise<boolean> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (existsSync(file) && re.test(readFileSync(file, 'utf8'))) return true;
    await sleep(100);
  }
  return false;
}

/** The project as the guest runs it: dist/, bin/, package.json, node-gyp-build and the addon, on guest 1's share. */
function shareProject(): string {
  const dst = join(LAB_RUN, 'g1', 'sr');
  rmSync(dst, { recursive: true, force: true });
  mkdirSync(join(dst, 'node_modules'), { recursive: true });
  for (const d of ['dist', 'bin', 'package.json']) cpSync(join(ROOT, d), join(dst, d), { recursive: true });
  cpSync(join(ROOT, 'node_modules', 'node-gyp-build'), join(dst, 'node_modules', 'node-gyp-build'), { recursive: true });
  if (existsSync(join(ROOT, 'native', 'build'))) cpSync(join(ROOT, 'native', 'build'), join(dst, 'native', 'build'), { recursive: true });
  return '/lab/sr';
}

/** Guest 1 gives its bond to softroce: rxe off (its module holds UDP 4791), the project on the share. */
async function guestFollowSetup(): Promise<string | null> {
  shareProject();
  const r = await guest(1, 'rdma link delete rxe0 2>/dev/null; modprobe -r rdma_rxe && ! ss -Hlun | grep -q ":4791 "', 30_000);
  return r.code === 0 ? null : `guest 1: rxe still holds UDP 4791: ${tail(r.err || r.out)}`;
}

/** Runs one case; null when it passed, else why. `notes` gets what the bond did (for the report). */
export async function runLagCase(c: LagCase, l: LagLab, notes: string[]): Promise<string | null> {
  const dir = mkdtempSync(join(tmpdir(), 'softroce-lag-'));
  const g = c.tool.startsWith('ib_') ? '-x' : '-g';
  let ours: string, theirs: string, oursAt: 'host' | number, theirsAt: number, peerOfOurs: string, peerOfTheirs: string, log: string;
  if (c.kind === 'host-bond') {
    log = join(dir, 'bond.log');
    ours = `env ${bondEnv(log)} node ${join(ROOT, 'bin', `${c.tool}.js`)} -d softroce_bond_0 ${g} ${l.bondGidx} ${c.args}`;
    theirs = `${c.tool} -d rxe0 ${g} ${l.rxeGidx} ${c.args}`;
    oursAt = 'host';
    theirsAt = 1;
    peerOfOurs = GUEST_IP(1);
    peerOfTheirs = BOND_IP;
  } else {
    const why = await guestFollowSetup();
    if (why !== null) return why;
    log = join(LAB_RUN, 'g1', 'follow.log');
    rmSync(log, { force: true });
    const env = `SOFTROCE_BONDS='${JSON.stringify([{ follow: 'bond0', log: '/lab/follow.log' }])}'`;
    ours = `cd /lab/sr && env ${env} node bin/${c.tool}.js -d softroce_bond_0 ${g} 3 ${c.args}`;
    theirs = `${c.tool} -d rxe0 ${g} 1 ${c.args}`;
    oursAt = 1;
    theirsAt = 2;
    peerOfOurs = GUEST_IP(2);
    peerOfTheirs = GUEST_IP(1);
  }
  const run = (at: 'host' | number, cmd: string): Promise<Res> => (at === 'host' ? host(cmd, 120_000) : guest(at, cmd, 120_000));
  let server: Promise<Res>, client: Promise<Res>;
  if (c.role === 'softroce-server') {
    server = run(oursAt, ours);
    if (!(await waitListen(oursAt))) return 'softroce server did not listen';
    client = run(theirsAt, `${theirs} ${peerOfTheirs}`);
  } else {
    server = run(theirsAt, theirs);
    if (!(await waitListen(theirsAt))) return 'rxe server did not listen';
    client = run(oursAt, `${ours} ${peerOfOurs}`);
  }
  // The cuts count from the softroce device's opening (node starts slowly in a TCG guest).
  const opened = await waitFile(log, /\b(open|follow) /, 60_000);
  let pulled = '1';
  for (const [s, cmd0] of c.cuts) {
    if (!opened) break;
    await sleep(s * 1000);
    let cmd = cmd0;
    if (cmd0.endsWith('{active} down')) {
      const a = await guest(1, 'cat /sys/class/net/bond0/bonding/active_slave', 20_000);
      pulled = a.out.trim() === 'eth1' ? '2' : '1';
    }
    // '{active} up' plugs the slave pulled before, not the new active one
    cmd = cmd.replace('{active}', pulled);
    notes.push(`${new Date().toISOString()} cut: ${cmd}`);
    await lab(cmd.split(' '));
  }
  const [srv, cli] = await Promise.all([server, client]);
  const logText = existsSync(log) ? readFileSync(log, 'utf8').trim() : '';
  notes.push(...logText.split('\n').filter(Boolean));
  rmSync(dir, { recursive: true, force: true });
  if (!opened) return 'the softroce device did not open';
  const ok =
    c.tool === 'ib_write_bw'
      ? (o: string, passive: boolean) => passive || /#bytes.*\n\s*\d+\s+\d+\s+[\d.]+\s+[\d.]+/.test(o)
      : (o: string) => /\d+ iters in [\d.]+ seconds/.test(o);
  const sides: [string, Res][] =
    c.role === 'softroce-server'
      ? [
          ['softroce server', srv],
          ['rxe client', cli],
        ]
      : [
          ['rxe server', srv],
          ['softroce client', cli],
        ];
  for (const [name, r] of sides) {
    if (r.code !== 0) return `${name} exited ${r.code}: ${tail(r.err || r.out)}`;
    if (!ok(r.out, false)) return `${name} printed no result lines: ${tail(r.out)}`;
  }
  // The bond must have seen what was done to it.
  const want =
    c.kind === 'host-bond'
      ? [/portDown 1 labhp1/, /portDown 2 labhp2/, /activePortChanged 1 -> 2/, /activePortChanged 2 -> 1/]
      : [/portDown \d eth\d/, /activePortChanged \d -> \d/];
  for (const re of want) if (!re.test(logText)) return `the bond log lacks ${re.source}: ${logText.split('\n').slice(-4).join(' | ')}`;
  return null;
}

/** After a failed case: every cable plugged again (the tools end by their own timeouts: host() and guest() wrap them). */
export async function lagCleanup(): Promise<void> {
  for (const n of HP) await lab(['hostport', 'up', String(n)]);
  for (const n of [1, 2]) await lab(['link', '1', String(n), 'up']);
}
