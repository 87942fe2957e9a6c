/**
 * The scheduling of the requesters' work over one device (rxe runs one tasklet per QP; here every
 * QP of a device shares one event loop): the run queue of kicked QPs, the bound on packets per
 * run and per turn of the event loop, the device's share of unacknowledged RC packets (holdNew),
 * the ACK timers held while a QP waits in our own queues (park), and the fan-out when a link's
 * tx pool drains or its socket held packets late. Transport logic: it moved here from the verbs
 * Device, which owns one Engine and forwards kick / waitTx / holdNew to it.
 */
import { psnDiff } from '../psn.js';
import { Ctr } from '../counters.js';
import { runRequester } from './requester.js';
import { ackTimeoutMs, armRetransmit } from './retry.js';
import { runReads } from './responder.js';
import type { TimerHandle } from '../sched.js';
import type { PortLike, TransportDevice, TransportQp } from './types.js';

/**
 * Requester packets per turn of the event loop, over all QPs of a device (4 MiB at MTU 4096: a
 * few ms of work, a quarter of the 1,024-buffer tx pool per turn).
 */
const TURN_PACKETS = 256;
/** Packets per requester run: a QP alone (or with few others) and when many QPs wait behind it. */
const RUN_PACKETS = 64;
const RUN_PACKETS_CONTENDED = 16;
/** Unacknowledged RC packets over a device before new messages wait (2 MiB .. 256 KiB at MTU 4096): see Engine.holdNew. */
const INFLIGHT_MAX = 512;
const INFLIGHT_MIN = 64;

export class Engine {
  private readonly host: TransportDevice;
  constructor(host: TransportDevice) {
    this.host = host;
  }

  /**
   * schedule the requester of a QP (rxe_sched_task): on a later turn of the event loop
   * (the transport's own re-runs: bounded work per turn), or, for a post from the application
   * (`soon`), as soon as the caller's stack unwinds: the packets leave in the same turn, without
   * waiting for the loop's check phase (a SEND answering a receive goes out at once).
   */
  kick(qp: TransportQp, soon = false): void {
    if (this.host.closed) return;
    this.park(qp);
    if (qp.req.scheduled) {
      // Already queued for a deferred pump (an ACK in this receive batch kicked it): a post still
      // runs it as soon as the stack unwinds, or the packet would wait for the check phase and
      // leave after the turn's send batch (the coalesced ACK) in a second sendmmsg.
      if (!soon) return;
    } else if (!soon && qp.req.nextWqe >= qp.sqTail) {
      // Nothing left to send (an ACK for the last message): its run would only recount its
      // packets in flight and let held QPs go. Do that now instead of a setImmediate per ACK
      // (a ping-pong's extra loop phase and zero-timeout epoll_pwait per round trip).
      this.account(qp);
      this.releaseHeld();
      return;
    } else {
      qp.req.scheduled = true;
      this.runq[this.runqTail++] = qp;
    }
    if (soon && this.turnLeft > 0) {
      if (!this.pumpSoonPending) {
        this.pumpSoonPending = true;
        this.host.sched.soon(this.pumpSoonFn);
      }
    } else if (!this.pumpPending) {
      this.pumpPending = true;
      this.host.sched.defer(this.pumpFn);
    }
  }

  /**
   * Per port (by number): QPs whose requester found the link's tx pool empty, in the order they
   * found it, served first-come on 'drain'; and those that did send in that run before the pool
   * ran dry, served after the others.
   */
  private readonly txWait: TransportQp[][] = [];
  private readonly txWaitBack: TransportQp[][] = [];

  /** the requester of `qp` found the tx pool of `port` empty: it runs again on 'drain', in its turn */
  waitTx(qp: TransportQp, port: PortLike, sentSome: boolean): void {
    this.park(qp);
    if (qp.req.waitingDrain) return;
    qp.req.waitingDrain = true;
    const lists = sentSome ? this.txWaitBack : this.txWait;
    (lists[port.num] ??= []).push(qp);
  }

