/**
 * The typed errors of the verbs API. Defined in src/roce/errors.ts so that the layers below verbs
 * (links, transport) can throw them without importing upward; re-exported here unchanged.
 */
export { RdmaError, VerbsError, InvalidQpTransitionError, InvalidQpAttrError } from '../roce/errors.js';
export type { ErrnoCode } from '../roce/errors.js';
