/**
 * `npm run test:interop`: softroce's CLIs against rdma-core's real tools on the
 * Linux kernel's Soft-RoCE driver (rdma_rxe), in the lab of ../shared/lab
 * (qemu guests on a private namespace; read its README). Every case runs in
 * both directions (softroce server with the real client, and the reverse) and
 * prints PASS/FAIL with the reason; the run ends with "N passed, N failed".
 *
 * Mode: with the native addon built, softroce's socket sends IPv4 ID 0
 * (IP_PMTUDISC_DO) and nothing else is needed; without it (SOFTROCE_NO_NATIVE=1
 * or no addon) the lab's `ipid0` nftables rule is switched on as a crutch.
 *
 * Exit status: 0 all passed, 1 a case failed, 3 the lab cannot run here.
 */
import { existsSync, accessSync, constants } from 'node:fs';
import { join } from 'node:path';
import { loadNative } from '../../src/native.js';
import { DEVS, GUEST_CLIENT, GUEST_IP, GUEST_SERVER, HOST_IP, LAB, LAB_DIR, ROOT, guest, host, lab, oneLine, tail, type Res } from './lab.js';
import { cmCases, cmName, runCmCase } from './cm.js';
import { BOND_IP, arpFlux, lagCases, lagCleanup, lagName, lagSetup, lagTeardown, runLagCase, type LagLab } from './lag.js';

function cannotRun(): string | null {
  if (process.getuid?.() !== 0) return 'needs root (network namespaces, qemu taps)';
  if (!existsSync('/dev/net/tun')) return 'no /dev/net/tun';
  if (!existsSync(LAB)) return `no lab at ${LAB_DIR} (set SOFTROCE_LAB)`;
  try {
    accessSync(LAB, constants.X_OK);
  } catch {
    return `${LAB} is not executable`;
  }
  return null;
}

async function waitListen(where: 'host' | number, ms = 30_000): Promise<boolean> {
  const end = Date.now() + ms;
  const probe = "ss -Hltn 'sport = :18515' | grep -q .";
  while (Date.now() < end) {
    const r = where === 'host' ? await lab(['host', probe], 10_000) : await lab(['exec', String(where), probe], 10_000);
    if (r.code === 0) return true;
    await new Promise((r2) => setTimeout(r2, 300));
  }
  return false;
}

interface Case {
  kind: 'rc' | 'uc' | 'ud' | 'srq' | 'perftest';
  tool?: string;
  args: string;
  lossy?: boolean;
  jumbo?: boolean;
  validate?: boolean;
}

function cases(): Case[] {
  const c: Case[] = [];
  for (const kind of ['rc', 'uc', 'ud', 'srq'] as const) {
    c.push({ kind, args: kind === 'srq' ? '-n 300' : '' });
    const sizes = kind === 'ud' ? [1, 64, 1024] : kind === 'srq' ? [] : [1, 64, 1024, 4096, 65536];
    for (const s of sizes) c.push({ kind, args: `-s ${s} -n 100` });
    if (kind !== 'ud') for (const m of [256, 1024, 4096]) c.push({ kind, args: `-m ${m} -n 100`, jumbo: m > 1024 });
    c.push({ kind, args: `-e -n 100` });
    if (kind !== 'srq') c.push({ kind, args: `-c -n 100`, validate: true });
  }
  c.push({ kind: 'rc', args: '-c -n 200', lossy: true, validate: true });
  // perftest (issue 5): softroce's ib_* tools against perftest's, TCP exchange.
  for (const tool of ['ib_send_bw', 'ib_write_bw', 'ib_read_bw', 'ib_atomic_bw', 'ib_send_lat', 'ib_write_lat', 'ib_read_lat', 'ib_atomic_lat'])
    c.push({ kind: 'perftest', tool, args: '-n 200' });
  c.push({ kind: 'perftest', tool: 'ib_write_bw', args: '-s 1024 -n 500 --report_gbits' });
  c.push({ kind: 'perftest', tool: 'ib_write_bw', args: '-q 4 -n 200' });
  c.push({ kind: 'perftest', tool: 'ib_send_bw', args: '-q 2 -n 200' });
  c.push({ kind: 'perftest', tool: 'ib_write_bw', args: '-D 2' });
  for (const tool of ['ib_write_bw', 'ib_read_bw', 'ib_atomic_bw']) c.push({ kind: 'perftest', tool, args: '-b -n 200' });
  c.push({ kind: 'perftest', tool: 'ib_write_bw', args: '-b -a -n 5' });
  c.push({ kind: 'perftest', tool: 'ib_write_bw', args: '-a -n 5' });
  c.push({ kind: 'perftest', tool: 'ib_send_lat', args: '-a -n 5' });
  c.push({ kind: 'perftest', tool: 'ib_read_lat', args: '-a -n 5' });
  c.push({ kind: 'perftest', tool: 'ib_write_lat', args: '-a -n 5' });
  c.push({ kind: 'perftest', tool: 'ib_send_bw', args: '-c UC -s 1024 -n 200' });
  c.push({ kind: 'perftest', tool: 'ib_write_bw', args: '-c UC -n 200' });
  c.push({ kind: 'perftest', tool: 'ib_send_bw', args: '-c UD -n 200' });
  c.push({ kind: 'perftest', tool: 'ib_send_lat', args: '-c UD -n 200' });
  c.push({ kind: 'perftest', tool: 'ib_write_lat', args: '-c UC -n 200' });
  return c;
}

