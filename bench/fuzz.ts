/**
 * Live receive-path fuzzer (issue 9, item 7). Datagrams go into a device
 * that has QPs in every state (RESET, INIT, RTR, RTS, SQD, ERR; RC, UC, UD;
 * and QP1) while two real RC QPs run a transfer (RDMA WRITEs, SENDs, READs
 * and FETCH_AND_ADDs, checked byte for byte after every round). Kinds: random
 * bytes; truncated, mutated and re-addressed packets from the golden captures;
 * spoofed source addresses; and well-formed packets (valid ICRC) aimed at the
 * live QPNs with random opcodes, PSNs, R_Keys and VAs (real R_Keys and VAs of
 * registered regions with random offsets and lengths, PSNs near the expected
 * ones).
 *
 * Most datagrams go through the in-memory network on the fake clock, one per
 * turn of its queue so they interleave with the transfer's own packets, and
 * are classified one by one (which drop counter moved, or what state they
 * changed). A share goes through a real UDP socket on loopback
 * (127.0.91.x, used by no other test) so the socket link's receive path sees
 * them too.
 *
 * Checked: nothing thrown from the receive path; every round of the transfer
 * byte for byte; no byte outside a registered region changes (every region
 * is a slice of a larger buffer with random guard bytes), and regions no one
 * may legitimately write (no remote access, another PD, the transfer's
 * sources) keep their bytes; the receive counters add up.
 *
 * `npm run fuzz` runs 10^6 datagrams (SOFTROCE_FUZZ_N, SOFTROCE_SEED to
 * change); test/transport/live-fuzz.test.ts runs 10^5.
 */
import { createSocket, type Socket } from 'node:dgram';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { makePair, type Pair } from '../test/verbs/pair.js';
import { goldenFiles, Rng } from '../test/helpers.js';
import { readCapture } from '../src/roce/pcap.js';
import { buildRoceV2, emitFrame, makeIb } from '../src/roce/framing.js';
import { icrcV2Ipv4Parts, writeIcrc } from '../src/roce/icrc.js';
import { OPCODES, OPCODE_MASK, OPC, Op, Hdr, hdrBit } from '../src/roce/opcode.js';
import { COUNTER_NAMES, type CounterName } from '../src/roce/counters.js';
import { ipv4ToNumber } from '../src/roce/gid.js';
import { Wc, type SendWr } from '../src/verbs/types.js';
import type { Qp } from '../src/verbs/qp.js';
import type { Mr } from '../src/verbs/mr.js';
import type { Device } from '../src/verbs/device.js';
import type { Pd } from '../src/verbs/objects.js';
import type { Cq } from '../src/verbs/cq.js';
import type { MemLink } from '../src/roce/link/link.js';

export interface FuzzOptions {
  /** datagrams in all */
  packets: number;
  seed: number;
  /** the share sent over real UDP loopback (0..1) */
  udpShare: number;
  /**
   * Forgeries that currently break the transfer (open bugs in the transport, see the test), off
   * by default. Responses (ACKs, READ responses, atomic ACKs) at the busy requester, from its
   * peer's address and from others: the completer takes them.
   */
  responsesToLiveRequester?: boolean;
  log?: (s: string) => void;
}

export interface FuzzResult {
  packets: number;
  memPackets: number;
  udpPackets: number;
  timeMs: number;
  packetsPerSec: number;
  /** by kind of datagram */
  kinds: Record<string, number>;
  /** exceptions from the receive path (and from deferred transport work), with the packet */
  thrown: string[];
  /** transfer rounds checked, and what went wrong in them */
  rounds: number;
  transferProblems: string[];
  /** guard bytes or never-written regions that changed */
  memoryProblems: string[];
  /** receive counters moved during the run, summed over the fuzzed devices */
  drops: Record<string, number>;
  /** in-memory datagrams one by one: the counter that moved, else 'accepted' / 'queued' / 'silent' */
  outcomes: Record<string, number>;
  /** datagrams that moved no counter and changed nothing (a drop nobody counted) */
  silent: number;
  /** accepted datagrams (they changed a QP's state) by QP type, state and opcode: how deep the fuzz got */
  acceptedBy: Record<string, number>;
  /** silent datagrams by QP type, state and opcode */
  silentBy: Record<string, number>;
  silentExamples: string[];
  /** rcvd_pkts against datagrams delivered (the transfer's own plus ours), per in-memory device */
  accounting: { device: string; rcvdPkts: number; delivered: number }[];
  /** the UDP share: datagrams sent, rcvd_pkts seen by the target device */
  udp: { sent: number; rcvdPkts: number };
}

const DROP_COUNTERS: readonly CounterName[] = [
  'rcvd_icrc_err',
  'rcvd_malformed',
  'rcvd_unknown_qp',
  'rcvd_mcast_no_qp',
  'rcvd_bad_state',
  'rcvd_bad_pkey',
  'rcvd_bad_qkey',
  'rcvd_bad_addr',
  'rcvd_bad_opcode',
  'out_of_sequence',
  'duplicate_request',
  'send_rnr_err',
  'rcvd_seq_err',
  'rcvd_rnr_err',
  'rcvd_bad_psn',
  'rcvd_stale_resp',
  'rcvd_no_recv_wqe',
  'rcvd_internal_err',
];
const DROP_IDX = DROP_COUNTERS.map((n) => COUNTER_NAMES.indexOf(n));
const IDX = (n: CounterName): number => COUNTER_NAMES.indexOf(n);
const ALL_ACCESS = ['LOCAL_WRITE', 'REMOTE_WRITE', 'REMOTE_READ', 'REMOTE_ATOMIC'] as const;
const GSI_QKEY = 0x80010000;
const UD_QKEY = 0x22222222;
const TARGET_STATES = ['RESET', 'INIT', 'RTR', 'RTS', 'SQD', 'ERR'] as const;

/** Defined opcodes by transport prefix. */
const OPS = { RC: [] as number[], UC: [] as number[], UD: [] as number[], RESP: [] as number[] };
for (let i = 0; i < 256; i++) {
  if (!OPCODES[i]) continue;
  if (i >> 5 === 0) {
    OPS.RC.push(i);
    if (OPCODE_MASK[i]! & Op.RESP) OPS.RESP.push(i);
  } else if (i >> 5 === 1) OPS.UC.push(i);
  else if (i >> 5 === 3) OPS.UD.push(i);
}

// ------------------------------------------------------------ the transfer ---

const W_N = 48,
  W_MAX = 8192,
  S_N = 48,
  S_MAX = 4096,
  R_N = 16,
  R_MAX = 8192,
  A_N = 32;
const OFF_W = 0,
  OFF_S = OFF_W + W_N * W_MAX,
  OFF_R = OFF_S + S_N * S_MAX,
  OFF_A = OFF_R + R_N * R_MAX,
  MEM = OFF_A + 4096;

