// softroce native CRC-32 (see crc32.h): a carry-less-multiply folding CRC on x86-64 (PCLMULQDQ on
// 128-bit lanes, VPCLMULQDQ on 512-bit ones), zlib's CRC found in the process, a portable
// slicing-by-8 fallback, the rule for which runs, and the GF(2) shift fast-rx.cc corrects IPv4 IDs
// with. fast-tx.cc and fast-rx.cc each carried a copy of all this; one copy keeps their CRCs (and
// their speed figures) the same by construction.
//
// Why fold: the ICRC (IBA 9.9.1) covers every byte sent and received, so at the bulk target rate
// (5 GB/s) zlib's ~4 GB/s would cost a core per side. Folding with PCLMULQDQ/VPCLMULQDQ runs at
// several times that and needs no table: the data is multiplied forward by x^n mod P, 16 bytes per
// carry-less multiply, and only the last 16 bytes are reduced (Barrett). Every constant is computed
// at init from x^n mod P (XnModP below), so each one says where it comes from.
#include "crc32.h"

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <mutex>
#include <string>

// GCC >= 8 and clang know the vpclmulqdq target; with an older compiler only the table and zlib run.
#if defined(__x86_64__) && (defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 8))
#define SOFTROCE_CRC_X86 1
#include <cpuid.h>
#include <immintrin.h>
#endif

// arm64: the ARMv8 CRC32 instructions (CRC32X: 8 bytes per instruction, the same reflected
// 0xEDB88320 polynomial, no conditioning). Where the compiler already targets them
// (__ARM_FEATURE_CRC32: armv8.1-a and later, Apple's default) they always run; on Linux with GCC >= 10,
// whose arm_acle.h declares the intrinsics for a "+crc" function whatever -march says (Debian's
// default is plain armv8-a), they run in such a function when the kernel's HWCAP says the CPU has
// them. Elsewhere (older GCC, clang on plain armv8-a) zlib's CRC runs (itself ARMv8-CRC in
// Chromium's copy).
#if defined(__aarch64__) && defined(__ARM_FEATURE_CRC32)
#define SOFTROCE_CRC_ARMV8 1
#define CRC_TARGET_ARM
#include <arm_acle.h>
#elif defined(__aarch64__) && defined(__linux__) && !defined(__clang__) && defined(__GNUC__) && __GNUC__ >= 10
#define SOFTROCE_CRC_ARMV8 1
#define SOFTROCE_CRC_ARMV8_HWCAP 1
#define CRC_TARGET_ARM __attribute__((target("+crc")))
#include <arm_acle.h>
#include <sys/auxv.h>
#ifndef HWCAP_CRC32
#define HWCAP_CRC32 (1 << 7)  // arch/arm64/include/uapi/asm/hwcap.h
#endif
#endif

