/** The verbs object model: devices, PD, MR, CQ, QP, SRQ, AH. */
export { openDevice, Device, Port } from './device.js';
export { getDeviceList, buildGidTable, activeMtuFor, portsOf, interfaceDevices } from './discovery.js';
export type { AsyncEvent, AsyncEventType, OpenDeviceOptions, OpenPortOptions } from './device.js';
export type { DeviceAttr, PortAttr } from './device-attr.js';
export type { GidEntry, GidType, DeviceDescriptor, PortDescriptor } from './discovery.js';
export { Pd, Srq, Ah } from './objects.js';
export { Mr } from './mr.js';
export { Cq } from './cq.js';
export { Qp } from './qp.js';
export { connectQp, remoteOf } from './connect.js';
export type { CreateQpOptions, QpAttrs, QpCap, Av, QpEndpoint, MrEndpoint } from './qp-attrs.js';
export type { ConnectLocal } from './connect.js';
export { Wc, ACCESS, WC_STATUS, WC_OPCODE } from './types.js';
export type { Access, Sge, RecvWr, SendWr, SendOpcode, WcStatus, WcOpcode } from './types.js';
export { QP_STATES, QP_TYPES, QP_TRANSITIONS, checkQpTransition } from './qp-state.js';
export type { QpState, QpType } from './qp-state.js';
export { RdmaError, VerbsError, InvalidQpTransitionError, InvalidQpAttrError } from './errors.js';
export type { ErrnoCode } from './errors.js';
