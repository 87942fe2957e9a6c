/**
 * Links compose (issue 11 item 5): the fault injector and the pcap recorder each take a link and
 * are one, so a device runs over fault(pcap(mem)) as over pcap(fault(mem)); and each backend
 * declares its capabilities in `link.caps` (checked against what the backend really does where a
 * test can see it).
 */
import t from 'tap';
import { closeSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openDevice, type Device } from '../../src/verbs/device.js';
import type { Qp } from '../../src/verbs/qp.js';
import { connectQp } from '../../src/verbs/connect.js';
import { Wc } from '../../src/verbs/types.js';
import type { Cq } from '../../src/verbs/cq.js';
import type { Mr } from '../../src/verbs/mr.js';
import { FakeScheduler } from '../../src/roce/sched.js';
import { MemNetwork, type Link } from '../../src/roce/link/link.js';
import { FaultInjector } from '../../src/roce/link/fault-link.js';
import { PcapRecorder } from '../../src/roce/link/pcap-recorder.js';
import { UdpLink, NativeLink, DgramLink } from '../../src/roce/link/udp-link.js';
import { readCapture } from '../../src/roce/pcap.js';
import { dumpCapture } from '../../src/roce/dump.js';
import { loadNative } from '../../src/native.js';

const MSG = 8192;
const N = 24;

interface End {
  dev: Device;
  qp: Qp;
  cq: Cq;
  mr: Mr;
}
function end(dev: Device): End {
  const pd = dev.allocPd();
  const cq = dev.createCq({ depth: 2 * N });
  const mr = pd.regMr(Buffer.alloc(N * MSG), ['LOCAL_WRITE', 'REMOTE_WRITE']);
  return { dev, qp: pd.createQp({ type: 'RC', sendCq: cq, recvCq: cq, cap: { maxSendWr: N, maxRecvWr: 1 } }), cq, mr };
}

/**
 * A sends N RDMA WRITEs to B over the in-memory network; B's link is `wrap(mem)`. Returns what B's
 * recorder wrote once B's link is closed, and what B's device counted.
 */
type Tap = Pick<typeof t, 'equal' | 'ok' | 'same'>;
async function run(t: Tap, order: 'fault(pcap(mem))' | 'pcap(fault(mem))', file: string) {
  const sched = new FakeScheduler();
  const net = new MemNetwork(sched);
  const faults = { seed: 42, dropPct: 8, corruptPct: 4, reorderPct: 4, dupPct: 2 };
  let link: Link;
  let fault: FaultInjector;
  const mem = net.attach('10.77.0.2');
  if (order === 'fault(pcap(mem))') {
    link = fault = new FaultInjector(await PcapRecorder.open(file, mem), faults, sched);
  } else {
    fault = new FaultInjector(mem, faults, sched);
    link = await PcapRecorder.open(file, fault);
  }
  t.equal(link.caps, mem.caps, `${order}: the wrappers show the backend's caps`);
  t.equal(link.localPort, mem.localPort);
  const A = end(await openDevice({ address: '10.77.0.1', scheduler: sched, link: net.attach('10.77.0.1') }));
  const B = end(await openDevice({ address: '10.77.0.2', scheduler: sched, link }));
  connectQp(A.qp, { pathMtu: 1024, timeout: 8, retryCnt: 7 }, { qpn: B.qp.qpn, psn: B.qp.sqPsn, gid: '10.77.0.2' });
  connectQp(B.qp, { pathMtu: 1024, timeout: 8, retryCnt: 7 }, { qpn: A.qp.qpn, psn: A.qp.sqPsn, gid: '10.77.0.1' });
  for (let i = 0; i < A.mr.buffer.length; i++) A.mr.buffer[i] = (i * 7 + 3) & 0xff;
  for (let i = 0; i < N; i++) {
    A.qp.postSend({
      wrId: i,
      opcode: 'RDMA_WRITE',
      signaled: true,
      sg: [{ mr: A.mr, offset: i * MSG, length: MSG }],
      remote: { addr: B.mr.addr + BigInt(i * MSG), rkey: B.mr.rkey },
    });
  }
  const wcs = Array.from({ length: 8 }, () => new Wc());
  const statuses: string[] = [];
  for (let ms = 0; ms < 20_000 && statuses.length < N; ms++) {
    sched.advance(1);
    let k: number;
    while ((k = A.cq.poll(wcs)) > 0) for (let j = 0; j < k; j++) statuses.push(wcs[j]!.status);
  }
  t.same(statuses, new Array<string>(N).fill('SUCCESS'), `${order}: every WRITE completes through the faults`);
  t.ok(B.mr.buffer.equals(A.mr.buffer), `${order}: the data arrived intact`);
  t.ok(
    fault.stats.dropped > 0 && fault.stats.corrupted > 0,
    `${order}: the injector dropped (${fault.stats.dropped}) and corrupted (${fault.stats.corrupted}) packets`,
  );
  const cb = B.dev.counters();
  await A.dev.close();
  await B.dev.close();
  // The device did not open B's link: closing the outer wrapper closes the chain (and flushes the file).
  await link.close();
  t.equal(net.links.get('10.77.0.2:4791'), undefined, `${order}: closing the outer link closed the in-memory link below`);
  return { file: readFileSync(file), cb, stats: { ...fault.stats } };
}