const okOut = (o: string): boolean => /\d+ bytes in [\d.]+ seconds = [\d.]+ Mbit\/sec/.test(o) && /\d+ iters in [\d.]+ seconds = [\d.]+ usec\/iter/.test(o);
/** perftest prints a header line then one result row with numbers. */
const okPerf = (o: string): boolean => /#bytes.*\n\s*\d+\s+\d+\s+[\d.]+\s+[\d.]+/.test(o);
/**
 * Whether both guests still reach the host side. Under TCG a guest's NIC has been seen to stop
 * passing traffic in the middle of a perftest case (twice in about 20 full runs: the rxe client
 * stopped sending after 135 of 400 messages, the guest's ARP entry for the host went FAILED, and
 * every later case failed with "Waiting for client to connect"). That is the lab, not a case:
 * say so with the guest's own view (dmesg, neighbours, NIC counters) and boot a fresh lab.
 */
async function labSick(): Promise<string | null> {
  for (const g of [GUEST_SERVER, GUEST_CLIENT]) {
    const r = await guest(g, `ping -c 3 -i 0.5 -W 2 ${HOST_IP} >/dev/null`, 20_000);
    if (r.code === 0) continue;
    const d = await guest(g, 'dmesg | tail -n 6; ip neigh show dev eth0; ip -s link show eth0 | sed -n 3,6p', 20_000);
    return `guest ${g} cannot reach ${HOST_IP} (ping exit ${r.code}): ${oneLine(d.out + d.err)}`;
  }
  return null;
}

async function setJumbo(on: boolean): Promise<void> {
  const mtu = on ? 9000 : 1500;
  await lab(['host', `ip link set labbr0 mtu ${mtu}; for t in labtap1 labtap2; do ip link set $t mtu ${mtu}; done`]);
  for (const g of [GUEST_SERVER, GUEST_CLIENT]) await guest(g, `ip link set eth0 mtu ${mtu}`, 20_000);
}

async function setLossy(on: boolean): Promise<void> {
  for (const g of [GUEST_SERVER, GUEST_CLIENT]) {
    await guest(g, on ? 'tc qdisc replace dev eth0 root netem loss 3% delay 1ms reorder 10% 50%' : 'tc qdisc del dev eth0 root 2>/dev/null; true', 20_000);
  }
}

async function runCase(c: Case, dir: 'softroce-server' | 'rxe-server', gidx: number): Promise<string | null> {
  const tool = c.tool ?? `ibv_${c.kind}_pingpong`;
  const g = c.kind === 'perftest' ? '-x' : '-g';
  const ours = `env ${DEVS} node ${join(ROOT, 'bin', `${tool}.js`)} -d rxe0 ${g} ${gidx} ${c.args}`;
  const theirs = `${tool} -d rxe0 ${g} 1 ${c.args}`;
  // A lossy run takes 3-6 s; a stuck one (see main: the last ACK lost) is known long before 60 s.
  const ms = c.lossy ? 60_000 : 90_000;
  let server: Promise<Res>, client: Res;
  if (dir === 'rxe-server') {
    server = guest(GUEST_SERVER, theirs, ms);
    if (!(await waitListen(GUEST_SERVER))) return 'rxe server did not listen';
    client = await host(`${ours} ${GUEST_IP(GUEST_SERVER)}`, ms);
  } else {
    server = host(ours, ms);
    if (!(await waitListen('host'))) return 'softroce server did not listen';
    client = await guest(GUEST_CLIENT, `${theirs} ${HOST_IP}`, ms);
  }
  const srv = await server;
  const sides: Array<[string, Res]> =
    dir === 'rxe-server'
      ? [
          ['rxe server', srv],
          ['softroce client', client],
        ]
      : [
          ['softroce server', srv],
          ['rxe client', client],
        ];
  for (const [name, r] of sides) {
    if (r.code !== 0) return `${name} exited ${r.code}: ${tail(r.err || r.out)}`;
    // READ and atomic latency servers only serve: perftest prints no result there.
    const passive = /server/.test(name) && /ib_(read|atomic)_lat/.test(tool);
    if (!passive && !(c.kind === 'perftest' ? okPerf(r.out) : okOut(r.out))) return `${name} printed no result lines: ${tail(r.out)}`;
    if (c.validate && /invalid data/.test(r.out)) return `${name}: ${tail(r.out)}`;
  }
  return null;
}

