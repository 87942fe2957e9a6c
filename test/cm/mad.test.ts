/**
 * The CM MAD codec against the real thing: every MAD on QP1 in the lab's captures (Linux 6.1 rxe + rdma-core
 * 44) parses to a known CM message, emits back byte for byte, and says what the capture says; synthetic
 * messages of every type round-trip; malformed MADs give a typed CmMadError, never a throw.
 */
import t from 'tap';
import {
  CM_DATA_LEN,
  CM_LAYOUTS,
  CM_MSG_TYPES,
  CM_PRIVATE_DATA_SIZE,
  CmAttr,
  CmMadError,
  CmMsgView,
  MAD_HDR_FIELDS,
  MAD_HDR_LEN,
  MAD_SIZE,
  MadHeaderView,
  cmMadHeader,
  emitCmMad,
  kernelCmTid,
  makeCmMsg,
  parseCmMad,
  privateDataExtent,
  type CmMsg,
  type CmMsgOf,
  type CmMsgType,
} from '../../src/cm/mad.js';
import { decodeCmaHdr, parseServiceId } from '../../src/cm/cma-hdr.js';
import {
  CMA_CM_RESPONSE_TIMEOUT,
  CMA_IBOE_PACKET_LIFETIME,
  CMA_MAX_CM_RETRIES,
  RXE_LOCAL_CA_ACK_DELAY,
  cmAckTimeout,
  flowLabelFromPorts,
  iboeGetMtu,
  rocePathLid,
  roceSubnetLocal,
  tosToSl,
} from '../../src/cm/cm-defs.js';
import { ipv4ToGid } from '../../src/roce/gid.js';
import type { FieldSpec } from '../../src/roce/wire/field.js';
import { Rng } from '../helpers.js';
import { capturedMads, type CapturedMad } from './captures.js';

const { files, mads } = capturedMads();

function parseOk(m: CapturedMad): CmMsg {
  const r = parseCmMad(m.mad);
  if (r instanceof CmMadError) throw new Error(`${m.file} #${m.frame}: ${r.message}`);
  return r;
}
function ofType<K extends CmMsgType>(list: CmMsg[], type: K): Extract<CmMsg, { type: K }>[] {
  return list.filter((m): m is Extract<CmMsg, { type: K }> => m.type === type);
}

t.test('every MAD on QP1 in the captures is a CM MAD that parses and re-emits byte-exact', (t) => {
  t.ok(files.length >= 15, `${files.length} golden captures`);
  t.ok(mads.length >= 30, `${mads.length} MADs to QP1`);
  const perFile = new Map<string, number>();
  for (const m of mads) {
    const where = `${m.file} #${m.frame}`;
    // g.1: UD SEND_ONLY from QP1, GSI Q_Key, P_Key 0xFFFF, a 256-byte MAD
    if (m.opcode !== 0x64 || m.qkey !== 0x80010000 || m.srcQp !== 1 || m.pkey !== 0xffff || m.mad.length !== MAD_SIZE) {
      t.fail(`${where}: opcode 0x${m.opcode.toString(16)} qkey 0x${m.qkey.toString(16)} srcQp ${m.srcQp} len ${m.mad.length}`);
      continue;
    }
    const r = parseCmMad(m.mad);
    if (r instanceof CmMadError) {
      t.fail(`${where}: ${r.reason}`);
      continue;
    }
    const again = emitCmMad(r);
    if (!Buffer.from(m.mad).equals(again)) t.fail(`${where}: ${r.type} re-emits differently`);
    perFile.set(m.file, (perFile.get(m.file) ?? 0) + 1);
  }
  // The rdma_cm runs carry the handshake; the pingpong / plain perftest runs (TCP exchange) carry none.
  for (const f of ['ucmatose.pcap', 'rping.pcap', 'udaddy.pcap', 'ib_send_lat_rdma_cm.pcap', 'ib_write_bw_rdma_cm.pcap'])
    t.ok((perFile.get(f) ?? 0) >= 2, `${f}: ${perFile.get(f) ?? 0} CM MADs`);
  t.equal(perFile.get('rc_pingpong.pcap'), undefined, 'rc_pingpong: no CM');
  t.end();
});

