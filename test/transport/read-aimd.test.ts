/**
 * The responder's READ streams back off when the requester loses responses (responder.ts
 * runReads, RespInfo.readBudget): nothing acknowledges READ responses, so a duplicate READ (the
 * requester asking again for what it lost) halves the responses one run may send, and runs
 * without one grow it back by one per READ_CLEAN_RUNS. Without it a 16 MiB READ over IPv6 (Node's
 * dgram, slower to read than to write) sent 40x its packets at timeout 8 (bench/loss.bench.ts).
 */
import t from 'tap';
import { makePair, waitWc } from '../verbs/pair.js';
import { READ_BUDGET_MAX, READ_BUDGET_MIN } from '../../src/roce/transport/state.js';

const LEN = 256 * 1024; // 256 responses at MTU 1024

t.test('a lost READ response halves the READ budget, clean READs grow it back, and every byte arrives', async (t) => {
  const p = await makePair({ mtu: 1024, memSize: 1 << 20, timeout: 14, maxRdAtomic: 4 });
  const { a, b } = p;
  for (let i = 0; i < LEN; i++) b.mem[i] = (i * 13 + (i >> 8)) & 0xff;
  t.equal(b.qp.resp.readBudget, READ_BUDGET_MAX, 'a new QP starts at the full budget');

  // Drop the 100th response of the first READ once (B -> A, RC READ response opcodes 0x0d..0x10).
  let responses = 0,
    dropped = 0,
    readRequests = 0;
  p.net!.filter = (pkt) => {
    if (pkt[0] === 0x0c) readRequests++;
    if (pkt[0]! >= 0x0d && pkt[0]! <= 0x10 && ++responses === 100 && dropped === 0) {
      dropped++;
      return false;
    }
    return true;
  };
  const read = async (): Promise<boolean> => {
    a.mem.fill(0, 0, LEN);
    a.qp.postSend({ wrId: 1, opcode: 'RDMA_READ', sg: [{ mr: a.mr, offset: 0, length: LEN }], remote: { addr: b.mr.addr, rkey: b.mr.rkey } });
    const w = await waitWc(p, a.scq, 1);
    return w.length === 1 && w[0]!.status === 'SUCCESS' && a.mem.subarray(0, LEN).equals(b.mem.subarray(0, LEN));
  };
  t.ok(await read(), 'the READ with a lost response completes with every byte');
  t.equal(dropped, 1, 'one response was lost');
  t.ok(readRequests >= 2, `the requester asked again (${readRequests} READ requests)`);
  const after = b.qp.resp.readBudget;
  t.ok(after <= READ_BUDGET_MAX / 2 && after >= READ_BUDGET_MIN, `the budget was halved at least once: ${after}`);

  for (let i = 0; i < 12; i++) t.ok(await read(), `clean READ ${i + 1}`);
  const grown = b.qp.resp.readBudget;
  t.ok(grown > after && grown <= READ_BUDGET_MAX, `clean READs grew it back: ${after} -> ${grown}`);
  await p.close();
});

t.test('duplicate READs never take the budget below its floor, and RESET restores it', async (t) => {
  const p = await makePair({ mtu: 1024, memSize: 1 << 20, timeout: 14, maxRdAtomic: 4 });
  const { a, b } = p;
  // Lose every 20th response once: many asks again.
  let responses = 0;
  const lost = new Set<number>();
  p.net!.filter = (pkt) => {
    if (pkt[0]! >= 0x0d && pkt[0]! <= 0x10) {
      const psn = (pkt[9]! << 16) | (pkt[10]! << 8) | pkt[11]!;
      if (++responses % 20 === 0 && !lost.has(psn)) {
        lost.add(psn);
        return false;
      }
    }
    return true;
  };
  for (let i = 0; i < LEN; i++) b.mem[i] = (i * 7) & 0xff;
  a.qp.postSend({ wrId: 1, opcode: 'RDMA_READ', sg: [{ mr: a.mr, offset: 0, length: LEN }], remote: { addr: b.mr.addr, rkey: b.mr.rkey } });
  const w = await waitWc(p, a.scq, 1);
  t.equal(w[0]?.status, 'SUCCESS', 'the READ completes');
  t.ok(a.mem.subarray(0, LEN).equals(b.mem.subarray(0, LEN)), 'with every byte');
  t.ok(lost.size >= 5, `${lost.size} responses lost`);
  t.ok(b.qp.resp.readBudget >= READ_BUDGET_MIN, `never below the floor: ${b.qp.resp.readBudget}`);
  b.qp.modify({ state: 'RESET' });
  t.equal(b.qp.resp.readBudget, READ_BUDGET_MAX, 'RESET restores the full budget');
  await p.close();
});