  /**
   * Unacknowledged RC packets over all QPs of the device, as last seen when each QP ran (an ACK
   * kicks its QP, so the count catches up on its next run; until then it errs high). When it
   * reaches the device's share (`cap`), no QP starts a new message (one under way finishes: its last
   * packet asks for the ACK that frees the share) until ACKs bring it down; the QPs held wait
   * in FIFO order. Why: each QP's window (128 PSNs) bounds that QP, not the sum: 4,000 QPs may
   * have 500,000 packets out at once, far beyond the peer's socket buffer (4 MB, ~1,000 packets
   * of MTU 4096), and the datagrams it drops come back as go-back-N resends (issue 10: 40-97%
   * duplicates). Like TCP's cwnd shared by an aggregate, without touching any packet.
   */
  private inflight = 0;
  /**
   * The share itself, AIMD as TCP's window for the whole device: halved (down to INFLIGHT_MIN)
   * when a QP retried (an ACK timeout or a NAK: the peer or the path could not keep up), grown by
   * 8 packets per clean 2 ms up to INFLIGHT_MAX. A fixed 512 overran a 4.2 ms timeout (timeout
   * 10) on a loaded host; a fixed 128 cost a third of the throughput at timeout 14.
   */
  private cap = INFLIGHT_MAX;
  private capAt = 0;
  private capRetries = 0;
  private adjustCap(): void {
    const now = this.host.sched.now();
    if (now - this.capAt < 2) return;
    this.capAt = now;
    let r = 0;
    for (const p of this.host.ports) r += p.counters.counts[Ctr.completer_retry_err]!;
    if (r !== this.capRetries) this.cap = Math.max(INFLIGHT_MIN, this.cap >> 1);
    else if (this.cap < INFLIGHT_MAX) this.cap += 8;
    this.capRetries = r;
  }
  /** the QPs with packets in flight (each one's count: req.accounted, its index here: req.busyAt) */
  private readonly busy: TransportQp[] = [];
  /** the QPs held (FIFO from capWaitHead) */
  private readonly capWait: TransportQp[] = [];
  private capWaitHead = 0;
  private readonly capWaitSet = new Set<TransportQp>();
  private recountAt = -Infinity;
  /** the requester asks before a new message of an RC QP: true = wait (the QP is queued) */
  holdNew(qp: TransportQp): boolean {
    // This QP's own count as it is now (it is running: what it sent in this run counts).
    const mine = Math.max(0, psnDiff(qp.req.psn, qp.comp.psn));
    if (this.inflight - qp.req.accounted + mine < this.cap) return false;
    // Counts go stale when a QP leaves without a last run (close, error): recount now and then.
    const now = this.host.sched.now();
    if (now - this.recountAt > 5) {
      this.recountAt = now;
      this.recount();
      if (this.inflight - qp.req.accounted + mine < this.cap) return false;
    }
    if (!this.capWaitSet.has(qp)) {
      this.capWaitSet.add(qp);
      this.capWait.push(qp);
    }
    return true;
  }
  private account(qp: TransportQp): void {
    const cur = qp.type === 'RC' && !qp.closed && (qp.state === 'RTS' || qp.state === 'SQD') ? Math.max(0, psnDiff(qp.req.psn, qp.comp.psn)) : 0;
    const r = qp.req;
    const old = r.accounted;
    if (cur === old) return;
    this.inflight += cur - old;
    r.accounted = cur;
    if (cur > 0 && r.busyAt < 0) {
      r.busyAt = this.busy.length;
      this.busy.push(qp);
    } else if (cur === 0 && r.busyAt >= 0) {
      // Swap-remove: a QP joins and leaves at every message of a ping-pong, and a Map's
      // delete-then-set shrank and regrew its table each time (two allocations; issue 15).
      const last = this.busy.pop()!;
      if (last !== qp) {
        this.busy[r.busyAt] = last;
        last.req.busyAt = r.busyAt;
      }
      r.busyAt = -1;
    }
  }
  private recount(): void {
    // From the end: account() may move the last one into the slot it frees, already seen.
    for (let i = this.busy.length - 1; i >= 0; i--) if (i < this.busy.length) this.account(this.busy[i]!);
  }
  private capTimer: TimerHandle | null = null;
  /**
   * ACKs freed part of the device's share: the QPs held get their turn, first come first, as many
   * as the freed part takes at a contended run's packets each (at least one). Waking every held QP
   * at each ACK let the first take the share again and the rest (up to ~1,000) run only to be held
   * again, each run costing a token of the turn's budget: most of a turn went on runs that sent
   * nothing (issue 15's 1,000-QP case).
   */
  private releaseHeld(): void {
    const w = this.capWait;
    let free = this.cap - this.inflight;
    while (free > 0 && this.capWaitHead < w.length) {
      const qp = w[this.capWaitHead]!;
      w[this.capWaitHead++] = undefined as unknown as TransportQp;
      this.capWaitSet.delete(qp);
      if (qp.closed) continue;
      free -= RUN_PACKETS_CONTENDED;
      this.kick(qp);
    }
    if (this.capWaitHead === w.length) {
      w.length = 0;
      this.capWaitHead = 0;
    } else if (this.capWaitHead >= 1024 && this.capWaitHead * 2 >= w.length) {
      w.splice(0, this.capWaitHead);
      this.capWaitHead = 0;
    }
  }

