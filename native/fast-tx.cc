// softroce native TX fast path (issue 15): the per-packet mechanics of a run of
// consecutive SEND / WRITE packets of one message, decided by the TypeScript
// requester (requester.ts sendRunFast), done here: pad bits, ICRC, payload
// gathered straight from the MR's memory with iovecs (no copy into a JS tx
// buffer), one sendmmsg whose messages are UDP GSO runs.
//
// The transport stays the authority: JS has already built every packet's
// headers (BTH with opcode, PSN, AckReq; RETH, ImmDt, IETH) into `hdr`, chosen
// the source port (the link's flow-port pool) and checked the MR. This file
// only computes and sends; anything it cannot do (too many pieces, an error)
// returns before the first byte leaves or reports how many packets went, and
// the requester sends the rest the per-packet way.
//
// ICRC (IBA A17.3.3, RoCEv2 over IPv4; icrc.ts icrcV2Ipv4Parts does the same):
// CRC-32 over 8 bytes of 0xFF (the absent LRH), the IPv4 header with TOS, TTL
// and checksum set to 1s, the UDP header with its checksum set to 1s, the BTH
// with byte 4 set to 1s, then the rest of the packet (extended headers, payload,
// pad). The IPv4 ID is not masked: the socket has IP_PMTUDISC_DO, so a lone
// datagram carries DF and ID 0, and Linux numbers the segments of one UDP GSO
// send 0, 1, 2, ... (inet_gso_segment), so segment m's ICRC is computed for ID
// m directly (the JS path corrects ID 0 ICRCs afterwards: udp-base.ts xorIcrc).
// A correction with crc32.h's Crc32Shift, as fast-rx.cc does, would save nothing
// here: the ID sits in the 40-byte prefix every packet hashes anyway (its lengths
// and BTH differ per packet), so writing the right ID costs no extra CRC work.
#include <napi.h>
#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <netinet/in.h>
#include <netinet/ip.h>
#include <arpa/inet.h>
#include <stdint.h>

#include "crc32.h"

#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#ifndef SOL_UDP
#define SOL_UDP 17
#endif

namespace {

// ------------------------------------------------------------------ ICRC seed

// CRC state after the 8 masked LRH bytes (icrc.ts ICRC_SEED); the CRC itself is crc32.cc's.
uint32_t icrcSeed = 0;

void InitCrc() {
  Crc32Init();
  static const uint8_t ff[8] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
  icrcSeed = Crc32(0, ff, 8);
}

// -------------------------------------------------------------- the run

// Limits: a run is at most one requester budget (64 packets), as sendPackets.
const int MAX_PKTS = 64;
const int HDR_STRIDE = 64;
const int MAX_IOV = 64 * 16;
const int IOV_PER_MSG = 1024;  // UIO_MAXIOV

struct State {
  uint8_t trail[MAX_PKTS][8];  // pad bytes (zero) then the ICRC, per packet
  struct iovec iov[MAX_IOV];
  struct mmsghdr msgs[MAX_PKTS];
  char ctrl[MAX_PKTS][CMSG_SPACE(sizeof(uint16_t)) + CMSG_SPACE(sizeof(int))];
  uint16_t groupLen[MAX_PKTS];  // packets per message
  uint32_t pktLen[MAX_PKTS];
};
State st;

inline void PutU16(uint8_t* p, uint32_t v) {
  p[0] = (uint8_t)(v >> 8);
  p[1] = (uint8_t)v;
}
inline void PutU32(uint8_t* p, uint32_t v) {
  p[0] = (uint8_t)(v >> 24);
  p[1] = (uint8_t)(v >> 16);
  p[2] = (uint8_t)(v >> 8);
  p[3] = (uint8_t)v;
}

// txSegments(fd, dstIp, dstPort, tos, srcIp, srcPort, gso, hdr: Buffer, meta: Uint32Array, n,
//            bufs: Buffer[], pieces: Uint32Array, nPieces) -> packets sent, or -errno with none sent
//
// Packet k (k < n) is hdr[k*64, k*64 + meta[2k]) (BTH first) then the next meta[2k+1] bytes of
// the payload, which is the concatenation of bufs[i][pieces[2i], pieces[2i] + pieces[2i+1]).
// C sets the BTH PadCnt, appends the pad and the ICRC. srcIp/srcPort: the addresses the
// datagram really leaves with (the ICRC covers them). gso != 0: runs of equal-length packets
// (a shorter last one allowed, at most 64 and ~65000 bytes, the grouping of udp-base.ts
// sendRun) leave as one UDP_SEGMENT message each; else one message per packet. All messages
// go in one sendmmsg; a partial send reports the packets of the messages that went.
Napi::Value TxSegments(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 13 || !info[7].IsBuffer() || !info[8].IsTypedArray() || !info[10].IsArray() || !info[11].IsTypedArray())
    return Napi::Number::New(env, -EINVAL);
  int fd = info[0].As<Napi::Number>().Int32Value();
  uint32_t dstIp = info[1].As<Napi::Number>().Uint32Value();
  uint32_t dstPort = info[2].As<Napi::Number>().Uint32Value();
  int tos = info[3].As<Napi::Number>().Int32Value();
  uint32_t srcIp = info[4].As<Napi::Number>().Uint32Value();
  uint32_t srcPort = info[5].As<Napi::Number>().Uint32Value();
  bool gso = info[6].As<Napi::Number>().Int32Value() != 0;
  Napi::Buffer<uint8_t> hdrB = info[7].As<Napi::Buffer<uint8_t>>();
  Napi::Uint32Array meta = info[8].As<Napi::Uint32Array>();
  uint32_t n = info[9].As<Napi::Number>().Uint32Value();
  Napi::Array bufs = info[10].As<Napi::Array>();
  Napi::Uint32Array pieces = info[11].As<Napi::Uint32Array>();
  uint32_t np = info[12].As<Napi::Number>().Uint32Value();
  if (n == 0 || n > (uint32_t)MAX_PKTS || hdrB.Length() < n * HDR_STRIDE || meta.ElementLength() < 2 * n || pieces.ElementLength() < 2 * np ||
      bufs.Length() < np)
    return Napi::Number::New(env, -EINVAL);
  uint8_t* hdr = hdrB.Data();