/** Ends leftovers of a failed case (tools still waiting on port 18515), by name in the guests, by port on the host side. */
async function cleanup(): Promise<void> {
  for (const g of [GUEST_SERVER, GUEST_CLIENT]) await guest(g, "pkill -f 'ibv_[a-z]*_pingpong'; pkill -f 'ib_(write|read|send|atomic)_'; true", 20_000);
  await lab(['host', "for p in $(ss -Hltnp 'sport = :18515' | grep -o 'pid=[0-9]*' | cut -d= -f2); do kill $p; done; true"]);
}

async function main(): Promise<number> {
  const why = cannotRun();
  if (why) {
    console.log(`interop: cannot run here: ${why}`);
    return 3;
  }
  const native = loadNative() !== null && process.env['SOFTROCE_NO_NATIVE'] !== '1';
  console.log(
    `interop: lab ${LAB_DIR}; mode: ${native ? 'native addon (IP_PMTUDISC_DO: IPv4 ID 0), ipid0 rule OFF' : 'pure JS (dgram) with the lab ipid0 nftables rule ON (crutch)'}`,
  );
  if (process.env['CI']) await lab(['down']); // a fresh lab: nothing left from an earlier run
  const up = await lab(['up', '2'], 900_000);
  if (up.code !== 0) {
    // The lab itself (image build from Debian's archive, qemu boot) is infrastructure, not a case.
    console.log(`interop: cannot run here: the lab did not come up: ${tail(up.err || up.out)}`);
    return 3;
  }
  await lab(['ipid0', native ? 'off' : 'on']);
  if (process.env['LAB_NICS'] === '2') await arpFlux([GUEST_SERVER, GUEST_CLIENT]);
  const gids = await host(`env ${DEVS} node ${join(ROOT, 'bin', 'show_gids.js')}`, 30_000);
  const row = gids.out.split('\n').find((l) => l.includes(HOST_IP) && /\tv2\t/.test(l));
  const gidx = row ? Number(row.split('\t')[2]) : NaN;
  if (!Number.isInteger(gidx)) {
    console.log(`interop: no RoCE v2 GID for ${HOST_IP} in softroce's table: ${tail(gids.out + gids.err)}`);
    console.log('0 passed, 1 failed');
    return 1;
  }
  console.log(`interop: softroce GID index ${gidx} (::ffff:${HOST_IP}, RoCE v2); rxe GID index 1`);
  let pass = 0,
    fail = 0;
  let jumbo = false,
    lossy = false;
  let restarts = 0;
  /** After a failure: if a guest lost its network, a fresh lab (at most 3 times); false if that failed. */
  const healLab = async (): Promise<boolean> => {
    const sick = await labSick();
    if (sick === null) return true;
    if (++restarts > 3) {
      console.log(`interop: lab: ${sick}; already restarted 3 times`);
      return false;
    }
    console.log(`interop: lab: ${sick}; restarting the lab (restart ${restarts})`);
    await lab(['down']);
    const again = await lab(['up', '2'], 900_000);
    if (again.code !== 0) {
      console.log(`interop: lab: did not come up again: ${tail(again.err || again.out)}`);
      return false;
    }
    await lab(['ipid0', native ? 'off' : 'on']);
    if (process.env['LAB_NICS'] === '2') await arpFlux([GUEST_SERVER, GUEST_CLIENT]);
    if (jumbo) await setJumbo(true);
    if (lossy) await setLossy(true);
    return (await labSick()) === null;
  };
  const only = process.env['INTEROP_ONLY'];
  for (const c of cases()) {
    // INTEROP_ONLY: a substring of the case's name, or several separated by '|'.
    if (only && !only.split('|').some((o) => `${c.tool ?? c.kind} ${c.args}`.includes(o))) continue;
    if (!!c.jumbo !== jumbo) {
      await setJumbo(!!c.jumbo);
      jumbo = !!c.jumbo;
    }
    if (!!c.lossy !== lossy) {
      await setLossy(!!c.lossy);
      lossy = !!c.lossy;
    }
    for (const dir of ['softroce-server', 'rxe-server'] as const) {
      const name = `${(c.tool ?? c.kind).padEnd(3)} ${(c.args || 'defaults').padEnd(16)}${c.lossy ? ' lossy(netem 3%)' : ''}${c.jumbo ? ' mtu9000' : ''} ${dir}`;
      const t0 = Date.now();
      const attempt = async (): Promise<string | null> => {
        try {
          return await runCase(c, dir, gidx);
        } catch (e) {
          return String(e);
        }
      };
      let why = await attempt();
      // Under TCG a guest can be slow to listen or to answer; like the lab's selftest, try a failed case once more and say so.
      // The lossy case gets the same single retry as every other one (issue 10): it used to need
      // three tries, because an ACK that arrived while softroce's requester was going back was
      // thrown away (README, "differs on purpose"), and a client whose last SEND was then
      // resent after the rxe server had exited retried forever.
      let note = '';
      const tries = 2;
      const firsts: string[] = [];
      for (let k = 1; k < tries && why !== null; k++) {
        await cleanup();
        firsts.push(why);
        if (!(await healLab())) break;
        why = await attempt();
      }
      if (firsts.length) note = ` after ${firsts.length} retr${firsts.length === 1 ? 'y' : 'ies'} (first: ${firsts.join(' / ')})`;
      const dt = ((Date.now() - t0) / 1000).toFixed(1);
      if (why === null) {
        pass++;
        console.log(`PASS ${name} (${dt}s)${note}`);
      } else {
        fail++;
        console.log(`FAIL ${name} (${dt}s): ${why}${note}`);
      }
      await cleanup();
      if (why !== null && !(await healLab())) {
        console.log('interop: the lab could not be restarted; stopping');
        console.log(`${pass} passed, ${fail + 1} failed`);
        return 1;
      }
    }
  }
  if (jumbo) await setJumbo(false);
  if (lossy) await setLossy(false);
  // rdma_cm (issue 13): each case real ↔ real first, then softroce in each role against it.
  for (const c of cmCases()) {
    const name = cmName(c);
    if (only && !name.includes(only)) continue;
    const t0 = Date.now();
    let r = await runCmCase(c);
    let note = '';
    // As above: a case that fails is tried once more, after a look at the lab's health.
    const failed = (x: typeof r): string | null => x.ref ?? x.results.find(([, why]) => why !== null)?.[1] ?? null;
    const first = failed(r);
    if (first !== null) {
      if (!(await healLab())) {
        console.log('interop: the lab could not be restarted; stopping');
        console.log(`${pass} passed, ${fail + 1} failed`);
        return 1;
      }
      r = await runCmCase(c);
      note = ` after 1 retry (first: ${first})`;
    }
    const dt = ((Date.now() - t0) / 1000).toFixed(1);
    if (r.ref !== null) {
      fail += 2;
      console.log(`FAIL ${name} real-real (${dt}s): the reference run failed: ${r.ref}${note}`);
      continue;
    }
    for (const [p, why] of r.results) {
      if (why === null) pass++;
      else fail++;
      console.log(`${why === null ? 'PASS' : 'FAIL'} ${name} ${p} (${dt}s)${why === null ? '' : `: ${why}`}${note}`);
    }
    // cmtime's per-step table of each pairing, for the note: the same run, side by side
    if (c.tool === 'cmtime')
      for (const [p, lines] of Object.entries(r.outs))
        console.log(
          `  cmtime client, ${p}:\n${lines
            .filter((l) => /:/.test(l))
            .map((l) => `    ${l}`)
            .join('\n')}`,
        );
  }
  /**
   * Before a LAG case's retry: null when guest 1 (on its bond) still reaches the host and the host
   * ports' address; else a fresh two-NIC lab set up for LAG again (its new GID indexes), or why not.
   */
  const lagHeal = async (): Promise<LagLab | string | null> => {
    const ping = await guest(GUEST_SERVER, `ping -c 3 -i 0.5 -W 2 ${HOST_IP} >/dev/null && ping -c 3 -i 0.5 -W 2 ${BOND_IP} >/dev/null`, 30_000);
    if (ping.code === 0) return null;
    const d = await guest(GUEST_SERVER, 'dmesg | tail -n 6; ip neigh; ip -s link show eth0 | sed -n 3,6p', 20_000);
    if (++restarts > 3) return `guest ${GUEST_SERVER} lost its network (${oneLine(d.out + d.err)}); the lab was already restarted 3 times`;
    console.log(`interop: lag: guest ${GUEST_SERVER} lost its network (${oneLine(d.out + d.err)}); restarting the lab (restart ${restarts})`);
    await lagTeardown();
    await lab(['down']);
    const again = await lab(['up', '2'], 900_000);
    if (again.code !== 0) return `the lab did not come up again: ${tail(again.err || again.out)}`;
    await lab(['ipid0', native ? 'off' : 'on']);
    await arpFlux([GUEST_SERVER, GUEST_CLIENT]);
    const l2 = await lagSetup();
    if (typeof l2 === 'string') return `the LAG topology could not be set up again: ${l2}`;
    console.log(`interop: lag: rxe on guest 1's bond0 GID index ${l2.rxeGidx}; softroce_bond_0 GID index ${l2.bondGidx}`);
    return l2;
  };
  // LAG (issue 14): last, since it re-cables the lab (host ports, guest 1's bond; rxe off guest 1 at the end).
  const lags = lagCases().filter((c) => !only || lagName(c).includes(only));
  if (lags.length > 0 && process.env['LAB_NICS'] !== '2') {
    // The LAG cases need a second NIC per guest. The cases above ran on the one-NIC lab they were
    // checked on; a fresh lab with two (and the guests' ARP answered per NIC: arpFlux) for these.
    console.log('interop: lag: restarting the lab with LAB_NICS=2 (a second NIC per guest)');
    process.env['LAB_NICS'] = '2';
    await lab(['down']);
    const again = await lab(['up', '2'], 900_000);
    if (again.code === 0) {
      await lab(['ipid0', native ? 'off' : 'on']);
      await arpFlux([GUEST_SERVER, GUEST_CLIENT]);
    } else console.log(`interop: lag: the lab did not come up with two NICs: ${tail(again.err || again.out)}`);
  }
  if (lags.length > 0 && process.env['LAB_NICS'] !== '2') {
    fail += lags.length;
    console.log(`FAIL lag: ${lags.length} cases need LAB_NICS=2 (the lab runs LAB_NICS=${process.env['LAB_NICS']})`);
  } else if (lags.length > 0) {
    let l = await lagSetup();
    if (typeof l === 'string') {
      fail += lags.length;
      console.log(`FAIL lag: ${l} (${lags.length} cases not run)`);
    } else {
      console.log(`interop: lag: rxe on guest 1's bond0 GID index ${l.rxeGidx}; softroce_bond_0 on labhp1+labhp2 GID index ${l.bondGidx}`);
      for (const c of lags) {
        const t0 = Date.now();
        let notes: string[] = [];
        let why = await runLagCase(c, l, notes).catch((e: unknown) => String(e));
        let note = '';
        // One retry, as every other case (TCG: a slow guest, perftest's clock calibration).
        if (why !== null) {
          note = ` after 1 retry (first: ${why})`;
          await lagCleanup();
          // A guest that lost its network (seen: guest 1's bond0 with ARP to the host and to guest 2
          // unanswered and TX errors on eth0, after which every try failed): a fresh two-NIC lab and
          // the LAG topology again, as healLab does for the cases above.
          const healed = await lagHeal();
          if (typeof healed === 'string') {
            console.log(`interop: lag: ${healed}`);
            why = `${why}; not retried: ${healed}`;
          } else {
            if (healed !== null) l = healed;
            notes = [];
            why = await runLagCase(c, l, notes).catch((e: unknown) => String(e));
          }
        }
        const dt = ((Date.now() - t0) / 1000).toFixed(1);
        if (why === null) pass++;
        else fail++;
        console.log(`${why === null ? 'PASS' : 'FAIL'} ${lagName(c)} (${dt}s)${why === null ? '' : `: ${why}`}${note}`);
        // what the bond saw and when (the failover timeline, for the note)
        for (const n of notes) console.log(`  ${n}`);
        if (why !== null) await lagCleanup();
      }
    }
    await lagTeardown();
  }
  if (!native) await lab(['ipid0', 'off']);
  if (process.env['INTEROP_KEEP_UP'] !== '1') await lab(['down']);
  console.log(`${pass} passed, ${fail} failed`);
  return fail ? 1 : 0;
}

main().then(
  (c) => process.exit(c),
  (e: unknown) => {
    console.error(e);
    console.log('0 passed, 1 failed');
    process.exit(1);
  },
);
