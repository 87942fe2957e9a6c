/** Test helpers for rdma_cm connections: two devices on an in-memory network with a fake clock, an event
 *  channel per side on that clock, a tap that parses every CM MAD on the wire, and ids up to a route. */
import { openDevice, type Device } from '../../src/verbs/device.js';
import { FakeScheduler } from '../../src/roce/sched.js';
import { MemNetwork } from '../../src/roce/link/link.js';
import { parseCmMad, CmMadError, type CmMsg } from '../../src/cm/mad.js';
import { createEventChannel, type CmEvent, type EventChannel } from '../../src/cm/event-channel.js';
import { createId, type CmId } from '../../src/cm/cm-id.js';
import type { PortSpace } from '../../src/cm/port-space.js';

const UD_HDRS = 20;

export interface WireMsg {
  at: number;
  src: string;
  dst: string;
  msg: CmMsg;
  dropped: boolean;
}

export interface ConnNet {
  sched: FakeScheduler;
  net: MemNetwork;
  a: Device;
  b: Device;
  chA: EventChannel;
  chB: EventChannel;
  ipA: string;
  ipB: string;
  wire: WireMsg[];
  /** return true to drop a CM MAD */
  drop: ((m: WireMsg) => boolean) | null;
  /** each CM MAD as its link was asked to send it, with the IP TOS byte it was given */
  sentTos: Array<{ src: string; type: string; tos: number }>;
  /** drop every packet (CM and data) from this address while set */
  blackhole: string | null;
  types(): string[];
  flush(): void;
  /** the events queued on a channel, read now */
  events(ch: EventChannel): CmEvent[];
  close(): Promise<void>;
}

export async function connNet(ipA = '10.60.0.1', ipB = '10.60.0.2'): Promise<ConnNet> {
  const sched = new FakeScheduler();
  const net = new MemNetwork(sched);
  const sentTos: ConnNet['sentTos'] = [];
  const tap = (ip: string): ReturnType<MemNetwork['attach']> => {
    const l = net.attach(ip);
    const send = l.send.bind(l);
    l.send = (buf, len, dstIp, dstPort, tos, srcPort) => {
      if (len >= UD_HDRS + 256) {
        const m = parseCmMad(Buffer.from(buf.subarray(UD_HDRS, UD_HDRS + 256)));
        if (!(m instanceof CmMadError)) sentTos.push({ src: ip, type: m.type, tos: tos ?? 0 });
      }
      send(buf, len, dstIp, dstPort, tos, srcPort);
    };
    return l;
  };
  const a = await openDevice({ scheduler: sched, link: tap(ipA) });
  const b = await openDevice({ scheduler: sched, link: tap(ipB) });
  const n: ConnNet = {
    sched,
    net,
    a,
    b,
    chA: createEventChannel({ scheduler: sched }),
    chB: createEventChannel({ scheduler: sched }),
    ipA,
    ipB,
    wire: [],
    sentTos,
    drop: null,
    blackhole: null,
    types: () => n.wire.filter((w) => !w.dropped).map((w) => w.msg.type),
    flush() {
      sched.advance(0);
      sched.run();
    },
    events(ch) {
      const out: CmEvent[] = [];
      for (let e = ch.tryGetEvent(); e !== null; e = ch.tryGetEvent()) out.push(e);
      return out;
    },
    async close() {
      n.chA.close();
      n.chB.close();
      sched.advance(1000);
      await a.close();
      await b.close();
    },
  };
  net.filter = (pkt, srcIp, dstIp) => {
    if (n.blackhole === srcIp) return false;
    if (pkt.length < UD_HDRS + 256) return true;
    const m = parseCmMad(Buffer.from(pkt.subarray(UD_HDRS, UD_HDRS + 256)));
    if (m instanceof CmMadError) return true;
    const w: WireMsg = { at: sched.now(), src: srcIp, dst: dstIp, msg: m, dropped: false };
    w.dropped = n.drop ? n.drop(w) : false;
    n.wire.push(w);
    return !w.dropped;
  };
  return n;
}

/** An id on side A with its route to B:port resolved (its ADDR_RESOLVED and ROUTE_RESOLVED read). */
export async function activeId(n: ConnNet, port: number, ps: PortSpace = 'TCP'): Promise<CmId> {
  const id = createId(n.chA, { device: n.a, ps });
  await id.resolveAddr({ dst: { address: n.ipB, port }, timeoutMs: 1000 });
  await id.resolveRoute({ timeoutMs: 1000 });
  n.events(n.chA);
  return id;
}

/** A listening id on side B, bound to B's address and `port`. */
export async function listenerId(n: ConnNet, port: number, ps: PortSpace = 'TCP'): Promise<CmId> {
  const id = createId(n.chB, { device: n.b, ps });
  await id.bind({ address: n.ipB, port });
  await id.listen();
  return id;
}