t.test('ucmatose: REQ / REP / RTU / DREQ / DREP fields as captured (checked against tshark)', (t) => {
  const msgs = mads.filter((m) => m.file === 'ucmatose.pcap').map(parseOk);
  t.same(
    msgs.map((m) => m.type),
    ['REQ', 'REP', 'RTU', 'DREQ', 'DREP'],
  );
  const [req] = ofType(msgs, 'REQ');
  const [rep] = ofType(msgs, 'REP');
  const [rtu] = ofType(msgs, 'RTU');
  const [dreq] = ofType(msgs, 'DREQ');
  const [drep] = ofType(msgs, 'DREP');
  if (!req || !rep || !rtu || !dreq || !drep) return t.end();
  // MAD header (tshark: Base 1, class 0x07 version 2, Send, TID 0x000000021995e83d, attribute 0x0010)
  t.same({ ...req.hdr }, { ...cmMadHeader('REQ', 0x000000021995e83dn) });
  // REQ (tshark: Local Comm ID 0x3de89519, QPN 0x16, PSN 0x8a28ca, GUID 0x505400fffec6120c)
  t.equal(req.localCommId, 0x3de89519);
  t.equal(req.serviceId, 0x0000000001061d2fn, 'service ID: RDMA_PS_TCP, port 7471');
  t.same(parseServiceId(req.serviceId), { ps: 0x0106, portSpace: 'TCP', port: 7471 });
  t.equal(req.localCaGuid, 0x505400fffec6120cn, 'CA GUID = EUI-64 of the guest MAC 52:54:00:c6:12:0c');
  t.equal(req.localQpn, 0x16);
  t.equal(req.startingPsn, 0x8a28ca);
  t.equal(req.localQkey, 0);
  t.equal(req.responderResources, 1);
  t.equal(req.initiatorDepth, 1);
  t.equal(req.transportServiceType, 0, 'RC');
  t.equal(req.remoteCmResponseTimeout, CMA_CM_RESPONSE_TIMEOUT);
  t.equal(req.localCmResponseTimeout, CMA_CM_RESPONSE_TIMEOUT);
  t.equal(req.maxCmRetries, CMA_MAX_CM_RETRIES);
  t.equal(req.retryCount, 5, "ucmatose client's retry_count");
  t.equal(req.rnrRetryCount, 0);
  t.equal(req.pkey, 0xffff);
  t.equal(req.pathMtu, iboeGetMtu(1500), 'path MTU 1024 from a 1500-byte netdev');
  t.equal(req.primaryLocalLid, 0xffff);
  t.equal(req.primaryRemoteLid, 0xffff);
  t.equal(req.primaryLocalLid, rocePathLid(req.primaryHopLimit));
  t.equal(req.primarySubnetLocal, roceSubnetLocal(req.primaryHopLimit));
  t.same(req.primaryLocalGid, ipv4ToGid('198.18.0.12'));
  t.same(req.primaryRemoteGid, ipv4ToGid('198.18.0.11'));
  t.equal(req.primaryHopLimit, 64);
  t.equal(req.primaryTrafficClass, 0);
  t.equal(req.primarySl, tosToSl(0));
  t.equal(req.primaryPacketRate, 0);
  t.equal(req.primaryLocalAckTimeout, cmAckTimeout(RXE_LOCAL_CA_ACK_DELAY, CMA_IBOE_PACKET_LIFETIME), 'ack timeout 19');
  t.equal(req.primaryLocalAckTimeout, 19);
  t.equal(req.alternateLocalLid, 0, 'no alternate path');
  t.equal(req.privateData.length, CM_PRIVATE_DATA_SIZE.REQ);
  t.equal(privateDataExtent(req.privateData), 36, 'just the cma_hdr (ucmatose sends no private data)');
  const cma = decodeCmaHdr(req.privateData);
  if (cma instanceof Error) return t.fail(cma.message);
  t.same(cma, { ipVersion: 4, port: 0xde0d, src: '198.18.0.12', dst: '198.18.0.11' });
  // h.4: the flow label from the rdma_cm ports (tshark misplaces this field by a byte: it shows 0x00b00)
  t.equal(req.primaryFlowLabel, flowLabelFromPorts(cma.port, 7471));
  t.equal(req.primaryFlowLabel, 0xb00c2);
  // REP, RTU: the REQ's TID, comm IDs crossed
  t.equal(rep.hdr.transactionId, req.hdr.transactionId);
  t.equal(rtu.hdr.transactionId, req.hdr.transactionId);
  t.equal(rep.remoteCommId, req.localCommId);
  t.equal(rtu.localCommId, req.localCommId);
  t.equal(rtu.remoteCommId, rep.localCommId);
  t.equal(rep.localQpn, 0x16);
  t.equal(rep.startingPsn, 0x3bf976);
  t.equal(rep.localCaGuid, 0x505400fffec6120bn);
  t.equal(rep.targetAckDelay, RXE_LOCAL_CA_ACK_DELAY);
  t.equal(rep.rnrRetryCount, 7, 'rdma_accept(NULL): rnr retry 7');
  t.equal(rep.responderResources, 1);
  t.equal(rep.initiatorDepth, 1);
  // g.2: TID = hi_tid << 32 | local comm ID as the little-endian host stores the __be32
  t.equal(req.hdr.transactionId, kernelCmTid(2, req.localCommId));
  // DREQ (server) gets a new TID from its own comm ID; DREP reuses it
  t.equal(dreq.hdr.transactionId, kernelCmTid(2, dreq.localCommId));
  t.equal(dreq.hdr.transactionId, 0x00000002bfd37c0bn);
  t.equal(drep.hdr.transactionId, dreq.hdr.transactionId);
  t.equal(dreq.localCommId, rep.localCommId);
  t.equal(dreq.remoteCommId, req.localCommId);
  t.equal(dreq.remoteQpn, req.localQpn, "DREQ carries the receiver's QPN");
  t.equal(drep.localCommId, req.localCommId);
  t.equal(drep.remoteCommId, rep.localCommId);
  t.end();
});

