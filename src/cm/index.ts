/** rdma_cm: event channels, ids, address and route resolution (issue 13). */
export { createEventChannel, EventChannel, CM_EVENT_TYPES } from './event-channel.js';
export type { CmEvent, CmEventType, CmEventParam, GetEventOptions, EventChannelOptions } from './event-channel.js';
export { createId, CmId } from './cm-id.js';
export type { CreateIdOptions, CmIdOptions, ResolveAddrOptions, CmRoute } from './cm-id.js';
export type { CmAddr, CmAddrInput } from './addr.js';
export { CMA_STATES, CALLS as CM_CALLS } from './cm-states.js';
export type { CmaState } from './cm-states.js';
export type { PortSpace } from './port-space.js';
export { setRoceMode, roceMode, iboeMtu } from './route.js';
export type { PathRecord, RoceMode } from './route.js';
export { cmDevices, cmDevicesClosed } from './devices.js';
export type { IdQpOptions, WaitOptions } from './cm-id.js';
export type { UdParam } from './event-channel.js';
export { RDMA_UDP_QKEY, RDMA_MAX_RESP_RES, RDMA_MAX_INIT_DEPTH } from './conn.js';
export type { ConnParam, ConnInfo } from './conn.js';
export { listen, connect, Endpoint, Server, CompletionError } from './quick.js';
export type { Completion, ListenOptions, ConnectOptions, EndpointOptions } from './quick.js';
