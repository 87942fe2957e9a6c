/** rdma_cm's 36-byte private-data header and service IDs (roce-wire.md h.1, h.2). */
import t from 'tap';
import {
  CMA_HDR_LEN,
  CMA_USER_PRIVATE_DATA,
  CmaHdrError,
  IB_CMA_SERVICE_ID,
  RdmaPortSpace,
  decodeCmaHdr,
  encodeCmaHdr,
  parseServiceId,
  serviceId,
} from '../../src/cm/cma-hdr.js';
import { CM_PRIVATE_DATA_SIZE, CmMadError, parseCmMad, type CmMsg } from '../../src/cm/mad.js';
import { capturedMads } from './captures.js';

t.test('the captured REQ and SIDR_REQ headers decode and re-encode byte-exact', (t) => {
  const { mads } = capturedMads();
  let n = 0;
  for (const m of mads) {
    const msg = parseCmMad(m.mad);
    if (msg instanceof CmMadError) continue;
    if (msg.type !== 'REQ' && msg.type !== 'SIDR_REQ') continue;
    const pd = (msg as Extract<CmMsg, { type: 'REQ' | 'SIDR_REQ' }>).privateData;
    const h = decodeCmaHdr(pd);
    if (h instanceof CmaHdrError) {
      t.fail(`${m.file} #${m.frame}: ${h.reason}`);
      continue;
    }
    // the active side (guest 2) connects to guest 1: src/dst as the IP header says
    t.equal(h.src, m.src, `${m.file} #${m.frame}: src`);
    t.equal(h.dst, m.dst, `${m.file} #${m.frame}: dst`);
    t.equal(h.ipVersion, 4);
    t.ok(h.port >= 1024, 'an ephemeral rdma_cm source port');
    t.same([...encodeCmaHdr(h)], [...pd.subarray(0, CMA_HDR_LEN)], `${m.file} #${m.frame}: re-encodes exactly`);
    n++;
  }
  t.ok(n >= 5, `${n} REQ / SIDR_REQ headers`);
  t.end();
});

t.test('encode / decode, IPv4 and IPv6', (t) => {
  const v4 = encodeCmaHdr({ ipVersion: 4, port: 0xde0d, src: '198.18.0.12', dst: '198.18.0.11' });
  t.equal(v4.length, CMA_HDR_LEN);
  t.same([...v4.subarray(0, 4)], [0x00, 0x40, 0xde, 0x0d]);
  t.same([...v4.subarray(4, 16)], new Array(12).fill(0), 'IPv4: 12 zero bytes, no ::ffff: prefix');
  t.same([...v4.subarray(16, 20)], [198, 18, 0, 12]);
  t.same([...v4.subarray(32, 36)], [198, 18, 0, 11]);
  t.same(decodeCmaHdr(v4), { ipVersion: 4, port: 0xde0d, src: '198.18.0.12', dst: '198.18.0.11' });
  const v6 = encodeCmaHdr({ ipVersion: 6, port: 7471, src: 'fe80::5054:ff:fec6:120b', dst: '2001:db8::1' });
  t.equal(v6[1], 0x60);
  t.same(decodeCmaHdr(v6), { ipVersion: 6, port: 7471, src: 'fe80::5054:ff:fec6:120b', dst: '2001:db8::1' });
  // into a REQ's private data, user data after it
  const pd = new Uint8Array(92);
  encodeCmaHdr({ ipVersion: 4, port: 1, src: '10.0.0.1', dst: '10.0.0.2' }, pd, 0);
  t.match(decodeCmaHdr(pd), { src: '10.0.0.1', dst: '10.0.0.2' });
  // the low nibble of ip_version is ignored, as cma_get_ip_ver does
  const odd = Uint8Array.from(v4);
  odd[1] = 0x4f;
  t.match(decodeCmaHdr(odd), { ipVersion: 4 });
  t.equal(CMA_USER_PRIVATE_DATA.REQ, 56);
  t.equal(CMA_USER_PRIVATE_DATA.SIDR_REQ, 180);
  t.equal(CMA_USER_PRIVATE_DATA.REP, CM_PRIVATE_DATA_SIZE.REP);
  t.end();
});

