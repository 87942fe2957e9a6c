/**
 * teamd's arp_ping and nsna_ping link watches (issue 14 items 1 and 4) on a fake clock with a fake
 * prober: the periodic tick of teamd_lw_psr.c (init_wait, interval, missed_max, the missed counter),
 * who sends (forced_send, send_always), which replies count (validate_active / validate_inactive,
 * the NA check), host names resolved once, what cannot run (typed errors), a port's list under
 * link_watch_policy any / all, teamd's state keys; the frames built and parsed; and a bond whose
 * ports run arp_ping failing over on a probe-only failure (the carrier stays up).
 */
import t from 'tap';
import { FakeScheduler } from '../../src/roce/sched.js';
import { ArpPingWatch, NsnaPingWatch, PortLinkWatches, type PortWatch, type PsrWatchOptions } from '../../src/lag/link-watch-psr.js';
import { packetProbeIo, type ProbeIo, type ProbeIoFactory, type ProbeSpec } from '../../src/lag/probe-io.js';
import {
  ARPOP_REPLY,
  ARPOP_REQUEST,
  arpReplyValid,
  buildArpRequest,
  buildNs,
  icmpv6Checksum,
  ipv6Hex,
  naValid,
  parseArpFrame,
  parseNaFrame,
  type ArpPacket,
  type NaPacket,
  type ProbeReply,
} from '../../src/lag/probe-wire.js';
import { parseTeamConfig, type ArpPingLinkWatch, type NsnaPingLinkWatch } from '../../src/lag/team-config.js';
import { VerbsError } from '../../src/verbs/errors.js';
import { gidFromString } from '../../src/roce/gid.js';
import type { NativeAddon } from '../../src/native.js';
import { bondNet, bondOf, teamConfig } from './bond-net.js';

/** One fake probe socket: what was sent (at which fake time), and a way to deliver packets to the watch. */
class FakeIo implements ProbeIo {
  readonly sent: number[] = [];
  closed = false;
  /** answer each probe at once with this packet (null: the peer is dead) */
  answer: ProbeReply | null = null;
  readonly spec: ProbeSpec;
  readonly deliver: (p: ProbeReply) => void;
  private readonly now: () => number;
  constructor(spec: ProbeSpec, deliver: (p: ProbeReply) => void, now: () => number) {
    this.spec = spec;
    this.deliver = deliver;
    this.now = now;
  }
  send(): number {
    this.sent.push(this.now());
    if (this.answer) this.deliver(this.answer);
    return 0;
  }
  close(): void {
    this.closed = true;
  }
}

function fakeIos(fake: FakeScheduler): { ios: FakeIo[]; factory: ProbeIoFactory } {
  const ios: FakeIo[] = [];
  return {
    ios,
    factory: (spec, deliver) => {
      const io = new FakeIo(spec, deliver, () => fake.now());
      ios.push(io);
      return io;
    },
  };
}

const arpCfg = (o: Partial<ArpPingLinkWatch> = {}): ArpPingLinkWatch => ({
  name: 'arp_ping',
  interval: 100,
  initWait: 0,
  missedMax: 3,
  sourceHost: '0.0.0.0',
  targetHost: '198.19.33.2',
  validateActive: false,
  validateInactive: false,
  sendAlways: false,
  vlanId: undefined,
  ...o,
});
const nsCfg = (o: Partial<NsnaPingLinkWatch> = {}): NsnaPingLinkWatch => ({
  name: 'nsna_ping',
  interval: 100,
  initWait: 0,
  missedMax: 3,
  targetHost: 'fd19:33::2',
  ...o,
});

/** Linux's answer to an RFC 5227 probe for 198.19.33.2: REPLY, sender the target, target 0.0.0.0 */
const REPLY: ArpPacket = { kind: 'arp', hrd: 1, pro: 0x800, hln: 6, pln: 4, op: ARPOP_REPLY, senderIp: '198.19.33.2', targetIp: '0.0.0.0' };
const REQUEST: ArpPacket = { ...REPLY, op: ARPOP_REQUEST, senderIp: '198.19.33.9', targetIp: '198.19.33.2' };
const NA: NaPacket = { kind: 'na', version: 6, payloadLen: 32, nextHeader: 58, hopLimit: 255, type: 136, target: ipv6Hex('fd19:33::2'), optType: 2, optLen: 1 };

