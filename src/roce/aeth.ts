/**
 * AETH syndrome (IBA 9.3.5, table 42; rxe_hdr.h enum aeth_syndrome).
 * Bits 6-5 give the type, bits 4-0 the value:
 *   00 ACK       value = credit count code (31 = no end-to-end credit limit)
 *   01 RNR NAK   value = RNR timer code (IBA table 45)
 *   11 NAK       value = NAK code
 */
export const AethType = { ACK: 0, RNR_NAK: 1, RESERVED: 2, NAK: 3 } as const;
export const AETH_TYPE_NAME = ['ACK', 'RNR_NAK', 'RESERVED', 'NAK'] as const;

export const NakCode = {
  PSN_SEQ_ERROR: 0,
  INVALID_REQUEST: 1,
  REMOTE_ACCESS_ERROR: 2,
  REMOTE_OPERATIONAL_ERROR: 3,
  INVALID_RD_REQUEST: 4,
} as const;
export const NAK_NAME = ['PSN_SEQ_ERROR', 'INVALID_REQUEST', 'REMOTE_ACCESS_ERROR', 'REMOTE_OPERATIONAL_ERROR', 'INVALID_RD_REQUEST'] as const;

/** rxe always advertises "no credit limit" (it ignores end-to-end credits). */
export const AETH_ACK_UNLIMITED = 0x1f;
export const aethAck = (credits = AETH_ACK_UNLIMITED): number => credits & 0x1f;
export const aethRnrNak = (timerCode: number): number => 0x20 | (timerCode & 0x1f);
export const aethNak = (code: number): number => 0x60 | (code & 0x1f);
export const aethType = (syndrome: number): number => (syndrome >> 5) & 3;
export const aethValue = (syndrome: number): number => syndrome & 0x1f;

/** Credit count codes 0..30 → credits (IBA table 43). */
export const CREDITS = [
  0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192, 12288, 16384, 24576, 32768,
] as const;

/** RNR timer codes → microseconds (IBA table 45; code 0 is the longest). */
export const RNR_TIMER_US = [
  655360, 10, 20, 30, 40, 60, 80, 120, 160, 240, 320, 480, 640, 960, 1280, 1920, 2560, 3840, 5120, 7680, 10240, 15360, 20480, 30720, 40960, 61440, 81920,
  122880, 163840, 245760, 327680, 491520,
] as const;

export function aethToString(syndrome: number): string {
  const t = aethType(syndrome),
    v = aethValue(syndrome);
  if (t === AethType.ACK) return v === 31 ? 'ACK' : `ACK credits=${CREDITS[v]}`;
  if (t === AethType.RNR_NAK) return `RNR_NAK timer=${v} (${RNR_TIMER_US[v]} us)`;
  if (t === AethType.NAK) return `NAK ${NAK_NAME[v] ?? `code=${v}`}`;
  return `RESERVED(0x${syndrome.toString(16)})`;
}