t.test('rping and udaddy: service IDs, cma_hdr, SIDR', (t) => {
  const rping = mads.filter((m) => m.file === 'rping.pcap').map(parseOk);
  const [req] = ofType(rping, 'REQ');
  t.equal(req?.serviceId, 0x0000000001061c06n, 'rping: RDMA_PS_TCP port 7174');
  t.equal(req?.retryCount, 7);
  t.equal(req?.rnrRetryCount, 7);
  const cma = req && decodeCmaHdr(req.privateData);
  t.match(cma, { ipVersion: 4, src: '198.18.0.12', dst: '198.18.0.11' });
  const ud = mads.filter((m) => m.file === 'udaddy.pcap').map(parseOk);
  const [sreq] = ofType(ud, 'SIDR_REQ');
  const [srep] = ofType(ud, 'SIDR_REP');
  if (!sreq || !srep) return t.fail('udaddy: SIDR_REQ and SIDR_REP');
  t.equal(sreq.serviceId, 0x0000000001111c06n, 'udaddy: RDMA_PS_UDP port 7174');
  t.same(parseServiceId(sreq.serviceId), { ps: 0x0111, portSpace: 'UDP', port: 7174 });
  t.equal(sreq.pkey, 0xffff);
  t.match(decodeCmaHdr(sreq.privateData), { ipVersion: 4, src: '198.18.0.12', dst: '198.18.0.11' });
  t.equal(srep.requestId, sreq.requestId);
  t.equal(srep.hdr.transactionId, sreq.hdr.transactionId);
  t.equal(sreq.hdr.transactionId, kernelCmTid(2, sreq.requestId));
  t.equal(srep.status, 0, 'SIDR success');
  t.equal(srep.serviceId, sreq.serviceId);
  t.equal(srep.qkey, 0x01234567, 'rdma_cm UDP Q_Key');
  t.equal(srep.qpn, 0x18);
  t.end();
});

