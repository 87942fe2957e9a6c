// softroce native CRC-32: the one CRC both fast paths (fast-tx.cc, fast-rx.cc) compute ICRCs with.
//
// The CRC is zlib's (reflected 0xEDB88320, pre- and post-inverted, chainable:
// Crc32(Crc32(0, a), b) == Crc32(0, a ‖ b)), the one IBA A17.3.3 prescribes for the ICRC and icrc.ts
// computes in JS, so a value from here always equals icrc.ts's.
#pragma once
#include <napi.h>
#include <stddef.h>
#include <stdint.h>

// Finds zlib's crc32, builds the tables; once per process (any later call returns at once).
// SOFTROCE_CRC=slice8 in the environment: the portable CRC only (the one way to force it, for tests
// and for comparing speeds in a real run).
void Crc32Init();

// CRC-32 of p[0, n) chained on `crc` (0 to start). Pieces under CRC32_ZLIB_MIN bytes use the table
// (see crc32.cc): the caller may pass any size.
uint32_t Crc32(uint32_t crc, const uint8_t* p, size_t n);

// The portable slicing-by-8 CRC alone (the same values as Crc32).
uint32_t Crc32Slice8(uint32_t crc, const uint8_t* p, size_t n);

// crc * x^(8 * bytes) mod P: what `bytes` zero bytes appended do to the linear (uninverted) part of a
// CRC. XOR of two CRCs of equal-length inputs is linear, so a change of a few bytes k bytes before the
// end moves the CRC by Crc32Shift(Crc32(0, new) ^ Crc32(0, old), k - len): an IPv4 ID correction
// without a second pass over the packet.
uint32_t Crc32Shift(uint32_t crc, uint32_t bytes);

// What Crc32 runs for pieces of `bytes` bytes: "Cr_z_crc32", "crc32" (a zlib found with dlsym) or "slice-by-8".
const char* Crc32Impl(size_t bytes);

// Exports txCrc32 (the chained CRC, for tests against icrc.ts) and crcBench (the one C CRC benchmark).
void InitCrc32(Napi::Env env, Napi::Object exports);