/**
 * Rounds of a mixed stream from a to b on the live RC pair: WRITEs into b's
 * region W, SENDs into receive slots, READs of b's region R into a's, and
 * FETCH_AND_ADDs on a counter. Each round starts on zeroed targets, so bytes
 * a round does not write must still be zero at its end.
 */
class Transfer {
  private readonly p: Pair;
  private readonly rng: Rng;
  private wrs: SendWr[] = [];
  private lens: number[] = [];
  private posted = 0;
  private done = 0;
  private recvs = 0;
  private ctrStart = 0n;
  private adds: bigint[] = [];
  private readonly wc = Array.from({ length: 64 }, () => new Wc());
  private srcSnap = Buffer.alloc(0);
  private rsrcSnap = Buffer.alloc(0);
  rounds = 0;
  problems: string[] = [];
  active = false;
  constructor(p: Pair, seed: number) {
    this.p = p;
    this.rng = new Rng(seed);
  }
  start(): void {
    const { a, b } = this.p;
    const r = this.rng;
    for (let i = OFF_W; i < OFF_A; i++) a.mem[i] = r.next() & 0xff;
    for (let i = OFF_R; i < OFF_A; i++) b.mem[i] = r.next() & 0xff;
    b.mem.fill(0, OFF_W, OFF_R);
    a.mem.fill(0, OFF_R, MEM);
    this.ctrStart = r.big64() >> 8n;
    b.mem.writeBigUInt64LE(this.ctrStart, OFF_A);
    this.srcSnap = Buffer.from(a.mem.subarray(OFF_W, OFF_R));
    this.rsrcSnap = Buffer.from(b.mem.subarray(OFF_R, OFF_A));
    const wrs: SendWr[] = [];
    const lens: number[] = [];
    this.adds = [];
    for (let i = 0; i < W_N; i++) {
      const n = 1 + r.int(W_MAX);
      lens.push(n);
      wrs.push({
        wrId: wrs.length,
        opcode: 'RDMA_WRITE',
        sg: [{ mr: a.mr, offset: OFF_W + i * W_MAX, length: n }],
        remote: { addr: b.mr.addr + BigInt(OFF_W + i * W_MAX), rkey: b.mr.rkey },
      });
    }
    for (let i = 0; i < S_N; i++) {
      const n = r.int(S_MAX + 1);
      lens.push(n);
      wrs.push({ wrId: wrs.length, opcode: 'SEND', sg: [{ mr: a.mr, offset: OFF_S + i * S_MAX, length: n }] });
    }
    for (let i = 0; i < R_N; i++) {
      const n = 1 + r.int(R_MAX);
      lens.push(n);
      wrs.push({
        wrId: wrs.length,
        opcode: 'RDMA_READ',
        sg: [{ mr: a.mr, offset: OFF_R + i * R_MAX, length: n }],
        remote: { addr: b.mr.addr + BigInt(OFF_R + i * R_MAX), rkey: b.mr.rkey },
      });
    }
    for (let i = 0; i < A_N; i++) {
      const add = BigInt(1 + r.int(1000));
      this.adds.push(add);
      lens.push(8);
      wrs.push({
        wrId: wrs.length,
        opcode: 'ATOMIC_FETCH_AND_ADD',
        compareAdd: add,
        sg: [{ mr: a.mr, offset: OFF_A + i * 8, length: 8 }],
        remote: { addr: b.mr.addr + BigInt(OFF_A), rkey: b.mr.rkey },
      });
    }
    // Shuffle (Fisher-Yates) so every kind is in flight together; atomics keep their relative order.
    const order = wrs.map((_, i) => i);
    for (let i = order.length - 1; i > 0; i--) {
      const j = r.int(i + 1);
      [order[i], order[j]] = [order[j]!, order[i]!];
    }
    const atomicIdx = order.filter((i) => wrs[i]!.opcode === 'ATOMIC_FETCH_AND_ADD').sort((x, y) => x - y);
    let k = 0;
    for (let i = 0; i < order.length; i++) if (wrs[order[i]!]!.opcode === 'ATOMIC_FETCH_AND_ADD') order[i] = atomicIdx[k++]!;
    this.wrs = order.map((i) => wrs[i]!);
    this.lens = order.map((i) => lens[i]!);
    // The SENDs arrive in posting order; post one receive per SEND, in that order, slot = SEND index.
    for (const w of this.wrs)
      if (w.opcode === 'SEND') b.qp.postRecv({ wrId: w.wrId, sg: [{ mr: b.mr, offset: OFF_S + (w.wrId - W_N) * S_MAX, length: S_MAX }] });
    this.posted = this.done = this.recvs = 0;
    this.active = true;
  }
  /** Posts more work and polls; true while the round is running. */
  step(): boolean {
    if (!this.active) return false;
    const { a, b } = this.p;
    while (this.posted < this.wrs.length && this.posted - this.done < 24) a.qp.postSend(this.wrs[this.posted++]!);
    let k: number;
    while ((k = a.scq.poll(this.wc)) > 0) {
      for (let i = 0; i < k; i++) {
        const w = this.wc[i]!;
        const want = this.wrs[this.done]!;
        if (w.status !== 'SUCCESS' || w.wrId !== want.wrId)
          this.problems.push(`round ${this.rounds}: send completion ${this.done} is ${w.status} wrId ${w.wrId}, want SUCCESS ${want.wrId} (${want.opcode})`);
        this.done++;
      }
    }
    while ((k = b.rcq.poll(this.wc)) > 0) {
      for (let i = 0; i < k; i++) {
        const w = this.wc[i]!;
        const at = this.wrs.findIndex((x) => x.wrId === w.wrId);
        if (w.status !== 'SUCCESS' || at < 0 || w.byteLen !== this.lens[at])
          this.problems.push(`round ${this.rounds}: receive ${this.recvs} is ${w.status} wrId ${w.wrId} length ${w.byteLen}`);
        this.recvs++;
      }
    }
    if (this.problems.length > 20) this.problems.length = 20;
    if (this.done < this.wrs.length || this.recvs < S_N) return true;
    this.verify();
    this.active = false;
    this.rounds++;
    return false;
  }
  get stuck(): string {
    return `round ${this.rounds}: ${this.done}/${this.wrs.length} sends completed, ${this.recvs}/${S_N} receives; a.qp ${this.p.a.qp.state}, b.qp ${this.p.b.qp.state}`;
  }
  private verify(): void {
    const { a, b } = this.p;
    const bad = (m: string): void => {
      if (this.problems.length < 20) this.problems.push(`round ${this.rounds}: ${m}`);
    };
    const exp = Buffer.alloc(OFF_R - OFF_W);
    for (let i = 0; i < this.wrs.length; i++) {
      const w = this.wrs[i]!;
      const n = this.lens[i]!;
      if (w.opcode === 'RDMA_WRITE') {
        const o = w.sg[0]!.offset;
        a.mem.copy(exp, o - OFF_W, o, o + n);
      }
      if (w.opcode === 'SEND') {
        const o = OFF_S + (w.wrId - W_N) * S_MAX;
        a.mem.copy(exp, o - OFF_W, o, o + n);
      }
    }
    if (!b.mem.subarray(OFF_W, OFF_R).equals(exp)) bad('the WRITE and SEND targets differ from what was sent (or bytes beyond them changed)');
    const rexp = Buffer.alloc(OFF_A - OFF_R);
    for (let i = 0; i < this.wrs.length; i++) {
      const w = this.wrs[i]!;
      if (w.opcode === 'RDMA_READ') {
        const o = w.sg[0]!.offset;
        b.mem.copy(rexp, o - OFF_R, o, o + this.lens[i]!);
      }
    }
    if (!a.mem.subarray(OFF_R, OFF_A).equals(rexp)) bad('the READ results differ from the source');
    let c = this.ctrStart;
    for (let i = 0; i < A_N; i++) {
      if (a.mem.readBigUInt64LE(OFF_A + i * 8) !== c) {
        bad(`atomic ${i} returned ${a.mem.readBigUInt64LE(OFF_A + i * 8)}, want ${c}`);
        break;
      }
      c += this.adds[i]!;
    }
    if (b.mem.readBigUInt64LE(OFF_A) !== c) bad(`the counter is ${b.mem.readBigUInt64LE(OFF_A)}, want ${c} (an atomic ran twice or not at all)`);
    if (!a.mem.subarray(OFF_W, OFF_R).equals(this.srcSnap)) bad('the WRITE/SEND sources changed');
    if (!b.mem.subarray(OFF_R, OFF_A).equals(this.rsrcSnap)) bad('the READ source changed');
  }
}

