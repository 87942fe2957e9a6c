// softroce native CRC-32 (see crc32.h): zlib's CRC found in the process, a portable slicing-by-8
// fallback, the rule for which runs, and the GF(2) shift fast-rx.cc corrects IPv4 IDs with.
// fast-tx.cc and fast-rx.cc each carried a copy of all this; one copy keeps their CRCs (and their
// speed figures) the same by construction.
#include "crc32.h"

#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <mutex>

namespace {

// zlib's crc32 signature (uLong crc, const Bytef* buf, uInt len).
typedef unsigned long (*ZlibCrc)(unsigned long, const unsigned char*, unsigned int);
ZlibCrc zcrc = nullptr;
const char* zcrcName = "slice-by-8";
uint32_t table8[8][256];
// x^(2^n) mod P (reflected), n = 0..31: Crc32Shift's squares.
uint32_t x2n[32];
std::once_flag once;

// Below this many bytes the table CRC is faster than zlib's call (measured by fast-tx: zlib's crc32
// costs ~200 ns even for the 40-byte masked prefix, the table ~30 ns; they cross near 512 bytes).
// Both are the same CRC with the same conditioning, so a chain may mix them.
const size_t ZLIB_MIN = 512;

// Reflected GF(2) product of a and b modulo the CRC-32 polynomial.
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
  const char* force = getenv("SOFTROCE_CRC");
  if (force != nullptr && strcmp(force, "slice8") == 0) return;
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

// txCrc32(crc, buf, off, len) -> Crc32 of buf[off, off+len) chained on crc (tests compare it with
// icrc.ts; a piece under 512 bytes exercises the table, a longer one zlib's).
Napi::Value TxCrc32(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 4 || !info[1].IsBuffer()) return env.Null();
  uint32_t crc = info[0].As<Napi::Number>().Uint32Value();
  Napi::Buffer<uint8_t> b = info[1].As<Napi::Buffer<uint8_t>>();
  uint32_t off = info[2].As<Napi::Number>().Uint32Value(), len = info[3].As<Napi::Number>().Uint32Value();
  if ((uint64_t)off + len > b.Length()) return env.Null();
  return Napi::Number::New(env, Crc32(crc, b.Data() + off, len));
}

// crcBench(bytes, rounds, slice8?) -> { nsPerCall, gbps, crc, impl }: Crc32 (as the fast paths call
// it, small-piece rule included) over one `bytes`-long buffer, `rounds` times, chained; slice8: the
// portable CRC instead. impl names what actually ran for that size.
Napi::Value CrcBench(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t bytes = info.Length() > 0 ? info[0].As<Napi::Number>().Uint32Value() : 4096;
  uint32_t rounds = info.Length() > 1 ? info[1].As<Napi::Number>().Uint32Value() : 10000;
  bool portable = info.Length() > 2 && info[2].ToBoolean().Value();
  if (bytes == 0 || bytes > (64u << 20) || rounds == 0) return env.Null();
  uint8_t* buf = new uint8_t[bytes];
  for (uint32_t i = 0; i < bytes; i++) buf[i] = (uint8_t)(i * 131 + 7);
  struct timespec a, b;
  uint32_t c = 0;
  clock_gettime(CLOCK_MONOTONIC, &a);
  if (portable)
    for (uint32_t r = 0; r < rounds; r++) c = Crc32Slice8(c, buf, bytes);
  else
    for (uint32_t r = 0; r < rounds; r++) c = Crc32(c, buf, bytes);
  clock_gettime(CLOCK_MONOTONIC, &b);
  delete[] buf;
  double ns = ((double)(b.tv_sec - a.tv_sec) * 1e9 + (double)(b.tv_nsec - a.tv_nsec)) / rounds;
  Napi::Object o = Napi::Object::New(env);
  o.Set("nsPerCall", Napi::Number::New(env, ns));
  o.Set("gbps", Napi::Number::New(env, ns > 0 ? (double)bytes / ns : 0));
  o.Set("crc", Napi::Number::New(env, c));
  o.Set("impl", Napi::String::New(env, portable ? "slice-by-8" : Crc32Impl(bytes)));
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
  if (n == 0) return crc;
  // zlib's crc32 takes a uInt length: larger pieces (none today: a packet is at most 4 KiB) go in parts.
  if (zcrc == nullptr || n < ZLIB_MIN) return Crc32Slice8(crc, p, n);
  while (n > 0x40000000u) {
    crc = (uint32_t)zcrc(crc, p, 0x40000000u);
    p += 0x40000000u;
    n -= 0x40000000u;
  }
  return (uint32_t)zcrc(crc, p, (unsigned)n);
}

uint32_t Crc32Shift(uint32_t crc, uint32_t bytes) {
  uint32_t p = 1u << 31;  // x^0
  for (int k = 3; bytes != 0; bytes >>= 1, k++)
    if (bytes & 1) p = MulModP(x2n[k & 31], p);
  return MulModP(p, crc);
}

const char* Crc32Impl(size_t bytes) { return zcrc != nullptr && bytes >= ZLIB_MIN ? zcrcName : "slice-by-8"; }

void InitCrc32(Napi::Env env, Napi::Object exports) {
  Crc32Init();
  exports.Set("txCrc32", Napi::Function::New(env, TxCrc32));
  exports.Set("crcBench", Napi::Function::New(env, CrcBench));
}
