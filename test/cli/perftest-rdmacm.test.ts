/**
 * perftest -R (rdma_cm) as two processes on loopback (127.0.66.x, real UDP): ib_write_bw, ib_send_lat,
 * ib_read_bw, ib_send_bw and ib_write_lat connect their QPs with rdma_cm and exchange over an rdma_cm
 * connection on the -p port; the output has the lines of the lab's real-to-real captures
 * (test/interop/reference/perftest-R_*: perftest 6.06 on rxe, -n 200) once the numbers, the device
 * name and the lines that depend on the machine are set aside; the results are sane; -R against a port
 * nobody listens on ends as the real client does (REJ reason 8: "Unexpected CM event bl blka 8", exit 1).
 */
import t from 'tap';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { runBin, lines, freshPort, type ToolRun } from './tool-run.js';
import { openDevice } from '../../src/verbs/device.js';
import { createEventChannel } from '../../src/cm/event-channel.js';
import { createId } from '../../src/cm/cm-id.js';
import { destStruct, parseDestStruct, DEST_STRUCT_LEN } from '../../src/cli/perftest-cm.js';

const SRV = '127.0.66.1';
const CLI = '127.0.66.2';
const OTHER = '127.0.66.3';
process.env['SOFTROCE_DEVICES'] = `prm_a=lo:${SRV},prm_b=lo:${CLI}`;
const LINE = '-'.repeat(87);
const ROOT = fileURLToPath(new URL('../../../', import.meta.url));

/** a capture (stdout and stderr as the lab merged them) and the exit status its last line records */
function ref(name: string): { lines: string[]; exit: number } {
  const l = lines(readFileSync(`${ROOT}test/interop/reference/perftest-R_${name}`, 'utf8'));
  const m = /^exit (\d+)/.exec(l.at(-1) ?? '');
  if (m) l.pop();
  return { lines: l, exit: m ? Number(m[1]) : -1 };
}

/**
 * The lines with what differs between machines and runs set aside: numbers (QPNs, PSNs, GIDs,
 * results, depths, and the padding of the result row), the device name, the inline-feature notice (stderr, merged into the capture)
 * with the separator before it, and "GID index".
 */
