/**
 * Every operation on every QP type that allows it, over the in-memory network
 * with the fake clock: data placement, completions (opcode, length, immediate,
 * invalidation, source QP, GRH), multi-SGE, inline, SRQ, solicited events,
 * and message sizes from 0 bytes to 16 MiB at every path MTU.
 */
import t from 'tap';
import { makePair, waitWc, fill, settle } from '../verbs/pair.js';
import { MTU_VALUES } from '../../src/roce/opcode.js';
import type { SendWr } from '../../src/verbs/types.js';
import { gidFromString } from '../../src/roce/gid.js';

/** The suite, over the in-memory network between two addresses of one family. */
export function opsSuite(label: string, addrs: [string, string]): void {
  t.test(`${label}: RC: every opcode`, async (t) => {
    const p = await makePair({ addrs, type: 'RC' });
    const { a, b } = p;
    fill(a.mem, 1);
    fill(b.mem, 2);
    const bOrig = Buffer.from(b.mem);
    b.qp.postRecv([0, 1, 2].map((i) => ({ wrId: 100 + i, sg: [{ mr: b.mr, offset: 600_000 + i * 10_000, length: 10_000 }] })));
    b.qp.postRecv({ wrId: 103, sg: [{ mr: b.mr, offset: 0, length: 0 }] }); // for WRITE_WITH_IMM
    const extra = b.pd.regMr(Buffer.alloc(64), ['LOCAL_WRITE', 'REMOTE_WRITE'], { invalidatable: true });
    b.mem.writeBigUInt64LE(40n, 800_000);
    b.mem.writeBigUInt64LE(7n, 800_008);
    const wrs: SendWr[] = [
      { wrId: 1, opcode: 'SEND', sg: [{ mr: a.mr, offset: 0, length: 5000 }] },
      { wrId: 2, opcode: 'SEND_WITH_IMM', imm: 0xdeadbeef, sg: [{ mr: a.mr, offset: 5000, length: 100 }] },
      { wrId: 3, opcode: 'SEND_WITH_INV', invalidateRkey: extra.rkey, sg: [{ mr: a.mr, offset: 0, length: 10 }] },
      { wrId: 4, opcode: 'RDMA_WRITE', sg: [{ mr: a.mr, offset: 10_000, length: 3000 }], remote: { addr: b.mr.addr + 100_000n, rkey: b.mr.rkey } },
      {
        wrId: 5,
        opcode: 'RDMA_WRITE_WITH_IMM',
        imm: 0x01020304,
        sg: [{ mr: a.mr, offset: 20_000, length: 1500 }],
        remote: { addr: b.mr.addr + 200_000n, rkey: b.mr.rkey },
      },
      { wrId: 6, opcode: 'RDMA_READ', sg: [{ mr: a.mr, offset: 300_000, length: 7000 }], remote: { addr: b.mr.addr + 300_000n, rkey: b.mr.rkey } },
      {
        wrId: 7,
        opcode: 'ATOMIC_FETCH_AND_ADD',
        compareAdd: 2n,
        sg: [{ mr: a.mr, offset: 900_000, length: 8 }],
        remote: { addr: b.mr.addr + 800_000n, rkey: b.mr.rkey },
      },
      {
        wrId: 8,
        opcode: 'ATOMIC_CMP_AND_SWP',
        compareAdd: 7n,
        swap: 99n,
        sg: [{ mr: a.mr, offset: 900_008, length: 8 }],
        remote: { addr: b.mr.addr + 800_008n, rkey: b.mr.rkey },
      },
      {
        wrId: 9,
        opcode: 'ATOMIC_CMP_AND_SWP',
        compareAdd: 1n,
        swap: 5n,
        sg: [{ mr: a.mr, offset: 900_016, length: 8 }],
        remote: { addr: b.mr.addr + 800_008n, rkey: b.mr.rkey },
      },
    ];
    a.qp.postSend(wrs);
    const sw = await waitWc(p, a.scq, wrs.length);
    t.same(
      sw.map((w) => [w.wrId, w.status, w.opcode]),
      [
        [1, 'SUCCESS', 'SEND'],
        [2, 'SUCCESS', 'SEND'],
        [3, 'SUCCESS', 'SEND'],
        [4, 'SUCCESS', 'RDMA_WRITE'],
        [5, 'SUCCESS', 'RDMA_WRITE'],
        [6, 'SUCCESS', 'RDMA_READ'],
        [7, 'SUCCESS', 'FETCH_ADD'],
        [8, 'SUCCESS', 'COMP_SWAP'],
        [9, 'SUCCESS', 'COMP_SWAP'],
      ],
      'send completions in order',
    );
    const rw = await waitWc(p, b.rcq, 4);
    t.same(
      rw.map((w) => [w.wrId, w.status, w.opcode, w.byteLen, w.withImm, w.withInv, w.srcQp === a.qp.qpn]),
      [
        [100, 'SUCCESS', 'RECV', 5000, false, false, true],
        [101, 'SUCCESS', 'RECV', 100, true, false, true],
        [102, 'SUCCESS', 'RECV', 10, false, true, true],
        [103, 'SUCCESS', 'RECV_RDMA_WITH_IMM', 1500, true, false, true],
      ],
      'receive completions',
    );
    t.equal(rw[1]!.imm, 0xdeadbeef);
    t.equal(rw[2]!.invalidatedRkey, extra.rkey);
    t.equal(extra.valid, false, 'the MR behind the invalidated R_Key is out of use');
    t.equal(rw[3]!.imm, 0x01020304);
    t.ok(b.mem.subarray(600_000, 605_000).equals(a.mem.subarray(0, 5000)), 'SEND payload');
    t.ok(b.mem.subarray(100_000, 103_000).equals(a.mem.subarray(10_000, 13_000)), 'WRITE payload');
    t.ok(b.mem.subarray(200_000, 201_500).equals(a.mem.subarray(20_000, 21_500)), 'WRITE_WITH_IMM payload');
    t.ok(a.mem.subarray(300_000, 307_000).equals(bOrig.subarray(300_000, 307_000)), 'READ payload');
    t.equal(a.mem.readBigUInt64LE(900_000), 40n, 'FETCH_ADD returns the original value');
    t.equal(b.mem.readBigUInt64LE(800_000), 42n, 'and adds');
    t.equal(a.mem.readBigUInt64LE(900_008), 7n, 'CMP_SWP returns the original');
    t.equal(a.mem.readBigUInt64LE(900_016), 99n, 'a failed compare returns the current value');
    t.equal(b.mem.readBigUInt64LE(800_008), 99n, 'swapped once, the failed compare left it');
    await p.close();
  });

  t.test(`${label}: UC: SEND and WRITE opcodes; READ and atomics are refused`, async (t) => {
    const p = await makePair({ addrs, type: 'UC' });
    const { a, b } = p;
    fill(a.mem, 3);
    b.qp.postRecv([
      { wrId: 1, sg: [{ mr: b.mr, offset: 0, length: 9000 }] },
      { wrId: 2, sg: [{ mr: b.mr, offset: 10_000, length: 100 }] },
      { wrId: 3, sg: [] },
    ]);
    a.qp.postSend([
      { wrId: 11, opcode: 'SEND', sg: [{ mr: a.mr, offset: 0, length: 9000 }] },
      { wrId: 12, opcode: 'SEND_WITH_IMM', imm: 5, sg: [{ mr: a.mr, offset: 0, length: 100 }] },
      { wrId: 13, opcode: 'RDMA_WRITE', sg: [{ mr: a.mr, offset: 50_000, length: 4000 }], remote: { addr: b.mr.addr + 50_000n, rkey: b.mr.rkey } },
      {
        wrId: 14,
        opcode: 'RDMA_WRITE_WITH_IMM',
        imm: 6,
        sg: [{ mr: a.mr, offset: 60_000, length: 10 }],
        remote: { addr: b.mr.addr + 60_000n, rkey: b.mr.rkey },
      },
    ]);
    const sw = await waitWc(p, a.scq, 4);
    t.same(
      sw.map((w) => w.status),
      ['SUCCESS', 'SUCCESS', 'SUCCESS', 'SUCCESS'],
    );
    const rw = await waitWc(p, b.rcq, 3);
    t.same(
      rw.map((w) => [w.wrId, w.opcode, w.byteLen, w.imm]),
      [
        [1, 'RECV', 9000, 0],
        [2, 'RECV', 100, 5],
        [3, 'RECV_RDMA_WITH_IMM', 10, 6],
      ],
    );
    t.ok(b.mem.subarray(0, 9000).equals(a.mem.subarray(0, 9000)));
    t.ok(b.mem.subarray(50_000, 54_000).equals(a.mem.subarray(50_000, 54_000)));
    for (const opcode of ['RDMA_READ', 'ATOMIC_FETCH_AND_ADD', 'SEND_WITH_INV'] as const) {
      const wr =
        opcode === 'SEND_WITH_INV'
          ? { wrId: 0, opcode, invalidateRkey: 1, sg: [] }
          : opcode === 'RDMA_READ'
            ? { wrId: 0, opcode, sg: [], remote: { addr: 0n, rkey: 0 } }
            : { wrId: 0, opcode, compareAdd: 1n, sg: [{ mr: a.mr, offset: 0, length: 8 }], remote: { addr: 0n, rkey: 0 } };
      t.throws(() => a.qp.postSend(wr as SendWr), { code: 'EINVAL', argument: 'opcode' }, `${opcode} on UC`);
    }
    await p.close();
  });

  t.test(`${label}: UD: SEND with the 40-byte GRH, source QP, Q_Key check, MTU limit`, async (t) => {
    const p = await makePair({ addrs, type: 'UD', mtu: 1024 });
    const { a, b } = p;
    fill(a.mem, 4);
    const ah = a.pd.createAh({ gid: addrs[1] });
    b.qp.postRecv([
      { wrId: 1, sg: [{ mr: b.mr, offset: 0, length: 40 + 1024 }] },
      { wrId: 2, sg: [{ mr: b.mr, offset: 2000, length: 40 + 1024 }] },
    ]);
    a.qp.postSend([
      { wrId: 1, opcode: 'SEND', sg: [{ mr: a.mr, offset: 0, length: 1000 }], ud: { ah, remoteQpn: b.qp.qpn, remoteQkey: 0x11111111 } },
      // wrong Q_Key: dropped at the receiver
      { wrId: 2, opcode: 'SEND', sg: [{ mr: a.mr, offset: 0, length: 10 }], ud: { ah, remoteQpn: b.qp.qpn, remoteQkey: 0x22222222 } },
      { wrId: 3, opcode: 'SEND_WITH_IMM', imm: 77, sg: [{ mr: a.mr, offset: 0, length: 0 }], ud: { ah, remoteQpn: b.qp.qpn, remoteQkey: 0x11111111 } },
    ]);
    const sw = await waitWc(p, a.scq, 3);
    t.same(
      sw.map((w) => w.status),
      ['SUCCESS', 'SUCCESS', 'SUCCESS'],
      'UD sends complete once sent',
    );
    const rw = await waitWc(p, b.rcq, 2);
    t.same(
      rw.map((w) => [w.wrId, w.byteLen, w.grh, w.srcQp === a.qp.qpn, w.withImm]),
      [
        [1, 1040, true, true, false],
        [2, 40, true, true, true],
      ],
    );
    t.equal(rw[1]!.imm, 77);
    t.ok(b.mem.subarray(40, 1040).equals(a.mem.subarray(0, 1000)), 'payload after the GRH');
    if (!addrs[0].includes(':')) {
      t.ok(b.mem.subarray(0, 20).equals(Buffer.alloc(20)), 'IPv4: 20 zero bytes first');
      t.equal(b.mem[20], 0x45, 'then the IPv4 header');
      t.same([...b.mem.subarray(32, 36)], addrs[0].split('.').map(Number), "with the sender's address");
    } else {
      t.equal(b.mem[0]! >> 4, 6, 'IPv6: the GRH is the IPv6 header (IBA A17.4.5.1)');
      t.equal(b.mem[6], 17, 'next header UDP');
      t.same([...b.mem.subarray(8, 24)], [...gidFromString(addrs[0])], "with the sender's address");
      t.same([...b.mem.subarray(24, 40)], [...gidFromString(addrs[1])], 'and ours');
    }
    t.equal(b.dev.counters().rcvd_bad_qkey, 1, 'the wrong Q_Key was counted and dropped');
    // A UD message is bounded by the port's active MTU (rxe get_mtu()), not by a path MTU.
    const portMtu = a.dev.queryPort().activeMtu;
    t.doesNotThrow(
      () => a.qp.postSend({ wrId: 8, opcode: 'SEND', sg: [{ mr: a.mr, offset: 0, length: portMtu }], ud: { ah, remoteQpn: 1, remoteQkey: 1 } }),
      'UD message of the port MTU',
    );
    t.throws(
      () => a.qp.postSend({ wrId: 9, opcode: 'SEND', sg: [{ mr: a.mr, offset: 0, length: portMtu + 1 }], ud: { ah, remoteQpn: 1, remoteQkey: 1 } }),
      { code: 'EINVAL', argument: 'sg' },
      'UD message above the port MTU',
    );
    t.throws(() => a.qp.postSend({ wrId: 9, opcode: 'RDMA_WRITE', sg: [], remote: { addr: 0n, rkey: 0 }, ud: { ah, remoteQpn: 1, remoteQkey: 1 } } as SendWr), {
      code: 'EINVAL',
      argument: 'opcode',
    });
    t.throws(() => a.qp.postSend({ wrId: 9, opcode: 'SEND', sg: [] }), { code: 'EINVAL', argument: 'ud' }, 'UD send without an AH');
    await p.close();
  });

  t.test(`${label}: multi-SGE, inline, SRQ with its limit event, solicited notification`, async (t) => {
    const p = await makePair({ addrs, type: 'RC', srq: true, maxSge: 4 });
    const { a, b } = p;
    fill(a.mem, 5);
    const events: string[] = [];
    b.dev.on('async', (e: { type: string }) => events.push(e.type));
    b.srq!.postRecv(
      Array.from({ length: 4 }, (_, i) => ({
        wrId: 50 + i,
        sg: [
          { mr: b.mr, offset: i * 100_000, length: 600 },
          { mr: b.mr, offset: i * 100_000 + 50_000, length: 5000 },
        ],
      })),
    );
    b.srq!.modify({ limit: 4 });
    b.rcq.reqNotify(true);
    let notified = 0;
    b.rcq.on('notify', () => notified++);
    // Three SGEs into two.
    a.qp.postSend({
      wrId: 1,
      opcode: 'SEND',
      sg: [
        { mr: a.mr, offset: 0, length: 300 },
        { mr: a.mr, offset: 1000, length: 400 },
        { mr: a.mr, offset: 5000, length: 2000 },
      ],
    });
    await waitWc(p, b.rcq, 1);
    const expect = Buffer.concat([a.mem.subarray(0, 300), a.mem.subarray(1000, 1400), a.mem.subarray(5000, 7000)]);
    t.ok(Buffer.concat([b.mem.subarray(0, 600), b.mem.subarray(50_000, 52_100)]).equals(expect), 'gathered and scattered');
    t.same(events, ['SRQ_LIMIT_REACHED'], 'fewer than 4 WQEs left (IBA: below the limit): the event fired once');
    t.equal(notified, 0, 'solicited-only notification ignores an unsolicited completion');
    // Inline: the data is copied at post time; changing the buffer afterwards changes nothing.
    const before = Buffer.from(a.mem.subarray(10_000, 10_200));
    a.qp.postSend({ wrId: 2, opcode: 'SEND', inline: true, solicited: true, sg: [{ mr: a.mr, offset: 10_000, length: 200 }] });
    a.mem.fill(0, 10_000, 10_200);
    const w = await waitWc(p, b.rcq, 1);
    t.equal(w[0]!.solicited, true);
    t.equal(notified, 1, 'a solicited completion fires the armed CQ');
    t.ok(b.mem.subarray(100_000, 100_200).equals(before), 'inline data as it was at post time');
    t.throws(() => a.qp.postSend({ wrId: 3, opcode: 'SEND', inline: true, sg: [{ mr: a.mr, offset: 0, length: 257 }] }), {
      code: 'EINVAL',
      argument: 'inline',
    });
    t.throws(() => b.qp.postRecv({ wrId: 1, sg: [] }), { code: 'EINVAL' }, 'a QP on an SRQ has no receive queue');
    t.throws(() => b.srq!.close(), { code: 'EBUSY' }, 'SRQ in use');
    await p.close();
  });

  t.test(`${label}: messages from 0 bytes to 16 MiB at every path MTU`, async (t) => {
    const size = 16 << 20;
    for (const mtu of MTU_VALUES) {
      const p = await makePair({ addrs, type: 'RC', mtu, memSize: 2 * size + 4096, sendWr: 64, recvWr: 64 });
      const { a, b } = p;
      fill(a.mem, mtu);
      fill(b.mem, mtu + 1);
      const sizes = [0, 1, mtu - 1, mtu, mtu + 1, 3 * mtu + 5, 65_537, size];
      let ok = true;
      for (const n of sizes) {
        b.qp.postRecv({ wrId: n, sg: [{ mr: b.mr, offset: 0, length: size }] });
        a.qp.postSend({ wrId: n, opcode: 'SEND', sg: [{ mr: a.mr, offset: 7, length: n }] });
        a.qp.postSend({
          wrId: n + 1,
          opcode: 'RDMA_WRITE',
          sg: [{ mr: a.mr, offset: 11, length: n }],
          remote: { addr: b.mr.addr + BigInt(size), rkey: b.mr.rkey },
        });
        a.qp.postSend({ wrId: n + 2, opcode: 'RDMA_READ', sg: [{ mr: a.mr, offset: size, length: n }], remote: { addr: b.mr.addr + 3n, rkey: b.mr.rkey } });
        const sw = await waitWc(p, a.scq, 3, 600_000);
        const rw = await waitWc(p, b.rcq, 1, 600_000);
        ok &&= sw.length === 3 && sw.every((w) => w.status === 'SUCCESS') && rw[0]?.byteLen === n;
        ok &&= b.mem.subarray(0, n).equals(a.mem.subarray(7, 7 + n));
        ok &&= b.mem.subarray(size, size + n).equals(a.mem.subarray(11, 11 + n));
        ok &&= a.mem.subarray(size, size + n).equals(b.mem.subarray(3, 3 + n));
        if (!ok) {
          t.fail(`mtu ${mtu} size ${n}`);
          break;
        }
      }
      t.ok(ok, `MTU ${mtu}: SEND, WRITE and READ of ${sizes.join(', ')} bytes`);
      await p.close();
    }
  });

  void settle;
}
