/**
 * The process gid-netns.test.ts runs inside its network namespace (`ip netns exec`). It opens a
 * device on argv[2] and reports on stdout, one JSON object a line: 'ready' with its GID table
 * and how address changes reach it (netlink or polling), 'gid' on each GID_CHANGE. Commands on
 * stdin: `qp <address>` opens a second device on a (new) address and runs an RC RDMA WRITE from
 * it to the first; `send` posts one more WRITE from the second device and reports its
 * sent_sgid_gone counter; `quit` closes both and exits. Not a test file (tap runs *.test.js).
 */
import { createInterface } from 'node:readline';
import { openDevice, type Device, type AsyncEvent } from '../../src/verbs/device.js';
import { connectQp } from '../../src/verbs/connect.js';
import { addressEventsByNetlink } from '../../src/verbs/addr-watch.js';
import { gidToString } from '../../src/roce/gid.js';
import { Wc } from '../../src/verbs/types.js';
import type { Qp } from '../../src/verbs/qp.js';
import type { Cq } from '../../src/verbs/cq.js';
import type { Mr } from '../../src/verbs/mr.js';

const say = (o: object): void => void process.stdout.write(JSON.stringify(o) + '\n');
const table = (d: Device): string[] => d.gidTable().map((g) => `${g.index} ${gidToString(g.gid)} ${g.type}`);

interface Side {
  dev: Device;
  qp: Qp;
  cq: Cq;
  mr: Mr;
  mem: Buffer;
}
function side(dev: Device): Side {
  const pd = dev.allocPd();
  const cq = dev.createCq({ depth: 16 });
  const qp = pd.createQp({ type: 'RC', sendCq: cq, recvCq: cq, sigAll: true, cap: { maxSendWr: 8, maxRecvWr: 8 } });
  const mem = Buffer.alloc(4096);
  const mr = pd.regMr(mem, ['LOCAL_WRITE', 'REMOTE_WRITE']);
  return { dev, qp, cq, mr, mem };
}

/** Polls `cq` for one completion, up to `ms` of real time. */
async function oneWc(cq: Cq, ms: number): Promise<string | null> {
  const w = [new Wc()];
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (cq.poll(w) > 0) return w[0]!.status;
    await new Promise((r) => setTimeout(r, 2));
  }
  return null;
}

const a = await openDevice({ address: process.argv[2]! });
a.on('async', (e: AsyncEvent) => {
  if (e.type === 'GID_CHANGE') say({ ev: 'gid', port: e.port, table: table(a) });
});
say({ ev: 'ready', netlink: addressEventsByNetlink(), table: table(a), gidTblLen: a.queryPort().gidTblLen });

let b: Device | null = null;
let A: Side | null = null;
let B: Side | null = null;
for await (const line of createInterface({ input: process.stdin })) {
  const [cmd, arg] = line.trim().split(/\s+/);
  if (cmd === 'qp') {
    b = await openDevice({ address: arg! });
    A = side(a);
    B = side(b);
    // B's QP sends from its bound address's RoCE v2 entry (the default sgidIndex).
    connectQp(B.qp, { timeout: 10, retryCnt: 2 }, { qpn: A.qp.qpn, psn: A.qp.sqPsn, gid: process.argv[2]! });
    connectQp(A.qp, { timeout: 10, retryCnt: 2 }, { qpn: B.qp.qpn, psn: B.qp.sqPsn, gid: arg! });
    B.mem.fill(0x5a, 0, 256);
    B.qp.postSend({ wrId: 1, opcode: 'RDMA_WRITE', sg: [{ mr: B.mr, offset: 0, length: 256 }], remote: { addr: A.mr.addr, rkey: A.mr.rkey } });
    const status = await oneWc(B.cq, 5000);
    say({ ev: 'qp', status, landed: A.mem.subarray(0, 256).every((x) => x === 0x5a), sgidIndex: b.defaultSgidIndex(), tableB: table(b) });
  } else if (cmd === 'send' && B && A) {
    B.qp.postSend({ wrId: 2, opcode: 'RDMA_WRITE', sg: [{ mr: B.mr, offset: 0, length: 64 }], remote: { addr: A.mr.addr, rkey: A.mr.rkey } });
    await new Promise((r) => setTimeout(r, 200));
    say({ ev: 'sent', sgidGone: b!.counters().sent_sgid_gone, tableB: table(b!) });
  } else if (cmd === 'table') {
    say({ ev: 'table', table: table(a) });
  } else if (cmd === 'quit') {
    break;
  }
}
await b?.close();
await a.close();
say({ ev: 'bye' });