t.test('views read and write the captured REQ in place', (t) => {
  const m = mads.find((x) => x.file === 'ucmatose.pcap')!;
  const buf = Buffer.from(m.mad);
  const hv = new MadHeaderView(buf);
  t.equal(hv.baseVersion, 1);
  t.equal(hv.mgmtClass, 7);
  t.equal(hv.classVersion, 2);
  t.equal(hv.method, 3);
  t.equal(hv.attributeId, CmAttr.REQ);
  t.equal(hv.transactionId, 0x000000021995e83dn);
  const v = new CmMsgView('REQ', buf);
  t.equal(v.get('serviceId'), 0x0000000001061d2fn);
  t.equal(v.get('localQpn'), 0x16);
  t.equal(v.get('retryCount'), 5);
  t.equal(v.get('localCmResponseTimeout'), 20);
  v.set('retryCount', 7);
  v.set('primaryFlowLabel', 0x12345);
  hv.transactionId = 0x1122334455667788n;
  const p = parseCmMad(buf) as CmMsgOf<'REQ'>;
  t.equal(p.retryCount, 7);
  t.equal(p.localCmResponseTimeout, 20, 'the neighbouring bits of byte 47 kept');
  t.equal(p.primaryFlowLabel, 0x12345);
  t.equal(p.primaryPacketRate, 0);
  t.equal(p.hdr.transactionId, 0x1122334455667788n);
  t.throws(() => v.set('retryCount', 8), CmMadError, 'a 3-bit field refuses 8');
  t.end();
});

t.test('fields land where the kernel (ibta_vol1_c12.h) puts them', (t) => {
  // [type, field, value, MAD byte offset, expected bytes there]; offsets are MAD offsets (CM data + 24)
  const rows: [CmMsgType, string, number | bigint, number, number[]][] = [
    ['REQ', 'localQpn', 0xabcdef, 24 + 32, [0xab, 0xcd, 0xef]],
    ['REQ', 'remoteCmResponseTimeout', 0x1f, 24 + 43, [0xf8]],
    ['REQ', 'retryCount', 7, 24 + 47, [0x07]],
    ['REQ', 'pathMtu', 5, 24 + 50, [0x50]],
    ['REQ', 'maxCmRetries', 15, 24 + 51, [0xf0]],
    ['REQ', 'primaryFlowLabel', 0xfffff, 24 + 88, [0xff, 0xff, 0xf0, 0x00]],
    ['REQ', 'primaryPacketRate', 0x3f, 24 + 91, [0x3f]],
    ['REQ', 'primarySl', 0xf, 24 + 94, [0xf0]],
    ['REQ', 'primaryLocalAckTimeout', 0x1f, 24 + 95, [0xf8]],
    ['REQ', 'sapSupported', 1, 24 + 139, [0x04]],
    ['MRA', 'messageMraed', 2, 24 + 8, [0x80]],
    ['MRA', 'serviceTimeout', 24, 24 + 9, [0xc0]],
    ['REJ', 'rejectInfoLength', 72, 24 + 9, [0x90]],
    ['REJ', 'reason', 28, 24 + 10, [0x00, 0x1c]],
    ['REP', 'rnrRetryCount', 7, 24 + 27, [0xe0]],
    ['REP', 'srq', 1, 24 + 27, [0x10]],
    ['REP', 'targetAckDelay', 15, 24 + 26, [0x78]],
    ['REP', 'failoverAccepted', 3, 24 + 26, [0x06]],
    ['DREQ', 'remoteQpn', 0x16, 24 + 8, [0x00, 0x00, 0x16, 0x00]],
    ['LAP', 'alternateFlowLabel', 0xfffff, 24 + 56, [0xff, 0xff, 0xf0, 0x00]],
    ['LAP', 'alternateTrafficClass', 0xab, 24 + 59, [0xab]],
    ['LAP', 'alternateHopLimit', 0x40, 24 + 60, [0x40]],
    ['LAP', 'alternatePacketRate', 0x3f, 24 + 61, [0x3f]],
    ['LAP', 'alternateSl', 0xf, 24 + 62, [0xf0]],
    ['LAP', 'alternateLocalAckTimeout', 0x1f, 24 + 63, [0xf8]],
    ['SIDR_REP', 'qpn', 0x123456, 24 + 8, [0x12, 0x34, 0x56, 0x00]],
    ['SIDR_REP', 'qkey', 0x01234567, 24 + 20, [0x01, 0x23, 0x45, 0x67]],
    ['SIDR_REQ', 'serviceId', 0x0000000001111c06n, 24 + 8, [0, 0, 0, 0, 1, 0x11, 0x1c, 0x06]],
  ];
  for (const [type, field, value, off, bytes] of rows) {
    const out = emitCmMad(makeCmMsg(type, { [field]: value } as never));
    t.same([...out.subarray(off, off + bytes.length)], bytes, `${type}.${field}`);
  }
  t.end();
});