function shape(ls: readonly string[]): string[] {
  const out: string[] = [];
  for (const l of ls) {
    if (l.includes('inline feature')) {
      if (out.at(-1) === LINE) out.pop();
      continue;
    }
    if (/GID index/.test(l)) continue;
    out.push(
      l
        .replace(/Device {9}: \S+/, 'Device         : X')
        .replace(/0x[0-9a-f]+|\d+(\.\d+)?/g, '#')
        // a result row's columns are padded to their numbers' widths
        .replace(/^ #[\s#]*$/, (r) => r.replace(/[ \t]+/g, ' ')),
    );
  }
  // the parser's separator before the notice, when it came out ahead of the banner
  if (out[0] === LINE && (out[1] === '' || out[1] === LINE)) out.shift();
  return out;
}

/** the numbers of the row under the "#bytes" header */
function row(out: string): number[] {
  const l = out.split('\n');
  const h = l.findIndex((x) => x.includes('#bytes'));
  return (l[h + 1] ?? '').trim().split(/\s+/).map(Number);
}

async function pair(tool: string, args: string[]): Promise<{ s: ToolRun; c: ToolRun }> {
  const port = freshPort();
  const s = runBin(tool, ['-R', '-d', 'prm_a', '-p', port, ...args], 60_000);
  await new Promise((r) => setTimeout(r, 1000)); // the server listens before the client connects (perftest's client does not wait)
  const c = runBin(tool, ['-R', '-d', 'prm_b', '-p', port, ...args, SRV], 60_000);
  await Promise.all([s.done, c.done]);
  return { s, c };
}

t.test('the exchange sends the raw struct pingpong_dest, big-endian (rdma_write_keys)', async (t) => {
  const gid = new Uint8Array(16);
  gid.set([0xff, 0xff, 127, 0, 66, 1], 10);
  const d = { lid: 0, outReads: 128, qpn: 0x12, psn: 0xabcdef, rkey: 0x80001234, vaddr: 0x7f0011223344n, gid, srqn: 0 };
  const b = destStruct(d, 1);
  t.equal(b.length, DEST_STRUCT_LEN);
  t.equal(b.toString('hex', 0, 24), '00000000' + '00000080' + '00000012' + '00abcdef' + '80001234' + '00000000');
  t.equal(b.toString('hex', 24, 32), '00007f0011223344');
  t.same([...b.subarray(32, 48)], [...gid]);
  t.equal(b.readInt32BE(52), 1, 'gid_index last');
  t.same(parseDestStruct(b), d);
});

for (const [tool, name] of [
  ['ib_write_bw', 'write_bw'],
  ['ib_send_lat', 'send_lat'],
  ['ib_read_bw', 'read_bw'],
  ['ib_send_bw', 'send_bw'],
  ['ib_write_lat', 'write_lat'],
] as const) {
  t.test(`${tool} -R -n 200: the lines of real ${tool} -R, sane results, exit 0`, async (t) => {
    const { s, c } = await pair(tool, ['-n', '200']);
    t.equal(s.code, 0, `server exits 0 ${s.err}`);
    t.equal(c.code, 0, `client exits 0 ${c.err}`);
    // READ and atomics: perftest's ctx_set_max_inline notice on stderr, as the real one prints it on rxe
    const notice = tool === 'ib_read_bw' ? 'Device not recognized to implement inline feature. Disabling it\n' : '';
    t.equal(s.err, notice, 'server: stderr as the real one');
    t.equal(c.err, notice, 'client: stderr as the real one');
    const rs = ref(`${tool}.server`),
      rc = ref(`${tool}.client`);
    t.same(shape(lines(s.out)), shape(rs.lines), 'server lines as the real server');
    t.same(shape(lines(c.out)), shape(rc.lines), 'client lines as the real client');
    t.equal(s.code, 0, `reference server exit ${rs.exit}`);
    t.equal(c.code, rc.exit, 'client exit as the reference');
    t.match(c.out, / rdma_cm QPs\t : ON\n Data ex. method : rdma_cm\n/);
    t.match(s.out, / Waiting for client rdma_cm QP to connect\n Please run the same command with the IB\/RoCE interface IP\n/);
    // rdma_cm's QPs: what each side prints as its own QPN is what the other prints as the remote one
    const qpn = (out: string, which: string): string | undefined => new RegExp(` ${which} address: LID 0000 QPN (0x[0-9a-f]+)`).exec(out)?.[1];
    t.ok(qpn(c.out, 'local'), 'a local QPN');
    t.equal(qpn(c.out, 'local'), qpn(s.out, 'remote'), "the client's QP is the server's remote");
    t.equal(qpn(s.out, 'local'), qpn(c.out, 'remote'), "the server's QP is the client's remote");
    const r = row(c.out);
    t.equal(r[1], 200, '200 iterations');
    if (name.endsWith('_bw')) {
      t.ok(r[3]! > 0 && r[2]! >= r[3]!, 'average BW > 0, peak >= average');
      if (name !== 'send_bw') t.same(row(s.out), r, "the server prints the client's report");
      else t.equal(row(s.out)[1], 200, 'the server counted every message');
    } else {
      const [, , min, max, typ] = r;
      t.ok(min! > 0 && min! <= typ! && typ! <= max!, 'min <= typical <= max');
    }
  });
}

t.test("-R against a port nobody listens on: REJECTED (reason 8), the real client's lines, exit 1", async (t) => {
  // A CM on the server address that listens elsewhere: the REQ for our port gets REJ "invalid service ID".
  const dev = await openDevice({ address: OTHER });
  const ch = createEventChannel();
  const l = createId(ch, { device: dev });
  await l.bind({ address: OTHER, port: Number(freshPort()) });
  await l.listen(1);
  try {
    const started = Date.now();
    const c = runBin('ib_write_bw', ['-R', '-d', 'prm_b', '-p', freshPort(), OTHER], 20_000);
    await c.done;
    const r = ref('noserver.client');
    t.same([...lines(c.out), ...lines(c.err)], r.lines, 'the reference lines');
    t.equal(c.code, r.exit, 'exit status as the reference');
    t.ok(Date.now() - started < 10_000, 'at once, not after the REQ retries');
  } finally {
    l.close();
    ch.close();
    await dev.close();
  }
});

t.test('-R with -c UC: librdmacm has no UC, as perftest says', async (t) => {
  const r = runBin('ib_write_bw', ['-R', '-c', 'UC', '-d', 'prm_b', SRV]);
  await r.done;
  t.same(lines(r.out), [LINE, ' UC is not supported in librdmacm']);
  t.equal(r.code, 1);
});

t.test("-R -c UD: SIDR to the -p port, the SIDR_REP's QPN and Q_Key; send_lat also sends its QPN (SEND_WITH_IMM) to the server", async (t) => {
  for (const tool of ['ib_send_bw', 'ib_send_lat']) {
    const { s, c } = await pair(tool, ['-c', 'UD', '-n', '200']);
    t.equal(s.code, 0, `${tool} server exits 0 ${s.err}`);
    t.equal(c.code, 0, `${tool} client exits 0 ${c.err}`);
    t.match(c.out, /Connection type : UD/);
    t.match(c.out, / rdma_cm QPs\t : ON\n/);
    const r = row(c.out);
    t.equal(r[1], 200, `${tool}: 200 iterations`);
    if (tool === 'ib_send_bw') t.equal(row(s.out)[1], 200, 'the server got every message (loopback loses none)');
    else t.ok(r[2]! > 0 && r[2]! <= r[4]!, 'min <= typical');
  }
});
