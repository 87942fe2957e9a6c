/**
 * RoCEv2 over the native addon's own IPv4 UDP socket (native/softroce.cc),
 * bound to the device's address on port 4791 and read with recvmmsg + UDP_GRO
 * on Node's loop; sends go out in per-turn batches (udp-base.ts). The socket
 * has IP_MTU_DISCOVER = IP_PMTUDISC_DO, so Linux sends DF with IPv4 ID 0, the
 * ID our ICRC assumes (a real RoCE peer drops anything else; see the README,
 * "ICRC outcomes"). With CAP_NET_RAW a raw socket also shows each datagram's
 * IPv4 header, so the ICRC is checked with the real IPv4 ID (then without
 * UDP_GRO, except on loopback).
 */
import { closeSync } from 'node:fs';
import { constants as osConstants } from 'node:os';
import type { NativeAddon } from '../../native.js';
import { parseIpv4 } from '../gid.js';
import { VerbsError } from '../errors.js';
import { EAGAIN, UdpLinkBase, type UdpLinkOptions } from './udp-base.js';
import { RX_ICRC_OK, RX_ID_INFERRED, SEG_HDR_STRIDE, type PlacedHandler, type PlacementArm } from './link.js';

const { EADDRINUSE, EADDRNOTAVAIL, EINVAL, EPERM, EACCES, EBADF } = osConstants.errno;

/** Segment sizes whose views a receive slot keeps (more: the slot starts over). */
const RX_SEG_SIZES = 8;

export class NativeLink extends UdpLinkBase {
  protected readonly dropRefused = true;
  // The receive slots the addon fills, and packets waiting for the socket to drain.
  private rxHandle: object | null = null;
  private rxData: Buffer | null = null;
  private rxMeta: Uint32Array | null = null;
  private rxSlots: Buffer[] = [];
  /**
   * Per slot, views of its GRO segments (index k: bytes [k * seg, (k + 1) * seg)), made when a slot
   * first holds a datagram of that segment size and kept while the size stays: each packet goes up
   * in place, with no copy and no new object per packet. (A receiver may not keep the buffer past its
   * call: the slot is overwritten by the next read, as a whole datagram's always was.)
   */
  private rxSegViews: Array<Map<number, Buffer[]>> = [];
  /** RX fast path: per slot, the bitmap (2 words) of segments whose ICRC the addon verified; null: off */
  private rxIcrcOk: Uint32Array | null = null;
  /**
   * RX direct placement (native/place-rx.cc): the words the addon reports in ([0] QPs armed, [1..5]
   * the last placement: QPN, first PSN, packets, bytes each, AckReq on the last); null: off.
   */
  private placeCtl: Uint32Array | null = null;
  private placedRx: PlacedHandler | null = null;
  /** while a batch is handed over: the packet being handed to the receiver (slot, segment) */
  private curSlot = -1;
  private curSeg = 0;
  /** packets from the next position on that the addon placed and that are not reported yet */
  private placeLeft = 0;
  /** the next position was already offered to the addon (by an arm during the last packet) */
  private placeScanned = false;
  /** the placement being reported: its QPN, the next PSN to report, bytes per packet, AckReq on its last */
  private runQpn = 0;
  private runPsn = 0;
  private runPmtu = 0;
  private runAck = false;
  /** the opcode of the placement being reported (place-rx.cc PLACE_CTL_OPCODE) */
  private runOp = 0;
  private lastIpNum = -1;
  private lastIpStr = '';
  private readonly pend: Array<{ buf: Buffer; len: number; ip: string; port: number; tos: number; sport: number }> = [];
  /** when the oldest packet still in `pend` was handed over; -1: none */
  private heldSince = -1;
  /** while packets are held: 'late' every millisecond, so no ACK timer expires over them */
  private lateTimer: NodeJS.Timeout | null = null;

  private constructor(o: UdpLinkOptions) {
    super(o, 'native');
  }

