/**
 * Delivering events to user handlers from inside the stack. A handler runs on the stack of
 * whatever raised the event: the transport in the middle of a flush or of a received packet,
 * or a close(). Its exception must not unwind through that code (a flush stopped half-way, a
 * close() that throws and leaves the object half torn down). libibverbs never has this
 * problem: ibv_destroy_cq / ibv_destroy_qp never call user code, and events are read by the
 * application (ibv_get_async_event, ibv_get_cq_event) on its own stack.
 *
 * So a handler's exception is caught and re-raised on the next tick: as an 'error' event of
 * the emitter when it has an 'error' listener, otherwise thrown there, where Node reports it
 * as it reports any listener that throws on the event loop (uncaughtException). Nothing is
 * swallowed; it just does not break the caller.
 */
import type { EventEmitter } from 'node:events';

export function emitGuarded(target: EventEmitter, event: string, arg?: unknown): void {
  try {
    if (arg === undefined) target.emit(event);
    else target.emit(event, arg);
  } catch (err) {
    process.nextTick(reportHandlerError, target, err);
  }
}

function reportHandlerError(target: EventEmitter, err: unknown): void {
  if (target.listenerCount('error') > 0) target.emit('error', err);
  else throw err;
}