function setup(o: Partial<PsrWatchOptions> = {}): { fake: FakeScheduler; ios: FakeIo[]; opts: PsrWatchOptions; changes: [number, boolean][] } {
  const fake = new FakeScheduler();
  const { ios, factory } = fakeIos(fake);
  const changes: [number, boolean][] = [];
  const opts: PsrWatchOptions = { sched: fake, netdev: 'eth1', io: factory, changed: (up) => changes.push([fake.now(), up]), ...o };
  return { fake, ios, opts, changes };
}

t.test('teamd defaults: starts down, up on the first reply, down after more than missed_max misses', async (t) => {
  const { fake, ios, opts, changes } = setup();
  const w = new ArpPingWatch(arpCfg({ interval: 1000 }), opts);
  t.equal(w.up, false, 'a new port starts down (teamd: the port user link-up is false)');
  t.equal(ios.length, 1);
  t.same(ios[0]!.spec, { kind: 'arp_ping', netdev: 'eth1', source: '0.0.0.0', target: '198.19.33.2', vlanId: undefined });
  ios[0]!.answer = REPLY;
  fake.advance(0);
  t.same(ios[0]!.sent, [0], 'init_wait 0: the first tick at once (teamd: 1 ns), and it sends');
  t.equal(w.up, false, 'no reply was there at the first tick: still down');
  t.equal(w.missed, 1);
  fake.advance(1000);
  t.equal(w.up, true, 'the reply to the first probe: up at the next tick');
  t.equal(w.missed, 0);
  t.same(changes, [[1000, true]]);
  // the peer dies just after the probe of t=3000 was answered: the tick of t=4000 still counts that reply
  fake.advance(2000);
  ios[0]!.answer = null;
  fake.advance(1000);
  t.same([w.up, w.missed], [true, 0], 't=4000: the reply to the probe of t=3000');
  for (const [at, missed] of [
    [5000, 1],
    [6000, 2],
    [7000, 3],
  ] as const) {
    fake.advance(1000);
    t.equal(w.missed, missed, `t=${at}: missed ${missed}`);
    t.equal(w.up, true, `t=${at}: ${missed} misses are not more than missed_max 3`);
  }
  fake.advance(1000);
  t.equal(w.up, false, 't=8000: the 4th miss (> missed_max) says down, 4..5 intervals after the peer died');
  t.same(changes.at(-1), [8000, false]);
  t.equal(w.state().down_count, 1);
  fake.advance(2000);
  t.equal(w.missed, 6, 'missed keeps counting while down');
  t.equal(ios[0]!.sent.length, 11, 'a probe every interval, down or not (forced_send: the only port)');
  ios[0]!.answer = REPLY;
  fake.advance(1000);
  t.equal(w.up, false, 'the tick that sent the first answered probe saw no reply yet');
  fake.advance(1000);
  t.equal(w.up, true, 'up again one interval after the peer answers');
  t.equal(w.missed, 0);
  w.stop();
  t.equal(ios[0]!.closed, true, 'stop closes the probe socket');
  t.equal(fake.pendingTimers(), 0, 'and cancels the tick');
});

t.test('missed_max 0 says down at the first miss; init_wait delays the first probe; ticks do not drift', async (t) => {
  const { fake, ios, opts } = setup();
  const w = new ArpPingWatch(arpCfg({ missedMax: 0, initWait: 250, interval: 10 }), { ...opts, initialUp: true });
  ios[0]!.answer = REPLY;
  fake.advance(249);
  t.same(ios[0]!.sent, [], 'nothing before init_wait');
  fake.advance(1);
  t.same(ios[0]!.sent, [250]);
  fake.advance(40);
  t.same(ios[0]!.sent, [250, 260, 270, 280, 290], 'then every interval from init_wait');
  t.equal(w.up, true);
  ios[0]!.answer = null;
  fake.advance(10);
  t.equal(w.up, true, 'the reply to the probe of t=290 came in time');
  fake.advance(10);
  t.equal(w.up, false, 't=310: one miss > missed_max 0');
});

t.test('a tuned watch (interval 10, missed_max 3) finds a dead peer 40..50 ms after it died', async (t) => {
  for (const deathAt of [1, 5, 9.5]) {
    const { fake, ios, opts, changes } = setup();
    const w = new ArpPingWatch(arpCfg({ interval: 10 }), opts);
    ios[0]!.answer = REPLY;
    fake.advance(100);
    t.equal(w.up, true);
    fake.advance(deathAt);
    ios[0]!.answer = null;
    const cut = fake.now();
    fake.advance(100);
    const at = changes.find(([, up]) => !up)?.[0];
    t.ok(at !== undefined && at - cut > 40 && at - cut <= 50, `peer dead at +${deathAt} ms into an interval: down ${at! - cut} ms later`);
    w.stop();
  }
});

