// softroce native CRC-32: the one CRC both fast paths (fast-tx.cc, fast-rx.cc) compute ICRCs with.
//
// The CRC is zlib's (reflected 0xEDB88320, pre- and post-inverted, chainable:
// Crc32(Crc32(0, a), b) == Crc32(0, a ‖ b)), the one IBA A17.3.3 prescribes for the ICRC and icrc.ts
// computes in JS, so a value from here always equals icrc.ts's.
#pragma once
#include <napi.h>
#include <stddef.h>
#include <stdint.h>

// Picks the CRC (the PCLMULQDQ/VPCLMULQDQ folds where the CPU and OS allow, else zlib's crc32 found
// with dlsym, else the portable table), builds the tables and the folding constants; once per
// process (any later call returns at once). SOFTROCE_CRC=vpclmul|pclmul|armv8|zlib|slice8 in the
// environment forces one (for tests and for comparing speeds in a real run); one this machine lacks
// falls down that order, with a line on stderr.
void Crc32Init();

// CRC-32 of p[0, n) chained on `crc` (0 to start). Pieces under the chosen CRC's small-piece size
// (32 bytes for the folds, 512 for zlib; see crc32.cc) use the table: the caller may pass any size
// at any alignment.
uint32_t Crc32(uint32_t crc, const uint8_t* p, size_t n);

// The portable slicing-by-8 CRC alone (the same values as Crc32).
uint32_t Crc32Slice8(uint32_t crc, const uint8_t* p, size_t n);

// crc * x^(8 * bytes) mod P: what `bytes` zero bytes appended do to the linear (uninverted) part of a
// CRC. XOR of two CRCs of equal-length inputs is linear, so a change of a few bytes k bytes before the
// end moves the CRC by Crc32Shift(Crc32(0, new) ^ Crc32(0, old), k - len): an IPv4 ID correction
// without a second pass over the packet.
uint32_t Crc32Shift(uint32_t crc, uint32_t bytes);

// What Crc32 runs for pieces of `bytes` bytes: "vpclmul", "pclmul", "armv8-crc32", "Cr_z_crc32" or
// "crc32" (a zlib found with dlsym), or "slice-by-8".
const char* Crc32Impl(size_t bytes);

// Exports txCrc32 (the chained CRC, for tests against icrc.ts) and crcBench (the one C CRC benchmark).
void InitCrc32(Napi::Env env, Napi::Object exports);