// -------------------------------------------------------------- the victims ---

interface Victim {
  qp: Qp;
  want: (typeof TARGET_STATES)[number] | 'GSI';
}

/**
 * The QPs nobody uses: RC, UC and UD in every state, plus QP1, in a PD of
 * their own, with a scratch region they may write (checked only by its
 * guards), and regions they must never write: no remote access, REMOTE_READ
 * only, another PD's region.
 */
class Victims {
  readonly list: Victim[] = [];
  readonly byQp = new Map<Qp, Victim>();
  readonly pd: Pd;
  readonly cq: Cq;
  scratch: Mr;
  readonly untouchable: Array<{ name: string; mr: Mr; snap: Buffer }> = [];
  private readonly dev: Device;
  private readonly peer: string;
  private readonly rng: Rng;
  private readonly wc = Array.from({ length: 64 }, () => new Wc());
  private readonly scratchMem: Buffer;
  constructor(p: Pair, dev: Device, peer: string, seed: number) {
    this.dev = dev;
    this.peer = peer;
    this.rng = new Rng(seed);
    this.pd = dev.allocPd();
    this.cq = dev.createCq({ depth: 8192 });
    this.scratchMem = p.guarded(65536);
    this.scratch = this.pd.regMr(this.scratchMem, [...ALL_ACCESS]);
    const mk = (name: string, pd: Pd, access: readonly (typeof ALL_ACCESS)[number][]): void => {
      const mem = p.guarded(4096 + this.rng.int(8192));
      for (let i = 0; i < mem.length; i++) mem[i] = this.rng.next() & 0xff;
      this.untouchable.push({ name, mr: pd.regMr(mem, access), snap: Buffer.from(mem) });
    };
    mk('victim PD, LOCAL_WRITE only', this.pd, ['LOCAL_WRITE']);
    mk('victim PD, REMOTE_READ only', this.pd, ['REMOTE_READ']);
    mk('a PD without QPs, all access', dev.allocPd(), ALL_ACCESS);
    for (const type of ['RC', 'UC', 'UD'] as const) {
      for (const want of TARGET_STATES) {
        const qp = this.pd.createQp({ type, sendCq: this.cq, recvCq: this.cq, cap: { maxSendWr: 16, maxRecvWr: 64, maxSendSge: 2, maxRecvSge: 2 } });
        this.list.push({ qp, want });
      }
    }
    this.list.push({ qp: dev.openGsi(this.pd, { sendCq: this.cq, recvCq: this.cq, cap: { maxRecvWr: 64 } }), want: 'GSI' });
    for (const v of this.list) this.byQp.set(v.qp, v);
    this.rearm();
  }
  /** Every QP back to its state (fuzzing moves RC QPs to ERR), receives posted, PSNs fresh; the CQ drained. */
  rearm(): void {
    while (this.cq.poll(this.wc) > 0) {
      /* drained */
    }
    this.fixScratch();
    for (const v of this.list) this.rearmOne(v);
    while (this.cq.poll(this.wc) > 0) {
      /* flushed receives */
    }
  }
  /** The regions fuzz packets name (shared with the Target), kept current when the scratch region is re-registered. */
  mrs: Mr[] = [];
  private fixScratch(): void {
    if (this.scratch.valid) return;
    // A SEND_WITH_INVALIDATE took its R_Key: register the memory again so deep writes go on.
    const old = this.scratch;
    this.scratch = this.pd.regMr(this.scratchMem, [...ALL_ACCESS]);
    const i = this.mrs.indexOf(old);
    if (i >= 0) this.mrs[i] = this.scratch;
  }
  /** One QP back to its state, with fresh PSNs and receives. */
  rearmOne(v: Victim): void {
    const r = this.rng;
    const qp = v.qp;
    qp.modify({ state: 'RESET' });
    if (v.want === 'RESET') return;
    if (qp.type === 'UD' || qp.type === 'GSI') qp.toInit({ qkey: qp.type === 'GSI' ? GSI_QKEY : UD_QKEY });
    else qp.toInit({ accessFlags: [...ALL_ACCESS].filter(() => r.int(4) !== 0) });
    this.post(qp);
    if (v.want === 'INIT') return;
    if (qp.type === 'UD' || qp.type === 'GSI') qp.toRtr();
    else qp.toRtr({ remote: { qpn: 0x10 + r.int(0xfff0), gid: this.peer }, rqPsn: r.int(1 << 24), maxDestRdAtomic: 4, minRnrTimer: 1 });
    if (v.want === 'RTR') return;
    qp.toRts({ sqPsn: r.int(1 << 24), ...(qp.type === 'RC' ? { timeout: 10, retryCnt: 1, rnrRetry: 1, maxRdAtomic: 4 } : {}) });
    if (v.want === 'SQD') qp.modify({ state: 'SQD' });
    if (v.want === 'ERR') qp.modify({ state: 'ERR' });
  }
  /** Re-arms a victim that fuzzing moved out of its state (an RC QP goes to ERR at its first class C error). */
  revive(qp: Qp | null | undefined): boolean {
    const v = qp ? this.byQp.get(qp) : undefined;
    if (!v || qp!.state === (v.want === 'GSI' ? 'RTS' : v.want)) return false;
    this.fixScratch();
    this.rearmOne(v);
    return true;
  }
  private post(qp: Qp): void {
    const r = this.rng;
    for (let i = 0; i < (qp.type === 'GSI' ? 16 : 24); i++) {
      const o = r.int(65536 - 4096);
      const n1 = 1 + r.int(2048);
      const sg =
        qp.type === 'GSI'
          ? [{ mr: this.scratch, offset: o, length: 2048 }]
          : [
              { mr: this.scratch, offset: o, length: n1 },
              { mr: this.scratch, offset: r.int(65536 - 2048), length: r.int(2048) },
            ];
      qp.postRecv({ wrId: i, sg });
    }
  }
  check(): string[] {
    return this.untouchable.filter((u) => !u.mr.buffer.equals(u.snap)).map((u) => `${this.dev.name}: region "${u.name}" changed`);
  }
}