  /**
   * QPs whose ACK timer (and tail-loss probe) is held while they wait in our own queues with
   * packets still to send (issue 10 item 3). A timeout then would be for nothing: the packets
   * that left asked for no ACK yet (AckReq comes with the last packet of a message or every
   * 32 packets), the ones that will ask are still here, and any loss among those that left shows
   * as a sequence NAK once the next one arrives. With thousands of QPs one round over all of them
   * takes longer than the timeout (4 ms at timeout 10), so the timer fired for whole flights
   * that were fine, resent them (duplicates) and spent retry_cnt (RETRY_EXC_ERR). The requester
   * re-arms both per packet it sends (rxe's rule); a run that sends nothing re-arms here.
   */
  private park(qp: TransportQp): void {
    const c = qp.comp;
    if (c.ack.at === Infinity && c.probe.at === Infinity) return;
    if (qp.req.nextWqe >= qp.sqTail || psnDiff(qp.req.psn, c.psn) >= qp.req.window || c.rnrTimer) return; // nothing it could send now
    c.ack.at = Infinity;
    c.probe.at = Infinity;
    c.parked = true; // a flag, not a set: a ping-pong parked and unparked its QP every round trip (issue 15)
  }
  private unpark(qp: TransportQp, wasParked: boolean, sent: number): void {
    // Parked again during the run (more to send, or no tx buffer): nothing to do.
    if (!wasParked || sent > 0 || qp.comp.parked) return;
    const c = qp.comp;
    if (c.ack.at !== Infinity || qp.closed || (qp.state !== 'RTS' && qp.state !== 'SQD') || psnDiff(qp.req.psn, c.psn) <= 0) return;
    // It could not send after all (fence, max_rd_atomic): the ACK timer runs again from now. Not
    // a round-trip sample: no packet left now.
    const sp = c.sampleP,
      st = c.sampleT;
    armRetransmit(qp);
    c.sampleP = sp;
    c.sampleT = st;
  }

  /**
   * The requesters' run queue (rxe runs one tasklet per QP; here every QP shares one event loop):
   * kicked QPs wait in FIFO order and each run sends at most a bounded number of packets, then a
   * QP with more to send goes to the back (requester.ts). The packets sent per turn of the event
   * loop are bounded across all QPs (TURN_PACKETS): the loop gets back to its timers and to the
   * socket, so ACKs are read and completions reported between bursts. Without the bound, one
   * post of 4 WRs on each of 4,000 QPs ran 4,000 x 64 packets in one turn (a loop delay of
   * seconds), and ACK timers fired in the next timers phase, before the ACKs already waiting in
   * the socket were read (issue 10: 97% duplicates).
   */
  /**
   * runq[runqHead, runqTail): emptied by position, never by length = 0, which gives the array's
   * store back so that the next kick allocated a new one (once per pump: issue 15's heap check).
   */
  private readonly runq: TransportQp[] = [];
  private runqHead = 0;
  private runqTail = 0;
  private pumpPending = false;
  private pumpSoonPending = false;
  private refillPending = false;
  /** packets the requesters may still send in this turn of the event loop */
  private turnLeft = TURN_PACKETS;
  private readonly pumpFn = (): void => {
    this.pumpPending = false;
    this.turnLeft = TURN_PACKETS;
    this.pump();
  };
  private readonly pumpSoonFn = (): void => {
    this.pumpSoonPending = false;
    this.pump();
  };
  private readonly refillFn = (): void => {
    this.refillPending = false;
    this.turnLeft = TURN_PACKETS;
  };

  /**
   * Busy polling: the caller spins on the receive sockets without returning to the event loop, so
   * each pass of its spin is a turn: the deferred pump (or the refill of the turn's packet budget)
   * runs now instead of in a check phase that does not come while it spins. The setImmediate
   * already queued for it later finds the budget full and nothing, or little, to do.
   */
  busyTurn(): void {
    if (this.pumpPending) this.pumpFn();
    else if (this.refillPending) this.refillFn();
  }

