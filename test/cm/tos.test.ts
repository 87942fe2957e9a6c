/**
 * rdma_set_option(RDMA_OPTION_ID_TOS) on the wire (issue 13 hardening, item 3), over real UDP on
 * loopback (127.0.67.1 client, 127.0.67.2 server, UDP 4791; a block no other test uses):
 *
 * - the path: traffic class = the TOS; SL = iboe_tos_to_sl(lo, tos) = 0. Linux's cma.c maps the TOS
 *   through rt_tos2priority and the netdev's prio→TC map, which only a VLAN egress map or an mqprio
 *   qdisc gives; lo has neither, so the kernel's SL is 0 for every TOS here (FreeBSD's OFED takes
 *   tos >> 5 instead; the Linux kernel does not).
 * - the IP header's TOS byte, read from a raw socket's copy of each datagram: on the native backend
 *   it is the TOS for the CM MADs (REQ, RTU, DREQ from the client; REP, DREP from the server, whose AV
 *   is made from the REQ's path as the kernel's cm_req_handler makes it) and for every RC packet both
 *   ways (SENDs and ACKs).
 * - on the pure-JS backend (SOFTROCE_NO_NATIVE=1, Node dgram): Node 20's dgram has no per-packet or
 *   per-socket TOS (no setTOS; IP_TOS needs the addon's setsockopt), so every datagram leaves with TOS 0
 *   and the link says so (caps.perPacketTos false); the path and the REQ still carry the TOS.
 *
 * The raw socket is the test's observer, opened with the addon even in the pure-JS run (the stack under
 * test does not use it there); without the addon or CAP_NET_RAW the wire checks skip with the reason.
 */
import t from 'tap';
import { nextEvent, pollCq as poll } from './real-helpers.js';
import { createRequire } from 'node:module';
import { readSync, closeSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createEventChannel } from '../../src/cm/event-channel.js';
import { createId, type CmId } from '../../src/cm/cm-id.js';
import { cmDevices, cmDevicesClosed } from '../../src/cm/devices.js';
import type { NativeAddon } from '../../src/native.js';

const C = '127.0.67.1',
  S = '127.0.67.2';
const ROCE_PORT = 4791;
const pureJs = process.env['SOFTROCE_NO_NATIVE'] === '1';

/** The addon as an observer only (not through loadNative, which SOFTROCE_NO_NATIVE=1 turns off). */
const observer = ((): { n: NativeAddon | null; why: string } => {
  try {
    const root = join(fileURLToPath(new URL('.', import.meta.url)), '..', '..', '..');
    const req = createRequire(import.meta.url);
    const gypBuild = req('node-gyp-build') as (dir: string) => NativeAddon;
    const n = gypBuild(join(root, 'native'));
    if (!n.rawOpen4) return { n: null, why: 'the native addon has no rawOpen4' };
    const probe = n.rawOpen4(0x7f000001, 9, '');
    if (probe < 0) return { n: null, why: `raw sockets not permitted here (errno ${-probe}: needs CAP_NET_RAW)` };
    closeSync(probe);
    return { n, why: '' };
  } catch (e) {
    return { n: null, why: `native addon not built (${(e as Error).message.split('\n')[0]})` };
  }
})();
if (observer.n === null) console.log(`# the IP header checks skip: ${observer.why}`);

const ipNum = (a: string): number => a.split('.').reduce((x, o) => x * 256 + Number(o), 0);

interface Seen {
  tos: number;
  /** 'RC' for an RC packet, else the CM MAD's name (QP1) */
  kind: string;
}

const CM_ATTR: Record<number, string> = { 0x10: 'REQ', 0x11: 'MRA', 0x12: 'REJ', 0x13: 'REP', 0x14: 'RTU', 0x15: 'DREQ', 0x16: 'DREP' };

/** Every datagram to addr:4791 since open, from a raw socket (IPv4 header, UDP, BTH and a bit more). */
function rawTap(n: NativeAddon, addr: string): { read(): Seen[]; close(): void } {
  const fd = n.rawOpen4!(ipNum(addr), ROCE_PORT, '');
  if (fd < 0) throw new Error(`rawOpen4 ${addr}: errno ${-fd}`);
  const buf = Buffer.alloc(128);
  return {
    read() {
      const out: Seen[] = [];
      for (let i = 0; i < 10_000; i++) {
        let len: number;
        try {
          len = readSync(fd, buf, 0, buf.length, null);
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code === 'EAGAIN') break;
          throw e;
        }
        const ihl = (buf[0]! & 0xf) * 4;
        const bth = ihl + 8;
        if (len < bth + 12) continue;
        const opcode = buf[bth]!;
        const dqpn = buf.readUIntBE(bth + 5, 3);
        let kind = opcode < 0x20 ? 'RC' : `opcode ${opcode}`;
        // QP1: UD SEND_ONLY (0x64), DETH, then the MAD header; its attribute ID is at offset 16.
        if (dqpn === 1 && opcode === 0x64 && len >= bth + 12 + 8 + 18) kind = CM_ATTR[buf.readUInt16BE(bth + 12 + 8 + 16)] ?? 'MAD';
        out.push({ tos: buf[1]!, kind });
      }
      return out;
    },
    close: () => closeSync(fd),
  };
}