// --------------------------------------------------------- packet factory ---

interface Target {
  dev: Device;
  devIp: string;
  /** the live RC QPs (requester a, responder b) and everything else addressable */
  /** the live RC QP on this device, its peer's address, and whether it is the transfer's (busy) requester */
  live: { qp: Qp; peerIp: string; requester: boolean };
  victims: Victims;
  mrs: Mr[];
  /** the address the victims' RC/UC QPs are connected to (their "peer") */
  fuzzIp: string;
}

interface Datagram {
  buf: Buffer;
  src: string;
  srcPort: number;
  dstIp: string;
  kind: string;
}

/** Raw IB bytes (BTH … ICRC) from src:srcPort to dst:4791, built by the project's framing code. */
function ibBytes(src: string, dst: string, srcPort: number, init: Parameters<typeof makeIb>[0]): Buffer {
  const f = buildRoceV2({ src: new Uint8Array(src.split('.').map(Number)), dst: new Uint8Array(dst.split('.').map(Number)), srcPort }, makeIb(init));
  return emitFrame(f).subarray(28);
}

/** Re-seals IB bytes with a valid RoCEv2/IPv4 ICRC for this src → dst (IPv4 ID 0, DF). */
function reseal(buf: Buffer, src: string, dst: string, srcPort: number): void {
  if (buf.length < 4) return;
  writeIcrc(buf, buf.length - 4, icrcV2Ipv4Parts(ipv4ToNumber(src), ipv4ToNumber(dst), 0, 0x4000, srcPort, 4791, buf, 0, buf.length - 4));
}