t.test('fault(pcap(mem)) and pcap(fault(mem)) both carry an RC transfer and record what the device accepted', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'softroce-compose-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const runs = [];
  for (const order of ['fault(pcap(mem))', 'pcap(fault(mem))'] as const) {
    const r = await run(t, order, join(dir, `${order}.pcap`));
    const dump = dumpCapture(r.file);
    t.equal(dump.error, undefined, `${order}: a valid capture`);
    t.equal(dump.summary.icrcBad, 0, `${order}: every recorded ICRC verifies (corrupted copies were not recorded)`);
    t.equal(dump.summary.malformed, 0);
    const recs = readCapture(r.file).records;
    t.equal(dump.summary.icrcOk, recs.length, `${order}: ${recs.length} records, all RoCE with a good ICRC`);
    // LINKTYPE_RAW IPv4: source address at bytes 12..15.
    const from = (ip: string): number => recs.filter((x) => x.data.subarray(12, 16).join('.') === ip).length;
    const accepted = r.cb['rcvd_pkts']! - r.cb['rcvd_icrc_err']! - r.cb['rcvd_malformed']!;
    t.ok(r.cb['rcvd_icrc_err']! > 0, `${order}: corrupted packets reached the device and failed its ICRC check`);
    t.equal(from('10.77.0.1'), accepted, `${order}: every packet the device accepted is recorded, and nothing else`);
    t.equal(from('10.77.0.2'), r.cb['sent_pkts'], `${order}: every packet the device sent is recorded`);
    // QPNs and PSNs differ from run to run (random starting PSNs): compare who sent what, in order.
    runs.push({ shape: recs.map((x) => `${x.data.subarray(12, 16).join('.')} len ${x.data.length} opcode ${x.data[28]}`), stats: r.stats });
  }
  t.same(runs[0]!.stats, runs[1]!.stats, 'the same seed injects the same faults in both orders');
  t.same(runs[0]!.shape, runs[1]!.shape, 'both orders record the same packets in the same order');
});

t.test('openDevice composes pcap(faults(link)) itself; close() flushes the file and clears the timers', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'softroce-compose-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const sched = new FakeScheduler();
  const net = new MemNetwork(sched);
  const mem = net.attach('10.77.1.2');
  const file = join(dir, 'b.pcap');
  const dev = await openDevice({ address: '10.77.1.2', scheduler: sched, link: mem, faults: { seed: 1, dropPct: 1 }, pcap: file });
  const port = dev.ports[0]!;
  t.ok(port.link instanceof PcapRecorder, 'the port sends through the recorder');
  t.equal(port.link, dev.recorder);
  t.equal(port.link.caps.backend, 'memory', 'and sees the backend below');
  t.equal(dev.queryPort().backend, 'memory');
  await dev.close();
  t.equal(net.links.get('10.77.1.2:4791'), undefined, 'close() closed the chain down to the backend (as it closed the link before)');
  t.equal(readCapture(readFileSync(file)).error, undefined, 'the capture was flushed and closed');
  t.equal(sched.pendingTimers(), 0, 'no fault timer left');
});

const native = loadNative();
const rawOk = ((): boolean => {
  if (!native?.rawOpen4) return false;
  const probe = native.rawOpen4(0x7f000001, 9, '');
  if (probe < 0) return false;
  closeSync(probe);
  return true;
})();

