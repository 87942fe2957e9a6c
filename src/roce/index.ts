/** `softroce/wire`: the RoCE wire layer (headers, opcodes, PSNs, ICRC, framing, captures). */
export * from './wire/field.js';
export * from './wire/bth.js';
export * from './wire/exth.js';
export * from './wire/grh.js';
export * from './wire/net.js';
export * from './opcode.js';
export * from './psn.js';
export * from './aeth.js';
export * from './icrc.js';
export * from './packet.js';
export * from './gid.js';
export * from './framing.js';
export * from './pcap.js';
export * from './dump.js';
export * from './flow.js';
