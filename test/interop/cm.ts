/**
 * The rdma_cm cases of the interop suite (issue 13): rdmacm-utils' ucmatose,
 * rping, udaddy, mckey and cmtime and perftest's -R, each run three ways in the
 * same lab session: real ↔ real (guest 1 serves, guest 2 connects; the
 * reference), softroce serving a real client, and a real server with a
 * softroce client. A softroce pairing passes when each side ends with the same
 * exit status and prints the same lines, stdout and stderr apart, as the same
 * role did real ↔ real. Addresses are written as <addr>; where a tool prints
 * figures that vary per run (cmtime's table, perftest's banner and results)
 * the numbers are masked and the lines must still match one for one.
 */
import { join } from 'node:path';
import { DEVS, GUEST_CLIENT, GUEST_IP, GUEST_SERVER, HOST_IP, ROOT, guest, host, lab, sh, sleep, type Res } from './lab.js';

export interface CmCase {
  tool: string;
  /** server arguments; {self} is the serving side's address */
  server: string;
  /** client arguments; {peer} is the server's address, {self} the client's own */
  client: string;
  /** the rdma_cm port the server listens on; without one (mckey's receiver) the client starts a fixed time later */
  port?: number;
  /** the server runs until it is ended (cmtime): its exit status is not compared */
  daemon?: boolean;
  /** mask run-dependent numbers: cmtime's table, perftest's banner and figures */
  mask?: boolean;
  /** nothing serves: only the client runs, against a guest where nothing listens on the port */
  serverless?: boolean;
  /** stderr lines the real tool prints or not by a race of its own: dropped from every side before comparing */
  racy?: RegExp;
  /** longer than the default 90 s per side */
  ms?: number;
  /** the -t TOS given: every RoCE packet of the softroce pairings must carry it in the IP header, and the REQ SL 0 (capture on the bridge) */
  tos?: number;
}

