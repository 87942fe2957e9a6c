/**
 * perftest's out-of-band exchange over TCP (port 18515, "Data ex. method :
 * Ethernet"), as perftest 6.06 speaks it (roce-wire.md section j). Every
 * message has a fixed size and no framing; the client writes then reads, the
 * server reads then writes. Addresses travel as 108-byte text records
 * "LID:OUT:QPN:PSN:RKEY:VADDR:" + 16 GID bytes + "SRQN:".
 */
import * as net from 'node:net';
import type { Gid } from '../roce/gid.js';

export const MSG_LEN = 108;

export interface PerfDest {
  lid: number;
  outReads: number;
  qpn: number;
  psn: number;
  rkey: number;
  vaddr: bigint;
  gid: Gid;
  srqn: number;
}

export function destMsg(d: PerfDest): Buffer {
  const h = (n: number | bigint, w: number): string => n.toString(16).padStart(w, '0');
  const s =
    `${h(d.lid, 4)}:${h(d.outReads, 4)}:${h(d.qpn, 6)}:${h(d.psn, 6)}:${h(d.rkey, 8)}:${h(d.vaddr, 16)}:` +
    [...d.gid].map((b) => h(b, 2) + ':').join('') +
    `${h(d.srqn, 8)}:`;
  const b = Buffer.alloc(MSG_LEN);
  b.write(s, 'latin1');
  return b;
}

export function parseDest(b: Buffer): PerfDest {
  const s = b.toString('latin1').replace(/\0.*$/s, '');
  const f = s.split(':');
  if (f.length < 23) throw new Error(`Couldn't parse remote address ${JSON.stringify(s)}`);
  const n = (x: string | undefined): number => parseInt(x ?? 'x', 16);
  const gid = new Uint8Array(f.slice(6, 22).map((x) => parseInt(x, 16)));
  return { lid: n(f[0]), outReads: n(f[1]), qpn: n(f[2]), psn: n(f[3]), rkey: n(f[4]) >>> 0, vaddr: BigInt('0x' + f[5]), gid, srqn: n(f[22]) };
}

/** perftest's bw_report_data on the wire: size, iterations (u64), peak, average, message rate (doubles), all big-endian. */
export interface BwReport {
  size: number;
  iters: number;
  peak: number;
  avg: number;
  rate: number;
}

/**
 * xchg_bw_reports: five 8-byte big-endian fields (size and iterations as u64, peak, average and message
 * rate as doubles), each its own exchange; the same over TCP and over the rdma_cm exchange connection.
 */
export async function xchgBwReport(xchg: (b: Buffer, len: number) => Promise<Buffer>, mine: BwReport): Promise<BwReport> {
  const b = Buffer.alloc(8);
  const u64 = async (v: number): Promise<number> => {
    b.writeBigUInt64BE(BigInt(Math.max(0, Math.round(v))));
    return Number((await xchg(b, 8)).readBigUInt64BE(0));
  };
  const f64 = async (v: number): Promise<number> => {
    b.writeDoubleBE(v);
    return (await xchg(b, 8)).readDoubleBE(0);
  };
  return { size: await u64(mine.size), iters: await u64(mine.iters), peak: await f64(mine.peak), avg: await f64(mine.avg), rate: await f64(mine.rate) };
}

/** Exact-length reads from a TCP stream. */
export class Conn {
  private buf: Buffer = Buffer.alloc(0);
  private waiter: (() => void) | null = null;
  private err: Error | null = null;
  readonly client: boolean;
  private readonly sock: net.Socket;
  constructor(sock: net.Socket, client: boolean) {
    this.sock = sock;
    this.client = client;
    sock.setNoDelay(true);
    sock.on('data', (d: Buffer) => {
      this.buf = this.buf.length ? Buffer.concat([this.buf, d]) : d;
      this.waiter?.();
    });
    sock.on('end', () => {
      this.err = new Error('peer closed the connection');
      this.waiter?.();
    });
    sock.on('error', (e) => {
      this.err = e;
      this.waiter?.();
    });
  }

  static async connect(host: string, port: number): Promise<Conn> {
    const sock = net.connect({ host, port });
    await new Promise<void>((res, rej) => {
      sock.once('connect', () => res());
      sock.once('error', (e) => rej(new Error(`Couldn't connect to ${host}:${port}: ${e.message}`)));
    });
    return new Conn(sock, true);
  }

  static async accept(port: number): Promise<Conn> {
    const server = net.createServer();
    await new Promise<void>((res, rej) => {
      server.once('error', rej);
      server.listen(port, () => res());
    });
    const sock = await new Promise<net.Socket>((res) => server.once('connection', res));
    server.close();
    return new Conn(sock, false);
  }

  private async read(n: number): Promise<Buffer> {
    while (this.buf.length < n) {
      if (this.err) throw this.err;
      await new Promise<void>((r) => {
        this.waiter = r;
      });
      this.waiter = null;
    }
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    return out;
  }

  private write(b: Buffer): Promise<void> {
    return new Promise((res, rej) => this.sock.write(b, (e) => (e ? rej(e) : res())));
  }

  /** perftest's symmetric exchange: the client writes then reads, the server reads then writes. */
  async xchg(mine: Buffer, len = mine.length): Promise<Buffer> {
    if (this.client) {
      await this.write(mine);
      return this.read(len);
    }
    const theirs = await this.read(len);
    await this.write(mine);
    return theirs;
  }

  /** ctx_hand_shake: one address record each way. */
  async handshake(my: PerfDest): Promise<PerfDest> {
    return parseDest(await this.xchg(destMsg(my), MSG_LEN));
  }

  /** xchg_bw_reports over TCP. */
  xchgReport(mine: BwReport): Promise<BwReport> {
    return xchgBwReport((b, n) => this.xchg(b, n), mine);
  }

  /** ctx_close_connection: a last handshake, then "done" both ways. A peer that already left is not an error here. */
  async close(my: PerfDest): Promise<void> {
    try {
      await this.handshake(my);
      await this.write(Buffer.from('done\0', 'latin1'));
      await this.read(5);
    } catch {
      /* the peer closed first */
    }
    this.sock.end();
  }

  destroy(): void {
    this.sock.destroy();
  }
}
