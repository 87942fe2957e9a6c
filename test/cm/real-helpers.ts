/** Helpers for rdma_cm tests on real sockets (loopback, the real clock). */
import { createSocket } from 'node:dgram';
import type { CmEvent, EventChannel } from '../../src/cm/event-channel.js';
import { Wc } from '../../src/verbs/types.js';

/** Is ::1 usable here (a UDP connect to it works)? */
export function hasIpv6Loopback(): Promise<boolean> {
  return new Promise<boolean>((resolve) => {
    const s = createSocket('udp6');
    s.on('error', () => {
      s.close();
      resolve(false);
    });
    s.connect(9, '::1', (e?: Error) => {
      s.close();
      resolve(!e);
    });
  });
}

/** The channel's next event, which must be `want` (within 5 s). */
export async function nextEvent(ch: EventChannel, want: string): Promise<CmEvent> {
  const ev = await ch.getEvent({ timeoutMs: 5000 });
  if (ev.event !== want) throw new Error(`expected ${want}, got ${ev.event} (status ${ev.status})`);
  return ev;
}

/** Polls a CQ on the real clock until a completion comes (bounded). */
export async function pollCq(cq: { poll(wc: Wc[], n: number): number }, ms = 3000): Promise<Wc> {
  const wc = [new Wc()];
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (cq.poll(wc, 1) === 1) return wc[0]!;
    await new Promise((r) => setTimeout(r, 2));
  }
  throw new Error('no completion');
}
