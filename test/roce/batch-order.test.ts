/**
 * The native link's send batch puts a turn's RC responses (ACK/NAK, READ responses, ATOMIC ACK)
 * behind the requests that follow them to the same QP, each kind in its own order (udp-base.ts
 * responsesLast): a ping-pong's coalesced ACK, queued before the application's answer, no longer
 * reaches the peer first and wakes it for nothing (ib_send_lat 64 B, ib_write_lat). Packets of
 * other QPs keep their order against them (a DREQ on QP1 after a data QP's ACKs). Loopback only,
 * 127.0.89.0/24.
 */
import t from 'tap';
import dgram from 'node:dgram';
import { UdpLink } from '../../src/roce/link/udp-link.js';
import { loadNative } from '../../src/native.js';

const native = loadNative() !== null && process.env['SOFTROCE_NO_NATIVE'] !== '1';

/** A packet that starts with BTH opcode `op` to DestQP `qp` and carries `tag` (byte 12) and `len` bytes in all. */
function pkt(link: UdpLink, op: number, tag: number, len: number, qp = 0x11): Buffer {
  const b = link.allocTx()!;
  b.fill(0, 0, len);
  b[0] = op;
  b.writeUIntBE(qp, 5, 3);
  b[12] = tag;
  return b;
}

t.test(
  'responses leave behind the requests of the same turn, each kind in order',
  { skip: native ? false : 'the batch is the native link’s (the dgram backend sends each packet as it is handed over)' },
  async (t) => {
    const rx = dgram.createSocket('udp4');
    await new Promise<void>((r) => rx.bind(0, '127.0.89.2', r));
    const port = rx.address().port;
    const got: number[] = [];
    rx.on('message', (m) => got.push(m[12]!));
    const link = await UdpLink.open({ address: '127.0.89.1', port: 0, txSockets: 0 });
    t.ok(link.batchStats !== undefined, 'the native link batches its sends');
    /** Hands [opcode, tag, length, DestQP] over in one turn; the tags in the order they arrived. */
    const turn = async (pkts: Array<[number, number, number, number?]>): Promise<number[]> => {
      got.length = 0;
      for (const [op, tag, len, qp] of pkts) link.send(pkt(link, op, tag, len, qp), len, '127.0.89.2', port);
      for (let i = 0; i < 200 && got.length < pkts.length; i++) await new Promise((r) => setTimeout(r, 5));
      return [...got];
    };
    // One turn: ACK, SEND (answer), READ response, NAK, WRITE, ATOMIC ACK, SEND; ACK-sized and not.
    const order: Array<[number, number, number]> = [
      [0x11, 1, 20],
      [0x04, 2, 84],
      [0x10, 3, 84],
      [0x11, 4, 20],
      [0x0a, 5, 100],
      [0x12, 6, 28],
      [0x04, 7, 20],
    ];
    t.same(
      await turn(order),
      [2, 5, 7, 1, 3, 4, 6],
      'requests (SEND, WRITE, SEND) first, then the responses (ACK, READ response, NAK, ATOMIC ACK), each in the order handed over',
    );
    // A turn of responses only goes as handed over.
    t.same(await turn(order.filter(([op]) => op >= 0x0d && op <= 0x12)), [1, 3, 4, 6], 'responses alone: as handed over');
    // Another QP's packet between them: no response moves past it. Two QPs each with an ACK then
    // a SEND, back to back: each QP's pair turns round.
    const mixed: Array<[number, number, number, number]> = [
      [0x11, 1, 20, 0x11],
      [0x64, 2, 300, 1], // a UD SEND to QP1 (a CM MAD: DREQ)
      [0x04, 3, 84, 0x11],
      [0x11, 4, 20, 0x22],
      [0x04, 5, 84, 0x22],
      [0x11, 6, 20, 0x33],
      [0x04, 7, 84, 0x33],
    ];
    t.same(await turn(mixed), [1, 2, 3, 5, 4, 7, 6], "the ACK before the MAD stays before it; QP 0x22's and QP 0x33's SENDs go before their ACKs");
    await link.close();
    rx.close();
  },
);