async function cmIdle(): Promise<void> {
  for (let i = 0; i < 400 && cmDevices().length > 0; i++) await new Promise((r) => setTimeout(r, 5));
  await cmDevicesClosed();
}

let port = 7600 + Math.floor(Math.random() * 200);

for (const tos of [0x60, 0xb8]) {
  t.test(`TOS 0x${tos.toString(16)}: path fields, and the IP TOS byte of the CM MADs and the RC packets`, async (t) => {
    const tapS = observer.n ? rawTap(observer.n, S) : null;
    const tapC = observer.n ? rawTap(observer.n, C) : null;
    const chS = createEventChannel();
    const chC = createEventChannel();
    const ids: CmId[] = [];
    t.teardown(async () => {
      for (const id of ids) id.close();
      chS.close();
      chC.close();
      tapS?.close();
      tapC?.close();
      await cmIdle();
    });
    const p = port++;
    const l = createId(chS);
    ids.push(l);
    await l.bind({ address: S, port: p });
    await l.listen();
    const a = createId(chC);
    ids.push(a);
    a.setOption({ tos });
    await a.resolveAddr({ src: C, dst: { address: S, port: p }, timeoutMs: 2000 });
    await a.resolveRoute({ timeoutMs: 2000 });
    while (chC.tryGetEvent() !== null);
    const path = a.route.path!;
    t.equal(path.trafficClass, tos, 'traffic class = the TOS (cma_resolve_iboe_route)');
    t.equal(path.sl, 0, 'SL = iboe_tos_to_sl(lo, tos): 0, lo has no VLAN egress map or mqprio prio->TC map');
    const caps = a.verbs!.ports[0]!.link.caps;
    t.equal(caps.perPacketTos, !pureJs, pureJs ? 'dgram: no per-packet TOS' : 'native: IP_TOS per datagram');
    a.createQp(null, { cap: { maxSendWr: 4, maxRecvWr: 4 } });
    const pa = a.connect({ privateData: Buffer.from('tos') });
    const req = await nextEvent(chS, 'CONNECT_REQUEST');
    const b = req.id;
    ids.push(b);
    t.equal(b.route.path?.trafficClass, tos, "the passive id's path: the REQ's traffic class");
    t.equal(b.route.path?.sl, 0, "and the REQ's SL");
    b.createQp(null, { cap: { maxSendWr: 4, maxRecvWr: 4 } });
    const pb = b.accept({});
    await pa;
    await pb;
    await nextEvent(chS, 'ESTABLISHED').catch(() => null); // the passive ESTABLISHED may have come with accept()
    // One SEND each way (each answered by an ACK).
    const qa = a.qp!,
      qb = b.qp!;
    const ma = qa.pd.regMr(Buffer.alloc(64), ['LOCAL_WRITE']);
    const mb = qb.pd.regMr(Buffer.alloc(64), ['LOCAL_WRITE']);
    qb.postRecv({ wrId: 1, sg: [{ mr: mb, offset: 0, length: 64 }] });
    qa.postRecv({ wrId: 1, sg: [{ mr: ma, offset: 0, length: 64 }] });
    qa.postSend({ wrId: 2, opcode: 'SEND', signaled: true, sg: [{ mr: ma, offset: 0, length: 16 }] });
    t.equal((await poll(qb.recvCq)).status, 'SUCCESS', 'the client SEND arrived');
    t.equal((await poll(qa.sendCq)).status, 'SUCCESS', 'and was acknowledged');
    qb.postSend({ wrId: 2, opcode: 'SEND', signaled: true, sg: [{ mr: mb, offset: 0, length: 16 }] });
    t.equal((await poll(qa.recvCq)).status, 'SUCCESS', 'the server SEND arrived');
    t.equal((await poll(qb.sendCq)).status, 'SUCCESS');
    const pd = a.disconnect();
    await nextEvent(chS, 'DISCONNECTED');
    await b.disconnect(); // the DREP (rdma_disconnect on DISCONNECTED, as the tools do)
    await pd;
    if (tapS === null || tapC === null) {
      t.comment(`the IP header's TOS byte is not checked: ${observer.why}`);
      t.pass('skipped (reason above)', { skip: observer.why });
      return;
    }
    await new Promise((r) => setTimeout(r, 20));
    const toS = tapS.read(),
      toC = tapC.read();
    const kinds = (s: Seen[]): string[] => [...new Set(s.map((x) => x.kind))].sort();
    t.same(kinds(toS), ['DREQ', 'RC', 'REQ', 'RTU'].sort(), 'seen towards the server: REQ, RTU, DREQ, RC');
    t.same(kinds(toC), ['DREP', 'RC', 'REP'].sort(), 'seen towards the client: REP, DREP, RC');
    const want = pureJs ? 0 : tos;
    const bad = (s: Seen[]): Seen[] => s.filter((x) => x.tos !== want);
    t.same(bad(toS), [], `every datagram to the server has TOS 0x${want.toString(16)} (${toS.length} seen)`);
    t.same(bad(toC), [], `every datagram to the client has TOS 0x${want.toString(16)} (${toC.length} seen)`);
  });
}