t.test('typed errors: version, ip_version, short, bad addresses', (t) => {
  const good = encodeCmaHdr({ ipVersion: 4, port: 5, src: '1.2.3.4', dst: '5.6.7.8' });
  for (let v = 1; v < 256; v++) {
    const b = Uint8Array.from(good);
    b[0] = v;
    const r = decodeCmaHdr(b);
    if (!(r instanceof CmaHdrError) || r.reason !== 'version') t.fail(`cma_version ${v} accepted`);
  }
  for (let nib = 0; nib < 16; nib++) {
    if (nib === 4 || nib === 6) continue;
    const b = Uint8Array.from(good);
    b[1] = nib << 4;
    t.match(decodeCmaHdr(b), { name: 'CmaHdrError', reason: 'ip-version', field: 'ipVersion' }, `ip_version ${nib}`);
  }
  for (let n = 0; n < CMA_HDR_LEN; n++) t.match(decodeCmaHdr(good.subarray(0, n)), { reason: 'short-buffer' });
  t.throws(() => encodeCmaHdr({ ipVersion: 5 as 4, port: 1, src: '1.2.3.4', dst: '1.2.3.4' }), { name: 'CmaHdrError', reason: 'ip-version' });
  t.throws(() => encodeCmaHdr({ ipVersion: 4, port: 1, src: '::1', dst: '1.2.3.4' }), { name: 'CmaHdrError', reason: 'address', field: 'src' });
  t.throws(() => encodeCmaHdr({ ipVersion: 6, port: 1, src: '::1', dst: '1.2.3.4' }), { name: 'CmaHdrError', reason: 'address', field: 'dst' });
  t.throws(() => encodeCmaHdr({ ipVersion: 4, port: 70000, src: '1.2.3.4', dst: '1.2.3.4' }), { name: 'CmaHdrError', reason: 'port' });
  t.throws(() => encodeCmaHdr({ ipVersion: 4, port: 1, src: '1.2.3.4', dst: '1.2.3.4' }, new Uint8Array(40), 5), {
    name: 'CmaHdrError',
    reason: 'output-too-small',
  });
  t.end();
});

t.test('service IDs', (t) => {
  t.same(RdmaPortSpace, { IPOIB: 0x0002, TCP: 0x0106, UDP: 0x0111, IB: 0x013f });
  t.equal(serviceId(RdmaPortSpace.TCP, 7471), 0x0000000001061d2fn, 'ucmatose');
  t.equal(serviceId(RdmaPortSpace.TCP, 7174), 0x0000000001061c06n, 'rping');
  t.equal(serviceId(RdmaPortSpace.UDP, 7174), 0x0000000001111c06n, 'udaddy');
  t.equal(serviceId(RdmaPortSpace.IB, 0), 0x00000000013f0000n);
  for (const [name, ps] of Object.entries(RdmaPortSpace)) {
    if (name === 'IPOIB') continue;
    for (const port of [0, 1, 7471, 65535]) t.same(parseServiceId(serviceId(ps, port)), { ps, portSpace: name, port });
  }
  t.equal(parseServiceId(serviceId(RdmaPortSpace.IPOIB, 5)), null, "IPoIB's 0x0002 is outside rdma_cm's prefix");
  t.equal(parseServiceId(0x0000000002061d2fn), null);
  t.equal(parseServiceId(0x1000000001061d2fn), null);
  t.equal(parseServiceId(0n), null);
  t.same(parseServiceId(IB_CMA_SERVICE_ID | 0x99_0001n), { ps: 0x0199, portSpace: undefined, port: 1 }, 'an unknown port space inside the prefix');
  t.throws(() => serviceId(RdmaPortSpace.TCP, 65536), { name: 'CmaHdrError', reason: 'port' });
  t.throws(() => serviceId(RdmaPortSpace.TCP, -1), { name: 'CmaHdrError', reason: 'port' });
  t.end();
});
