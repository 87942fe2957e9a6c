/**
 * Typed errors carrying the errno a C verbs user would get (libibverbs
 * returns -errno / sets errno; librdmacm the same). Tests assert `code` and
 * the structured fields, never message text.
 */
import { constants } from 'node:os';

export type ErrnoCode =
  | 'EINVAL'
  | 'EBUSY'
  | 'ENOMEM'
  | 'EAGAIN'
  | 'EOPNOTSUPP'
  | 'ETIMEDOUT'
  | 'ENETUNREACH'
  | 'EHOSTUNREACH'
  | 'ECONNREFUSED'
  | 'ECONNRESET'
  | 'EBADF'
  | 'ENODEV'
  | 'EADDRINUSE'
  | 'EADDRNOTAVAIL'
  | 'EACCES'
  | 'EPERM'
  | 'ENOENT'
  | 'EEXIST'
  | 'ENOSPC'
  | 'ENODATA'
  | 'ERANGE'
  | 'EPROTO';

const BRAND = Symbol.for('softroce.error');

export class RdmaError extends Error {
  readonly code: ErrnoCode;
  readonly errno: number;
  /** the verb that failed, e.g. 'ibv_modify_qp' */
  readonly op: string;
  constructor(code: ErrnoCode, op: string, message: string, options?: { cause?: unknown }) {
    super(`${op}: ${message} (${code})`, options);
    this.name = 'RdmaError';
    this.code = code;
    this.errno = (constants.errno as Record<string, number>)[code] ?? 0;
    this.op = op;
    (this as unknown as Record<symbol, boolean>)[BRAND] = true;
  }
  static override [Symbol.hasInstance](x: unknown): boolean {
    return (
      typeof x === 'object' &&
      x !== null &&
      (x as Record<symbol, unknown>)[BRAND] === true &&
      (this === RdmaError || Function.prototype[Symbol.hasInstance].call(this, x))
    );
  }
}

/** A verbs call failed (control or data path). `argument` names the offending argument when there is one. */
export class VerbsError extends RdmaError {
  readonly argument: string | undefined;
  constructor(code: ErrnoCode, op: string, message: string, argument?: string) {
    super(code, op, message);
    this.name = 'VerbsError';
    this.argument = argument;
  }
}

/** ibv_modify_qp to a state the current one cannot reach (IBA 10.3.1, the kernel's qp_state_table). */
export class InvalidQpTransitionError extends VerbsError {
  readonly from: string;
  readonly to: string;
  readonly qpType: string;
  constructor(from: string, to: string, qpType: string) {
    super('EINVAL', 'ibv_modify_qp', `${qpType} QP cannot go from ${from} to ${to}`, 'state');
    this.name = 'InvalidQpTransitionError';
    this.from = from;
    this.to = to;
    this.qpType = qpType;
  }
}

/** ibv_modify_qp with required attributes missing or attributes the transition does not allow. */
export class InvalidQpAttrError extends VerbsError {
  readonly from: string;
  readonly to: string;
  readonly missing: readonly string[];
  readonly notAllowed: readonly string[];
  constructor(from: string, to: string, missing: readonly string[], notAllowed: readonly string[]) {
    const parts: string[] = [];
    if (missing.length) parts.push(`missing ${missing.join(', ')}`);
    if (notAllowed.length) parts.push(`not allowed ${notAllowed.join(', ')}`);
    super('EINVAL', 'ibv_modify_qp', `${from} -> ${to}: ${parts.join('; ')}`, missing[0] ?? notAllowed[0]);
    this.name = 'InvalidQpAttrError';
    this.from = from;
    this.to = to;
    this.missing = missing;
    this.notAllowed = notAllowed;
  }
}