t.test('who sends: forced_send, send_always (arp_ping), nsna_ping only when forced', async (t) => {
  let forced = false;
  const { fake, ios, opts } = setup({ forcedSend: () => forced, enabled: () => false });
  new ArpPingWatch(arpCfg({ interval: 10 }), opts);
  new ArpPingWatch(arpCfg({ interval: 10, sendAlways: true }), opts);
  new NsnaPingWatch(nsCfg({ interval: 10 }), opts);
  fake.advance(30);
  t.same(
    ios.map((i) => i.sent.length),
    [0, 4, 0],
    'a disabled port with another port enabled: only send_always sends',
  );
  forced = true;
  fake.advance(10);
  t.same(
    ios.map((i) => i.sent.length),
    [1, 5, 1],
    'forced (the port is enabled, or no port is): all send',
  );
});

t.test('which replies count: validate_active / validate_inactive follow the port being enabled', async (t) => {
  let enabled = true;
  const cases: [string, Partial<ArpPingLinkWatch>, boolean, ArpPacket, boolean][] = [
    ['no validation: a request seen counts', {}, true, REQUEST, true],
    ['validate_active on an enabled port: a request does not count', { validateActive: true }, true, REQUEST, false],
    ['validate_active on an enabled port: the reply counts', { validateActive: true }, true, REPLY, true],
    ['validate_active: a reply from another host does not count', { validateActive: true }, true, { ...REPLY, senderIp: '198.19.33.7' }, false],
    [
      'validate_active: sender source_host, target target_host counts too',
      { validateActive: true },
      true,
      { ...REPLY, senderIp: '0.0.0.0', targetIp: '198.19.33.2' },
      true,
    ],
    ['validate_active: a non-Ethernet reply does not count', { validateActive: true }, true, { ...REPLY, hrd: 6 }, false],
    ['validate_active does not apply to a disabled port', { validateActive: true }, false, REQUEST, true],
    ['validate_inactive on a disabled port: a request does not count', { validateInactive: true }, false, REQUEST, false],
    ['validate_inactive on a disabled port: the reply counts', { validateInactive: true }, false, REPLY, true],
    ['validate_inactive does not apply to an enabled port', { validateInactive: true }, true, REQUEST, true],
  ];
  for (const [name, cfg, en, pkt, counts] of cases) {
    const { fake, ios, opts } = setup({ enabled: () => enabled });
    enabled = en;
    const w = new ArpPingWatch(arpCfg({ interval: 10, ...cfg }), opts);
    ios[0]!.answer = pkt;
    fake.advance(10);
    t.equal(w.up, counts, name);
    t.equal(w.stats.replies, counts ? 2 : 0);
  }
});

t.test('nsna_ping counts only an unrouted NA for the target with its link-layer address', async (t) => {
  const bad: [string, Partial<NaPacket>][] = [
    ['routed (hop limit 254)', { hopLimit: 254 }],
    ['another target', { target: ipv6Hex('fd19:33::3') }],
    ['no target link-layer option', { optType: 1 }],
    ['a longer payload', { payloadLen: 40 }],
  ];
  {
    const { fake, ios, opts } = setup();
    const w = new NsnaPingWatch(nsCfg({ interval: 10 }), opts);
    t.same(ios[0]!.spec, { kind: 'nsna_ping', netdev: 'eth1', source: '::', target: 'fd19:33::2' });
    ios[0]!.answer = NA;
    fake.advance(10);
    t.equal(w.up, true, 'the NA for fd19:33::2 counts');
  }
  for (const [name, d] of bad) {
    const { fake, ios, opts } = setup();
    const w = new NsnaPingWatch(nsCfg({ interval: 10 }), opts);
    ios[0]!.answer = { ...NA, ...d };
    fake.advance(10);
    t.equal(w.up, false, `${name}: does not count`);
  }
  const { fake, ios, opts } = setup();
  const w = new NsnaPingWatch(nsCfg({ interval: 10, targetHost: 'FD19:33:0::2' }), opts);
  ios[0]!.answer = NA;
  fake.advance(10);
  t.equal(w.up, true, 'the target compares as an address, not as text');
});

