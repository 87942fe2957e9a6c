/** CM timeouts, REJ reasons, MTU and RoCE path rules, rdma_cm event names (roce-wire.md g.5, g.6, h.3, h.4). */
import t from 'tap';
import {
  CMA_CM_RESPONSE_TIMEOUT,
  CMA_MAX_CM_RETRIES,
  CmRejReason,
  IbMtu,
  RDMA_CM_EVENT_NAMES,
  RdmaCmEvent,
  SidrStatus,
  cmAckTimeout,
  cmTimeoutMs,
  flowLabelFromPorts,
  ibMtuFromBytes,
  ibMtuToBytes,
  iboeGetMtu,
  kernelCmTimeoutMs,
  kernelMadRetryTimeoutMs,
  kernelMraTimeoutMs,
  madRetryTimeoutMs,
  rdmaEventStr,
  rejReasonName,
  sidrStatusName,
  tosToPriority,
  tosToSl,
} from '../../src/cm/cm-defs.js';

t.test('timeouts', (t) => {
  t.equal(cmTimeoutMs(0), 0.004096);
  t.ok(Math.abs(cmTimeoutMs(20) - 4294.967296) < 1e-6, '20 → 4.29 s exactly');
  t.equal(kernelCmTimeoutMs(20), 4096, 'cm_convert_to_ms(20)');
  t.equal(kernelCmTimeoutMs(3), 1, 'never below 1 ms');
  // REQ retry interval and total: ~4.6 s with packet life 16; 16 sends ≈ 74 s (cm-and-lag.md)
  t.equal(kernelMadRetryTimeoutMs(16, CMA_CM_RESPONSE_TIMEOUT), 4608);
  t.equal(kernelMadRetryTimeoutMs(16, CMA_CM_RESPONSE_TIMEOUT) * (CMA_MAX_CM_RETRIES + 1), 73728);
  t.equal(kernelMadRetryTimeoutMs(18, 20), 6144);
  t.ok(Math.abs(madRetryTimeoutMs(16, 20) - (2 * 268.435456 + 4294.967296)) < 1e-6, 'IBA exact (g.6)');
  t.equal(kernelMraTimeoutMs(24, 0), 65536 + 1, "MRA service timeout 24: 2^16 ms + the AV's");
  // cm_ack_timeout: life 18 with rxe's delay 15 → 19 (the lab's REQs); life 16 → 17
  t.equal(cmAckTimeout(15, 18), 19);
  t.equal(cmAckTimeout(15, 16), 17);
  t.equal(cmAckTimeout(15, 14), 16, 'life + 1 == delay: round up');
  t.equal(cmAckTimeout(20, 10), 20, 'delay dominates');
  t.equal(cmAckTimeout(20, 18), 21, 'within 50%: one more');
  t.equal(cmAckTimeout(0, 31), 31, 'capped at 31');
  t.end();
});

t.test('REJ reasons and SIDR statuses', (t) => {
  t.equal(CmRejReason.INVALID_SERVICE_ID, 8);
  t.equal(CmRejReason.STALE_CONN, 10);
  t.equal(CmRejReason.INVALID_GID, 12);
  t.equal(CmRejReason.CONSUMER_DEFINED, 28);
  t.equal(CmRejReason.VENDOR_OPTION_NOT_SUPPORTED, 35);
  t.equal(rejReasonName(8), 'INVALID_SERVICE_ID');
  t.equal(rejReasonName(34), undefined);
  const vals = Object.values(CmRejReason);
  t.same(vals, [...Array.from({ length: 33 }, (_, i) => i + 1), 35], '1..33 and 35');
  t.equal(SidrStatus.SUCCESS, 0);
  t.equal(sidrStatusName(3), 'NO_QP');
  t.equal(sidrStatusName(6), undefined);
  t.end();
});

t.test('MTU enum and the RoCE path MTU', (t) => {
  t.equal(IbMtu.MTU_1024, 3);
  t.same([1, 2, 3, 4, 5].map(ibMtuToBytes), [256, 512, 1024, 2048, 4096]);
  t.equal(ibMtuToBytes(0), 0);
  t.equal(ibMtuToBytes(6), 0);
  t.equal(ibMtuFromBytes(2048), 4);
  t.equal(ibMtuFromBytes(1500), 0);
  t.equal(iboeGetMtu(1500), 3);
  t.equal(iboeGetMtu(9000), 5);
  t.equal(iboeGetMtu(4096 + 96), 5);
  t.equal(iboeGetMtu(4096 + 95), 4);
  t.equal(iboeGetMtu(300), 0);
  t.end();
});

t.test('RoCE path rules', (t) => {
  t.equal(flowLabelFromPorts(0xde0d, 7471), 0xb00c2, "the lab ucmatose REQ's flow label");
  t.equal(flowLabelFromPorts(65535, 65535), (65535 * 32) & 0xfffff, 'masked to 20 bits');
  t.equal(tosToSl(0), 0);
  t.equal(tosToSl(0xb8), 0, 'no priority map: 0, as on a plain netdev');
  t.equal(tosToPriority(0x10), 6, 'IPTOS_LOWDELAY → TC_PRIO_INTERACTIVE');
  t.equal(tosToPriority(0x08), 2, 'IPTOS_THROUGHPUT → TC_PRIO_BULK');
  t.equal(tosToSl(0x10, [0, 1, 2, 3, 4, 5, 6, 7]), 6, 'through a prio → tc map');
  t.end();
});

t.test('rdma_cm event names in enum order', (t) => {
  t.equal(RDMA_CM_EVENT_NAMES.length, 18);
  t.equal(RdmaCmEvent.ADDR_RESOLVED, 0);
  t.equal(RdmaCmEvent.CONNECT_REQUEST, 4);
  t.equal(RdmaCmEvent.REJECTED, 8);
  t.equal(RdmaCmEvent.ESTABLISHED, 9);
  t.equal(RdmaCmEvent.DISCONNECTED, 10);
  t.equal(RdmaCmEvent.DEVICE_REMOVAL, 11);
  t.equal(RdmaCmEvent.TIMEWAIT_EXIT, 15);
  t.equal(RdmaCmEvent.ADDRINFO_ERROR, 17);
  t.equal(rdmaEventStr(9), 'RDMA_CM_EVENT_ESTABLISHED');
  t.equal(rdmaEventStr(99), 'UNKNOWN EVENT');
  t.end();
});