class Factory {
  private readonly rng: Rng;
  private readonly seeds: Buffer[];
  private readonly liveResponses: boolean;
  constructor(seed: number, seeds: Buffer[], o: FuzzOptions) {
    this.rng = new Rng(seed);
    this.seeds = seeds;
    this.liveResponses = o.responsesToLiveRequester ?? false;
  }
  private pick<T>(a: readonly T[]): T {
    return a[this.rng.int(a.length)]!;
  }
  /** PSN for a request to a live responder that can never be the expected one: behind it (a duplicate) or far ahead. */
  private safePsn(qp: Qp): number {
    const r = this.rng;
    const expected = qp.resp.psn;
    const ahead = (expected + (1 << 16) + r.int(1 << 22)) & 0xffffff;
    if (r.int(2)) return ahead;
    return (expected - 1 - r.int(r.int(2) ? 64 : 1 << 20)) & 0xffffff;
  }
  private wrongIp(t: Target): string {
    const r = this.rng;
    const c = r.int(10);
    if (c === 0) return this.pick(['', 'not-an-ip', '::1', '10.0.0.256', '0.0.0.0', '255.255.255.255']);
    return `${t.devIp.split('.').slice(0, 3).join('.')}.${100 + r.int(100)}`;
  }
  next(t: Target): Datagram {
    const r = this.rng;
    const c = r.int(100);
    if (c < 12) return this.random(t);
    if (c < 20) return this.golden(t, 'truncated golden');
    if (c < 28) return this.golden(t, 'mutated golden');
    if (c < 40) return this.retarget(t);
    return this.wellFormed(t, c);
  }
  private random(t: Target): Datagram {
    const r = this.rng;
    const buf = Buffer.from(r.bytes(r.int(3) === 0 ? r.int(16) : r.int(1200)));
    // Half of them look like a BTH for a live QPN, so they get past the first checks.
    if (buf.length >= 12 && r.int(2)) {
      const q = this.pick([t.live.qp.qpn, 1]);
      buf[5] = q >> 16;
      buf[6] = q >> 8;
      buf[7] = q;
      buf[2] = 0xff;
      buf[3] = 0xff;
    }
    return { buf, src: r.int(2) ? t.live.peerIp : this.wrongIp(t), srcPort: 4791, dstIp: t.devIp, kind: 'random bytes' };
  }
  private golden(t: Target, kind: string): Datagram {
    const r = this.rng;
    let buf = Buffer.from(this.pick(this.seeds));
    if (kind === 'truncated golden') buf = buf.subarray(0, r.int(buf.length));
    else for (let k = 1 + r.int(4); k > 0 && buf.length; k--) buf[r.int(buf.length)] = r.int(256);
    return { buf, src: t.live.peerIp, srcPort: 4791, dstIp: t.devIp, kind };
  }
  /** A golden packet addressed to one of our QPs, mutated, with a valid ICRC. */
  private retarget(t: Target): Datagram {
    const r = this.rng;
    const buf = Buffer.from(this.pick(this.seeds));
    for (let k = r.int(3); k > 0 && buf.length > 16; k--) buf[12 + r.int(buf.length - 16)] = r.int(256);
    const v = this.pick(t.victims.list).qp;
    let src = t.fuzzIp;
    let qpn = v.qpn;
    if (r.int(4) === 0) {
      // to a live QP: from a wrong address (must be dropped), or from its peer with a PSN that cannot be the expected one
      const q = t.live.qp;
      qpn = q.qpn;
      const resp = (OPCODE_MASK[buf[0]!]! & Op.RESP) !== 0;
      if (resp && t.live.requester && !this.liveResponses) buf[0] = this.pick(OPS.RC.filter((o) => OPCODE_MASK[o]! & Op.REQ));
      src = r.int(2) ? this.wrongIp(t) : t.live.peerIp;
      const psn = this.safePsn(q);
      buf[9] = psn >> 16;
      buf[10] = psn >> 8;
      buf[11] = psn;
    }
    buf[5] = qpn >> 16;
    buf[6] = qpn >> 8;
    buf[7] = qpn;
    buf[2] = 0xff;
    buf[3] = 0xff;
    if (src.split('.').length === 4 && !src.includes('256')) reseal(buf, src, t.devIp, 4791);
    return { buf, src, srcPort: 4791, dstIp: t.devIp, kind: 'golden, re-addressed, valid ICRC' };
  }
  private wellFormed(t: Target, c: number): Datagram {
    const r = this.rng;
    let qp: Qp;
    let src: string;
    let kind: string;
    let psn: number;
    let live = false;
    if (c < 75) {
      qp = this.pick(t.victims.list).qp;
      src = t.fuzzIp;
      kind = `well-formed to a victim ${qp.type} QP`;
    } else if (c < 85) {
      qp = t.live.qp;
      src = this.wrongIp(t);
      kind = 'well-formed to a live QP, spoofed source';
      live = true;
    } else if (c < 97) {
      qp = t.live.qp;
      src = t.live.peerIp;
      kind = 'well-formed to a live QP from its peer';
      live = true;
    } else {
      qp = this.pick(t.victims.list).qp;
      src = t.fuzzIp;
      kind = 'well-formed to no QP';
    }
    const ops = qp.type === 'RC' ? OPS.RC : qp.type === 'UC' ? OPS.UC : OPS.UD;
    let opcode = r.int(8) === 0 ? r.int(256) : this.pick(ops);
    if (live && t.live.requester && OPCODE_MASK[opcode]! & Op.RESP && !this.liveResponses) opcode = this.pick(OPS.RC.filter((o) => OPCODE_MASK[o]! & Op.REQ));
    const mask = OPCODE_MASK[opcode]!;
    if (live && kind.endsWith('peer')) psn = mask & Op.RESP ? (qp.comp.psn - 1 - r.int(64)) & 0xffffff : this.safePsn(qp);
    else {
      const base = mask & Op.RESP ? qp.comp.psn : qp.resp.psn;
      const pp = r.int(4);
      psn = pp < 2 ? base : pp === 2 ? (base + r.int(9) - 4) & 0xffffff : r.int(1 << 24);
    }
    if (live && kind.endsWith('peer') && mask & Op.RESP && this.liveResponses) psn = (qp.comp.psn + r.int(64) - 8) & 0xffffff;
    const mtu = qp.pathMtu;
    let payloadLen: number;
    const pk = OPCODES[opcode]?.payload ?? 0;
    if (r.int(5) === 0) payloadLen = r.int(mtu + 64);
    else if (pk === 1) payloadLen = mtu;
    else if (pk === 2) payloadLen = 1 + r.int(mtu);
    else if (pk === 3) payloadLen = r.int(mtu + 1);
    else if (pk === 4) payloadLen = 8;
    else payloadLen = 0;
    // DMA length: half the time one the payload agrees with (an ONLY packet carrying all of it, a
    // FIRST packet starting a longer message), so writes really happen; else anything.
    const lenPick = r.int(8);
    const dmaLen =
      lenPick < 4 && mask & Op.START
        ? mask & Op.END
          ? payloadLen
          : payloadLen + 1 + r.int(2 * mtu)
        : lenPick === 4
          ? 0
          : lenPick === 5
            ? r.next()
            : r.int(3 * mtu);
    // R_Key and VA: a real region's (random offset; or ending right at the region's end, give or
    // take 2 bytes, or starting just before it), or random.
    const mr = this.pick(t.mrs);
    const real = r.int(5) < 3;
    const place = r.int(4);
    const span = mask & Op.ATOMIC ? 8 : dmaLen;
    const off = place < 2 ? r.int(mr.length + 1) : place === 2 ? mr.length - span + (mask & Op.ATOMIC ? 8 * (r.int(3) - 1) : r.int(5) - 2) : -1 - r.int(64);
    const va = real ? BigInt.asUintN(64, mr.addr + BigInt(off)) : r.int(2) ? r.big64() : this.pick(t.mrs).addr + BigInt(r.int(1 << 20));
    const rkey = real ? mr.rkey : r.int(8) === 0 ? 0 : r.next();
    const payload = r.bytes(payloadLen);
    const has = (h: number): boolean => (mask & hdrBit(h as 0)) !== 0;
    let destQp = qp.qpn;
    if (kind === 'well-formed to no QP')
      for (destQp = this.pick([0, 0xffffff, r.int(1 << 24)]); t.dev.qps.has(destQp) || destQp === 1;) destQp = r.int(1 << 24);
    const init: Parameters<typeof makeIb>[0] = {
      opcode,
      destQp,
      psn,
      ackReq: r.int(2) === 0,
      se: r.int(10) === 0,
      pkey: r.int(50) === 0 ? r.int(0x10000) : 0xffff,
      payload,
    };
    if (has(Hdr.DETH)) init.deth = { qkey: r.int(4) ? qp.qkey : r.next(), srcQp: r.int(1 << 24) };
    if (has(Hdr.RETH)) init.reth = { va, rkey, dmaLen: dmaLen >>> 0 };
    // An ACK from the peer's own address with a PSN in the requester's window is the peer's word: a
    // fatal NAK or a reserved AETH type there moves the QP to ERR (IBA 9.7.5.2, as rxe's
    // check_ack), which no receiver can tell from a forgery. There it says ACK, RNR NAK or PSN
    // sequence NAK, which the transfer must survive; the fatal syndromes go everywhere else.
    const peerWindow = live && kind.endsWith('peer') && (mask & Op.RESP) !== 0 && this.liveResponses && opcode === OPC.RC_ACKNOWLEDGE;
    if (has(Hdr.AETH))
      init.aeth = {
        syndrome: peerWindow
          ? this.pick([0x00, 0x1f, 0x20 | r.int(32), 0x60])
          : this.pick([0x00, 0x1f, 0x20 | r.int(32), 0x60, 0x61, 0x62, 0x63, 0x64, r.int(256)]),
        msn: r.int(1 << 24),
      };
    if (has(Hdr.ATMETH)) init.atomicEth = { va: r.int(4) ? va & ~7n : va, rkey, swapAdd: r.big64(), compare: r.big64() };
    if (has(Hdr.ATMACK)) init.atomicAck = { origData: r.big64() };
    if (has(Hdr.IMMDT)) init.immDt = r.next();
    if (has(Hdr.IETH)) init.ieth = r.int(2) ? this.pick(t.mrs).rkey : r.next();
    if (has(Hdr.FETH)) init.feth = { selectivity: r.int(4), placement: r.int(16) };
    if (has(Hdr.RDETH)) init.rdeth = r.int(1 << 24);
    const srcPort = r.int(4) ? 4791 : 49152 + r.int(16384);
    const ok = src.split('.').length === 4 && src.split('.').every((x) => x !== '' && Number(x) <= 255);
    let buf: Buffer;
    try {
      buf = ok ? ibBytes(src, t.devIp, srcPort, init) : ibBytes('10.9.9.9', t.devIp, srcPort, init);
    } catch (e) {
      throw new Error(
        `fuzzer: framing could not build ${JSON.stringify(init, (_k, x: unknown) => (typeof x === 'bigint' ? x.toString() : x instanceof Uint8Array ? x.length : x))}: ${(e as Error).message}`,
        { cause: e },
      );
    }
    return { buf, src, srcPort, dstIp: t.devIp, kind };
  }
}

