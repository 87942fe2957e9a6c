/**
 * Which physical port a QP of a bonded device sends on: pure rules, no devices (bond.ts applies
 * them). Ports are numbered 1..n as mlx5dv_query_qp_lag_port numbers them; `up[i]` is port i+1's
 * link-watch state.
 *
 * - The configured port, chosen once at RESET -> INIT: the one the application set
 *   (mlx5dv_modify_qp_lag_port), else the parity of the transition's flow entropy (mlx4's
 *   active-active RoCE: even -> port 1, odd -> port 2), else the next of a per-device round-robin
 *   counter over the live ports (mlx5's per-context tx_port_affinity counter).
 * - The active port, where its packets leave now: in active-backup every QP is on the bond's
 *   active port; in the hash modes the configured port while it is up, else a live one (mlx5's TX
 *   affinity remap: a down port's buckets go to the ports that are up; the QP keeps its configured
 *   port), and back to the configured port when it returns, unless the port the QP moved to is sticky.
 */

/** How a QP's configured port was chosen. */
export type AffinitySource = 'explicit' | 'flow-entropy' | 'round-robin';

/** The configured port of a QP at RESET -> INIT, and the round-robin counter after it. */
export function initialLagPort(o: {
  readonly explicit: number | null;
  readonly flowEntropy: number | null;
  readonly counter: number;
  readonly up: readonly boolean[];
}): { port: number; source: AffinitySource; counter: number } {
  if (o.explicit !== null) return { port: o.explicit, source: 'explicit', counter: o.counter };
  if (o.flowEntropy !== null) return { port: (o.flowEntropy & 1) === 0 ? 1 : 2, source: 'flow-entropy', counter: o.counter };
  const live: number[] = [];
  o.up.forEach((u, i) => {
    if (u) live.push(i + 1);
  });
  // No port up: count over all of them (the QP goes where its turn says and waits there).
  const pool = live.length > 0 ? live : o.up.map((_, i) => i + 1);
  return { port: pool[o.counter % pool.length]!, source: 'round-robin', counter: o.counter + 1 };
}

/**
 * The hash modes' active port of a QP now on `current` (configured `configured`) after a port
 * changed state: off a dead port to its configured port if that is up, else to the first live one;
 * back to the configured port when it is up again, unless the current one is sticky; with no port up
 * it stays (nowhere to go).
 */
export function remapHash(current: number, configured: number, up: readonly boolean[], sticky: readonly boolean[]): number {
  const isUp = (p: number): boolean => up[p - 1] === true;
  if (!isUp(current)) {
    if (isUp(configured)) return configured;
    const live = up.findIndex((u) => u);
    return live >= 0 ? live + 1 : current;
  }
  if (current !== configured && isUp(configured) && sticky[current - 1] !== true) return configured;
  return current;
}

/**
 * teamd's active-backup choice (teamd_runner_activebackup.c ab_link_watch_handler): the current
 * active port stays while it is up and either sticky or no live port has a strictly higher prio;
 * otherwise the live port with the highest prio (ties: the lower port number); null when none is up.
 */
export function selectActive(current: number | null, up: readonly boolean[], prio: readonly number[], sticky: readonly boolean[]): number | null {
  let best: number | null = null;
  for (let i = 0; i < up.length; i++) {
    if (up[i] !== true) continue;
    if (best === null || prio[i]! > prio[best - 1]!) best = i + 1;
  }
  if (current !== null && up[current - 1] === true) {
    if (sticky[current - 1] === true || best === null || prio[best - 1]! <= prio[current - 1]!) return current;
  }
  return best;
}