namespace {

typedef uint32_t (*CrcFn)(uint32_t crc, const uint8_t* p, size_t n);

// zlib's crc32 signature (uLong crc, const Bytef* buf, uInt len).
typedef unsigned long (*ZlibCrc)(unsigned long, const unsigned char*, unsigned int);
ZlibCrc zcrc = nullptr;
const char* zcrcName = "zlib";
uint32_t table8[8][256];
// x^(2^n) mod P (reflected), n = 0..31: Crc32Shift's squares, and XnModP's.
uint32_t x2n[32];
std::once_flag once;

// The implementations, in order of preference. `min`: below this many bytes Crc32 uses the table
// instead, because the call (zlib's) or the final reduction (the folds') costs more than the table's
// ~1 ns/byte there. Measured with crcBench on this project's 2-core Xeon (vpclmulqdq): zlib's crc32
// costs ~200 ns even for the 40-byte masked prefix, the table ~30 ns; they cross near 512 bytes. The
// 128-bit fold's fixed cost (the 4-multiply reduction) is ~10 ns: it beats the table from 32 bytes.
enum { kVpclmul, kPclmul, kArmv8, kZlib, kSlice8, kImpls };
struct Impl {
  const char* key;   // SOFTROCE_CRC's name for it
  const char* name;  // what crcBench and Crc32Impl report
  CrcFn fn;          // any length, any alignment, chained (tiny pieces fall back inside)
  size_t min;
};
Impl impls[kImpls];
int chosen = kSlice8;
const char* requested = nullptr;  // SOFTROCE_CRC as given (nullptr: none)

// Reflected GF(2) product of a and b modulo the CRC-32 polynomial (bit 31 - d holds x^d).
uint32_t MulModP(uint32_t a, uint32_t b) {
  uint32_t p = 0;
  for (uint32_t m = 1u << 31; m != 0; m >>= 1) {
    if (a & m) {
      p ^= b;
      if ((a & (m - 1)) == 0) break;
    }
    b = (b & 1) ? (b >> 1) ^ 0xedb88320u : b >> 1;
  }
  return p;
}

// x^n mod P, reflected, from the squares x^(2^k).
uint32_t XnModP(uint32_t n) {
  uint32_t p = 1u << 31;  // x^0
  for (int k = 0; n != 0; n >>= 1, k++)
    if (n & 1) p = MulModP(x2n[k], p);
  return p;
}

uint32_t Slice8Fn(uint32_t crc, const uint8_t* p, size_t n) { return Crc32Slice8(crc, p, n); }

uint32_t ZlibFn(uint32_t crc, const uint8_t* p, size_t n) {
  // zlib's crc32 takes a uInt length: larger pieces go in parts.
  while (n > 0x40000000u) {
    crc = (uint32_t)zcrc(crc, p, 0x40000000u);
    p += 0x40000000u;
    n -= 0x40000000u;
  }
  return (uint32_t)zcrc(crc, p, (unsigned)n);
}

#ifdef SOFTROCE_CRC_X86
// ---- Folding with carry-less multiplies (x86-64) ----
//
// Layout. The CRC is reflected: the first byte's bit 0 is the highest power. A 16-byte lane loaded
// little-endian into an xmm register so holds a polynomial L of degree < 128 whose x^(127 - k)
// coefficient is register bit k; its low qword is L's high half Lh (L = Lh·x^64 + Ll), its high
// qword Ll. The linear part of a CRC (pre-inversion aside) is M·x^32 mod P, and the incoming CRC
// (inverted) enters by XOR into the first 4 bytes.
//
// Multiplying. PCLMULQDQ of a qword A (bit i: x^(63 - i)) by a qword whose low 32 bits are a
// reflected K (bit i: x^(31 - i), so as a qword K·x^32) gives bit k: x^(126 - k) of A·K·x^32. Read
// as a 128-bit lane (bit k: x^(127 - k)) that is A·K·x^33. So to move A forward by x^e into a lane,
// K = x^(e - 33) mod P: the product keeps degree < 96 and fits.
//
// Folding a lane D bits forward (onto the lane D bits later in the data): Lh·x^(64 + D) + Ll·x^D,
// i.e. the low qword times x^(D + 31) and the high one times x^(D - 33). FoldK(D) holds both.
struct alignas(16) K128 {
  uint64_t lo, hi;
};
K128 kFold128, kFold256, kFold384, kFold512, kFold1536, kFold1024, kFold2048;
// Reduction: kRed.lo = x^95 (Lh·x^96), kRed.hi = x^63 (a 32-bit head times x^64); mu = x^64 div P;
// pPrime = P without its x^32 term (reflected: 0xedb88320).
K128 kRed;
uint64_t mu;

K128 FoldK(uint32_t d) { return K128{XnModP(d + 31), XnModP(d - 33)}; }

void InitFoldConstants() {
  kFold128 = FoldK(128);
  kFold256 = FoldK(256);
  kFold384 = FoldK(384);
  kFold512 = FoldK(512);
  kFold1024 = FoldK(1024);
  kFold1536 = FoldK(1536);
  kFold2048 = FoldK(2048);
  kRed = K128{XnModP(95), XnModP(63)};
  // mu = floor(x^64 / P) by long division in normal bit order (bit d: x^d), P = 0x104c11db7; then
  // reflected as a qword holding mu·x^31 (bit 32 - d: x^d), the form the Barrett step multiplies.
  unsigned __int128 r = (unsigned __int128)1 << 64;
  const unsigned __int128 P = 0x104c11db7ull;
  uint64_t q = 0;
  for (int d = 64; d >= 32; d--)
    if ((uint64_t)(r >> d) & 1) {
      r ^= P << (d - 32);
      q |= 1ull << (d - 32);
    }
  mu = 0;
  for (int d = 0; d <= 32; d++)
    if ((q >> d) & 1) mu |= 1ull << (32 - d);
}

#define CRC_TARGET_128 __attribute__((target("pclmul,sse4.1")))
#define CRC_TARGET_512 __attribute__((target("avx512f,vpclmulqdq,pclmul,sse4.1")))

CRC_TARGET_128 inline __attribute__((always_inline)) __m128i Load(const K128& k) {
  return _mm_load_si128((const __m128i*)&k);
}

// a moved D bits forward (k = FoldK(D)): the low qword by k.lo, the high one by k.hi.
CRC_TARGET_128 inline __attribute__((always_inline)) __m128i Fold(__m128i a, __m128i k) {
  return _mm_xor_si128(_mm_clmulepi64_si128(a, k, 0x00), _mm_clmulepi64_si128(a, k, 0x11));
}

CRC_TARGET_128 inline __attribute__((always_inline)) uint64_t Clmul(uint64_t a, uint64_t b) {
  return (uint64_t)_mm_cvtsi128_si64(_mm_clmulepi64_si128(_mm_cvtsi64_si128((long long)a), _mm_cvtsi64_si128((long long)b), 0));
}

// The linear CRC of one lane L: L·x^32 mod P.
// 1. S = Lh·x^96 + Ll·x^32, degree < 96, laid out bit k: x^(95 - k): the low qword times x^95 (the
//    product rule above with the layout's one-bit offset), plus Ll as it is.
// 2. T = Sh·x^64 + Sl, degree < 64 (Sh: S's top 32 coefficients, bits 0..31; Sl: bits 32..95).
// 3. Barrett (the quotient from mu, no division): q = floor(Th·mu / x^32), T mod P = T + q·P, whose
//    low 32 coefficients are T's plus q·P' (P = x^32 + P').
CRC_TARGET_128 inline __attribute__((always_inline)) uint32_t Reduce(__m128i a) {
  __m128i s = _mm_xor_si128(_mm_clmulepi64_si128(a, Load(kRed), 0x00), _mm_srli_si128(a, 8));
  uint64_t s0 = (uint64_t)_mm_cvtsi128_si64(s), s1 = (uint64_t)_mm_extract_epi64(s, 1);
  uint64_t t = ((s0 >> 32) | (s1 << 32)) ^ Clmul(s0 & 0xffffffffu, kRed.hi);
  uint64_t q = Clmul(t & 0xffffffffu, mu) & 0xffffffffu;
  return (uint32_t)(t >> 32) ^ (uint32_t)(Clmul(q, 0xedb88320u) >> 31);
}

CRC_TARGET_128 inline __attribute__((always_inline)) __m128i Loadu(const uint8_t* p) {
  return _mm_loadu_si128((const __m128i*)p);
}

// One lane a (the data so far, not yet reduced) then p[0, n): fold in whole 16-byte lanes, reduce,
// the last 0..15 bytes by the table (cheaper than a masked partial lane for a packet's tail).
CRC_TARGET_128 inline __attribute__((always_inline)) uint32_t Finish(__m128i a, const uint8_t* p, size_t n) {
  __m128i k = Load(kFold128);
  for (; n >= 16; p += 16, n -= 16) a = _mm_xor_si128(Fold(a, k), Loadu(p));
  uint32_t c = Reduce(a);
  return n != 0 ? ~Crc32Slice8(~c, p, n) : c;
}

// Four lanes (64 bytes, x0 first) folded into one: each moved to the last lane's place.
CRC_TARGET_128 inline __attribute__((always_inline)) __m128i Fold4(__m128i x0, __m128i x1, __m128i x2, __m128i x3) {
  __m128i a = _mm_xor_si128(Fold(x0, Load(kFold384)), Fold(x1, Load(kFold256)));
  return _mm_xor_si128(_mm_xor_si128(a, Fold(x2, Load(kFold128))), x3);
}

// 128-bit PCLMULQDQ: four independent lanes (the multiplier's latency hidden), 64 bytes a step.
CRC_TARGET_128 uint32_t PclmulFn(uint32_t crc, const uint8_t* p, size_t n) {
  if (n < 16) return Crc32Slice8(crc, p, n);
  __m128i init = _mm_cvtsi32_si128((int)~crc);
  if (n < 64) return ~Finish(_mm_xor_si128(Loadu(p), init), p + 16, n - 16);
  __m128i x0 = _mm_xor_si128(Loadu(p), init), x1 = Loadu(p + 16), x2 = Loadu(p + 32), x3 = Loadu(p + 48);
  p += 64;
  n -= 64;
  __m128i k = Load(kFold512);
  for (; n >= 64; p += 64, n -= 64) {
    x0 = _mm_xor_si128(Fold(x0, k), Loadu(p));
    x1 = _mm_xor_si128(Fold(x1, k), Loadu(p + 16));
    x2 = _mm_xor_si128(Fold(x2, k), Loadu(p + 32));
    x3 = _mm_xor_si128(Fold(x3, k), Loadu(p + 48));
  }
  return ~Finish(Fold4(x0, x1, x2, x3), p, n);
}

// The 512-bit version starts at this many bytes (its four zmm accumulators hold 256); below it the
// 128-bit one. At 256 B crcBench measured ~38 ns against the 128-bit fold's ~50, at 4 KiB ~55 ns
// against ~190 (2-core Xeon, loaded).
const size_t VPCLMUL_MIN = 256;

// GCC 12's AVX-512 headers start some intrinsics from a self-initialised "undefined" register
// (_mm512_undefined_*), which -Wmaybe-uninitialized reports at every use: a known false positive.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

CRC_TARGET_512 inline __attribute__((always_inline)) __m512i Fold512(__m512i a, __m512i k, __m512i data) {
  // XOR of three (0x96): both products and the next data in one instruction.
  return _mm512_ternarylogic_epi64(_mm512_clmulepi64_epi128(a, k, 0x00), _mm512_clmulepi64_epi128(a, k, 0x11), data, 0x96);
}

CRC_TARGET_512 inline __attribute__((always_inline)) __m512i Bcast(const K128& k) {
  return _mm512_broadcast_i32x4(Load(k));
}

// VPCLMULQDQ on AVX-512: four zmm accumulators of four lanes each (256 bytes a step, every lane
// folded 2048 bits forward), then down to one zmm, 64-byte steps, one lane, and Finish.
CRC_TARGET_512 uint32_t VpclmulFn(uint32_t crc, const uint8_t* p, size_t n) {
  if (n < VPCLMUL_MIN) return PclmulFn(crc, p, n);
  __m512i z0 = _mm512_xor_si512(_mm512_loadu_si512(p), _mm512_set_epi64(0, 0, 0, 0, 0, 0, 0, (long long)(uint32_t)~crc));
  __m512i z1 = _mm512_loadu_si512(p + 64), z2 = _mm512_loadu_si512(p + 128), z3 = _mm512_loadu_si512(p + 192);
  p += 256;
  n -= 256;
  __m512i k = Bcast(kFold2048);
  for (; n >= 256; p += 256, n -= 256) {
    z0 = Fold512(z0, k, _mm512_loadu_si512(p));
    z1 = Fold512(z1, k, _mm512_loadu_si512(p + 64));
    z2 = Fold512(z2, k, _mm512_loadu_si512(p + 128));
    z3 = Fold512(z3, k, _mm512_loadu_si512(p + 192));
  }
  // z0 three registers (1536 bits) short of z3's place, z1 two, z2 one.
  __m512i a = Fold512(z0, Bcast(kFold1536), Fold512(z1, Bcast(kFold1024), Fold512(z2, Bcast(kFold512), z3)));
  for (k = Bcast(kFold512); n >= 64; p += 64, n -= 64) a = Fold512(a, k, _mm512_loadu_si512(p));
  __m128i x = Fold4(_mm512_extracti32x4_epi32(a, 0), _mm512_extracti32x4_epi32(a, 1), _mm512_extracti32x4_epi32(a, 2),
                    _mm512_extracti32x4_epi32(a, 3));
  return ~Finish(x, p, n);
}
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

// What the CPU and the OS allow. __builtin_cpu_supports reads CPUID, and GCC's libgcc (since GCC 5)
// and compiler-rt report AVX-512 features only after XGETBV shows the OS saves the ZMM state; that
// is library behaviour, not a documented promise for every version, so XCR0 is checked here too
// (bits 1, 2, 5, 6, 7: SSE, AVX, opmask, ZMM0-15 upper halves, ZMM16-31).
bool OsSavesZmm() {
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & bit_OSXSAVE)) return false;
  unsigned lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (lo & 0xe6) == 0xe6;
}