  private pump(): void {
    this.adjustCap();
    const q = this.runq;
    const start = this.turnLeft;
    while (this.runqHead < this.runqTail && this.turnLeft > 0) {
      const qp = q[this.runqHead]!;
      q[this.runqHead++] = undefined as unknown as TransportQp;
      qp.req.scheduled = false;
      if (qp.closed) {
        qp.comp.parked = false;
        this.account(qp);
        continue;
      }
      this.account(qp);
      // A smaller share per run while many QPs wait, so one round over all of them stays short.
      const waiting = this.runqTail - this.runqHead;
      const budget = waiting >= 64 ? RUN_PACKETS_CONTENDED : RUN_PACKETS;
      const wasParked = qp.comp.parked;
      qp.comp.parked = false;
      const sent = runRequester(qp, budget);
      this.unpark(qp, wasParked, sent);
      this.account(qp);
      // Every run costs at least one token: runs that find nothing to send are bounded too.
      this.turnLeft -= Math.max(1, sent);
    }
    if (this.runqHead === this.runqTail) {
      this.runqHead = this.runqTail = 0;
      // A queue that once held thousands of QPs gives that store back.
      if (q.length > 4096) q.length = 0;
    } else if (this.runqHead >= 1024 && this.runqHead * 2 >= this.runqTail) {
      q.copyWithin(0, this.runqHead, this.runqTail);
      this.runqTail -= this.runqHead;
      q.fill(undefined as unknown as TransportQp, this.runqTail, this.runqTail + this.runqHead);
      this.runqHead = 0;
    }
    if (this.host.closed) {
      q.length = 0;
      this.runqHead = this.runqTail = 0;
      this.capWait.length = 0;
      this.capWaitHead = 0;
      this.capWaitSet.clear();
      for (const qp of this.busy) qp.req.busyAt = -1;
      this.busy.length = 0;
      this.host.sched.clearTimer(this.capTimer);
      this.capTimer = null;
      return;
    }
    this.releaseHeld();
    // A count gone stale (a QP that went to ERR without a last run) must not hold the others
    // forever when no ACK is left to come and run the pump: look again in 5 ms.
    if (this.capWaitHead < this.capWait.length && this.capTimer === null) {
      this.capTimer = this.host.sched.setTimer(5, () => {
        this.capTimer = null;
        if (this.host.closed) return;
        this.recount();
        this.pump();
      });
    }
    if (this.runqTail > this.runqHead) {
      if (!this.pumpPending) {
        this.pumpPending = true;
        this.host.sched.defer(this.pumpFn);
      }
    } else if (this.turnLeft <= TURN_PACKETS / 2 && this.turnLeft < start && !this.refillPending && !this.pumpPending) {
      // Tokens taken outside a deferred pump (an application's post) come back on the next turn,
      // once half are gone: a ping-pong's one post per turn then costs no setImmediate (and no
      // loop phase) each time, and a turn still sends at most TURN_PACKETS.
      this.refillPending = true;
      this.host.sched.defer(this.refillFn);
    }
  }

  /**
   * The link's tx pool has buffers again ('drain'). Requesters: the ones that waited, in the order
   * they found the pool empty, to the back of the run queue (kick), not every QP in creation
   * order: with thousands of QPs the early ones took every freed buffer and the fan-out was
   * O(QPs) per drain. A QP that got buffers last time goes after those that got none
   * (txWaitBack): the first in line would otherwise also be the first to find the pool empty
   * again, and first again. Responders with READ responses still to send go on.
   */
  drained(p: PortLike): void {
    for (const w of [this.txWait[p.num] ?? [], this.txWaitBack[p.num] ?? []]) {
      for (let i = 0; i < w.length; i++) {
        const qp = w[i]!;
        if (qp.req.waitingDrain) {
          qp.req.waitingDrain = false;
          this.kick(qp);
        }
      }
      w.length = 0;
    }
    for (const qp of this.host.qps.values()) {
      if (qp.resp.waitingDrain) {
        qp.resp.waitingDrain = false;
        runReads(qp);
      }
    }
  }

  /**
   * The link holds packets (its socket was full) or sent them only now ('late', `held` ms): an
   * ACK timer armed when a QP handed its last packet over since the wait began measures from now
   * instead, and its tail-loss probe is off for them (issue 10 item 3: no timeout for a packet
   * still in our own queues). The link says so every millisecond while it holds them, and once
   * when done.
   */
  late(p: PortLike, held: number): void {
    const now = this.host.sched.now();
    for (const qp of this.busy) {
      const c = qp.comp;
      if (qp.port !== p.num || c.ack.at === Infinity) continue;
      const rto = ackTimeoutMs(qp.timeout);
      if (c.ack.at - rto < now - held) continue; // its last packet was out before the wait began
      c.ack.at = now + rto;
      c.probe.at = Infinity; // no probe for packets that just left (the ACK timer still guards them)
    }
  }

  /** The device is closing: the run queue's only timer stops. */
  stop(): void {
    this.host.sched.clearTimer(this.capTimer);
    this.capTimer = null;
  }
}