t.test('host names resolve once at start; a name that does not resolve leaves a typed error, the watch down', async (t) => {
  const asked: string[] = [];
  const resolve = (host: string, family: 4 | 6): Promise<string> => {
    asked.push(`${host}/${family}`);
    if (host === 'peer') return Promise.resolve(family === 4 ? '198.19.33.2' : 'fd19:33::2');
    return Promise.reject(new Error('ENOTFOUND'));
  };
  {
    const { fake, ios, opts } = setup({ resolve });
    const w = new ArpPingWatch(arpCfg({ targetHost: 'peer', interval: 10 }), opts);
    t.equal(ios.length, 0, 'no socket before the name resolved');
    await new Promise((r) => setImmediate(r));
    t.same(ios[0]?.spec.target, '198.19.33.2');
    t.equal(w.state().target_host, '198.19.33.2', 'the state shows the address, as teamd prints it');
    ios[0]!.answer = REPLY;
    fake.advance(10);
    t.equal(w.up, true);
    fake.advance(1000);
    t.same(asked, ['peer/4'], 'resolved once');
  }
  {
    const { fake, ios, opts } = setup({ resolve });
    let err: VerbsError | null = null;
    const w = new NsnaPingWatch(nsCfg({ targetHost: 'nowhere' }), { ...opts, initialUp: true, cannotRun: (e) => (err = e) });
    await new Promise((r) => setImmediate(r));
    t.ok(err !== null && w.error === err);
    t.equal(w.error?.code, 'ENOENT');
    t.equal(w.error?.argument, 'target_host');
    t.match(w.error?.message, /"nowhere" does not resolve to an IPv6 address/);
    t.equal(w.up, false, 'a watch that cannot run says down');
    t.equal(ios.length, 0);
    fake.advance(10_000);
    t.equal(fake.pendingTimers(), 0, 'and never ticks');
  }
  {
    const { opts } = setup({ resolve });
    const w = new ArpPingWatch(arpCfg({ targetHost: 'fd19:33::2' }), opts);
    await new Promise((r) => setImmediate(r));
    t.same([w.error?.code, w.error?.argument], ['EINVAL', 'target_host'], 'an IPv6 address for arp_ping: EINVAL naming target_host');
    t.same(asked.length, 2, 'an address of the other family is not looked up');
  }
});

t.test('without the addon, without CAP_NET_RAW, without the netdev: typed errors, no crash', async (t) => {
  const fake = new FakeScheduler();
  const mac = (): Uint8Array => Uint8Array.of(2, 0, 0, 0, 0, 1);
  const fakeAddon = (fd: number) => ({ packetOpen: () => fd, packetSend: () => 0, rxStart: () => ({}), constants: {} }) as unknown as NativeAddon;
  const cases: [string, ProbeIoFactory, Partial<ArpPingLinkWatch>, string, RegExp][] = [
    ['no addon (pure JS)', packetProbeIo({ addon: null, macOf: mac }), {}, 'EOPNOTSUPP', /needs the native addon/],
    ['packetOpen EPERM', packetProbeIo({ addon: fakeAddon(-1), macOf: mac }), {}, 'EPERM', /needs CAP_NET_RAW/],
    ['packetOpen ENODEV', packetProbeIo({ addon: fakeAddon(-19), macOf: mac }), {}, 'ENODEV', /no such network interface/],
    ['no MAC for the netdev', packetProbeIo({ addon: fakeAddon(3), macOf: () => null }), {}, 'ENODEV', /no such network interface/],
    ['a vlanid', packetProbeIo({ addon: fakeAddon(3), macOf: mac }), { vlanId: 7 }, 'EOPNOTSUPP', /vlanid/],
  ];
  for (const [name, io, cfg, code, msg] of cases) {
    let seen: VerbsError | null = null;
    const w = new ArpPingWatch(arpCfg(cfg), { sched: fake, netdev: 'eth1', io, changed: () => t.fail('no change'), cannotRun: (e) => (seen = e) });
    t.ok(w.error instanceof VerbsError, `${name}: a VerbsError`);
    t.equal(w.error?.code, code, `${name}: ${code}`);
    t.equal(w.error?.argument, 'link_watch');
    t.match(w.error?.message, msg);
    t.equal(seen, w.error, 'cannotRun heard it');
    t.equal(w.up, false);
  }
  fake.advance(10_000);
  t.equal(fake.pendingTimers(), 0);
});