// ---------------------------------------------------------------- the run ---

function goldenIbPackets(): Buffer[] {
  const out: Buffer[] = [];
  for (const f of goldenFiles()) {
    for (const rec of readCapture(readFileSync(f)).records) {
      const d = Buffer.from(rec.data);
      if (d.length < 14 + 20 + 8 + 16 || d.readUInt16BE(12) !== 0x0800) continue;
      const ihl = (d[14]! & 15) * 4;
      if (d[23] !== 17 || d.readUInt16BE(14 + ihl + 2) !== 4791) continue;
      out.push(d.subarray(14 + ihl + 8));
    }
  }
  return out;
}

/** A fingerprint of a QP's transport state: a datagram that changed it was acted on. */
function fingerprint(qp: Qp | null | undefined, out: number[]): void {
  out.length = 0;
  if (!qp) return;
  const r = qp.resp;
  out.push(
    r.psn,
    r.msn,
    r.lastOp,
    r.offset,
    r.nakPsn,
    r.oosMax,
    r.oosCount,
    r.dropMsg ? 1 : 0,
    r.reads.length,
    r.backlog.length,
    r.ackPending ? 1 : 0,
    r.resid,
    r.wqe ? 1 : 0,
    qp.comp.psn,
    qp.req.psn,
    qp.sqHead,
    qp.rqHead,
    qp.rqCount,
    qp.comp.retryCnt,
    qp.comp.rnrRetry,
    qp.commEst ? 1 : 0,
    qp.recvCq.length,
    qp.sendCq.length,
    ['RESET', 'INIT', 'RTR', 'RTS', 'SQD', 'SQE', 'ERR'].indexOf(qp.state),
  );
}

function describe(d: Datagram): string {
  const b = d.buf;
  const hex = b.subarray(0, 64).toString('hex') + (b.length > 64 ? `…(${b.length} B)` : '');
  return `${d.kind} from ${d.src || '""'}:${d.srcPort}: ${hex}`;
}

function counterDelta(dev: Device, before: Record<string, number>, into: Record<string, number>): void {
  const now = dev.counters();
  for (const n of COUNTER_NAMES) {
    if (n === 'sent_pkts' || n === 'rdma_sends' || n === 'rdma_recvs') continue;
    const d = now[n]! - (before[n] ?? 0);
    if (d) into[n] = (into[n] ?? 0) + d;
  }
}

interface Rig {
  p: Pair;
  transfer: Transfer;
  targets: Target[];
  before: Record<string, number>[];
}

async function makeRig(mode: 'mem' | 'udp', addrs: [string, string], fuzzIp: string, seed: number): Promise<Rig> {
  const p = await makePair({ mode, addrs, guard: true, memSize: MEM, mtu: 1024, timeout: 8, sendWr: 64, recvWr: 128, maxRdAtomic: 16, minRnrTimer: 1 });
  const transfer = new Transfer(p, seed);
  // Idle regions of the live PDs: full access, never named by the transfer; nobody may change them.
  const idle = (pd: Pd, s: number): { name: string; mr: Mr; snap: Buffer } => {
    const mem = p.guarded(8192);
    const g = new Rng(s);
    for (let i = 0; i < mem.length; i++) mem[i] = g.next() & 0xff;
    return { name: 'live PD, idle, all access', mr: pd.regMr(mem, [...ALL_ACCESS]), snap: Buffer.from(mem) };
  };
  const targets: Target[] = [];
  for (const [side, ip] of [
    [p.b, addrs[1]],
    [p.a, addrs[0]],
  ] as const) {
    const victims = new Victims(p, side.dev, fuzzIp, seed ^ ipNumHash(ip));
    victims.untouchable.push(idle(side.pd, seed + 7));
    const mrs = [p.a.mr, p.b.mr, victims.scratch, ...victims.untouchable.map((u) => u.mr)];
    victims.mrs = mrs;
    targets.push({
      dev: side.dev,
      devIp: ip,
      live: { qp: side.qp, peerIp: side === p.a ? addrs[1] : addrs[0], requester: side === p.a },
      victims,
      mrs,
      fuzzIp,
    });
  }
  return { p, transfer, targets, before: targets.map((t) => t.dev.counters()) };
}

function ipNumHash(ip: string): number {
  return ip.split('.').reduce((h, x) => (h * 31 + Number(x)) >>> 0, 7);
}

