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
// wire). The CRC and the ID shift are crc32.cc's (shared with fast-tx.cc).
#include <napi.h>
#include <stdint.h>
#include <string.h>

#include "crc32.h"

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
  uint32_t c = Crc32(0, s, sizeof s);
  return Crc32(c, ib + 12, n - 16);
}

static inline uint32_t Le32(const uint8_t* p) {
  return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

// Which segments of a received datagram d[0, len) (GRO segment size seg, 0: one packet) have a
// good ICRC under the ID JS would find for them (see the top). knownIdDf: `id | df << 16` of the
// first segment from its IPv4 header, or -1. Bit k of the result: segment k verified (k < 64).
uint64_t FrxVerifyDatagram(const uint8_t* d, uint32_t len, uint32_t seg, uint32_t src, uint32_t sport, uint32_t dst, uint32_t dport,
                           int32_t knownIdDf) {
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
    uint32_t delta = Crc32Shift(Crc32(0, idb, 2) ^ Crc32(0, zero, 2), 16 + 8 + (n - 4) - 2);
    if (syn == delta) ok |= 1ull << k;
  }
  return ok;
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
  // Before the first datagram: FrxVerifyDatagram runs in the receive loop and does not check.
  Crc32Init();
  exports.Set("icrcVerify", Napi::Function::New(env, IcrcVerify));
}
