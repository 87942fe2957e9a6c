/**
 * Lab fixture (issue 14, the LAG cases): lets softroce's CLI tools open a bonded device by name before
 * the tools have a way of their own (the teamctl branch adds one). Loaded with
 * `node --import dist/test/interop/bond-open.js bin/<tool>.js -d softroce_bond_0 ...`, it registers a
 * resolve hook that hands the tools (src/cli/pingpong.js, perftest.js, devtools.js) bond-device.js in
 * place of src/verbs/device.js: the same exports, but openDevice of the SOFTROCE_DEVICES entry named in
 * SOFTROCE_LAB_BOND makes the bond with createBond (the entry's ports are the bond's ports). Test code
 * only: nothing under src/ knows about it.
 */
import { register } from 'node:module';

register('./bond-hooks.js', import.meta.url);