export async function runLiveFuzz(o: FuzzOptions): Promise<FuzzResult> {
  const log = o.log ?? ((): void => {});
  const seeds = goldenIbPackets();
  if (seeds.length < 100) throw new Error(`only ${seeds.length} RoCEv2 packets in the golden captures`);
  const res: FuzzResult = {
    packets: 0,
    memPackets: 0,
    udpPackets: 0,
    timeMs: 0,
    packetsPerSec: 0,
    kinds: {},
    thrown: [],
    rounds: 0,
    transferProblems: [],
    memoryProblems: [],
    drops: {},
    outcomes: {},
    silent: 0,
    acceptedBy: {},
    silentBy: {},
    silentExamples: [],
    accounting: [],
    udp: { sent: 0, rcvdPkts: 0 },
  };
  const udpN = Math.round(o.packets * o.udpShare);
  const memN = o.packets - udpN;
  const t0 = performance.now();
  const thrown = (where: string, e: unknown, d?: Datagram): void => {
    if (res.thrown.length < 20) res.thrown.push(`${where}: ${(e as Error)?.stack ?? String(e)}${d ? `\n    packet: ${describe(d)}` : ''}`);
  };

  // ---- in memory, on the fake clock
  {
    const rig = await makeRig('mem', ['10.0.0.1', '10.0.0.2'], '10.0.0.9', o.seed);
    const { p, transfer } = rig;
    const fake = p.fake!;
    const net = p.net!;
    const delivered = new Map<string, number>();
    // The last packets the live QPs sent each other and the last forgeries aimed at them: printed
    // when the transfer breaks, to find the datagram that broke it.
    const wire: string[] = [];
    const forged: string[] = [];
    const keep = (a: string[], x: string): void => {
      a.push(x);
      if (a.length > 16) a.shift();
    };
    const brief = (b: Buffer): string =>
      `${OPCODES[b[0]!]?.name ?? b[0]} psn ${((b[9]! << 16) | (b[10]! << 8) | b[11]!).toString(16)}${b.length > 12 ? ` ${b.subarray(12, Math.min(b.length, 40)).toString('hex')}` : ''}`;
    let broken = false;
    const watch = (): void => {
      if (broken || (p.a.qp.state !== 'ERR' && p.b.qp.state !== 'ERR')) return;
      broken = true;
      res.transferProblems.push(
        `in memory: a live QP went to ERR at ${fake.now().toFixed(3)} ms (a ${p.a.qp.state}, b ${p.b.qp.state}); last packets between them:\n      ${wire.join('\n      ')}\n    last forgeries at them:\n      ${forged.join('\n      ')}`,
      );
    };
    net.filter = (pkt, src, dst) => {
      delivered.set(dst, (delivered.get(dst) ?? 0) + 1);
      if (pkt.length >= 12 && (src === '10.0.0.1' || src === '10.0.0.2') && (dst === '10.0.0.1' || dst === '10.0.0.2'))
        keep(wire, `${fake.now().toFixed(3)} ${src} → ${dst}: ${brief(pkt)}`);
      return true;
    };
    const links = rig.targets.map((t) => net.links.get(`${t.devIp}:4791`) as MemLink);
    const f = new Factory(o.seed + 1, seeds, o);
    const pickRng = new Rng(o.seed + 5);
    const prev = new Float64Array(COUNTER_NAMES.length);
    const fpA: number[] = [],
      fpB: number[] = [];
    const qpOf = (t: Target, buf: Buffer): Qp | null | undefined => {
      if (buf.length < 12) return null;
      const qpn = (buf[5]! << 16) | (buf[6]! << 8) | buf[7]!;
      return qpn === 1 ? t.dev.gsi : t.dev.qps.get(qpn);
    };
    const SENT = IDX('sent_pkts');
    const history = new Map<Qp, string[]>();
    const injected = rig.targets.map(() => 0);
    let sent = 0;
    let chunk = 0;
    const pump = (): void => {
      if (chunk <= 0 || sent >= memN) return;
      chunk--;
      sent++;
      const ti = pickRng.int(4) === 0 ? 1 : 0; // mostly the responder's device
      const t = rig.targets[ti]!;
      let d: Datagram;
      try {
        d = f.next(t);
      } catch (e) {
        thrown('fuzzer', e);
        fake.defer(pump);
        return;
      }
      res.kinds[d.kind] = (res.kinds[d.kind] ?? 0) + 1;
      const v = t.dev.ports[0]!.counters.counts;
      prev.set(v);
      const qp = qpOf(t, d.buf);
      fingerprint(qp, fpA);
      injected[ti]!++;
      try {
        links[ti]!.receive(d.buf, d.buf.length, d.src, d.srcPort);
      } catch (e) {
        const h = qp ? history.get(qp) : undefined;
        thrown(
          `receive path threw (${qp ? `${qp.type} QP ${qp.qpn} of ${t.devIp}, now ${qp.state}` : 'no QP'}; the datagrams it took before this one: ${h ? `\n      ${h.join('\n      ')}` : 'none'})`,
          e,
          d,
        );
      }
      let outcome = '';
      for (let k = 0; k < DROP_IDX.length; k++)
        if (v[DROP_IDX[k]!] !== prev[DROP_IDX[k]!]) {
          outcome = DROP_COUNTERS[k]!;
          break;
        }
      if (!outcome) {
        fingerprint(qp, fpB);
        const changed = fpA.length !== fpB.length || fpA.some((x, i) => x !== fpB[i]);
        if (qp && fpB[9]! > fpA[9]!) outcome = 'queued behind READ responses';
        else if (changed || v[SENT] !== prev[SENT]) {
          outcome = 'accepted';
          const key = `${qp ? `${qp.type} ${qp.state}` : 'no QP'} ${OPCODES[d.buf[0]!]?.name ?? 'undefined opcode'}`;
          res.acceptedBy[key] = (res.acceptedBy[key] ?? 0) + 1;
        } else {
          outcome = 'silent';
          res.silent++;
          const key = `${qp ? `${qp.type} ${qp.state}` : 'no QP'} ${OPCODES[d.buf[0]!]?.name ?? 'undefined opcode'}${d.src === t.live.peerIp || d.src === t.fuzzIp ? '' : ' (wrong source)'}`;
          res.silentBy[key] = (res.silentBy[key] ?? 0) + 1;
          if (res.silentExamples.length < 12) res.silentExamples.push(`${qp ? `${qp.type} QP ${qp.qpn} in ${qp.state}` : 'no QP'}: ${describe(d)}`);
        }
      }
      res.outcomes[outcome] = (res.outcomes[outcome] ?? 0) + 1;
      if (qp) {
        // Per QP, the last datagrams and what became of them: a throw is reported with the sequence that led to it.
        let h = history.get(qp);
        if (!h) history.set(qp, (h = []));
        h.push(
          `${outcome}: ${OPCODES[d.buf[0]!]?.name ?? d.buf[0]} psn ${((d.buf[9]! << 16) | (d.buf[10]! << 8) | d.buf[11]!).toString(16)} (${d.buf.length} B) from ${d.src}`,
        );
        if (h.length > 6) h.shift();
      }
      try {
        if (t.victims.revive(qp)) history.get(qp!)?.push('(re-armed: RESET, then back to its state)');
      } catch (e) {
        thrown('re-arming a victim QP', e);
      }
      if (qp === p.a.qp || qp === p.b.qp)
        keep(forged, `${fake.now().toFixed(3)} ${outcome}: ${d.kind} from ${d.src} → ${t.devIp} QP ${qp.qpn}: ${brief(d.buf)}`);
      watch();
      fake.defer(pump);
    };
    let lastRearm = 0;
    let idleSteps = 0;
    while (sent < memN) {
      if (!transfer.active) transfer.start();
      chunk = 256;
      fake.defer(pump);
      try {
        fake.advance(0.05);
      } catch (e) {
        thrown('deferred transport work threw', e);
      }
      watch();
      transfer.step();
      if (sent - lastRearm >= 4096) {
        lastRearm = sent;
        for (const t of rig.targets) t.victims.rearm();
      }
      if (sent >= memN) break;
      if (++idleSteps % 512 === 0) log(`mem: ${sent}/${memN} datagrams, ${transfer.rounds} rounds`);
    }
    // Let the last round finish (bounded in fake time).
    for (let ms = 0; ms < 20_000 && transfer.active; ms += 1) {
      try {
        fake.advance(1);
      } catch (e) {
        thrown('deferred transport work threw', e);
      }
      transfer.step();
    }
    if (transfer.active) res.transferProblems.push(`in memory: the last round did not finish in 20 s of fake time: ${transfer.stuck}`);
    res.rounds += transfer.rounds;
    res.transferProblems.push(...transfer.problems.map((m) => `in memory: ${m}`));
    res.memoryProblems.push(...p.checkGuards().map((m) => `in memory: ${m}`));
    for (const t of rig.targets) res.memoryProblems.push(...t.victims.check().map((m) => `in memory: ${m}`));
    rig.targets.forEach((t, i) => {
      counterDelta(t.dev, rig.before[i]!, res.drops);
      res.accounting.push({
        device: t.devIp,
        rcvdPkts: t.dev.counters()['rcvd_pkts']! - rig.before[i]!['rcvd_pkts']!,
        delivered: (delivered.get(t.devIp) ?? 0) + injected[i]!,
      });
    });
    res.memPackets = sent;
    net.filter = null;
    await p.close();
  }

  // ---- over real UDP loopback
  if (udpN > 0) {
    const rig = await makeRig('udp', ['127.0.91.1', '127.0.91.2'], '127.0.91.3', o.seed + 2);
    const { p, transfer } = rig;
    const t = rig.targets[0]!;
    const onUncaught = (e: unknown): void => thrown('uncaught (UDP receive path)', e);
    process.on('uncaughtException', onUncaught);
    const bind = (ip: string): Promise<Socket> =>
      new Promise((resolve, reject) => {
        const s = createSocket('udp4');
        s.once('error', reject);
        s.bind({ address: ip, port: 0 }, () => resolve(s));
      });
    // Sockets at the victims' peer address, at the live requester's address (a spoof of the
    // right peer: check_addr compares the address, not the port), and at an address nobody uses.
    const socks = new Map<string, Socket>([
      ['127.0.91.3', await bind('127.0.91.3')],
      ['127.0.91.1', await bind('127.0.91.1')],
      ['127.0.91.4', await bind('127.0.91.4')],
    ]);
    const f = new Factory(o.seed + 3, seeds, { ...o, responsesToLiveRequester: false });
    const before = t.dev.counters()['rcvd_pkts']!;
    let sent = 0;
    try {
      while (sent < udpN) {
        if (!transfer.active) transfer.start();
        for (let k = 0; k < 32 && sent < udpN; k++) {
          const d = f.next(t);
          // The socket decides the source: use the one whose address the datagram claims, else the stranger's.
          const sock = socks.get(d.src) ?? socks.get('127.0.91.4')!;
          const port = sock.address().port;
          const src = socks.has(d.src) ? d.src : '127.0.91.4';
          // Well-formed and re-addressed packets keep a valid ICRC for the socket's real source.
          if (d.kind.startsWith('well-formed') || d.kind.startsWith('golden,')) reseal(d.buf, src, t.devIp, port);
          sock.send(d.buf, 4791, t.devIp);
          res.kinds[`udp: ${d.kind}`] = (res.kinds[`udp: ${d.kind}`] ?? 0) + 1;
          sent++;
        }
        transfer.step();
        await new Promise((r) => setTimeout(r, 1));
        if (sent % 8192 < 32) t.victims.rearm();
      }
      const end = performance.now() + 60_000;
      while (transfer.active && performance.now() < end) {
        transfer.step();
        await new Promise((r) => setTimeout(r, 2));
      }
      await new Promise((r) => setTimeout(r, 50));
    } finally {
      process.off('uncaughtException', onUncaught);
      for (const s of socks.values()) s.close();
    }
    if (transfer.active) res.transferProblems.push(`over UDP: the last round did not finish in 60 s: ${transfer.stuck}`);
    res.rounds += transfer.rounds;
    res.transferProblems.push(...transfer.problems.map((m) => `over UDP: ${m}`));
    res.memoryProblems.push(...p.checkGuards().map((m) => `over UDP: ${m}`));
    for (const x of rig.targets) res.memoryProblems.push(...x.victims.check().map((m) => `over UDP: ${m}`));
    rig.targets.forEach((x, i) => counterDelta(x.dev, rig.before[i]!, res.drops));
    res.udp = { sent, rcvdPkts: t.dev.counters()['rcvd_pkts']! - before };
    res.udpPackets = sent;
    await p.close();
  }
  res.packets = res.memPackets + res.udpPackets;
  res.timeMs = performance.now() - t0;
  res.packetsPerSec = Math.round(res.packets / (res.timeMs / 1000));
  return res;
}