export function cmCases(): CmCase[] {
  const c: CmCase[] = [];
  // ucmatose: 1 and 10 connections; -S from 1 B to 1 MiB (the 1 MiB case with fewer messages: rxe under TCG moves ~2 MB/s)
  c.push({ tool: 'ucmatose', server: '', client: '-s {peer}', port: 7471 });
  c.push({ tool: 'ucmatose', server: '-c 10', client: '-s {peer} -c 10', port: 7471 });
  c.push({ tool: 'ucmatose', server: '-c 10 -C 5 -S 1', client: '-s {peer} -c 10 -C 5 -S 1', port: 7471 });
  c.push({ tool: 'ucmatose', server: '-c 10 -C 5 -S 1000', client: '-s {peer} -c 10 -C 5 -S 1000', port: 7471 });
  c.push({ tool: 'ucmatose', server: '-C 4 -S 65536', client: '-s {peer} -C 4 -S 65536', port: 7471 });
  c.push({ tool: 'ucmatose', server: '-C 2 -S 1048576', client: '-s {peer} -C 2 -S 1048576', port: 7471, ms: 150_000 });
  c.push({ tool: 'ucmatose', server: '', client: '-s {peer} -p 7472', serverless: true });
  // rdma_set_option(TOS) from the active side: the DSCP of every packet, both ways, and the path's SL
  c.push({ tool: 'ucmatose', server: '-C 2', client: '-s {peer} -C 2 -t 96', port: 7471, tos: 96 });
  // rping: -C 100 -v -V as the issue asks, the smallest and largest -S, and no server
  c.push({ tool: 'rping', server: '-s -a {self} -v -C 100', client: '-c -a {peer} -v -V -C 100', port: 7174 });
  c.push({ tool: 'rping', server: '-s -a {self} -C 10 -S 23', client: '-c -a {peer} -V -C 10 -S 23', port: 7174 });
  c.push({ tool: 'rping', server: '-s -a {self} -C 10 -S 65535', client: '-c -a {peer} -V -C 10 -S 65535', port: 7174 });
  // rping's cm_thread exit()s on the REJECTED event while main, woken by the same event's sem_post, prints
  // "wait for CONNECTED state 4" and then rping_run_client's "connect error -1": the real client prints
  // both, the first only, or neither, as the race goes (rdma-core 44 rping.c cm_thread, rping_connect_client)
  c.push({
    tool: 'rping',
    server: '',
    client: '-c -a {peer} -p 7175 -C 1',
    serverless: true,
    racy: /^(wait for CONNECTED state \d+|connect error -1)$/,
  });
  // udaddy: SIDR and UD sends, 1 and 10 ids, small and MTU-sized messages
  c.push({ tool: 'udaddy', server: '', client: '-s {peer}', port: 7174 });
  c.push({ tool: 'udaddy', server: '-c 10 -C 5 -S 1', client: '-s {peer} -c 10 -C 5 -S 1', port: 7174 });
  c.push({ tool: 'udaddy', server: '-S 1000', client: '-s {peer} -S 1000', port: 7174 });
  c.push({ tool: 'udaddy', server: '', client: '-s {peer}', serverless: true });
  c.push({ tool: 'udaddy', server: '', client: '-s {peer} -p 7175', serverless: true });
  // mckey: the receiver joins first, then the sender joins and sends
  c.push({ tool: 'mckey', server: '-m 239.18.0.1 -b {self}', client: '-m 239.18.0.1 -b {self} -s' });
  c.push({ tool: 'mckey', server: '-m 239.18.0.2 -b {self} -C 20 -S 1000', client: '-m 239.18.0.2 -b {self} -s -C 20 -S 1000' });
  // cmtime: 100 connections, per-step times (the server serves until ended)
  c.push({ tool: 'cmtime', server: '', client: '-s {peer} -c 100', port: 7471, daemon: true, mask: true, ms: 150_000 });
  // perftest over rdma_cm instead of the TCP exchange
  for (const tool of ['ib_write_bw', 'ib_read_bw', 'ib_send_bw', 'ib_send_lat', 'ib_write_lat'])
    c.push({ tool, server: '-R -d rxe0 -n 200', client: '-R -d rxe0 -n 200 {peer}', port: 18515, mask: true });
  c.push({ tool: 'ib_write_bw', server: '', client: '-R -d rxe0 -n 200 {peer}', serverless: true, mask: true });
  return c;
}

export const cmName = (c: CmCase): string =>
  `${c.tool} ${c.serverless ? '(no server)' : c.server || 'defaults'} | ${c.client}`.replace(/\{peer\}|\{self\}/g, 'ADDR');

const MARK = '=== stderr ===';
/** stdout, then the marker, then stderr: the two streams kept apart whatever their buffering */
const wrap = (cmd: string): string => `${cmd} 2>/tmp/cmerr.$$; rc=$?; echo '${MARK}'; cat /tmp/cmerr.$$; rm -f /tmp/cmerr.$$; exit $rc`;
const ours = (tool: string, args: string): string => `env ${DEVS} node ${join(ROOT, 'bin', `${tool}.js`)} ${args}`;

interface Side {
  code: number | null;
  out: string[];
  err: string[];
  /** stdout as printed (figures unmasked) */
  raw: string[];
}