t.test('state(): the keys teamd dumps for each watch', async (t) => {
  const { fake, ios, opts } = setup();
  const a = new ArpPingWatch(arpCfg({ sourceHost: '198.19.33.1', validateActive: true, sendAlways: true, initWait: 5 }), opts);
  const n = new NsnaPingWatch(nsCfg(), opts);
  ios.forEach((i) => (i.answer = null));
  fake.advance(5);
  t.same(a.state(), {
    name: 'arp_ping',
    up: false,
    down_count: 0,
    source_host: '198.19.33.1',
    target_host: '198.19.33.2',
    interval: 100,
    init_wait: 5,
    validate_active: true,
    validate_inactive: false,
    send_always: true,
    missed_max: 3,
    missed: 1,
  });
  t.same(n.state(), { name: 'nsna_ping', up: false, down_count: 0, target_host: 'fd19:33::2', interval: 100, init_wait: 0, missed_max: 3, missed: 1 });
});

t.test('a port list under link_watch_policy any / all', async (t) => {
  class Toggle implements PortWatch {
    up = false;
    private readonly changed: () => void;
    constructor(changed: () => void) {
      this.changed = changed;
    }
    set(up: boolean): void {
      this.up = up;
      this.changed();
    }
    stop(): void {}
    state() {
      return { name: 'ethtool' as const, up: this.up, down_count: 0, delay_up: 0, delay_down: 0 };
    }
  }
  for (const policy of ['any', 'all'] as const) {
    const ws: Toggle[] = [];
    const verdicts: boolean[] = [];
    const mk = (c: () => void): Toggle => {
      const w = new Toggle(c);
      ws.push(w);
      return w;
    };
    const p = new PortLinkWatches(policy, [mk, mk], (up) => verdicts.push(up));
    t.equal(p.up, false);
    ws[0]!.set(true);
    t.equal(p.up, policy === 'any', `${policy}: one of two up`);
    ws[1]!.set(true);
    t.equal(p.up, true, `${policy}: both up`);
    ws[0]!.set(false);
    t.equal(p.up, policy === 'any', `${policy}: one of two down`);
    t.same(verdicts, policy === 'any' ? [true] : [true, false], `${policy}: changes reported once each`);
    t.same(Object.keys(p.state().list), ['link_watch_0', 'link_watch_1']);
  }
});

t.test('frames: the ARP request and the NS teamd sends, the replies parsed', async (t) => {
  const mac = Uint8Array.of(0x02, 0x11, 0x22, 0x33, 0x44, 0x55);
  const f = Buffer.alloc(128);
  const n = buildArpRequest(f, mac, '0.0.0.0', '198.19.33.2');
  t.equal(n, 42);
  t.equal(
    f.subarray(0, n).toString('hex'),
    'ffffffffffff' + '021122334455' + '0806' + '0001' + '0800' + '06' + '04' + '0001' + '021122334455' + '00000000' + 'ffffffffffff' + 'c6132102',
    'broadcast, ARP, Ethernet/IPv4, REQUEST, our MAC, 0.0.0.0 (RFC 5227 probe), target MAC all-ones as teamd sends it',
  );
  const p = parseArpFrame(f, n);
  t.same(p, { kind: 'arp', hrd: 1, pro: 0x800, hln: 6, pln: 4, op: 1, senderIp: '0.0.0.0', targetIp: '198.19.33.2' });
  t.equal(arpReplyValid(p!, '0.0.0.0', '198.19.33.2'), false, 'a request is not a valid reply');
  const tagged = buildArpRequest(f, mac, '198.19.33.1', '198.19.33.2', 7);
  t.equal(tagged, 46);
  t.equal(f.readUInt16BE(12), 0x8100);
  t.equal(f.readUInt16BE(14), 7);
  t.equal(parseArpFrame(f, tagged), null, 'a tagged frame is not ours without a vlanid');
  t.equal(parseArpFrame(f, tagged, 7)?.senderIp, '198.19.33.1');
  t.equal(parseArpFrame(f, tagged, 8), null, 'nor with another');

  const src = gidFromString('fe80::11:22ff:fe33:4455');
  const dst = gidFromString('fd19:33::abcd:2');
  const m = buildNs(f, mac, src, dst);
  t.equal(m, 86);
  t.equal(f.subarray(0, 6).toString('hex'), '3333ffcd0002', 'to the solicited-node group 33:33:ff:cd:00:02');
  t.equal(f.subarray(14, 22).toString('hex'), '60000000' + '0020' + '3a' + 'ff', 'IPv6, payload 32, ICMPv6, hop limit 255');
  t.equal(f.subarray(38, 54).toString('hex'), 'ff0200000000000000000001ffcd0002', 'ff02::1:ffcd:2');
  t.equal(f[54], 135, 'NS');
  t.equal(f.subarray(62, 78).toString('hex'), Buffer.from(dst).toString('hex'), 'the target');
  t.equal(f.subarray(78, 86).toString('hex'), '0101' + '021122334455', 'source link-layer address option');
  t.equal(icmpv6Checksum(src, f.subarray(38, 54), f.subarray(54, 86)), 0, 'the checksum verifies (sums to 0 with itself)');

  // An NA as Linux sends it: solicited, override, with the target link-layer address option.
  const na = Buffer.alloc(86);
  na.writeUInt16BE(0x86dd, 12);
  na.writeUInt32BE(0x60000000, 14);
  na.writeUInt16BE(32, 18);
  na[20] = 58;
  na[21] = 255;
  na[54] = 136;
  na.set(dst, 62);
  na[78] = 2;
  na[79] = 1;
  const q = parseNaFrame(na, 86);
  t.ok(q !== null && naValid(q, Buffer.from(dst).toString('hex')), 'parsed and valid');
  na[54] = 135;
  t.equal(parseNaFrame(na, 86), null, 'an NS is not an NA');
});