bool HavePclmul() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("pclmul") && __builtin_cpu_supports("sse4.1");
}

bool HaveVpclmul() {
  __builtin_cpu_init();
  return HavePclmul() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("vpclmulqdq") && OsSavesZmm();
}
#endif  // SOFTROCE_CRC_X86

#ifdef SOFTROCE_CRC_ARMV8
CRC_TARGET_ARM uint32_t Armv8Fn(uint32_t crc, const uint8_t* p, size_t n) {
  uint32_t c = ~crc;
  for (; n >= 8; p += 8, n -= 8) {
    uint64_t v;
    memcpy(&v, p, 8);
    c = __crc32d(c, v);
  }
  for (; n != 0; p++, n--) c = __crc32b(c, *p);
  return ~c;
}
#endif

void FindZlib() {
  // Node links zlib statically and exports its symbols: Chromium's copy is prefixed; a Node built
  // against a shared system zlib exports neither, but the process may still have libz's crc32.
  const char* names[] = {"Cr_z_crc32", "crc32"};
  for (const char* nm : names) {
    void* f = dlsym(RTLD_DEFAULT, nm);
    if (f == nullptr) continue;
    ZlibCrc c = (ZlibCrc)f;
    // Chromium's zlib picks its SIMD (PCLMUL / AVX-512) CRC only after cpu_check_features(), which
    // crc32(0, NULL, 0) runs (its documented init call; deflateInit does it too); without it the
    // table CRC runs, ~3x slower. Any zlib answers 0 and changes nothing.
    c(0, nullptr, 0);
    // Trust it only if it is the CRC we mean (the check value of "123456789"): another library's
    // `crc32` symbol may be a different CRC.
    if (c(0, (const unsigned char*)"123456789", 9) != 0xcbf43926ul) continue;
    zcrc = c;
    zcrcName = nm;
    break;
  }
}

