/** softroce: RDMA in TypeScript. */
export * as wire from './roce/index.js';
export { dumpCapture, formatPacket, formatSummary } from './roce/dump.js';
export type { DumpPacket, DumpResult, DumpSummary } from './roce/dump.js';