  // Resolve the payload pieces once (bounds-checked against their Buffers).
  const int MAXP = 256;
  if (np > (uint32_t)MAXP) return Napi::Number::New(env, -E2BIG);
  uint8_t* pBase[MAXP];
  uint32_t pLen[MAXP];
  uint64_t total = 0;
  for (uint32_t i = 0; i < np; i++) {
    Napi::Value v = bufs[i];
    if (!v.IsBuffer()) return Napi::Number::New(env, -EINVAL);
    Napi::Buffer<uint8_t> b = v.As<Napi::Buffer<uint8_t>>();
    uint32_t off = pieces[2 * i], len = pieces[2 * i + 1];
    if ((uint64_t)off + len > b.Length()) return Napi::Number::New(env, -EINVAL);
    pBase[i] = b.Data() + off;
    pLen[i] = len;
    total += len;
  }
  uint64_t want = 0;
  for (uint32_t k = 0; k < n; k++) {
    uint32_t h = meta[2 * k];
    if (h < 12 || h > (uint32_t)HDR_STRIDE) return Napi::Number::New(env, -EINVAL);
    want += meta[2 * k + 1];
    st.pktLen[k] = h + meta[2 * k + 1] + ((-meta[2 * k + 1]) & 3) + 4;
  }
  if (want != total) return Napi::Number::New(env, -EINVAL);

  // Messages: GSO groups as udp-base.ts sendRun forms them, or one per packet.
  uint32_t nm = 0;
  for (uint32_t k = 0; k < n;) {
    uint32_t L = st.pktLen[k], e = k + 1;
    if (gso) {
      uint32_t maxSeg = 65000 / L;
      if (maxSeg > 64) maxSeg = 64;
      if (maxSeg < 1) maxSeg = 1;
      while (e < n && e - k < maxSeg && st.pktLen[e] == L) e++;
      if (e < n && e - k < maxSeg && st.pktLen[e] < L) e++;  // a shorter last segment is allowed
    }
    st.groupLen[nm++] = (uint16_t)(e - k);
    k = e;
  }