t.test('a bond on arp_ping: a probe-only failure of port 1 fails over, the carrier staying up', async (t) => {
  const n = bondNet();
  const { ios, factory } = fakeIos(n.fake);
  const lw = { name: 'arp_ping', interval: 10, missed_max: 3, target_host: '198.19.33.2', send_always: true };
  // (not bondAt: its bond would probe from the host's real eth1 / eth2; the fake prober sends nothing)
  const { createBond } = await import('../../src/lag/bond.js');
  const res = await createBond(teamConfig('activebackup', { link_watch: lw }), {
    ports: [
      { netdev: 'eth1', address: '10.0.0.2' },
      { netdev: 'eth2', address: '10.0.0.2' },
    ],
    links: [n.net.attach('10.0.0.2', 4791, 'w1'), n.net.attach('10.0.0.2', 4791, 'w2')],
    scheduler: n.fake,
    devicesInUse: [],
    linkWatchIo: factory,
  });
  const bond = bondOf(res);
  t.same(bond.warnings, [], 'no warning: arp_ping runs');
  t.same(ios.map((i) => i.spec.netdev).slice(-2), ['eth1', 'eth2'], 'one probe socket per port, on its netdev');
  const [io1, io2] = ios.slice(-2) as [FakeIo, FakeIo];
  t.same([bond.ports[0]!.up, bond.ports[1]!.up, bond.activePort], [false, false, null], 'ports start down until their probes are answered');
  io1.answer = REPLY;
  io2.answer = REPLY;
  const events: string[] = [];
  bond.on('portDown', (e: { port: number }) => events.push(`down ${e.port} @${n.fake.now()}`));
  bond.on('portUp', (e: { port: number }) => events.push(`up ${e.port} @${n.fake.now()}`));
  bond.on('activePortChanged', (e: { to: number | null }) => events.push(`active ${String(e.to)} @${n.fake.now()}`));
  n.fake.advance(10);
  t.same([bond.ports[0]!.up, bond.ports[1]!.up, bond.activePort], [true, true, 1]);
  n.fake.advance(100);
  t.equal(io2.sent.length, io1.sent.length, 'send_always: the backup port probes too');
  io1.answer = null; // the peer stops answering on port 1; both carriers stay up
  const cut = n.fake.now();
  n.fake.advance(100);
  t.equal(bond.ports[0]!.link.up, true, "port 1's carrier is up");
  t.same(events.slice(3), [`down 1 @${cut + 50}`, `active 2 @${cut + 50}`], 'port 1 down at its 4th missed tick, port 2 active');
  const st = bond.linkWatchState(1);
  t.equal(st.up, false);
  t.match(st.list['link_watch_0'], { name: 'arp_ping', up: false, missed: 9, missed_max: 3, interval: 10, down_count: 1 });
  io1.answer = REPLY;
  n.fake.advance(20);
  t.equal(bond.ports[0]!.up, true, 'back up when answered again');
  await bond.close();
  t.equal(io1.closed && io2.closed, true, 'closing the bond closes the probe sockets');
});