t.test('caps per backend', async (t) => {
  const sched = new FakeScheduler();
  const mem = new MemNetwork(sched).attach('10.77.2.1');
  t.same(
    mem.caps,
    { backend: 'memory', family: 4, ipv4IdZero: true, gsoIcrcFixup: false, batchSend: false, rawRx: false, perPacketTos: false, flowSrcPort: true },
    'in-memory',
  );
  await mem.close();

  const off = await UdpLink.open({ address: '127.0.77.1', port: 0, native: 'off' });
  t.ok(off instanceof DgramLink, "native 'off': Node dgram");
  t.same(
    off.caps,
    { backend: 'dgram', family: 4, ipv4IdZero: false, gsoIcrcFixup: false, batchSend: false, rawRx: false, perPacketTos: false, flowSrcPort: true },
    "native 'off': nothing the addon does",
  );
  await off.close();

  t.test('with the addon', { skip: native ? false : 'no native addon (SOFTROCE_NO_NATIVE=1 or not built): the dgram caps are checked above' }, async (t) => {
    const nl = await UdpLink.open({ address: '127.0.77.2', port: 0 });
    t.ok(nl instanceof NativeLink, "IPv4 'auto': the addon's socket");
    t.same(
      nl.caps,
      {
        backend: 'native',
        family: 4,
        ipv4IdZero: true,
        gsoIcrcFixup: process.env['SOFTROCE_GSO'] !== '0',
        batchSend: true,
        rawRx: rawOk && process.env['SOFTROCE_RAW_RX'] !== '0',
        perPacketTos: true,
        flowSrcPort: true,
        rxBatch: true,
      },
      `native socket (raw receive ${rawOk ? 'permitted' : 'not permitted'} here)`,
    );

    // The caps are what the backend does: a datagram from the native socket arrives with ID 0 + DF,
    // which the raw-receiving side reads from its IP header.
    await t.test(
      'ipv4IdZero and rawRx hold on the wire',
      { skip: nl.caps.rawRx ? false : 'no raw receive here (CAP_NET_RAW): the IPv4 ID cannot be read' },
      async (t) => {
        const tx = await UdpLink.open({ address: '127.0.77.3', port: 0 });
        const got = new Promise<number>((res) => nl.setReceiver((_b, _l, _ip, _p, ipIdDf) => res(ipIdDf ?? -2)));
        const b = tx.allocTx()!;
        b.fill(0x5a, 0, 64);
        tx.send(b, 64, '127.0.77.2', nl.localPort);
        let timer: NodeJS.Timeout | undefined;
        const late = new Promise<number>((r) => {
          timer = setTimeout(() => r(-3), 1500);
        });
        t.equal(await Promise.race([got, late]), 0x10000, 'IPv4 ID 0 with DF, as read from the IP header (-3: nothing arrived in 1.5 s)');
        clearTimeout(timer);
        await tx.close();
      },
    );

    const old = process.env['SOFTROCE_NATIVE_RX'];
    process.env['SOFTROCE_NATIVE_RX'] = '0';
    try {
      const dl = await UdpLink.open({ address: '127.0.77.4', port: 0 });
      t.ok(dl instanceof DgramLink, 'SOFTROCE_NATIVE_RX=0: Node dgram');
      t.same(
        dl.caps,
        {
          backend: 'native',
          family: 4,
          ipv4IdZero: true,
          gsoIcrcFixup: false,
          batchSend: process.env['SOFTROCE_NO_BATCH'] !== '1',
          rawRx: false,
          perPacketTos: process.env['SOFTROCE_NO_BATCH'] !== '1',
          flowSrcPort: true,
        },
        "dgram with the addon's options: ID 0, batched sendmmsg, no GSO, no raw receive",
      );
      await dl.close();
    } finally {
      if (old === undefined) delete process.env['SOFTROCE_NATIVE_RX'];
      else process.env['SOFTROCE_NATIVE_RX'] = old;
    }
    const v6 = await UdpLink.open({ address: '::1', port: 0 });
    t.ok(v6 instanceof DgramLink, 'IPv6: Node dgram');
    t.same(
      v6.caps,
      { backend: 'native', family: 6, ipv4IdZero: false, gsoIcrcFixup: false, batchSend: false, rawRx: false, perPacketTos: false, flowSrcPort: true },
      'IPv6 with the addon',
    );
    await v6.close();
    await nl.close();
  });
});

t.test('bind errors are the errno a C caller gets (os.constants.errno), on both UDP backends', async (t) => {
  const modes = native ? (['auto', 'off'] as const) : (['off'] as const);
  for (const mode of modes) {
    const first = await UdpLink.open({ address: '127.0.77.5', port: 0, native: mode });
    t.equal(first.caps.backend, mode === 'off' ? 'dgram' : 'native');
    await t.rejects(
      UdpLink.open({ address: '127.0.77.5', port: first.localPort, native: mode }),
      { name: 'VerbsError', code: 'EADDRINUSE', argument: 'address' },
      `native '${mode}': the port is taken`,
    );
    await first.close();
    // TEST-NET-1 (RFC 5737) is on no interface here: the bind fails, nothing is sent.
    await t.rejects(
      UdpLink.open({ address: '192.0.2.1', port: 0, native: mode }),
      { name: 'VerbsError', code: 'EADDRNOTAVAIL', argument: 'address' },
      `native '${mode}': not a local address`,
    );
  }
});