function split(r: Res, mask: boolean): Side {
  const all = r.out.replace(/\r/g, '');
  const at = all.lastIndexOf(MARK);
  const norm = (s: string): string[] =>
    s
      .split('\n')
      .map((l) => {
        let x = l.replace(/198\.18\.0\.\d+/g, '<addr>');
        if (mask) {
          // perftest prints GIDs as bytes, QPNs/PSNs in hex and figures with tabs; cmtime its table of times
          x = x.replace(/^(\s*GID:).*/, '$1 <gid>').replace(/0x[0-9a-f]+/gi, '#');
          x = x.replace(/\d+(\.\d+)?/g, '#');
        }
        return x.replace(/\s+/g, ' ').trim();
      })
      // perftest's clock calibration warns on stderr when the guest's TSC samples scatter (get_cpu_mhz under
      // TCG): the machine's noise, not the tool's behaviour
      .filter((l) => l !== '' && !(mask && /^Correlation coefficient r\^#/.test(l)));
  const raw = (at < 0 ? all : all.slice(0, at)).split('\n').filter((l) => l.trim() !== '');
  if (at < 0) return { code: r.code, out: norm(all + r.err), err: [], raw };
  return { code: r.code, out: norm(all.slice(0, at)), err: norm(all.slice(at + MARK.length) + r.err), raw };
}

type Pairing = 'real-real' | 'softroce-server' | 'rxe-server';

/** Waits until the real server in guest g has its rdma_cm id listening on the port (rdma res show cm_id). */
async function waitCmListen(g: number, port: number, ms = 30_000): Promise<boolean> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    const r = await lab(['exec', String(g), `rdma res show cm_id | grep LISTEN | grep -q ':${port} '`], 10_000);
    if (r.code === 0) return true;
    await sleep(300);
  }
  return false;
}

/** Waits until a process on the host side of the lab has bound UDP 4791 (softroce's device on labbr0). */
async function waitHostUdp(ms = 30_000): Promise<boolean> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    const r = await lab(['host', "ss -Hlun 'sport = :4791' | grep -q ."], 10_000);
    if (r.code === 0) return true;
    await sleep(200);
  }
  return false;
}

async function runPairing(c: CmCase, p: Pairing): Promise<{ srv: Side | null; cli: Side } | string> {
  const ms = c.ms ?? 90_000;
  const srvIp = p === 'softroce-server' ? HOST_IP : GUEST_IP(GUEST_SERVER);
  const cliIp = p === 'rxe-server' ? HOST_IP : GUEST_IP(GUEST_CLIENT);
  const sub = (a: string, self: string): string => a.replace(/\{peer\}/g, srvIp).replace(/\{self\}/g, self);
  const srvArgs = sub(c.server, srvIp);
  const cliArgs = sub(c.client, cliIp);
  let server: Promise<Res> | null = null;
  if (!c.serverless) {
    if (p === 'softroce-server') {
      server = host(wrap(ours(c.tool, srvArgs)), ms);
      // softroce's listener is inside the node process, out of the kernel's sight; its device's UDP socket is
      // not (bound just before the listen, or the joins): wait for that, then a moment for the rest
      if (!(await waitHostUdp())) return 'the softroce server did not open its device';
      await sleep(c.port === undefined ? 3000 : 1000);
    } else {
      server = guest(GUEST_SERVER, wrap(`${c.tool} ${srvArgs}`), ms);
      if (c.port === undefined) await sleep(4000);
      else if (!(await waitCmListen(GUEST_SERVER, c.port))) return 'the rxe server did not listen';
    }
  }
  const client = await (p === 'rxe-server' ? host(wrap(ours(c.tool, cliArgs)), ms) : guest(GUEST_CLIENT, wrap(`${c.tool} ${cliArgs}`), ms));
  if (c.daemon) await cmCleanup();
  const srv = server ? await server : null;
  const side = (r: Res): Side => {
    const x = split(r, !!c.mask);
    return c.racy === undefined ? x : { ...x, err: x.err.filter((l) => !c.racy!.test(l)), out: x.out.filter((l) => !c.racy!.test(l)) };
  };
  return { srv: srv && side(srv), cli: side(client) };
}

function diff(role: string, got: Side, want: Side): string | null {
  if (got.code !== want.code) return `${role} exited ${got.code}, real ↔ real ${want.code}: ${[...got.out, ...got.err].slice(-2).join(' | ')}`;
  for (const k of ['out', 'err'] as const) {
    const a = got[k],
      b = want[k];
    for (let i = 0; i < Math.max(a.length, b.length); i++)
      if (a[i] !== b[i])
        return `${role} ${k === 'out' ? 'stdout' : 'stderr'} line ${i + 1}: ${JSON.stringify(a[i] ?? '(none)')}, real ↔ real ${JSON.stringify(b[i] ?? '(none)')}`;
  }
  return null;
}