export function report(r: FuzzResult): string {
  const lines = [
    `packets: ${r.packets} (${r.memPackets} in memory on the fake clock, ${r.udpPackets} over UDP loopback)`,
    `time: ${(r.timeMs / 1000).toFixed(1)} s, ${r.packetsPerSec} packets/s`,
    `transfer rounds checked byte for byte: ${r.rounds}`,
    'kinds:',
    ...Object.entries(r.kinds)
      .sort((a, b) => b[1] - a[1])
      .map(([k, n]) => `  ${k}: ${n}`),
    'receive counters (all traffic, fuzzed devices):',
    ...Object.entries(r.drops)
      .sort((a, b) => b[1] - a[1])
      .map(([k, n]) => `  ${k}: ${n}`),
    'outcome of each in-memory datagram:',
    ...Object.entries(r.outcomes)
      .sort((a, b) => b[1] - a[1])
      .map(([k, n]) => `  ${k}: ${n}`),
    `accepted, by QP type, state after, opcode: ${Object.keys(r.acceptedBy).length} kinds, e.g. ${Object.entries(r.acceptedBy)
      .sort((a, b) => b[1] - a[1])
      .slice(0, 8)
      .map(([k, n]) => `${k} ${n}`)
      .join('; ')}`,
    ...r.accounting.map((a) => `accounting ${a.device}: rcvd_pkts ${a.rcvdPkts}, datagrams delivered ${a.delivered}`),
    `udp: ${r.udp.sent} sent, rcvd_pkts ${r.udp.rcvdPkts} at the target`,
    `thrown: ${r.thrown.length}`,
    ...r.thrown.map((x) => `  ${x}`),
    `transfer problems: ${r.transferProblems.length}`,
    ...r.transferProblems.map((x) => `  ${x}`),
    `memory problems: ${r.memoryProblems.length}`,
    ...r.memoryProblems.map((x) => `  ${x}`),
    `silent (no counter, no effect): ${r.silent}`,
    ...Object.entries(r.silentBy)
      .sort((a, b) => b[1] - a[1])
      .map(([k, n]) => `  ${k}: ${n}`),
    'examples:',
    ...r.silentExamples.map((x) => `  ${x}`),
  ];
  return lines.join('\n');
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const n = Number(process.env['SOFTROCE_FUZZ_N'] ?? 1_000_000);
  const seed = Number(process.env['SOFTROCE_SEED'] ?? Date.now() % 1_000_000);
  console.log(`live receive-path fuzz: ${n} datagrams, seed ${seed} (SOFTROCE_SEED=${seed} replays it)`);
  const r = await runLiveFuzz({ packets: n, seed, udpShare: 0.02, log: (s) => console.log(s) });
  console.log(report(r));
  const bad = r.thrown.length + r.transferProblems.length + r.memoryProblems.length;
  process.exitCode = bad ? 1 : 0;
}
