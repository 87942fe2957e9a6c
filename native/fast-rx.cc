// softroce native RX fast path: the RoCEv2/IPv4 ICRC checked in C in the
// receive loop (softroce.cc OnPoll calls FrxVerifyDatagram per datagram).
//
// The TypeScript receive path (src/roce/transport/recv.ts, icrc.ts) stays the
// authority: this code only ever says "verified" for a packet the JS check
// would accept with the same IPv4 ID, and otherwise says nothing (the packet
// goes up unverified and JS decides as before, counting a bad one itself).
// Which IDs it tries (icrc.ts checkIcrcV4):
//  - the IPv4 header was seen (raw receive): exactly that ID and DF, as JS's
//    full CRC-32 check with a known ID;
//  - not seen: DF with ID 0 for a lone datagram, or ID k for segment k of a
//    UDP GRO datagram (one GSO send of an ID-0 sender: Linux numbers the
//    segments on from 0, inet_gso_segment). JS infers a unique ID from the
//    CRC syndrome (the 16 ID-bit syndromes are independent) and accepts any
//    ID below 64 in both of its modes ('id-zero', and 'infer-id', whose
//    window always takes an ID below 64), so a match here is a JS accept.
//
// ICRC (IBA A17.3.3): CRC-32 over 8 x 0xFF, the IPv4 header with TOS, TTL and
// checksum as 1s, the UDP header with the checksum as 1s, the BTH with byte 4
// as 1s, then the rest of the IB packet up to the ICRC (little-endian on the
// wire). The CRC is zlib's: Node's bundled copy (Cr_z_crc32, SIMD-folded)
// found with dlsym, else a system zlib's crc32, else slicing-by-8 here.
#include <napi.h>
#include <dlfcn.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

typedef unsigned long (*ZCrc32)(unsigned long, const unsigned char*, unsigned int);

static ZCrc32 zcrc = nullptr;
static const char* zcrcName = "slice8";
static uint32_t table8[8][256];
// x^(2^n) mod P (reflected), n = 0..31: moves a CRC over runs of zero bytes (the ID's effect).
static uint32_t x2n[32];
static bool ready = false;