  // Per packet: pad bits, ICRC (for the ID its segment gets), iovecs.
  uint8_t pre[40];
  pre[0] = 0x45;
  pre[1] = 0xff;  // TOS masked
  PutU16(pre + 6, 0x4000);  // DF
  pre[8] = 0xff;  // TTL masked
  pre[9] = 17;
  pre[10] = pre[11] = 0xff;  // checksum masked
  PutU32(pre + 12, srcIp);
  PutU32(pre + 16, dstIp);
  PutU16(pre + 20, srcPort);
  PutU16(pre + 22, dstPort);
  pre[26] = pre[27] = 0xff;  // UDP checksum masked
  uint32_t pi = 0, po = 0;   // payload cursor: piece, offset in it
  uint32_t ni = 0, k = 0;
  for (uint32_t m = 0; m < nm; m++) {
    uint32_t cnt = st.groupLen[m];
    uint32_t first = ni;
    for (uint32_t s = 0; s < cnt; s++, k++) {
      uint8_t* h = hdr + (size_t)k * HDR_STRIDE;
      uint32_t hl = meta[2 * k], pl = meta[2 * k + 1];
      uint32_t pad = (-pl) & 3;
      h[1] = (uint8_t)((h[1] & 0xcf) | (pad << 4));
      uint32_t ibLen = st.pktLen[k];
      PutU16(pre + 2, 28 + ibLen);
      PutU16(pre + 4, cnt >= 2 ? s : 0);  // the IPv4 ID of GSO segment s (a lone datagram: 0)
      PutU16(pre + 24, 8 + ibLen);
      memcpy(pre + 28, h, 12);
      pre[28 + 4] = 0xff;  // BTH byte 4 (FECN, BECN, reserved) masked
      uint32_t c = Crc32(icrcSeed, pre, 40);
      c = Crc32(c, h + 12, hl - 12);
      if (ni + 2 > (uint32_t)MAX_IOV) return Napi::Number::New(env, -E2BIG);
      st.iov[ni].iov_base = h;
      st.iov[ni++].iov_len = hl;
      while (pl > 0) {
        while (pi < np && po == pLen[pi]) {
          pi++;
          po = 0;
        }
        if (pi >= np) return Napi::Number::New(env, -EINVAL);
        uint32_t take = pLen[pi] - po;
        if (take > pl) take = pl;
        c = Crc32(c, pBase[pi] + po, take);
        if (ni + 2 > (uint32_t)MAX_IOV) return Napi::Number::New(env, -E2BIG);
        st.iov[ni].iov_base = pBase[pi] + po;
        st.iov[ni++].iov_len = take;
        po += take;
        pl -= take;
      }
      uint8_t* t = st.trail[k];
      memset(t, 0, 4);
      c = Crc32(c, t, pad);
      t[pad] = (uint8_t)c;
      t[pad + 1] = (uint8_t)(c >> 8);
      t[pad + 2] = (uint8_t)(c >> 16);
      t[pad + 3] = (uint8_t)(c >> 24);
      st.iov[ni].iov_base = t;
      st.iov[ni++].iov_len = pad + 4;
    }
    if (ni - first > (uint32_t)IOV_PER_MSG) return Napi::Number::New(env, -E2BIG);
    struct msghdr& mh = st.msgs[m].msg_hdr;
    memset(&st.msgs[m], 0, sizeof st.msgs[m]);
    mh.msg_iov = &st.iov[first];
    mh.msg_iovlen = ni - first;
    size_t cl = 0;
    char* ctl = st.ctrl[m];
    memset(ctl, 0, sizeof st.ctrl[m]);
    mh.msg_control = ctl;
    mh.msg_controllen = (cnt >= 2 ? CMSG_SPACE(sizeof(uint16_t)) : 0) + (tos > 0 ? CMSG_SPACE(sizeof(int)) : 0);
    struct cmsghdr* cm = mh.msg_controllen > 0 ? CMSG_FIRSTHDR(&mh) : nullptr;
    if (cnt >= 2) {
      cm->cmsg_level = SOL_UDP;
      cm->cmsg_type = UDP_SEGMENT;
      cm->cmsg_len = CMSG_LEN(sizeof(uint16_t));
      uint16_t seg = (uint16_t)st.pktLen[k - cnt];
      memcpy(CMSG_DATA(cm), &seg, sizeof seg);
      cl += CMSG_SPACE(sizeof(uint16_t));
      cm = CMSG_NXTHDR(&mh, cm);
    }
    if (tos > 0) {
      cm->cmsg_level = IPPROTO_IP;
      cm->cmsg_type = IP_TOS;
      cm->cmsg_len = CMSG_LEN(sizeof(int));
      memcpy(CMSG_DATA(cm), &tos, sizeof tos);
      cl += CMSG_SPACE(sizeof(int));
    }
    if (cl == 0) mh.msg_control = nullptr;
  }

  struct sockaddr_in dst;
  memset(&dst, 0, sizeof dst);
  dst.sin_family = AF_INET;
  dst.sin_port = htons((uint16_t)dstPort);
  dst.sin_addr.s_addr = htonl(dstIp);
  for (uint32_t m = 0; m < nm; m++) {
    st.msgs[m].msg_hdr.msg_name = &dst;
    st.msgs[m].msg_hdr.msg_namelen = sizeof dst;
  }
  int r = sendmmsg(fd, st.msgs, nm, 0);
  if (r < 0) return Napi::Number::New(env, -errno);
  uint32_t sent = 0;
  for (int m = 0; m < r; m++) sent += st.groupLen[m];
  return Napi::Number::New(env, sent);
}

}  // namespace

void InitFastTx(Napi::Env env, Napi::Object exports) {
  InitCrc();
  exports.Set("txSegments", Napi::Function::New(env, TxSegments));
  exports.Set("TX_HDR_STRIDE", Napi::Number::New(env, HDR_STRIDE));
}