t.test('every bit of the header and of every message belongs to exactly one field', (t) => {
  const cover = (name: string, len: number, fields: readonly FieldSpec[]): void => {
    const owner = new Array<number>(len * 8).fill(0);
    for (const f of fields) {
      if (f[2] === 'bytes') {
        for (let b = f[1] * 8; b < (f[1] + f[3]) * 8; b++) owner[b]!++;
        continue;
      }
      const nbytes = Math.ceil((f[2] + f[3]) / 8);
      for (let k = 0; k < f[3]; k++) owner[f[1] * 8 + nbytes * 8 - 1 - (f[2] + k)]!++;
    }
    const bad = owner.findIndex((c) => c !== 1);
    t.equal(bad, -1, `${name}: ${len * 8} bits covered once${bad >= 0 ? ` (byte ${bad >> 3} bit ${7 - (bad & 7)} has ${owner[bad]})` : ''}`);
  };
  cover('MAD header', MAD_HDR_LEN, MAD_HDR_FIELDS);
  for (const k of CM_MSG_TYPES) {
    cover(k, CM_DATA_LEN, CM_LAYOUTS[k].fields);
    const pd = CM_LAYOUTS[k].fields.find((f: FieldSpec) => f[0] === 'privateData')!;
    t.equal(pd[3], CM_PRIVATE_DATA_SIZE[k], `${k}: private data ${CM_PRIVATE_DATA_SIZE[k]} bytes`);
    t.equal((pd[1] as number) + (pd[3] as number), CM_DATA_LEN, `${k}: private data runs to the end`);
  }
  t.end();
});

function randomMsg<K extends CmMsgType>(rng: Rng, type: K): CmMsgOf<K> {
  const m = makeCmMsg(type) as unknown as Record<string, unknown>;
  m['hdr'] = cmMadHeader(type, rng.big64(), rng.next());
  for (const f of CM_LAYOUTS[type].fields as readonly FieldSpec[]) {
    if (f[2] === 'bytes') m[f[0]] = rng.bytes(f[3]);
    else if (f[3] === 64) m[f[0]] = rng.big64();
    else m[f[0]] = rng.next() % 2 ** f[3];
  }
  return m as CmMsgOf<K>;
}