  /** Opens the addon's socket; throws VerbsError (EADDRINUSE, EADDRNOTAVAIL, EPERM, ENODEV) with nothing left open. */
  static open(o: UdpLinkOptions, n: NativeAddon): NativeLink {
    const ip = parseIpv4(o.address);
    const port = o.port ?? 4791;
    const fd = ip < 0 ? -EINVAL : n.udpOpen4!(ip, port, o.socketBufferBytes ?? 4 << 20, o.netdev ?? '');
    // (Sends from a QP's flow port go through the pool of udp-base.ts: udpOpenTx4 sockets, opened on demand.)
    if (fd < 0) {
      // SO_BINDTODEVICE without CAP_NET_RAW: EPERM (or EACCES)
      const devErr = fd === -EPERM || fd === -EACCES;
      const code = fd === -EADDRINUSE ? 'EADDRINUSE' : fd === -EADDRNOTAVAIL ? 'EADDRNOTAVAIL' : devErr ? 'EPERM' : 'ENODEV';
      const what = devErr ? `SO_BINDTODEVICE ${o.netdev ?? ''} failed` : `cannot bind UDP ${o.address}:${port}`;
      throw new VerbsError(code, 'ibv_open_device', `${what} (errno ${-fd})`, code === 'EPERM' ? 'netdev' : 'address');
    }
    const link = new NativeLink(o);
    link.localPort = n.localPort!(fd);
    link.mcaps.ipv4IdZero = true;
    link.mcaps.rxBatch = true; // onNativeRx: one call per recvmmsg batch, microtasks after it
    link.mcastSendFd(fd);
    if (o.netdev) link.mcaps.boundNetdev = o.netdev;
    link.batchOn(n, fd, process.env['SOFTROCE_GSO'] !== '0');
    // The TX fast path (issue 15): on unless turned off for this link or the process.
    if (n.txSegments !== undefined && n.TX_HDR_STRIDE === SEG_HDR_STRIDE && (o.fastPath ?? process.env['SOFTROCE_NO_FASTPATH'] !== '1')) {
      link.sendSegments = (run) => link.sendRunFast(run);
      link.batchStats.fastTxCalls = 0;
      link.batchStats.fastTxPackets = 0;
    }
    const slots = 32,
      slotSize = 65536;
    // Not zero-filled: the kernel writes a slot before JS reads it, and untouched pages of an
    // idle device's 2 MB cost no RSS.
    link.rxData = Buffer.allocUnsafeSlow(slots * slotSize);
    link.rxMeta = new Uint32Array(slots * 4);
    link.rxSlots = Array.from({ length: slots }, (_, i) => link.rxData!.subarray(i * slotSize, (i + 1) * slotSize));
    link.rxSegViews = Array.from({ length: slots }, () => new Map<number, Buffer[]>());
    // inRx: the slots are in use while a batch is handed over (see pollRx).
    const onRx = (k: number): void => {
      link.inRx = true;
      try {
        link.onNativeRx(k);
      } finally {
        link.inRx = false;
      }
    };
    link.rxHandle = n.rxStart!(fd, link.rxData, link.rxMeta, slots, slotSize, onRx);
    if (!link.rxHandle) {
      closeSync(fd); // the bound socket is ours alone: nothing else will ever close it
      throw new VerbsError('ENODEV', 'ibv_open_device', 'native receive path did not start', 'native');
    }
    // RX fast path: the ICRC checked in C in the receive loop (native/fast-rx.cc), read once here.
    // SOFTROCE_NO_FASTPATH=1 leaves every check to recv.ts, as without the addon.
    if (n.rxIcrcStart && ip > 0 && process.env['SOFTROCE_NO_FASTPATH'] !== '1') {
      const ok = new Uint32Array(slots * 2);
      if (n.rxIcrcStart(link.rxHandle, ok, ip, link.localPort) === 0) {
        link.rxIcrcOk = ok;
        link.batchStats.rxIcrcVerified = 0;
      }
    }
    // RX direct placement (issue 15): WRITE MIDDLEs the responder armed the addon for go straight
    // into the MR (place-rx.cc); needs the ICRC verified in C. Off with the fast path, or alone
    // (rxPlacement: false, SOFTROCE_RX_PLACE=0: to compare).
    const fast = o.fastPath ?? process.env['SOFTROCE_NO_FASTPATH'] !== '1';
    if (link.rxIcrcOk !== null && fast && (o.rxPlacement ?? process.env['SOFTROCE_RX_PLACE'] !== '0') && n.rxPlaceStart && n.rxArm && n.rxPlace && n.rxDisarm) {
      const ctl = new Uint32Array(8);
      if (n.rxPlaceStart(link.rxHandle, ctl) === 0) {
        link.placeCtl = ctl;
        link.batchStats.rxPlaced = 0;
        link.armPlacement = (a) => link.arm(a);
        link.disarmPlacement = (qpn) => {
          if (link.rxHandle !== null) n.rxDisarm!(link.rxHandle, qpn);
        };
        link.setPlacedReceiver = (h) => {
          link.placedRx = h;
          if (h === null && link.rxHandle !== null) n.rxDisarm!(link.rxHandle, -1);
        };
      }
    }
    // With CAP_NET_RAW, a raw socket shows each datagram's IPv4 header, so the ICRC is checked
    // with the sender's real ID (all 32 bits) instead of an inferred one (README, "ICRC outcomes").
    // Without it (EPERM) the receive path stays as it is. SOFTROCE_RAW_RX=0 turns it off.
    if (n.rawOpen4 && n.rxAttachRaw && ip > 0 && (o.rawRx ?? 'auto') !== 'off' && process.env['SOFTROCE_RAW_RX'] !== '0') {
      const rfd = n.rawOpen4(ip, link.localPort, o.netdev ?? '', 2 * (o.socketBufferBytes ?? 4 << 20));
      // On loopback (127/8) UDP GRO stays on: nothing is merged there, see rxAttachRaw
      // (SOFTROCE_RAW_GRO=0 turns it off there too, as everywhere else: for tests).
      const keepGro = ip >>> 24 === 127 && process.env['SOFTROCE_RAW_GRO'] !== '0';
      if (rfd >= 0) link.mcaps.rawRx = n.rxAttachRaw(link.rxHandle, rfd, keepGro) === 0;
      if (!link.caps.rawRx && o.rawRx === 'on') throw new VerbsError('EPERM', 'ibv_open_device', `raw receive socket: errno ${-rfd}`, 'rawRx');
    }
    if (n.rxPoll !== undefined) link.pollRx = (): number => link.pollOnce();
    link.followCarrier();
    return link;
  }

