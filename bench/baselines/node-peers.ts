/**
 * The Node baselines of `npm run bench`, one role per process:
 *   node node-peers.js dgram-echo ADDR PORT            echo every datagram back
 *   node node-peers.js dgram-ping ADDR PORT PEERPORT N [WARM]
 *                                                      print "rtt_us=X median_us=.. p99_us=.." (2-byte ping-pong;
 *                                                      WARM untimed round trips first, as the latency tools' warm-up)
 *   node node-peers.js dgram-sink ADDR PORT SECONDS     print "bytes=N secs=S"
 *   node node-peers.js dgram-blast ADDR PORT SIZE SECONDS
 *   node node-peers.js tcp-sink ADDR PORT                print "bytes=N secs=S"
 *   node node-peers.js tcp-blast ADDR PORT SIZE SECONDS
 */
import * as dgram from 'node:dgram';
import * as net from 'node:net';

const [role, addr = '127.0.0.1', p1 = '0', a3 = '', a4 = ''] = process.argv.slice(2);
const port = Number(p1);
const say = (s: string): void => {
  process.stdout.write(s + '\n');
};

if (role === 'dgram-echo') {
  const s = dgram.createSocket('udp4');
  s.on('message', (m, r) => s.send(m, r.port, r.address));
  s.bind(port, addr, () => say('ready'));
} else if (role === 'dgram-ping') {
  const peer = Number(a3),
    n = Number(a4),
    warm = Number(process.argv[7] ?? '0');
  const s = dgram.createSocket('udp4');
  const msg = Buffer.alloc(2);
  // i < 0: the warm-up's round trips (untimed); timing starts when i reaches 0.
  let i = -warm;
  let t0 = 0n,
    prev = 0n;
  const rtts = new Float64Array(n);
  s.on('message', () => {
    const t = process.hrtime.bigint();
    if (i < 0) {
      if (++i === 0) t0 = prev = t;
      s.send(msg, peer, addr);
      return;
    }
    rtts[i] = Number(t - prev) / 1000;
    prev = t;
    if (++i === n) {
      const sorted = [...rtts].sort((a, b) => a - b);
      const q = (p: number): string => sorted[Math.min(n - 1, Math.floor(p * n))]!.toFixed(2);
      say(`rtt_us=${(Number(t - t0) / 1000 / n).toFixed(2)} median_us=${q(0.5)} p99_us=${q(0.99)} p999_us=${q(0.999)} max_us=${sorted[n - 1]!.toFixed(2)}`);
      s.close();
      return;
    }
    s.send(msg, peer, addr);
  });
  s.bind(port, addr, () => {
    t0 = prev = process.hrtime.bigint();
    s.send(msg, peer, addr);
  });
} else if (role === 'dgram-sink') {
  const secs = Number(a3);
  const s = dgram.createSocket({ type: 'udp4', recvBufferSize: 8 << 20 });
  let bytes = 0,
    t0 = 0,
    last = 0;
  s.on('message', (m) => {
    const t = performance.now();
    if (!t0) t0 = t;
    last = t;
    bytes += m.length;
    if (t - t0 > secs * 1000) done();
  });
  const idle = setInterval(() => {
    if (t0 && performance.now() - last > 300) done();
  }, 100);
  const done = (): void => {
    clearInterval(idle);
    say(`bytes=${bytes} secs=${((last - t0) / 1000).toFixed(6)}`);
    s.close();
  };
  s.bind(port, addr, () => say('ready'));
} else if (role === 'dgram-blast') {
  const size = Number(a3),
    secs = Number(a4);
  const s = dgram.createSocket({ type: 'udp4', sendBufferSize: 8 << 20 });
  const msg = Buffer.alloc(size);
  const end = performance.now() + secs * 1000;
  let inflight = 0;
  const pump = (): void => {
    if (performance.now() > end) {
      s.close();
      return;
    }
    while (inflight < 256) {
      inflight++;
      s.send(msg, port, addr, () => {
        inflight--;
      });
    }
    setImmediate(pump);
  };
  pump();
} else if (role === 'tcp-sink') {
  const srv = net.createServer((c) => {
    let bytes = 0,
      t0 = 0,
      last = 0;
    c.on('data', (d) => {
      const t = performance.now();
      if (!t0) t0 = t;
      last = t;
      bytes += d.length;
    });
    c.on('end', () => {
      say(`bytes=${bytes} secs=${((last - t0) / 1000).toFixed(6)}`);
      srv.close();
    });
  });
  srv.listen(port, addr, () => say('ready'));
} else if (role === 'tcp-blast') {
  const size = Number(a3),
    secs = Number(a4);
  const c = net.connect(port, addr, () => {
    const chunk = Buffer.alloc(size);
    const end = performance.now() + secs * 1000;
    const go = (): void => {
      while (performance.now() < end) {
        if (!c.write(chunk)) {
          c.once('drain', go);
          return;
        }
      }
      c.end();
    };
    go();
  });
} else {
  process.stderr.write(`unknown role ${role}\n`);
  process.exit(2);
}