// Reflected GF(2) product of a and b modulo the CRC-32 polynomial.
static uint32_t MulModP(uint32_t a, uint32_t b) {
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

static void FrxInit() {
  if (ready) return;
  for (uint32_t n = 0; n < 256; n++) {
    uint32_t c = n;
    for (int k = 0; k < 8; k++) c = (c & 1) ? 0xedb88320u ^ (c >> 1) : c >> 1;
    table8[0][n] = c;
  }
  for (uint32_t n = 0; n < 256; n++)
    for (int k = 1; k < 8; k++) table8[k][n] = table8[0][table8[k - 1][n] & 0xff] ^ (table8[k - 1][n] >> 8);
  x2n[0] = 1u << 30;  // x^1
  for (int n = 1; n < 32; n++) x2n[n] = MulModP(x2n[n - 1], x2n[n - 1]);
  if (getenv("SOFTROCE_FRX_CRC") == nullptr || strcmp(getenv("SOFTROCE_FRX_CRC"), "slice8") != 0) {
    zcrc = reinterpret_cast<ZCrc32>(dlsym(RTLD_DEFAULT, "Cr_z_crc32"));
    zcrcName = "Cr_z_crc32";
    if (!zcrc) {
      zcrc = reinterpret_cast<ZCrc32>(dlsym(RTLD_DEFAULT, "crc32"));
      zcrcName = "crc32";
    }
    if (!zcrc) zcrcName = "slice8";
    // Chromium's zlib (Node's) turns on its SIMD CRC (PCLMUL folding) only after a call with a
    // null buffer and length 0 has run its CPU feature check (crc32.c; deflateInit does it too);
    // any zlib returns 0 for it and changes nothing.
    if (zcrc) zcrc(0, nullptr, 0);
  }
  ready = true;
}

static uint32_t Slice8(uint32_t crc, const uint8_t* p, size_t n) {
  uint32_t c = ~crc;
  while (n >= 8) {
    uint32_t lo, hi;
    memcpy(&lo, p, 4);
    memcpy(&hi, p + 4, 4);
    lo ^= c;  // little-endian host (x86-64, arm64)
    c = table8[7][lo & 0xff] ^ table8[6][(lo >> 8) & 0xff] ^ table8[5][(lo >> 16) & 0xff] ^ table8[4][lo >> 24] ^
        table8[3][hi & 0xff] ^ table8[2][(hi >> 8) & 0xff] ^ table8[1][(hi >> 16) & 0xff] ^ table8[0][hi >> 24];
    p += 8;
    n -= 8;
  }
  while (n--) c = table8[0][(c ^ *p++) & 0xff] ^ (c >> 8);
  return ~c;
}

// zlib-style CRC-32 (pre- and post-inverted, chainable).
uint32_t FrxCrc32(uint32_t crc, const uint8_t* p, size_t n) {
  if (zcrc) return (uint32_t)zcrc(crc, p, (unsigned int)n);
  return Slice8(crc, p, n);
}

// crc * x^(8 * bytes) mod P: what `bytes` zero bytes after it do to a CRC's linear part.
static uint32_t ShiftBytes(uint32_t crc, uint32_t bytes) {
  uint32_t p = 1u << 31;  // x^0
  for (int k = 3; bytes != 0; bytes >>= 1, k++)
    if (bytes & 1) p = MulModP(x2n[k & 31], p);
  return MulModP(p, crc);
}

static inline void Put16(uint8_t* s, uint32_t v) {
  s[0] = (uint8_t)(v >> 8);
  s[1] = (uint8_t)v;
}
static inline void Put32(uint8_t* s, uint32_t v) {
  s[0] = (uint8_t)(v >> 24);
  s[1] = (uint8_t)(v >> 16);
  s[2] = (uint8_t)(v >> 8);
  s[3] = (uint8_t)v;
}

// The ICRC of the IB packet ib[0, n) (BTH first, ICRC last) sent with IPv4 ID `id` and DF `df`.
static uint32_t Icrc(const uint8_t* ib, uint32_t n, uint32_t src, uint32_t sport, uint32_t dst, uint32_t dport, uint32_t id, uint32_t df) {
  uint8_t s[8 + 40];
  memset(s, 0xff, 8);
  uint8_t* h = s + 8;
  h[0] = 0x45;
  h[1] = 0xff;  // TOS
  Put16(h + 2, 28 + n);
  Put16(h + 4, id);
  Put16(h + 6, df ? 0x4000 : 0);
  h[8] = 0xff;  // TTL
  h[9] = 17;
  h[10] = 0xff;
  h[11] = 0xff;  // header checksum
  Put32(h + 12, src);
  Put32(h + 16, dst);
  Put16(h + 20, sport);
  Put16(h + 22, dport);
  Put16(h + 24, 8 + n);
  h[26] = 0xff;
  h[27] = 0xff;  // UDP checksum
  memcpy(h + 28, ib, 12);
  h[28 + 4] = 0xff;  // BTH byte 4: FECN, BECN, resv6a
  uint32_t c = FrxCrc32(0, s, sizeof s);
  return FrxCrc32(c, ib + 12, n - 16);
}

static inline uint32_t Le32(const uint8_t* p) {
  return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

// Which segments of a received datagram d[0, len) (GRO segment size seg, 0: one packet) have a
// good ICRC under the ID JS would find for them (see the top). knownIdDf: `id | df << 16` of the
// first segment from its IPv4 header, or -1. Bit k of the result: segment k verified (k < 64).
uint64_t FrxVerifyDatagram(const uint8_t* d, uint32_t len, uint32_t seg, uint32_t src, uint32_t sport, uint32_t dst, uint32_t dport,
                           int32_t knownIdDf) {
  FrxInit();
  if (seg == 0 || seg >= len) seg = len;
  uint64_t ok = 0;
  uint32_t k = 0;
  for (uint32_t off = 0; off < len && k < 64; off += seg, k++) {
    uint32_t n = len - off < seg ? len - off : seg;
    // BTH (12) + ICRC (4), 4-byte aligned as every IB packet; anything else: JS decides.
    if (n < 16 || (n & 3) != 0) continue;
    const uint8_t* ib = d + off;
    uint32_t got = Le32(ib + n - 4);
    if (knownIdDf >= 0) {
      uint32_t id = ((uint32_t)knownIdDf + k) & 0xffff, df = ((uint32_t)knownIdDf >> 16) & 1;
      if (Icrc(ib, n, src, sport, dst, dport, id, df) == got) ok |= 1ull << k;
      continue;
    }
    uint32_t syn = Icrc(ib, n, src, sport, dst, dport, 0, 1) ^ got;
    if (syn == 0) {
      if (k == 0) ok |= 1ull << k;  // a later segment at ID 0 is not what Linux sends: JS infers it
      continue;
    }
    if (k == 0) continue;
    // ID k instead of 0: the two ID bytes sit 16 + 8 + (n - 4) - 2 bytes before the CRC's end.
    uint8_t idb[2] = {(uint8_t)(k >> 8), (uint8_t)k}, zero[2] = {0, 0};
    uint32_t delta = ShiftBytes(FrxCrc32(0, idb, 2) ^ FrxCrc32(0, zero, 2), 16 + 8 + (n - 4) - 2);
    if (syn == delta) ok |= 1ull << k;
  }
  return ok;
}

// crcBench(bytes, rounds, slice8?) -> ns per call of the CRC over `bytes` bytes, and which CRC runs.
static Napi::Value CrcBench(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  FrxInit();
  uint32_t bytes = info.Length() > 0 ? info[0].As<Napi::Number>().Uint32Value() : 4096;
  uint32_t rounds = info.Length() > 1 ? info[1].As<Napi::Number>().Uint32Value() : 10000;
  bool portable = info.Length() > 2 && info[2].ToBoolean().Value();
  if (bytes == 0 || bytes > (64u << 20) || rounds == 0) return env.Null();
  uint8_t* buf = new uint8_t[bytes];
  for (uint32_t i = 0; i < bytes; i++) buf[i] = (uint8_t)(i * 131 + 7);
  struct timespec a, b;
  uint32_t c = 0;
  clock_gettime(CLOCK_MONOTONIC, &a);
  for (uint32_t r = 0; r < rounds; r++) c = portable ? Slice8(c, buf, bytes) : FrxCrc32(c, buf, bytes);
  clock_gettime(CLOCK_MONOTONIC, &b);
  delete[] buf;
  double ns = ((double)(b.tv_sec - a.tv_sec) * 1e9 + (double)(b.tv_nsec - a.tv_nsec)) / rounds;
  Napi::Object o = Napi::Object::New(env);
  o.Set("nsPerCall", Napi::Number::New(env, ns));
  o.Set("crc", Napi::Number::New(env, c));
  o.Set("impl", Napi::String::New(env, portable ? "slice8" : zcrcName));
  return o;
}

// icrcV4(buf, off, len, seg, src, sport, dst, dport, knownIdDf) -> [lo32, hi32] of FrxVerifyDatagram (tests).
static Napi::Value IcrcVerify(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 9 || !info[0].IsBuffer()) return env.Null();
  Napi::Buffer<uint8_t> b = info[0].As<Napi::Buffer<uint8_t>>();
  uint32_t off = info[1].As<Napi::Number>().Uint32Value(), len = info[2].As<Napi::Number>().Uint32Value();
  if ((size_t)off + len > b.Length()) return env.Null();
  uint64_t ok = FrxVerifyDatagram(b.Data() + off, len, info[3].As<Napi::Number>().Uint32Value(), info[4].As<Napi::Number>().Uint32Value(),
                                  info[5].As<Napi::Number>().Uint32Value(), info[6].As<Napi::Number>().Uint32Value(),
                                  info[7].As<Napi::Number>().Uint32Value(), info[8].As<Napi::Number>().Int32Value());
  Napi::Array a = Napi::Array::New(env, 2);
  a.Set(0u, Napi::Number::New(env, (double)(uint32_t)ok));
  a.Set(1u, Napi::Number::New(env, (double)(uint32_t)(ok >> 32)));
  return a;
}

void InitFastRx(Napi::Env env, Napi::Object exports) {
  exports.Set("crcBench", Napi::Function::New(env, CrcBench));
  exports.Set("icrcVerify", Napi::Function::New(env, IcrcVerify));
}