/**
 * One case three ways. The real ↔ real run is the reference: when it fails (the lab, not softroce), the case
 * says so and counts as failed in both softroce pairings.
 */
export async function runCmCase(
  c: CmCase,
): Promise<{ ref: string | null; results: Array<[Pairing, string | null]>; outs: Partial<Record<Pairing, string[]>> }> {
  const outs: Partial<Record<Pairing, string[]>> = {};
  const ref = await runPairing(c, 'real-real');
  await cmCleanup();
  if (typeof ref === 'string') return { ref, results: [], outs };
  outs['real-real'] = ref.cli.raw;
  const results: Array<[Pairing, string | null]> = [];
  const pairings: Pairing[] = c.serverless ? ['rxe-server'] : ['softroce-server', 'rxe-server'];
  for (const p of pairings) {
    const pcap = `/tmp/softroce-interop-tos-${p}.pcap`;
    if (c.tos !== undefined) await lab(['capture', 'start', pcap, 'udp port 4791']);
    const r = await runPairing(c, p);
    await cmCleanup();
    if (c.tos !== undefined) await lab(['capture', 'stop', pcap]);
    if (typeof r === 'string') {
      results.push([p, r]);
      continue;
    }
    if (c.tos !== undefined) {
      const why = await checkTos(pcap, c.tos);
      if (why !== null) {
        results.push([p, why]);
        continue;
      }
    }
    outs[p] = r.cli.raw;
    const who = p === 'softroce-server' ? ['softroce server', 'rxe client'] : ['rxe server', 'softroce client'];
    const why = (!c.daemon && r.srv && ref.srv ? diff(who[0]!, r.srv, ref.srv) : null) ?? diff(who[1]!, r.cli, ref.cli);
    results.push([p, why]);
  }
  return { ref: null, results, outs };
}

/** Every RoCE packet in the capture has the TOS byte; the REQ's primary path SL is 0 (iboe_tos_to_sl without a VLAN). */
async function checkTos(pcap: string, tos: number): Promise<string | null> {
  const r = await sh('tshark', ['-r', pcap, '-T', 'fields', '-e', 'ip.dsfield', '-e', 'infiniband.cm.req.prim_sl', '-e', '_ws.col.Info'], 60_000);
  if (r.code !== 0) return `tshark on ${pcap} failed: ${r.err.trim()}`;
  const rows = r.out
    .trim()
    .split('\n')
    .filter(Boolean)
    .map((l) => l.split('\t'));
  if (rows.length < 6) return `only ${rows.length} packets captured`;
  const bad = rows.find((f) => Number(f[0]) !== tos);
  if (bad) return `a packet with TOS ${bad[0]}, not ${tos}: ${bad[2]}`;
  const req = rows.find((f) => /ConnectRequest/.test(f[2] ?? ''));
  if (!req) return 'no REQ in the capture';
  if (req[1] !== '' && Number(req[1]) !== 0) return `the REQ's SL is ${req[1]}, not 0`;
  return null;
}

/** Ends the CM tools a case left running: by name in the guests, by the PID that holds softroce's UDP port on the host side. */
export async function cmCleanup(): Promise<void> {
  const names = 'ucmatose|rping|udaddy|mckey|cmtime|ib_(write|read|send|atomic)_(bw|lat)';
  for (const g of [GUEST_SERVER, GUEST_CLIENT]) await guest(g, `pkill -x '${names}'; true`, 20_000);
  await lab(['host', "for p in $(ss -Hlunp 'sport = :4791' | grep -o 'pid=[0-9]*' | cut -d= -f2 | sort -u); do kill $p; done; true"]);
  await sleep(500);
}