  /** Link.armPlacement, set by open() when the addon places (absent otherwise: the per-packet path). */
  armPlacement?: (a: PlacementArm) => boolean;
  disarmPlacement?: (qpn: number) => void;
  setPlacedReceiver?: (h: PlacedHandler | null) => void;

  /**
   * Arms the addon for a QP's next WRITE MIDDLEs. Called by the responder from inside the receiver
   * (while a batch is handed over) the addon places at once from the packet after the one being
   * handled, so the rest of this batch is placed too, in order; from anywhere else it only arms
   * (the next batch is offered from its start). Not a second time for a position already placed
   * from: those packets are the earlier arm's.
   */
  private arm(a: PlacementArm): boolean {
    if (this.rxHandle === null || this.closed || this.placedRx === null || !this.up) return false;
    // Someone records what this link accepts (a test's capture hooks rxAccepted on the link itself):
    // every packet must go by it, none placed.
    if ((this as { rxAccepted?: unknown }).rxAccepted !== undefined) return false;
    const here = this.inRx && this.curSlot >= 0 && this.placeLeft === 0;
    const r = this.native!.rxArm!(
      this.rxHandle,
      a.qpn,
      a.psn,
      a.pmtu,
      a.mem,
      a.off,
      a.budget,
      a.srcIpNum,
      a.srcPort,
      here ? this.curSlot : -1,
      this.curSeg + 1,
      a.opcode,
    );
    if (r < 0) return false;
    if (here) this.tookPlacement(r);
    return true;
  }

