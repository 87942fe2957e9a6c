#!/usr/bin/env node
// Builds native/ with node-gyp. The addon only accelerates (batched UDP I/O,
// socket options Node's dgram cannot set); if the build fails the package
// still works in pure JS, so this script never fails the install.
import { spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = dirname(dirname(fileURLToPath(import.meta.url)));
if (process.env.SOFTROCE_NO_NATIVE === '1') {
  console.log('softroce: SOFTROCE_NO_NATIVE=1, skipping the native addon (pure JS backend)');
  process.exit(0);
}
let gyp;
try {
  gyp = createRequire(import.meta.url).resolve('node-gyp/bin/node-gyp.js');
} catch {
  gyp = null;
}
const cmd = gyp ? process.execPath : 'node-gyp';
const args = gyp ? [gyp, 'rebuild'] : ['rebuild'];
// Build against the headers that ship with this Node (e.g. /usr/include/node)
// so no header download is needed: the install must work offline.
const prefix = dirname(dirname(process.execPath));
if (!process.env.npm_config_nodedir && existsSync(join(prefix, 'include', 'node', 'node.h'))) {
  args.push('--nodedir=' + prefix);
}
const r = spawnSync(cmd, args, { cwd: join(root, 'native'), stdio: 'inherit' });
if (r.status === 0) console.log('softroce: native addon built');
else console.log('softroce: native addon not built (status ' + r.status + '); using the pure JS backend');
process.exit(0);