void Init() {
  for (uint32_t n = 0; n < 256; n++) {
    uint32_t c = n;
    for (int k = 0; k < 8; k++) c = c & 1 ? 0xedb88320u ^ (c >> 1) : c >> 1;
    table8[0][n] = c;
  }
  for (uint32_t n = 0; n < 256; n++)
    for (int k = 1; k < 8; k++) table8[k][n] = table8[0][table8[k - 1][n] & 0xff] ^ (table8[k - 1][n] >> 8);
  x2n[0] = 1u << 30;  // x^1
  for (int n = 1; n < 32; n++) x2n[n] = MulModP(x2n[n - 1], x2n[n - 1]);

  // Every entry is named; fn stays null where this build or CPU lacks the implementation.
  impls[kVpclmul] = Impl{"vpclmul", "vpclmul", nullptr, 32};
  impls[kPclmul] = Impl{"pclmul", "pclmul", nullptr, 32};
  impls[kArmv8] = Impl{"armv8", "armv8-crc32", nullptr, 0};  // no fixed cost to amortise
  impls[kZlib] = Impl{"zlib", "zlib", nullptr, 512};
  impls[kSlice8] = Impl{"slice8", "slice-by-8", Slice8Fn, 0};
  FindZlib();
  if (zcrc != nullptr) {
    impls[kZlib].name = zcrcName;
    impls[kZlib].fn = ZlibFn;
  }
#ifdef SOFTROCE_CRC_X86
  InitFoldConstants();
  if (HavePclmul()) impls[kPclmul].fn = PclmulFn;
  if (HaveVpclmul()) impls[kVpclmul].fn = VpclmulFn;
#endif
#if defined(SOFTROCE_CRC_ARMV8_HWCAP)
  if (getauxval(AT_HWCAP) & HWCAP_CRC32) impls[kArmv8].fn = Armv8Fn;
#elif defined(SOFTROCE_CRC_ARMV8)
  impls[kArmv8].fn = Armv8Fn;
#endif

  // The best this machine has, or SOFTROCE_CRC's choice; a choice it lacks falls to the next one
  // down the order of preference (and says so on stderr: the figures of a run must not be taken
  // for the implementation asked for).
  int from = 0;
  const char* force = getenv("SOFTROCE_CRC");
  if (force != nullptr && *force != '\0') {
    requested = force;
    int k = 0;
    while (k < kImpls && strcmp(impls[k].key, force) != 0) k++;
    if (k == kImpls)
      fprintf(stderr, "softroce: SOFTROCE_CRC=%s is not one of vpclmul, pclmul, armv8, zlib, slice8; ignored\n", force);
    else
      from = k;
  }
  chosen = from;
  while (impls[chosen].fn == nullptr) chosen++;  // slice8 always has one
  if (requested != nullptr && from != 0 && chosen != from)
    fprintf(stderr, "softroce: SOFTROCE_CRC=%s is not supported here; the CRC is %s\n", force, impls[chosen].name);
}