  /** The addon placed r packets from the next position on (its ctl words describe them). */
  private tookPlacement(r: number): void {
    this.placeScanned = true;
    this.placeLeft = r;
    if (r === 0) return;
    const ctl = this.placeCtl!;
    this.runQpn = ctl[1]!;
    this.runPsn = ctl[2]!;
    this.runPmtu = ctl[4]!;
    this.runAck = ctl[5]! !== 0;
    this.runOp = ctl[6]!;
  }

  /** true while onNativeRx hands a batch over: the slots are in use (pollRx must not refill them) */
  private inRx = false;

  /** Busy polling (Link.pollRx): set by open() when the addon has rxPoll (an older build has not). */
  pollRx?: () => number;

  /**
   * One non-blocking recvmmsg pass through the addon (rxPoll), what it read handed to the receiver
   * before this returns, through onNativeRx as the event path does. -1 while a batch is being
   * handed over (a receiver that polls from inside it, e.g. a CQ event handler, must not overwrite
   * its slots).
   */
  private pollOnce(): number {
    if (this.inRx) return -1;
    if (this.rxHandle === null || this.closed) return 0;
    const k = this.native!.rxPoll!(this.rxHandle);
    return k > 0 ? k : 0;
  }

  /** k datagrams are in the slots (k < 0: the socket is writable again). */
  private onNativeRx(k: number): void {
    if (k < 0) {
      this.sendPending();
      return;
    }
    const meta = this.rxMeta!;
    const st = this.batchStats;
    st.rxCalls++;
    st.rxDatagrams += k;
    // RX direct placement: before each packet while a QP is armed, the addon is offered the batch
    // from that packet on (rxPlace); what it placed is reported in runs (reportPlaced) and skipped.
    const ctl = this.placeCtl;
    this.placeLeft = 0;
    this.placeScanned = false;
    let runCount = 0,
      runId = 0;
    for (let i = 0; i < k; i++) {
      const len = meta[4 * i]!,
        segw = meta[4 * i + 1]!,
        ipNum = meta[4 * i + 2]!,
        portw = meta[4 * i + 3]!;
      // Raw receive marks a datagram whose IP header it saw: bit 31 known, bit 30 DF, ID in the port word's top half.
      const seg = segw & 0xffff,
        port = portw & 0xffff;
      const ipIdDf = segw & 0x80000000 ? (portw >>> 16) | ((segw >>> 14) & 0x10000) : -1;
      if (len === 0 || !this.rx || !this.up) continue;
      // One string per peer, not per packet.
      if (ipNum !== this.lastIpNum) {
        this.lastIpNum = ipNum;
        this.lastIpStr = `${ipNum >>> 24}.${(ipNum >>> 16) & 0xff}.${(ipNum >>> 8) & 0xff}.${ipNum & 0xff}`;
      }
      const slot = this.rxSlots[i]!;
      // Which segments' ICRC the addon verified (bit k: segment k), and under which ID (fast-rx.cc):
      // the raw socket's, else the one an ID-0 sender's GSO gives segment k.
      const okw = this.rxIcrcOk;
      let okLo = 0,
        okHi = 0;
      if (okw !== null) {
        okLo = okw[2 * i]!;
        okHi = okw[2 * i + 1]!;
      }
      if (seg === 0 || seg >= len) {
        if (ctl !== null && this.placeLeft === 0 && !this.placeScanned && ctl[0]! > 0 && this.placedRx !== null) {
          this.tookPlacement(this.native!.rxPlace!(this.rxHandle!, i, 0));
        }
        if (this.placeLeft > 0) {
          // Placed (the addon verified its ICRC first): counted as the per-packet path counts it.
          st.rxIcrcVerified!++;
          st.rxPlaced!++;
          this.placeLeft--;
          this.reportPlaced(1, ipIdDf < 0 ? 0x10000 | RX_ICRC_OK | RX_ID_INFERRED : ipIdDf | RX_ICRC_OK, port);
          continue;
        }
        this.placeScanned = false;
        this.curSlot = i;
        this.curSeg = 0;
        if (okLo & 1) {
          st.rxIcrcVerified!++;
          this.rx(slot, len, this.lastIpStr, port, ipIdDf < 0 ? 0x10000 | RX_ICRC_OK | RX_ID_INFERRED : ipIdDf | RX_ICRC_OK);
        } else this.rx(slot, len, this.lastIpStr, port, ipIdDf);
        continue;
      }
      // A GRO datagram: equal segments of `seg` bytes, the last one possibly shorter, each handed
      // up in place through a view made once per slot and segment size. A slot sees a few sizes in
      // turn (a WRITE's FIRST carries a RETH, its MIDDLEs not, the LAST is shorter): each size keeps
      // its views, so alternating sizes make no new ones (issue 15: the 60 s heap check).
      const bySize = this.rxSegViews[i]!;
      let views = bySize.get(seg);
      if (views === undefined) {
        if (bySize.size >= RX_SEG_SIZES) bySize.clear();
        views = [];
        bySize.set(seg, views);
      }
      for (let off = 0, k = 0; off < len; off += seg, k++) {
        const l = Math.min(seg, len - off);
        st.rxGroSegments++;
        // Raw receive keeps GRO on loopback only, where a GRO datagram is one GSO send: Linux
        // numbers its segments' IDs on from the first (inet_gso_segment).
        let id = ipIdDf < 0 ? -1 : ((ipIdDf + k) & 0xffff) | (ipIdDf & 0x10000);
        if (ctl !== null && this.placeLeft === 0 && !this.placeScanned && ctl[0]! > 0 && this.placedRx !== null) {
          this.tookPlacement(this.native!.rxPlace!(this.rxHandle!, i, k));
        }
        if (this.placeLeft > 0) {
          st.rxIcrcVerified!++;
          st.rxPlaced!++;
          if (runCount++ === 0) runId = id < 0 ? k | 0x10000 | RX_ICRC_OK | RX_ID_INFERRED : id | RX_ICRC_OK;
          // A run is reported when it ends or at the datagram's end (IDs number on within one).
          if (--this.placeLeft === 0 || off + seg >= len) {
            this.reportPlaced(runCount, runId, port);
            runCount = 0;
          }
          continue;
        }
        this.placeScanned = false;
        this.curSlot = i;
        this.curSeg = k;
        const view = (views[k] ??= slot.subarray(off, off + seg));
        if (k < 32 ? (okLo >>> k) & 1 : k < 64 && (okHi >>> (k - 32)) & 1) {
          st.rxIcrcVerified!++;
          id = id < 0 ? k | 0x10000 | RX_ICRC_OK | RX_ID_INFERRED : id | RX_ICRC_OK;
        }
        this.rx(view, l, this.lastIpStr, port, id);
        if (!this.rx) break;
      }
    }
    this.curSlot = -1;
    this.placeLeft = 0;
    this.placeScanned = false;
  }

