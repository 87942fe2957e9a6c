/**
 * The lab's ucmatose REQ (ucmatose.pcap frame 1, sent by the 6.1 kernel on 198.18.0.12) replayed into an agent
 * listening on its service ID at 198.18.0.11: the REP, DREQ we send must carry what the kernel's did (frames 2
 * and 44) in every field the kernel derives, and differ only in the random ones (our comm ID, GUID, PSN).
 */
import t from 'tap';
import { capturedMads } from './captures.js';
import { cmNet, recorder, RawQp1 } from './ib-cm-helpers.js';
import { emitCmMad, kernelCmTid, parseCmMad, type CmMsg, type CmMsgOf } from '../../src/cm/mad.js';
import { ipv4ToGid } from '../../src/roce/gid.js';
import type { IbCmEvent } from '../../src/cm/ib-cm.js';

const all = capturedMads().mads.filter((m) => m.file === 'ucmatose.pcap');
const msgs = all.map((m) => parseCmMad(m.mad) as CmMsg);
const of = <K extends CmMsg['type']>(type: K) => msgs.find((m) => m.type === type) as Extract<CmMsg, { type: K }>;

t.test('a kernel REQ from the capture, answered as the kernel answered it', async (t) => {
  const kreq = of('REQ');
  const krep = of('REP');
  const kdreq = of('DREQ');
  const kdrep = of('DREP');
  t.ok(kreq && krep && kdreq && kdrep, 'REQ, REP, DREQ, DREP in ucmatose.pcap');
  const n = await cmNet(['198.18.0.11']);
  const raw = await RawQp1.open(n, '198.18.0.12');
  const rb = recorder();
  const l = n.agents[0]!.createId(rb.h);
  l.listen(kreq.serviceId);
  raw.send(emitCmMad(kreq), '198.18.0.11');
  n.flush();
  t.same(rb.types(), ['REQ_RECEIVED']);
  const ev = rb.events[0] as Extract<IbCmEvent, { type: 'REQ_RECEIVED' }>;
  const b = ev.id;
  t.same(ev.path.sgid, ipv4ToGid('198.18.0.11'));
  t.same(ev.path.dgid, ipv4ToGid('198.18.0.12'));
  t.same(
    [ev.path.flowLabel, ev.path.packetLifeTime, ev.path.mtu, ev.path.hopLimit, ev.path.trafficClass, ev.path.pkey],
    [0xb00c2, 18, 3, 64, 0, 0xffff],
    'path from the REQ (packet life = Local ACK Timeout 19 - 1)',
  );
  t.same([ev.param.remoteQpn, ev.param.startingPsn, ev.param.retryCount, ev.param.rnrRetryCount], [0x16, 0x8a28ca, 5, 0]);

  // Accept with the kernel's QPN and PSN so that only our comm ID and GUID can differ.
  b.sendRep({ qpn: krep.localQpn, startingPsn: krep.startingPsn, responderResources: 1, initiatorDepth: 1, rnrRetryCount: 7, srq: false });
  n.flush();
  const got = raw.received();
  t.equal(got.length, 1);
  const rep = got[0] as CmMsgOf<'REP'>;
  t.equal(rep.type, 'REP');
  t.equal(rep.hdr.transactionId, 0x000000021995e83dn, "the REQ's TID");
  t.equal(rep.remoteCommId, 0x3de89519, "the REQ's comm ID");
  t.equal(rep.localCommId, b.localCommId);
  t.equal((rep.localCaGuid >> 24n) & 0xffffn, 0xfffen, 'GUID = EUI-64 of the MAC, as the kernel REP (0x505400fffec6120b)');
  t.equal((krep.localCaGuid >> 24n) & 0xffffn, 0xfffen);
  t.same(
    [rep.targetAckDelay, rep.failoverAccepted, rep.endToEndFlowControl, rep.srq, rep.localQkey, rep.localEecn, rep.rnrRetryCount],
    [krep.targetAckDelay, krep.failoverAccepted, krep.endToEndFlowControl, krep.srq, krep.localQkey, krep.localEecn, krep.rnrRetryCount],
    'flags as the kernel: target ACK delay 15 (rxe), failover 0, no flow control',
  );
  // Every byte but our comm ID (MAD bytes 24-27) and GUID (52-59) is the kernel's.
  const ours = Buffer.from(emitCmMad(rep));
  const theirs = Buffer.from(emitCmMad(krep));
  ours.fill(0, 24, 28);
  theirs.fill(0, 24, 28);
  ours.fill(0, 52, 60);
  theirs.fill(0, 52, 60);
  t.same(ours.toString('hex'), theirs.toString('hex'), 'the rest of the 256 bytes equal the kernel REP');

  // The capture's RTU, addressed to our comm ID: ESTABLISHED.
  raw.send(emitCmMad({ ...of('RTU'), remoteCommId: b.localCommId }), '198.18.0.11');
  n.flush();
  t.equal(b.state, 'ESTABLISHED');

  // Our DREQ against the kernel's (frame 44, also from the passive side).
  b.sendDreq();
  n.flush();
  const dreq = raw.received()[0] as CmMsgOf<'DREQ'>;
  t.equal(dreq.type, 'DREQ');
  t.same([dreq.remoteCommId, dreq.remoteQpn], [kdreq.remoteCommId, kdreq.remoteQpn], 'remote comm ID and QPN as the kernel');
  t.equal(dreq.hdr.transactionId, kernelCmTid(n.agents[0]!.hiTid, b.localCommId), 'a TID from our comm ID');
  t.equal(kdreq.hdr.transactionId & 0xffffffffn, kernelCmTid(0, kdreq.localCommId), "the kernel's passive DREQ: the same rule");
  raw.send(emitCmMad({ ...kdrep, remoteCommId: b.localCommId, hdr: { ...kdrep.hdr, transactionId: dreq.hdr.transactionId } }), '198.18.0.11');
  n.flush();
  t.equal(b.state, 'TIMEWAIT');
  t.same(rb.types(), ['REQ_RECEIVED', 'RTU_RECEIVED', 'DREP_RECEIVED']);
  await n.close();
});