int ImplByKey(const std::string& key) {
  for (int k = 0; k < kImpls; k++)
    if (key == impls[k].key) return impls[k].fn != nullptr ? k : -1;
  return -1;
}

// What runs inside impl k's function for a piece of `bytes` bytes (the folds hand tiny ones to the table).
const char* RanFor(int k, size_t bytes) {
  (void)bytes;
#ifdef SOFTROCE_CRC_X86
  if (k == kVpclmul && bytes < VPCLMUL_MIN) k = kPclmul;
  if (k == kPclmul && bytes < 16) k = kSlice8;
#endif
  return impls[k].name;
}

// txCrc32(crc, buf, off, len, impl?) -> Crc32 of buf[off, off+len) chained on crc (tests compare it
// with icrc.ts); impl ("slice8", "zlib", "pclmul", "vpclmul", "armv8"): that implementation's own
// function, whatever the size, or null if this machine lacks it.
Napi::Value TxCrc32(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 4 || !info[1].IsBuffer()) return env.Null();
  uint32_t crc = info[0].As<Napi::Number>().Uint32Value();
  Napi::Buffer<uint8_t> b = info[1].As<Napi::Buffer<uint8_t>>();
  uint32_t off = info[2].As<Napi::Number>().Uint32Value(), len = info[3].As<Napi::Number>().Uint32Value();
  if ((uint64_t)off + len > b.Length()) return env.Null();
  if (info.Length() > 4 && info[4].IsString()) {
    int k = ImplByKey(info[4].As<Napi::String>().Utf8Value());
    if (k < 0) return env.Null();
    return Napi::Number::New(env, impls[k].fn(crc, b.Data() + off, len));
  }
  return Napi::Number::New(env, Crc32(crc, b.Data() + off, len));
}