/** A message as plain JSON-able values (Buffers and Uint8Arrays as hex, bigints as strings). */
function norm(x: object): Record<string, unknown> {
  const o: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(x))
    o[k] =
      typeof v === 'bigint'
        ? v.toString(16)
        : v instanceof Uint8Array
          ? Buffer.from(v).toString('hex')
          : typeof v === 'object' && v !== null
            ? norm(v as object)
            : v;
  return o;
}

t.test('synthetic messages of every type round-trip (object → MAD → object → MAD)', (t) => {
  const rng = new Rng(0xc0ffee);
  for (const type of CM_MSG_TYPES) {
    for (let i = 0; i < 50; i++) {
      const msg = randomMsg(rng, type);
      const out = emitCmMad(msg);
      t.equal(out.length, MAD_SIZE);
      const back = parseCmMad(out);
      if (back instanceof CmMadError || back.type !== type) {
        t.fail(`${type}: ${String(back instanceof CmMadError ? back.reason : back.type)}`);
        break;
      }
      if (i === 0) t.same(norm(back), norm(msg), `${type}: every field back`);
      else if (JSON.stringify(norm(back)) !== JSON.stringify(norm(msg))) t.fail(`${type}: differs on round ${i}`);
      if (!emitCmMad(back).equals(out)) t.fail(`${type}: second emit differs`);
    }
  }
  // Random bytes under a valid header: parse → emit is the identity, reserved bits included.
  for (let i = 0; i < 500; i++) {
    const buf = Buffer.from(rng.bytes(MAD_SIZE));
    const type = CM_MSG_TYPES[rng.int(CM_MSG_TYPES.length)]!;
    buf[0] = 1;
    buf[1] = 7;
    buf[2] = 2;
    buf.writeUInt16BE(CM_LAYOUTS[type].attr, 16);
    const p = parseCmMad(buf);
    if (p instanceof CmMadError || !emitCmMad(p).equals(buf)) {
      t.fail(`random ${type} MAD #${i} does not round-trip`);
      break;
    }
  }
  // Private data given at its real length is zero-padded to the field.
  const short = emitCmMad(makeCmMsg('REP', { privateData: Uint8Array.of(1, 2, 3), localCommId: 9 }));
  t.same([...short.subarray(MAD_HDR_LEN + 36, MAD_HDR_LEN + 40)], [1, 2, 3, 0]);
  t.equal(privateDataExtent((parseCmMad(short) as CmMsgOf<'REP'>).privateData), 3);
  // into a caller's buffer at an offset
  const outBuf = Buffer.alloc(MAD_SIZE + 10, 0xee);
  emitCmMad(makeCmMsg('RTU', { localCommId: 0x01020304 }), outBuf, 10);
  t.equal(outBuf.readUInt32BE(10 + MAD_HDR_LEN), 0x01020304);
  t.equal(outBuf[9], 0xee, 'bytes before the offset untouched');
  t.end();
});