  /** count placed packets of the current placement, the first with ipIdDf firstId, to the placed receiver. */
  private reportPlaced(count: number, firstId: number, port: number): void {
    const psn = this.runPsn;
    this.runPsn = (psn + count) & 0xffffff;
    const last = this.placeLeft === 0;
    if (last) this.placeScanned = false; // the next packet is offered again
    // Only the placement's last packet can have asked for an ACK (place-rx.cc ends a run there).
    this.placedRx?.(this.runQpn, psn, count, this.runPmtu, this.runAck && last, this.lastIpStr, port, firstId, this.runOp);
  }

  /** Every send is batched on this socket (send() never gets here). */
  protected sendOne(buf: Buffer, len: number, ip: string, port: number, sport: number): void {
    this.hold(buf, len, ip, port, 0, sport);
  }
  protected sendBlocked(): boolean {
    return false;
  }
  protected override heldPackets(): boolean {
    return this.pend.length > 0;
  }
  protected queueBehind(buf: Buffer, len: number, ip: string, port: number, tos: number, sport: number): boolean {
    if (this.pend.length === 0) return false;
    this.pend.push({ buf, len, ip, port, tos, sport });
    return true;
  }
  protected sendAside(buf: Buffer, len: number, ip: string, port: number, tos: number, sport: number): void {
    this.hold(buf, len, ip, port, tos, sport);
  }