t.test('activebackup on arp_ping without send_always: the backup port stops probing and goes down (as teamd)', async (t) => {
  const n = bondNet();
  const { ios, factory } = fakeIos(n.fake);
  const { createBond } = await import('../../src/lag/bond.js');
  const cfg = teamConfig('activebackup', { link_watch: { name: 'arp_ping', interval: 10, target_host: '198.19.33.2' } });
  const bond = bondOf(
    await createBond(cfg, {
      ports: [
        { netdev: 'eth1', address: '10.0.0.3' },
        { netdev: 'eth2', address: '10.0.0.3' },
      ],
      links: [n.net.attach('10.0.0.3', 4791, 'w1'), n.net.attach('10.0.0.3', 4791, 'w2')],
      scheduler: n.fake,
      devicesInUse: [],
      linkWatchIo: factory,
    }),
  );
  const [io1, io2] = ios as [FakeIo, FakeIo];
  io1.answer = REPLY;
  io2.answer = REPLY;
  n.fake.advance(10);
  t.same([bond.ports[0]!.up, bond.ports[1]!.up, bond.activePort], [true, true, 1], 'no port enabled at start: both probe (forced_send) and come up');
  n.fake.advance(50);
  t.equal(bond.ports[1]!.up, false, 'the disabled backup sends nothing, hears nothing: down after missed_max + 1 ticks');
  t.equal(bond.activePort, 1);
  io1.answer = null;
  n.fake.advance(50);
  t.same([bond.ports[0]!.up, bond.activePort], [false, null], 'the active port dies too: no port enabled');
  n.fake.advance(20);
  t.same([bond.ports[1]!.up, bond.activePort], [true, 2], 'forced_send makes port 2 probe again: it comes up and takes over');
  await bond.close();
});

t.test('link_watch lists with policies, parsed from the config, run on the bond', async (t) => {
  const n = bondNet();
  const { ios, factory } = fakeIos(n.fake);
  const { createBond } = await import('../../src/lag/bond.js');
  for (const policy of ['any', 'all'] as const) {
    const cfg = teamConfig('loadbalance', {
      link_watch_policy: policy,
      link_watch: [{ name: 'ethtool' }, { name: 'arp_ping', interval: 10, target_host: '198.19.33.2' }],
      ports: { eth1: { link_watch: { name: 'nsna_ping', interval: 10, target_host: 'fd19:33::2' } }, eth2: {} },
    });
    t.equal(parseTeamConfig(cfg).linkWatchPolicy, policy);
    const addr = policy === 'any' ? '10.0.0.4' : '10.0.0.5';
    const bond = bondOf(
      await createBond(cfg, {
        ports: [
          { netdev: 'eth1', address: addr },
          { netdev: 'eth2', address: addr },
        ],
        links: [n.net.attach(addr, 4791, `${policy}1`), n.net.attach(addr, 4791, `${policy}2`)],
        scheduler: n.fake,
        devicesInUse: [],
        linkWatchIo: factory,
      }),
    );
    const mine = ios.splice(0);
    t.same(
      mine.map((i) => `${i.spec.netdev}:${i.spec.kind}`),
      ['eth1:nsna_ping', 'eth1:arp_ping', 'eth2:arp_ping'],
      "the port's own watch first, then the global ones (teamd's order)",
    );
    t.same(
      Object.values(bond.linkWatchState(1).list).map((w) => w.name),
      ['nsna_ping', 'ethtool', 'arp_ping'],
    );
    // carriers up, no probe answered
    t.same(
      bond.ports.map((p) => p.up),
      policy === 'any' ? [true, true] : [false, false],
      `${policy}: with only ethtool up`,
    );
    for (const i of mine) i.answer = i.spec.kind === 'arp_ping' ? REPLY : NA;
    n.fake.advance(10);
    t.same(
      bond.ports.map((p) => p.up),
      [true, true],
      `${policy}: every watch up`,
    );
    mine[0]!.answer = null; // eth1's nsna_ping peer is gone
    n.fake.advance(50);
    t.same(
      bond.ports.map((p) => p.up),
      policy === 'any' ? [true, true] : [false, true],
      `${policy}: eth1's NS unanswered`,
    );
    await bond.close();
  }
});
