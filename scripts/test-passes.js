#!/usr/bin/env node
// npm test's three passes of the tap suite: with the native addon (its fast path on), with the
// fast path off (SOFTROCE_NO_FASTPATH=1), and without the addon (SOFTROCE_NO_NATIVE=1). Every pass
// runs even when an earlier one failed (chained with &&, one flaky test hid the other two passes'
// results); the exit status is non-zero when any pass failed.
import { spawnSync } from 'node:child_process';

const passes = [
  ['with the native addon', {}],
  ['with the fast path off', { SOFTROCE_NO_FASTPATH: '1' }],
  ['without the native addon', { SOFTROCE_NO_NATIVE: '1' }],
];
const failed = [];
for (const [name, env] of passes) {
  console.log(`\n== tap ${name}`);
  const r = spawnSync('tap', process.argv.slice(2), { stdio: 'inherit', shell: process.platform === 'win32', env: { ...process.env, ...env } });
  if (r.error) console.error(`tap ${name}: ${r.error.message}`);
  if (r.status !== 0) failed.push(name);
}
if (failed.length > 0) {
  console.log(`\nnpm test: failed ${failed.join('; ')}`);
  process.exit(1);
}
