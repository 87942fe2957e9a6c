/** softroce: RDMA in TypeScript. */
export * as wire from './roce/index.js';
export { dumpCapture, formatPacket, formatSummary } from './roce/dump.js';
export type { DumpPacket, DumpResult, DumpSummary } from './roce/dump.js';
export * from './verbs/index.js';
export { FakeScheduler, RealScheduler } from './roce/transport/sched.js';
export type { Scheduler } from './roce/transport/sched.js';
export { MemNetwork, MemLink, FaultInjector } from './roce/link/link.js';
export type { Link, FaultOptions } from './roce/link/link.js';
export { UdpLink } from './roce/link/udp-link.js';
export { COUNTER_NAMES } from './roce/counters.js';
