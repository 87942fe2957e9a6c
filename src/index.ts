/** softroce: RDMA in TypeScript. */
export * as wire from './roce/index.js';
export { dumpCapture, formatPacket, formatSummary } from './roce/dump.js';
export type { DumpPacket, DumpResult, DumpSummary } from './roce/dump.js';
export * from './verbs/index.js';
export { FakeScheduler, RealScheduler } from './roce/sched.js';
export type { Scheduler } from './roce/sched.js';
export { MemNetwork, MemLink } from './roce/link/link.js';
export type { Link, LinkCaps } from './roce/link/link.js';
export { FaultInjector } from './roce/link/fault-link.js';
export type { FaultOptions } from './roce/link/fault-link.js';
export { PcapRecorder } from './roce/link/pcap-recorder.js';
export { UdpLink, NativeLink, DgramLink } from './roce/link/udp-link.js';
export { COUNTER_NAMES } from './roce/counters.js';
export * from './cm/index.js';