t.test('malformed MADs give a typed CmMadError, never a throw', (t) => {
  const good = Buffer.from(mads.find((x) => x.file === 'ucmatose.pcap')!.mad);
  const reasons = new Set<string>();
  for (let n = 0; n < MAD_SIZE; n++) {
    let r: unknown;
    try {
      r = parseCmMad(good.subarray(0, n));
    } catch (e) {
      t.fail(`truncated to ${n}: threw ${String(e)}`);
      continue;
    }
    if (!(r instanceof CmMadError) || r.reason !== 'short-buffer') t.fail(`truncated to ${n}: not short-buffer`);
    else reasons.add(r.reason);
  }
  t.same([...reasons], ['short-buffer'], 'every truncation 0..255');
  t.notOk(parseCmMad(Buffer.concat([good, Buffer.alloc(8)])) instanceof CmMadError, 'trailing bytes past 256 are ignored');
  const mutate = (i: number, v: number): Buffer => {
    const b = Buffer.from(good);
    b[i] = v;
    return b;
  };
  const expectErr = (b: Uint8Array, reason: string, what: string): void => {
    let r: unknown;
    try {
      r = parseCmMad(b);
    } catch (e) {
      t.fail(`${what}: threw ${String(e)}`);
      return;
    }
    if (!(r instanceof CmMadError) || r.reason !== reason) t.fail(`${what}: ${r instanceof CmMadError ? r.reason : 'parsed'}, expected ${reason}`);
  };
  for (let v = 0; v < 256; v++) {
    if (v !== 1) expectErr(mutate(0, v), 'base-version', `BaseVersion ${v}`);
    if (v !== 7) expectErr(mutate(1, v), 'mgmt-class', `MgmtClass ${v}`);
    if (v !== 2) expectErr(mutate(2, v), 'class-version', `ClassVersion ${v}`);
  }
  const known = new Set<number>(CM_MSG_TYPES.map((k) => CM_LAYOUTS[k].attr));
  let unknown = 0;
  for (let a = 0; a <= 0xffff; a++) {
    if (known.has(a)) continue;
    const b = Buffer.from(good);
    b.writeUInt16BE(a, 16);
    expectErr(b, 'unknown-attribute', `attribute 0x${a.toString(16)}`);
    unknown++;
  }
  t.equal(unknown, 0x10000 - 11, 'every other attribute ID (ClassPortInfo included) refused');
  const e = parseCmMad(mutate(1, 0x04)) as CmMadError;
  t.equal(e.field, 'mgmtClass');
  t.pass('no throw on any malformed input');
  t.end();
});

t.test('emit refuses what does not fit, with the field named, and leaves the output untouched', (t) => {
  const pd = (n: number): Uint8Array => new Uint8Array(n).fill(1);
  for (const type of CM_MSG_TYPES) {
    const max = CM_PRIVATE_DATA_SIZE[type];
    t.doesNotThrow(() => emitCmMad(makeCmMsg(type, { privateData: pd(max) } as never)), `${type}: ${max} bytes fit`);
    t.throws(
      () => emitCmMad(makeCmMsg(type, { privateData: pd(max + 1) } as never)),
      { name: 'CmMadError', reason: 'private-data-too-long', field: 'privateData' },
      `${type}: ${max + 1} bytes refused`,
    );
  }
  const out = Buffer.alloc(MAD_SIZE, 0xaa);
  t.throws(() => emitCmMad(makeCmMsg('REQ', { localQpn: 0x1000000 }), out), { name: 'CmMadError', reason: 'field-range', field: 'localQpn' });
  t.ok(
    out.every((b) => b === 0xaa),
    'nothing written',
  );
  t.throws(() => emitCmMad(makeCmMsg('REQ', { retryCount: 8 })), { name: 'CmMadError', reason: 'field-range', field: 'retryCount' });
  t.throws(() => emitCmMad(makeCmMsg('REQ', { startingPsn: -1 })), { name: 'CmMadError', reason: 'field-range' });
  t.throws(() => emitCmMad(makeCmMsg('REQ', { startingPsn: 1.5 })), { name: 'CmMadError', reason: 'field-range' });
  t.throws(() => emitCmMad(makeCmMsg('REQ', { serviceId: 1n << 64n })), { name: 'CmMadError', reason: 'field-range', field: 'serviceId' });
  t.throws(() => emitCmMad(makeCmMsg('REQ', { primaryLocalGid: new Uint8Array(17) })), { name: 'CmMadError', reason: 'field-range', field: 'primaryLocalGid' });
  const wrongAttr = makeCmMsg('REP');
  wrongAttr.hdr.attributeId = CmAttr.REQ;
  t.throws(() => emitCmMad(wrongAttr), { name: 'CmMadError', reason: 'attribute-mismatch' });
  t.throws(() => emitCmMad(makeCmMsg('RTU'), Buffer.alloc(255)), { name: 'CmMadError', reason: 'output-too-small' });
  t.end();
});
