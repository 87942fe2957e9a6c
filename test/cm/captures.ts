/** The CM MADs in the lab's golden captures (QP1, UD SEND_ONLY, DETH Q_Key 0x80010000), for the CM tests. */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { readCapture } from '../../src/roce/pcap.js';
import { decodeFrame } from '../../src/roce/framing.js';
import { ROOT } from '../helpers.js';

/** ../shared/lab/captures beside the clone (where CI puts shared/), else the lab's own path; neither is an error. */
export function cmCapturesDir(): string {
  const env = process.env['SOFTROCE_CAPTURES'];
  const tried = [...(env ? [env] : []), resolve(ROOT, '../shared/lab/captures'), '/work/shared/lab/captures'];
  for (const d of tried) if (existsSync(d)) return d;
  throw new Error(`golden captures not found (tried ${tried.join(', ')}): CI runs with shared/ beside the clone`);
}

export interface CapturedMad {
  file: string;
  frame: number;
  src: string;
  dst: string;
  opcode: number;
  qkey: number;
  srcQp: number;
  pkey: number;
  mad: Uint8Array;
}

/** Every packet to QP 1 in every golden capture, with its MAD (the UD payload). */
export function capturedMads(): { files: string[]; mads: CapturedMad[] } {
  const dir = cmCapturesDir();
  const files = readdirSync(dir)
    .filter((f) => f.endsWith('.pcap'))
    .sort();
  const mads: CapturedMad[] = [];
  for (const file of files) {
    const cap = readCapture(readFileSync(join(dir, file)));
    for (const r of cap.records) {
      const d = decodeFrame(r.data, r.linkType);
      const f = d.frame;
      if (!d.roce || !f || f.ib.bth.destQp !== 1) continue;
      const ip = (a: Uint8Array | undefined): string => (a ? Array.from(a.subarray(-4)).join('.') : '?');
      mads.push({
        file,
        frame: r.index,
        src: ip(f.ipv4?.src),
        dst: ip(f.ipv4?.dst),
        opcode: f.ib.bth.opcode,
        qkey: f.ib.deth?.qkey ?? -1,
        srcQp: f.ib.deth?.srcQp ?? -1,
        pkey: f.ib.bth.pkey,
        mad: f.ib.payload,
      });
    }
  }
  return { files, mads };
}