// crcBench(bytes, rounds, which?) -> { nsPerCall, gbps, crc, impl }: Crc32 (as the fast paths call
// it, small-piece rule included) over one `bytes`-long buffer, `rounds` times, chained; which: true
// for the portable CRC, or an implementation's name (null if absent) to time that one alone. impl
// names what actually ran for that size.
Napi::Value CrcBench(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t bytes = info.Length() > 0 ? info[0].As<Napi::Number>().Uint32Value() : 4096;
  uint32_t rounds = info.Length() > 1 ? info[1].As<Napi::Number>().Uint32Value() : 10000;
  int which = -1;
  if (info.Length() > 2 && info[2].IsString()) {
    which = ImplByKey(info[2].As<Napi::String>().Utf8Value());
    if (which < 0) return env.Null();
  } else if (info.Length() > 2 && info[2].ToBoolean().Value()) {
    which = kSlice8;
  }
  if (bytes == 0 || bytes > (64u << 20) || rounds == 0) return env.Null();
  uint8_t* buf = new uint8_t[bytes];
  for (uint32_t i = 0; i < bytes; i++) buf[i] = (uint8_t)(i * 131 + 7);
  struct timespec a, b;
  uint32_t c = 0;
  clock_gettime(CLOCK_MONOTONIC, &a);
  if (which >= 0) {
    CrcFn fn = impls[which].fn;
    for (uint32_t r = 0; r < rounds; r++) c = fn(c, buf, bytes);
  } else {
    for (uint32_t r = 0; r < rounds; r++) c = Crc32(c, buf, bytes);
  }
  clock_gettime(CLOCK_MONOTONIC, &b);
  delete[] buf;
  double ns = ((double)(b.tv_sec - a.tv_sec) * 1e9 + (double)(b.tv_nsec - a.tv_nsec)) / rounds;
  Napi::Object o = Napi::Object::New(env);
  o.Set("nsPerCall", Napi::Number::New(env, ns));
  o.Set("gbps", Napi::Number::New(env, ns > 0 ? (double)bytes / ns : 0));
  o.Set("crc", Napi::Number::New(env, c));
  o.Set("impl", Napi::String::New(env, which >= 0 ? RanFor(which, bytes) : Crc32Impl(bytes)));
  return o;
}

