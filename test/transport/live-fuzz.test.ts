/**
 * The live receive path under fuzz (issue 9, item 7): 100,000 datagrams
 * (random, truncated and mutated captures, re-addressed captures with a
 * valid ICRC, spoofed sources, well-formed packets with random opcodes, PSNs,
 * R_Keys and VAs) into devices with QPs in every state while a real RC pair
 * runs WRITEs, SENDs, READs and atomics; 3% of them over real UDP loopback
 * (127.0.91.1-4, used by no other test). bench/fuzz.ts is the harness;
 * `npm run fuzz` runs 10^6. The seed is SOFTROCE_SEED or a fresh one
 * (printed, to replay a failure).
 */
import t from 'tap';
import { runLiveFuzz, report } from '../../bench/fuzz.js';
import { waitWc } from '../verbs/pair.js';

const seed = Number(process.env['SOFTROCE_SEED'] ?? Date.now() % 1_000_000);
t.comment(`seed ${seed} (SOFTROCE_SEED=${seed} replays it)`);

t.test('100,000 datagrams while a transfer runs', async (t) => {
  const r = await runLiveFuzz({ packets: 100_000, seed, udpShare: 0.03 });
  t.comment(report(r));
  t.equal(r.packets, 100_000);
  t.same(r.thrown, [], 'nothing thrown from the receive path or the transport work it schedules');
  // recv.ts catches what a role throws (the QP goes to ERR, rcvd_internal_err counts it): that
  // safety net must never be what kept the process alive.
  t.equal(r.outcomes['rcvd_internal_err'] ?? 0, 0, "no exception reached the receive path's safety net");
  t.same(r.transferProblems, [], 'every round of the transfer completed byte for byte');
  t.ok(r.rounds >= 10, `the transfer ran throughout (${r.rounds} rounds)`);
  t.same(r.memoryProblems, [], 'no guard byte and no region nobody may write changed');
  for (const a of r.accounting) t.equal(a.rcvdPkts, a.delivered, `${a.device}: rcvd_pkts counts every datagram delivered`);
  const classified = Object.values(r.outcomes).reduce((x, y) => x + y, 0);
  t.equal(classified, r.memPackets, 'every in-memory datagram has an outcome');
  // The fuzz reaches every check of the receive path, and past them.
  for (const c of [
    'rcvd_malformed',
    'rcvd_icrc_err',
    'rcvd_unknown_qp',
    'rcvd_bad_state',
    'rcvd_bad_addr',
    'rcvd_bad_opcode',
    'rcvd_bad_qkey',
    'rcvd_bad_pkey',
    'out_of_sequence',
    'duplicate_request',
    'accepted',
  ]) {
    t.ok((r.outcomes[c] ?? 0) > 0, `some datagrams end as ${c} (${r.outcomes[c] ?? 0})`);
  }
  const deep = Object.keys(r.acceptedBy);
  for (const re of [
    /^(RC|UC) (RTR|RTS|SQD) .*RDMA_WRITE/,
    /^(RC|UC) (RTR|RTS|SQD) .*SEND/,
    /^(UD|GSI) .*SEND/,
    /^RC (RTR|RTS|SQD) .*(FETCH_ADD|COMPARE_SWAP|READ_REQUEST)/,
  ]) {
    t.ok(
      deep.some((k) => re.test(k)),
      `forged packets got past every check into the transport: ${re}`,
    );
  }
  t.ok(r.udp.rcvdPkts >= r.udp.sent * 0.5, `the UDP share reached the device (${r.udp.rcvdPkts} received with the transfer's own, ${r.udp.sent} sent)`);
  t.equal(r.silent, 0, `every drop is counted: ${JSON.stringify(r.silentBy)}`);
});

t.test('responses aimed at the busy requester', async (t) => {
  // ACKs, READ responses and atomic ACKs at the live requester, from its peer's address (PSNs
  // around the oldest unacknowledged one) and from addresses that are not its peer.
  const r = await runLiveFuzz({ packets: 10_000, seed: seed + 1, udpShare: 0, responsesToLiveRequester: true });
  t.same(r.thrown, [], 'nothing thrown');
  t.same(r.memoryProblems, [], 'no write outside the regions');
  t.same(r.transferProblems, [], 'the transfer survives forged responses');
  t.comment(report(r));
});

t.test('the guards see a write one byte outside a region', async (t) => {
  const { makePair } = await import('../verbs/pair.js');
  const p = await makePair({ guard: true, memSize: 4096 });
  t.same(p.checkGuards(), [], 'intact after setup');
  const m = p.b.mem;
  Buffer.from(m.buffer, m.byteOffset + m.length, 1)[0]! ^= 1; // what an off-by-one copy would do
  const x = p.guarded(100);
  Buffer.from(x.buffer, x.byteOffset - 3, 1)[0]! ^= 0x80;
  t.same(p.checkGuards(), [
    'buffer 1 (4096 B): guard after changed, first at 0 past the end',
    'buffer 2 (100 B): guard before changed, first at -3 from the start',
  ]);
  await p.close();
});

t.test('UC: a packet after a message that overran its receive buffer (found by the fuzzer)', async (t) => {
  const { makePair } = await import('../verbs/pair.js');
  const { buildRoceV2, emitFrame, makeIb } = await import('../../src/roce/framing.js');
  const p = await makePair({ type: 'UC', mtu: 1024 });
  const { b } = p;
  const ib = (opcode: number, psn: number, n: number): Buffer =>
    emitFrame(
      buildRoceV2(
        { src: new Uint8Array([10, 0, 0, 1]), dst: new Uint8Array([10, 0, 0, 2]), srcPort: 4791 },
        makeIb({ opcode, destQp: b.qp.qpn, psn: psn & 0xffffff, payload: new Uint8Array(n).fill(7) }),
      ),
    ).subarray(28);
  const psn = b.qp.resp.psn;
  b.qp.postRecv({ wrId: 1, sg: [{ mr: b.mr, offset: 0, length: 1100 }] });
  // UC SEND_FIRST (1024 B) fits; SEND_LAST (476 B) overruns the 1,100-byte buffer: LOC_LEN_ERR.
  // Then a SEND_LAST with the next PSN: the receive path used to scatter it into the WQE it had
  // just completed (TypeError: Cannot read properties of null, responder.ts scatterRecv).
  for (const [op, k, n] of [
    [0x20, 0, 1024],
    [0x22, 1, 476],
    [0x22, 2, 10],
  ] as const)
    p.net!.inject('10.0.0.1', 4791, '10.0.0.2', 4791, ib(op, psn + k, n));
  t.doesNotThrow(() => p.fake!.advance(1), 'the receive path does not throw');
  const w = await waitWc(p, b.rcq, 1, 10);
  t.same(
    w.map((x) => x.status),
    ['LOC_LEN_ERR'],
  );
  // A new message starts cleanly after it.
  b.qp.postRecv({ wrId: 2, sg: [{ mr: b.mr, offset: 0, length: 1100 }] });
  p.net!.inject('10.0.0.1', 4791, '10.0.0.2', 4791, ib(0x20, psn + 3, 1024));
  p.net!.inject('10.0.0.1', 4791, '10.0.0.2', 4791, ib(0x22, psn + 4, 50));
  t.doesNotThrow(() => p.fake!.advance(1));
  const w2 = await waitWc(p, b.rcq, 1, 10);
  t.same(
    w2.map((x) => [x.wrId, x.status, x.byteLen]),
    [[2, 'SUCCESS', 1074]],
    'the next message is delivered',
  );
  await p.close();
});
