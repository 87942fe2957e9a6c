/**
 * A queue slot's SGE array starts with the map a filled one has (wqe.ts emptySgl). Posting into
 * a fresh slot (a new QP) then does not change the array's map, which made V8 discard the post
 * path it had compiled for the QPs already running. Checked with V8's own %HaveSameMap in a child
 * process (--allow-natives-syntax), against the array fillRecvWqe makes for a filled slot.
 */
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const wqe = pathToFileURL(join(here, '..', '..', 'src', 'roce', 'transport', 'wqe.js')).href;
const objects = pathToFileURL(join(here, '..', '..', 'src', 'verbs', 'objects.js')).href;

t.test("a fresh slot's SGE array has a filled slot's map", async (t) => {
  const code = `
    const { RecvWqe, SendWqe } = await import(${JSON.stringify(wqe)});
    const { fillRecvWqe } = await import(${JSON.stringify(objects)});
    const filled = new RecvWqe();
    fillRecvWqe(filled, { wrId: 1, sg: [{ mr: {}, offset: 0, length: 8 }] });
    const out = {
      recv: %HaveSameMap(new RecvWqe().sg, filled.sg),
      send: %HaveSameMap(new SendWqe().sg, filled.sg),
      smiArray: %HaveSameMap([], filled.sg),
      filledLength: filled.sg.length,
      freshLength: new RecvWqe().sg.length,
    };
    console.log(JSON.stringify(out));
  `;
  const r = spawnSync(process.execPath, ['--allow-natives-syntax', '--input-type=module', '-e', code], { encoding: 'utf8' });
  t.equal(r.status, 0, `the child ran (${r.stderr.trim().slice(0, 300)})`);
  const out = JSON.parse(r.stdout.trim()) as Record<string, boolean | number>;
  t.equal(out['smiArray'], false, 'the check can fail: an empty literal array has another map');
  t.equal(out['recv'], true, 'RecvWqe: same map as a filled slot');
  t.equal(out['send'], true, 'SendWqe: same map as a filled slot');
  t.equal(out['freshLength'], 0, 'a fresh slot holds no SGE');
  t.equal(out['filledLength'], 1);
});
