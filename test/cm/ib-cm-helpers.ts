/** Test helpers for the IB CM engine: devices on an in-memory network with a fake clock, a wire tap that
 *  parses every MAD on it, and a "raw" QP1 on a third device that sends hand-made MADs and reads answers. */
import { openDevice, type Device } from '../../src/verbs/device.js';
import { FakeScheduler } from '../../src/roce/sched.js';
import { MemNetwork } from '../../src/roce/link/link.js';
import { ipv4ToGid } from '../../src/roce/gid.js';
import { Wc } from '../../src/verbs/types.js';
import type { Qp } from '../../src/verbs/qp.js';
import type { Cq } from '../../src/verbs/cq.js';
import type { Mr } from '../../src/verbs/mr.js';
import type { Pd } from '../../src/verbs/objects.js';
import { CmAgent, type CmPath, type IbCmEvent } from '../../src/cm/ib-cm.js';
import { parseCmMad, CmMadError, type CmMsg } from '../../src/cm/mad.js';

/** BTH (12) + DETH (8) before the MAD in a UD datagram. */
const UD_HDRS = 20;

export interface WireMad {
  at: number;
  src: string;
  dst: string;
  msg: CmMsg;
  /** the whole datagram, for replay */
  bytes: Buffer;
}

export interface CmNet {
  sched: FakeScheduler;
  net: MemNetwork;
  devs: Device[];
  agents: CmAgent[];
  /** every CM MAD that went over the network, in order (dropped ones too, with `dropped`) */
  wire: Array<WireMad & { dropped: boolean }>;
  /** return true to drop a MAD */
  drop: ((m: WireMad) => boolean) | null;
  /** send a MAD seen on the wire again, from its sender's QP1 (a byte-identical datagram would fail the
   *  ICRC check: the IPv4 ID it covers has moved on) */
  replay(m: WireMad): void;
  /** the MADs of one type on the wire (delivered ones only unless `all`) */
  sent(type: string, all?: boolean): Array<WireMad & { dropped: boolean }>;
  flush(): void;
  close(): Promise<void>;
}

export async function cmNet(addrs: string[] = ['10.0.0.1', '10.0.0.2']): Promise<CmNet> {
  const sched = new FakeScheduler();
  const net = new MemNetwork(sched);
  const devs: Device[] = [];
  for (const ip of addrs) devs.push(await openDevice({ address: ip, scheduler: sched, link: net.attach(ip) }));
  const agents = devs.map((d) => CmAgent.acquire(d, 1));
  const o: CmNet = {
    sched,
    net,
    devs,
    agents,
    wire: [],
    drop: null,
    replay(m) {
      const i = addrs.indexOf(m.src);
      const dev = devs[i]!;
      const av = { dgid: ipv4ToGid(m.dst), sgidIndex: dev.defaultSgidIndex(1), trafficClass: 0, hopLimit: 64, flowLabel: 0, sl: 0 };
      agents[i]!.sendRaw(Buffer.from(m.bytes.subarray(UD_HDRS, UD_HDRS + 256)), m.msg.type, av);
      sched.run();
    },
    sent(type, all = false) {
      return o.wire.filter((w) => w.msg.type === type && (all || !w.dropped));
    },
    flush() {
      sched.advance(0);
      sched.run();
    },
    async close() {
      for (const a of agents) a.release();
      for (const d of devs) await d.close();
    },
  };
  net.filter = (pkt, srcIp, dstIp) => {
    if (pkt.length < UD_HDRS + 256) return true;
    const m = parseCmMad(pkt.subarray(UD_HDRS, UD_HDRS + 256));
    if (m instanceof CmMadError) return true;
    const w = { at: sched.now(), src: srcIp, dst: dstIp, msg: m, bytes: Buffer.from(pkt) };
    const dropped = o.drop ? o.drop(w) : false;
    o.wire.push({ ...w, msg: parseCmMad(Buffer.from(pkt.subarray(UD_HDRS, UD_HDRS + 256))) as CmMsg, dropped });
    return !dropped;
  };
  return o;
}

/** The path rdma_cm would build from `dev` (port 1, its v2 GID of the bound address) to `peerIp`. */
export function pathTo(dev: Device, peerIp: string, o: Partial<CmPath> = {}): CmPath {
  const i = dev.defaultSgidIndex(1);
  return {
    port: 1,
    sgidIndex: i,
    sgid: dev.queryGid(i, 1)!.gid,
    dgid: ipv4ToGid(peerIp),
    trafficClass: 0,
    hopLimit: 64,
    flowLabel: 0,
    sl: 0,
    mtu: 3,
    packetLifeTime: 18,
    pkey: 0xffff,
    ...o,
  };
}

/** An event log for one handler. */
export function recorder(): { events: IbCmEvent[]; h: (e: IbCmEvent) => void; types(): string[] } {
  const events: IbCmEvent[] = [];
  return { events, h: (e) => events.push(e), types: () => events.map((e) => e.type) };
}

/** QP1 of a device with no CM on it: sends arbitrary 256-byte (or shorter) payloads, collects what comes back. */
export class RawQp1 {
  readonly dev: Device;
  readonly pd: Pd;
  readonly cq: Cq;
  readonly qp: Qp;
  readonly mem = Buffer.alloc(64 * 512);
  readonly mr: Mr;
  #next = 0;
  private constructor(dev: Device) {
    this.dev = dev;
    this.pd = dev.allocPd();
    this.cq = dev.createCq({ depth: 256 });
    this.qp = dev.openGsi(this.pd, { sendCq: this.cq, recvCq: this.cq }).toInit({ qkey: 0x80010000 }).toRtr().toRts();
    this.mr = this.pd.regMr(this.mem, ['LOCAL_WRITE']);
    for (let i = 32; i < 64; i++) this.qp.postRecv({ wrId: i, sg: [{ mr: this.mr, offset: i * 512, length: 512 }] });
  }
  static async open(n: CmNet, ip: string): Promise<RawQp1> {
    const dev = await openDevice({ address: ip, scheduler: n.sched, link: n.net.attach(ip) });
    n.devs.push(dev);
    return new RawQp1(dev);
  }
  send(payload: Uint8Array, dstIp: string): void {
    const slot = this.#next++ % 32;
    this.mem.set(payload, slot * 512);
    const ah = this.pd.createAh({ gid: dstIp });
    this.qp.postSend({
      wrId: slot,
      opcode: 'SEND',
      signaled: true,
      sg: [{ mr: this.mr, offset: slot * 512, length: payload.length }],
      ud: { ah, remoteQpn: 1, remoteQkey: 0x80010000 },
    });
  }
  /** The MADs received since the last call (parsed; unparseable ones as CmMadError). */
  received(): Array<CmMsg | CmMadError> {
    const out: Array<CmMsg | CmMadError> = [];
    const w = [new Wc()];
    while (this.cq.poll(w, 1) === 1) {
      const wc = w[0]!;
      if (wc.opcode !== 'RECV') continue;
      const off = wc.wrId * 512;
      out.push(parseCmMad(Buffer.from(this.mem.subarray(off + 40, off + 40 + 256))));
      this.qp.postRecv({ wrId: wc.wrId, sg: [{ mr: this.mr, offset: off, length: 512 }] });
    }
    return out;
  }
}