// crcInfo() -> { impl, requested, available }: the implementation Crc32 runs for long pieces, what
// SOFTROCE_CRC asked for (null: nothing), and the SOFTROCE_CRC names this machine can run.
Napi::Value CrcInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  o.Set("impl", Napi::String::New(env, impls[chosen].name));
  o.Set("requested", requested != nullptr ? Napi::Value(Napi::String::New(env, requested)) : env.Null());
  Napi::Array av = Napi::Array::New(env);
  uint32_t n = 0;
  for (int k = 0; k < kImpls; k++)
    if (impls[k].fn != nullptr) av.Set(n++, Napi::String::New(env, impls[k].key));
  o.Set("available", av);
  return o;
}

}  // namespace

void Crc32Init() { std::call_once(once, Init); }

uint32_t Crc32Slice8(uint32_t crc, const uint8_t* p, size_t n) {
  uint32_t c = ~crc;
  while (n >= 8) {
    uint32_t a, b;
    memcpy(&a, p, 4);
    memcpy(&b, p + 4, 4);
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    a = __builtin_bswap32(a);
    b = __builtin_bswap32(b);
#endif
    a ^= c;
    c = table8[7][a & 0xff] ^ table8[6][(a >> 8) & 0xff] ^ table8[5][(a >> 16) & 0xff] ^ table8[4][a >> 24] ^ table8[3][b & 0xff] ^
        table8[2][(b >> 8) & 0xff] ^ table8[1][(b >> 16) & 0xff] ^ table8[0][b >> 24];
    p += 8;
    n -= 8;
  }
  while (n--) c = table8[0][(c ^ *p++) & 0xff] ^ (c >> 8);
  return ~c;
}

uint32_t Crc32(uint32_t crc, const uint8_t* p, size_t n) {
  const Impl& i = impls[chosen];
  if (n < i.min) return n == 0 ? crc : Crc32Slice8(crc, p, n);
  return i.fn(crc, p, n);
}

uint32_t Crc32Shift(uint32_t crc, uint32_t bytes) {
  uint32_t p = 1u << 31;  // x^0
  for (int k = 3; bytes != 0; bytes >>= 1, k++)
    if (bytes & 1) p = MulModP(x2n[k & 31], p);
  return MulModP(p, crc);
}

const char* Crc32Impl(size_t bytes) { return bytes < impls[chosen].min ? "slice-by-8" : RanFor(chosen, bytes); }

void InitCrc32(Napi::Env env, Napi::Object exports) {
  Crc32Init();
  exports.Set("txCrc32", Napi::Function::New(env, TxCrc32));
  exports.Set("crcBench", Napi::Function::New(env, CrcBench));
  exports.Set("crcInfo", Napi::Function::New(env, CrcInfo));
}