  /**
   * Packets that waited in our queues went out: the ACK timers armed when they were handed over
   * would count the wait (issue 10 item 3), so the device re-arms them ('late', also every 1 ms
   * while the wait lasts, so none expires during it). Only for waits over 1 ms, so a busy socket
   * does not cost a pass over the QPs per send.
   */
  private sentLate(allOut: boolean): void {
    if (this.heldSince < 0) return;
    const held = performance.now() - this.heldSince;
    if (allOut) {
      this.heldSince = -1;
      if (this.lateTimer) {
        clearInterval(this.lateTimer);
        this.lateTimer = null;
      }
    }
    if (held > 1) this.emit('late', held);
  }

  /** Keeps a packet the socket could not take (EAGAIN) until it is writable. */
  private hold(buf: Buffer, len: number, ip: string, port: number, tos: number, sport: number): void {
    if (this.pend.length === 0) {
      this.heldSince = performance.now();
      this.lateTimer ??= setInterval(() => this.emit('late', performance.now() - this.heldSince), 1);
      this.lateTimer.unref();
    }
    this.pend.push({ buf, len, ip, port, tos, sport });
    if (this.pend.length === 1 && this.rxHandle) this.native!.rxWantWrite!(this.rxHandle);
  }

  /**
   * Writable again: sends what waited, in order (one datagram per call: this is the slow path).
   * Writability is watched on the port's own socket; a flow port's socket shares its fate (same
   * route, same buffer size) closely enough for a wake-up. A datagram whose flow socket was closed
   * meanwhile (the pool's cap) is lost and counted (sendErrors), as UDP would lose it.
   */
  private sendPending(): void {
    const wasEmpty = this.pool.available === 0;
    const nat = this.native!;
    let i = 0;
    for (; i < this.pend.length; i++) {
      const p = this.pend[i]!;
      this.sb[0] = p.buf;
      this.sl[0] = p.len;
      const fd = this.fdFor(p.sport);
      const r = fd < 0 ? -EBADF : nat.sendPackets(fd, this.sb, this.sl, 1, parseIpv4(p.ip), p.port, 0, p.tos);
      if (r === -EAGAIN) break;
      if (r < 0) this.sendFailed(r);
      this.pool.release(p.buf);
    }
    this.pend.splice(0, i);
    if (this.pend.length > 0 && this.rxHandle) nat.rxWantWrite!(this.rxHandle);
    if (i > 0) this.sentLate(this.pend.length === 0);
    if (wasEmpty && this.pool.available > 0) this.emit('drain');
  }

  /**
   * Releases the socket (rxStop closes it, and the raw twin) and every buffer, whatever still
   * holds the link object (see DgramLink.close for why that matters).
   */
  async close(): Promise<void> {
    if (this.closed) return;
    this.flushForClose();
    this.releaseQueues();
    if (this.lateTimer) {
      clearInterval(this.lateTimer);
      this.lateTimer = null;
    }
    this.pend.length = 0;
    const h = this.rxHandle;
    this.rxHandle = null;
    if (h) await new Promise<void>((r) => this.native!.rxStop!(h, r));
    this.rxData = null;
    this.rxMeta = null;
    this.rxSlots = [];
    this.rxSegViews = [];
    this.rxIcrcOk = null;
  }
}
