/**
 * The quick start (src/cm/quick.ts) over real UDP loopback: listen() / connect() in one process on
 * 127.0.59.1 and 127.0.59.2 (UDP 4791; no other test file uses 127.0.59.0/24), SEND/RECV, RDMA WRITE and
 * READ through the await-able helpers, 'disconnected' on the peer's close; and two processes on 127.0.0.1,
 * where the client's device cannot have 127.0.0.1 (the server process holds its UDP 4791) and falls back
 * to 127.0.0.2.
 */
import t from 'tap';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { connect, listen, type Endpoint } from '../../src/cm/quick.js';
import { cmDevices, cmDevicesClosed } from '../../src/cm/devices.js';

const H1 = '127.0.59.1',
  H2 = '127.0.59.2';

async function cmIdle(): Promise<void> {
  for (let i = 0; i < 200 && cmDevices().length > 0; i++) await new Promise((r) => setTimeout(r, 5));
  await cmDevicesClosed();
}

t.test('one process: listen on 127.0.59.1, connect from 127.0.59.2; send/recv, write, read; close', async (t) => {
  const server = await listen({ port: 7471, host: H1 });
  t.equal(server.port, 7471);
  const accepted = once(server, 'connection') as Promise<[Endpoint]>;
  const ep = await connect({ host: H1, port: 7471, source: H2, timeoutMs: 10_000, param: { privateData: Buffer.from('hi') } });
  const [sv] = await accepted;
  t.equal(ep.connected, true);
  t.equal(ep.id.route.addr.src?.address, H2);
  t.equal(sv.id.route.addr.dst?.address, H2);
  t.equal(sv.peerData.toString(), 'hi', "the client's private data, its real length");
  t.equal(ep.qp.state, 'RTS');
  t.equal(sv.qp.state, 'RTS');

  const inbox = Buffer.alloc(64);
  const rmr = sv.pd.regMr(inbox, ['LOCAL_WRITE', 'REMOTE_WRITE', 'REMOTE_READ']);
  const out = Buffer.from('hello over rdma_cm');
  const smr = ep.pd.regMr(out, ['LOCAL_WRITE']);
  const r = sv.recv(rmr, 0, 32);
  const s = await ep.send(smr);
  t.match(s, { status: 'SUCCESS', opcode: 'SEND' });
  const got = await r;
  t.equal(got.byteLen, out.length);
  t.equal(inbox.subarray(0, got.byteLen).toString(), 'hello over rdma_cm');

  await ep.write(smr, { addr: rmr.addr + 40n, rkey: rmr.rkey }, 0, 5);
  t.equal(inbox.subarray(40, 45).toString(), 'hello', 'the WRITE landed at offset 40');
  const back = Buffer.alloc(5);
  const bmr = ep.pd.regMr(back, ['LOCAL_WRITE']);
  const rd = await ep.read(bmr, { addr: rmr.addr, rkey: rmr.rkey });
  t.match(rd, { status: 'SUCCESS', opcode: 'RDMA_READ', byteLen: 5 });
  t.equal(back.toString(), 'hello');
  await t.rejects(ep.send(smr, 10, 100), { code: 'EINVAL', argument: 'offset' });

  const pending = sv.recv(rmr, 0, 8);
  const down = once(sv, 'disconnected');
  smr.close();
  bmr.close();
  await ep.close();
  await down;
  t.equal(sv.connected, false);
  await t.rejects(pending, { code: 'ECONNRESET', status: 'WR_FLUSH_ERR' }, 'a posted receive completes flushed');
  rmr.close();
  await sv.close();
  await server.close();
  await cmIdle();
  t.same(cmDevices(), [], 'the CM closed its devices');
});

t.test('connect to a port nobody listens on: ECONNREFUSED (REJ 8) in under a second', async (t) => {
  const server = await listen({ port: 7472, host: H1 });
  const t0 = Date.now();
  await t.rejects(connect({ host: H1, port: 7473, source: H2, timeoutMs: 5000 }), { code: 'ECONNREFUSED' });
  t.ok(Date.now() - t0 < 1000, `${Date.now() - t0} ms`);
  await server.close();
  await cmIdle();
});

t.test('two processes on 127.0.0.1: the client falls back to 127.0.0.2 and the echo comes back', async (t) => {
  // UDP 4791 on 127.0.0.1 and 127.0.0.2, as the demo devices (the CM's destination port is RoCE's): another
  // checkout's suite may hold one for a moment, so a start that meets EADDRINUSE is retried (bounded).
  const fixture = join(fileURLToPath(new URL('.', import.meta.url)), 'fixtures', 'cm-echo.js');
  for (let attempt = 0; ; attempt++) {
    const child = spawn(process.execPath, [fixture, '7474'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '',
      err = '';
    child.stdout.setEncoding('utf8');
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (d: string) => (err += d));
    const exited = once(child, 'exit') as Promise<[number | null]>;
    const ready = await new Promise<boolean>((resolve) => {
      child.stdout.on('data', (d: string) => {
        out += d;
        if (out.includes('ready')) resolve(true);
      });
      void exited.then(() => resolve(false));
    });
    if (!ready) {
      await exited;
      if (/EADDRINUSE/.test(err) && attempt < 5) {
        await new Promise((r) => setTimeout(r, 1000));
        continue;
      }
      t.fail(`the server did not start: ${err}`);
      return;
    }
    let ep: Endpoint;
    try {
      ep = await connect({ host: '127.0.0.1', port: 7474, timeoutMs: 10_000 });
    } catch (e) {
      child.kill();
      await exited;
      if ((e as { code?: string }).code === 'EADDRINUSE' && attempt < 5) continue;
      throw e;
    }
    t.equal(ep.id.route.addr.src?.address, '127.0.0.2', 'the source the CM fell back to');
    const msg = Buffer.from('echo me');
    const mr = ep.pd.regMr(Buffer.concat([msg, Buffer.alloc(57)]), ['LOCAL_WRITE']);
    const r = ep.recv(mr, 32, 32);
    await ep.send(mr, 0, msg.length);
    t.equal((await r).byteLen, msg.length);
    t.equal(mr.buffer.subarray(32, 32 + msg.length).toString(), 'echo me');
    mr.close();
    await ep.close();
    const [code] = await exited;
    t.equal(code, 0, 'the server saw the disconnect and exited');
    t.match(out, /echoed 7 bytes from 127\.0\.0\.2/);
    await cmIdle();
    return;
  }
});
