// softroce native helper: only the syscalls Node's dgram lacks.
//
// Two parts. Socket options and sendmmsg / UDP GSO sends, on a socket file
// descriptor JS owns. And a receive path for IPv4 RoCEv2 sockets that Node's
// dgram cannot give: the addon opens the UDP socket itself, watches it with a
// libuv poll handle on Node's own loop, and on each readable event reads up
// to N datagrams with one recvmmsg into buffers JS handed over once (with
// UDP_GRO, a datagram may be several equal-size segments the sender's GSO
// sent as one), then calls JS once with the count. Per packet it allocates
// nothing and creates no JS object. It never throws: failures return -errno
// and JS maps them to a typed RdmaError.
//
// Why each option exists:
//  - IP_MTU_DISCOVER = IP_PMTUDISC_DO: Linux then sends DF with IPv4 ID 0.
//    The RoCEv2 ICRC covers the IPv4 ID, so a sender must know it; with the
//    default (IP_PMTUDISC_WANT) the kernel picks a hashed, unpredictable ID.
//  - IP_TOS / IPV6_TCLASS: the AV traffic class (DSCP/ECN) of RoCEv2.
//  - UDP_NO_CHECK6_RX: rxe sends IPv6 RoCE with a zero UDP checksum, which a
//    normal UDPv6 socket drops.
//  - SO_BINDTODEVICE: LAG ports pin each socket to one slave interface.
//  - AF_PACKET (Ethertype 0x8915): RoCEv1 is not IP, so no IP socket can carry
//    it; a packet socket bound to the netdev sends and receives the Ethernet
//    frames (GRH + IB packet). Needs CAP_NET_RAW, as rxe's own RoCEv1 would.
//  - NETLINK_ROUTE address and link events: the GID table follows the
//    interfaces' addresses as the kernel's roce_gid_mgmt does (it listens to
//    the same notifier chains), without polling getifaddrs.
#include <napi.h>
#include <errno.h>
#include <string.h>
#include <time.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <netinet/ip.h>
#include <linux/filter.h>
#include <arpa/inet.h>
#include <sys/uio.h>
#include <fcntl.h>
#include <unistd.h>
#include <uv.h>
#include <vector>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <sys/un.h>
#include <sys/ioctl.h>
#include <linux/sockios.h>
#include <stddef.h>
#include <string>

#include "place-rx.h"

#ifndef PACKET_IGNORE_OUTGOING
#define PACKET_IGNORE_OUTGOING 23
#endif

#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#ifndef SOL_UDP
#define SOL_UDP 17
#endif

#ifndef UDP_NO_CHECK6_RX
#define UDP_NO_CHECK6_RX 102
#endif
#ifndef UDP_GRO
#define UDP_GRO 104
#endif

// ------------------------------------------------------------ receive path

// udpOpen4(ipv4: number, port: number, bufBytes: number, netdev: string) -> fd or -errno
// A non-blocking IPv4 UDP socket bound to ip:port, with IP_PMTUDISC_DO (DF and
// IPv4 ID 0: the ICRC covers the ID), large socket buffers and UDP_GRO.
static Napi::Value UdpOpen4(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 4) return Napi::Number::New(env, -EINVAL);
  uint32_t ip = info[0].As<Napi::Number>().Uint32Value();
  int port = info[1].As<Napi::Number>().Int32Value();
  int bytes = info[2].As<Napi::Number>().Int32Value();
  std::string ifname = info[3].As<Napi::String>().Utf8Value();
  int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return Napi::Number::New(env, -errno);
  int one = 1;
  int pmtu = IP_PMTUDISC_DO;
  if (setsockopt(fd, IPPROTO_IP, IP_MTU_DISCOVER, &pmtu, sizeof pmtu) < 0) { int e = errno; close(fd); return Napi::Number::New(env, -e); }
  // Without CAP_NET_ADMIN the FORCE variants fail; the plain ones are capped by rmem_max/wmem_max.
  if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &bytes, sizeof bytes) < 0) setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bytes, sizeof bytes);
  if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &bytes, sizeof bytes) < 0) setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bytes, sizeof bytes);
  setsockopt(fd, SOL_UDP, UDP_GRO, &one, sizeof one);  // optional: older kernels simply never coalesce
  if (!ifname.empty() && setsockopt(fd, SOL_SOCKET, SO_BINDTODEVICE, ifname.c_str(), (socklen_t)ifname.size()) < 0) {
    int e = errno; close(fd); return Napi::Number::New(env, -e);
  }
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_port = htons((uint16_t)port);
  a.sin_addr.s_addr = htonl(ip);
  if (bind(fd, (struct sockaddr*)&a, sizeof a) < 0) { int e = errno; close(fd); return Napi::Number::New(env, -e); }
  return Napi::Number::New(env, fd);
}

// udpOpenTx4(ipv4: number, port: number, bufBytes: number, netdev: string) -> fd or -errno
// A send-only socket for one flow source port (the per-QP UDP source port of
// RoCEv2, flow.ts): IPv4 UDP bound to ip:port with IP_PMTUDISC_DO (DF and ID
// 0, as on the port's own socket: the ICRC covers the ID) and SO_REUSEADDR, so
// every device and process on the address that hashes a QP to this port can
// hold one (Linux lets UDP sockets that all set it share a port). A socket
// filter that accepts nothing keeps anything sent to the port from queueing
// here: receive stays on 4791.
static Napi::Value UdpOpenTx4(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 4) return Napi::Number::New(env, -EINVAL);
  uint32_t ip = info[0].As<Napi::Number>().Uint32Value();
  int port = info[1].As<Napi::Number>().Int32Value();
  int bytes = info[2].As<Napi::Number>().Int32Value();
  std::string ifname = info[3].As<Napi::String>().Utf8Value();
  int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return Napi::Number::New(env, -errno);
  int one = 1;
  int pmtu = IP_PMTUDISC_DO;
  struct sock_filter none[] = { BPF_STMT(BPF_RET | BPF_K, 0) };
  struct sock_fprog prog;
  prog.len = 1;
  prog.filter = none;
  if (setsockopt(fd, IPPROTO_IP, IP_MTU_DISCOVER, &pmtu, sizeof pmtu) < 0 ||
      setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
      setsockopt(fd, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof prog) < 0) {
    int e = errno; close(fd); return Napi::Number::New(env, -e);
  }
  if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &bytes, sizeof bytes) < 0) setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bytes, sizeof bytes);
  if (!ifname.empty() && setsockopt(fd, SOL_SOCKET, SO_BINDTODEVICE, ifname.c_str(), (socklen_t)ifname.size()) < 0) {
    int e = errno; close(fd); return Napi::Number::New(env, -e);
  }
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_port = htons((uint16_t)port);
  a.sin_addr.s_addr = htonl(ip);
  if (bind(fd, (struct sockaddr*)&a, sizeof a) < 0) { int e = errno; close(fd); return Napi::Number::New(env, -e); }
  return Napi::Number::New(env, fd);
}

// localPort(fd) -> the bound UDP port or -errno
static Napi::Value LocalPort(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = info[0].As<Napi::Number>().Int32Value();
  struct sockaddr_in a;
  socklen_t len = sizeof a;
  if (getsockname(fd, (struct sockaddr*)&a, &len) < 0) return Napi::Number::New(env, -errno);
  return Napi::Number::New(env, ntohs(a.sin_port));
}

static const int MAX_SLOTS = 64;
// Raw copies kept for matching: a poll reads at most MAX_SLOTS UDP datagrams,
// whose raw copies are queued before them (raw_local_deliver runs before the
// UDP handler), so twice that is room for those plus copies of datagrams the
// UDP socket has not handed over yet.
static const uint32_t RAW_RING = 2 * MAX_SLOTS;
// IPv4 header (up to 60) + UDP (8) + BTH (12); the raw socket's filter cuts each copy to this.
static const uint32_t RAW_SNAP = 60 + 8 + 12;

struct RxWatch {
  uv_poll_t poll;
  int fd;
  napi_env env;
  Napi::FunctionReference cb;
  Napi::FunctionReference closed;
  Napi::ObjectReference dataRef;
  Napi::ObjectReference metaRef;
  uint8_t* data;
  uint32_t* meta;
  uint32_t slots;
  uint32_t slotSize;
  bool wantWrite;
  bool closing;
  struct mmsghdr msgs[MAX_SLOTS];
  struct iovec iov[MAX_SLOTS];
  struct sockaddr_in from[MAX_SLOTS];
  char ctrl[MAX_SLOTS][CMSG_SPACE(sizeof(int))];
  // Raw receive (rxAttachRaw): the IPv4 + UDP headers and BTH of each datagram
  // as a raw IPPROTO_UDP socket saw it, to give JS the sender's IPv4 ID.
  int rawFd = -1;
  uint32_t rawHead = 0, rawCount = 0;
  uint8_t raw[RAW_RING][RAW_SNAP];
  uint32_t rawLen[RAW_RING];
  // The raw copy of a UDP GSO send that Linux segments only on delivery (loopback) is one
  // copy for several datagrams; they follow in order with IDs counting on (inet_gso_segment).
  uint32_t gsoLeft = 0, gsoId = 0, gsoDf = 0, gsoSrc = 0, gsoPort = 0;
  // RX fast path (rxIcrcStart, fast-rx.cc): per slot, two words of a bitmap of the segments whose
  // ICRC verified in C, for datagrams to icrcDst:icrcDport; null: off.
  uint32_t* icrcOk = nullptr;
  Napi::ObjectReference icrcRef;
  uint32_t icrcDst = 0, icrcDport = 0;
  // RX direct placement (place-rx.cc, rxPlaceStart): the armed QPs, the ctl words shared with JS,
  // and how many datagrams the last read left in the slots (the batch being handed over).
  PlaceTable place = {};
  Napi::ObjectReference placeRef;
  uint32_t batchN = 0;
};

// fast-rx.cc
uint64_t FrxVerifyDatagram(const uint8_t* d, uint32_t len, uint32_t seg, uint32_t src, uint32_t sport, uint32_t dst, uint32_t dport,
                           int32_t knownIdDf);
void InitFastRx(Napi::Env env, Napi::Object exports);

// The ICRC of each packet just read, in C (after MatchRaw, which gives the IPv4 ID when known).
static void VerifyIcrcs(RxWatch* w, int n) {
  for (int i = 0; i < n; i++) {
    const uint32_t* m = w->meta + i * 4;
    uint32_t sport = m[3] & 0xffff;
    int32_t known = (m[1] & 0x80000000u) ? (int32_t)((m[3] >> 16) | ((m[1] >> 14) & 0x10000)) : -1;
    uint64_t ok = m[0] == 0 ? 0 : FrxVerifyDatagram(w->data + (size_t)i * w->slotSize, m[0], m[1] & 0xffff, m[2], sport, w->icrcDst, w->icrcDport, known);
    w->icrcOk[i * 2] = (uint32_t)ok;
    w->icrcOk[i * 2 + 1] = (uint32_t)(ok >> 32);
  }
}

// The end of a turn's transport work (sched.ts atTurnEnd). JS queues work that must come after every
// continuation of the current callback (a link's send batch); while a callback of ours is running
// (depth > 0), the addon runs that work right after the callback returns, i.e. after Node has run its
// microtasks and ticks, instead of JS asking for a process.nextTick: Node 20 allocates a Map per
// tick-queue run, once per receive batch (issue 15, the 60 s heap check).
// state: an Int32Array over an ArrayBuffer (off the JS heap): [0] callbacks running, [1] work queued.
struct TurnEnd {
  napi_ref arr = nullptr;
  napi_ref fn = nullptr;
  int32_t* state = nullptr;
};

static void FinalizeTurnEnd(napi_env, void* data, void*) {
  // Its references end with the environment.
  delete static_cast<TurnEnd*>(data);
}

static TurnEnd* GetTurnEnd(napi_env env) {
  void* p = nullptr;
  if (napi_get_instance_data(env, &p) != napi_ok) return nullptr;
  return static_cast<TurnEnd*>(p);
}

// turnEndStart(state: Int32Array(2), fn) -> 0, or -1 (bad arguments, or started already)
static napi_value TurnEndStart(napi_env env, napi_callback_info cbi) {
  size_t argc = 2;
  napi_value argv[2];
  napi_value ret;
  napi_create_int32(env, -1, &ret);
  if (napi_get_cb_info(env, cbi, &argc, argv, nullptr, nullptr) != napi_ok || argc < 2 || GetTurnEnd(env) != nullptr)
    return ret;
  napi_typedarray_type t;
  size_t len = 0;
  void* p = nullptr;
  napi_valuetype ft;
  if (napi_get_typedarray_info(env, argv[0], &t, &len, &p, nullptr, nullptr) != napi_ok || t != napi_int32_array ||
      len < 2 || napi_typeof(env, argv[1], &ft) != napi_ok || ft != napi_function)
    return ret;
  TurnEnd* te = new TurnEnd();
  te->state = static_cast<int32_t*>(p);
  if (napi_create_reference(env, argv[0], 1, &te->arr) != napi_ok || napi_create_reference(env, argv[1], 1, &te->fn) != napi_ok ||
      napi_set_instance_data(env, te, FinalizeTurnEnd, nullptr) != napi_ok) {
    delete te;
    return ret;
  }
  te->state[0] = 0;
  te->state[1] = 0;
  napi_create_int32(env, 0, &ret);
  return ret;
}

static void EnterJs(napi_env env) {
  TurnEnd* te = GetTurnEnd(env);
  if (te) te->state[0]++;
}

static void LeaveJs(napi_env env) {
  TurnEnd* te = GetTurnEnd(env);
  if (!te || --te->state[0] > 0 || te->state[1] == 0) return;
  if (te->state[0] < 0) te->state[0] = 0;
  napi_handle_scope scope;
  if (napi_open_handle_scope(env, &scope) != napi_ok) return;
  napi_value fn, global, res;
  if (napi_get_reference_value(env, te->fn, &fn) == napi_ok && fn != nullptr && napi_get_global(env, &global) == napi_ok) {
    napi_make_callback(env, nullptr, global, fn, 0, nullptr, &res);
    bool pending = false;
    if (napi_is_exception_pending(env, &pending) == napi_ok && pending) {
      napi_value e;
      napi_get_and_clear_last_exception(env, &e);
      napi_fatal_exception(env, e);
    }
  }
  napi_close_handle_scope(env, scope);
}

static void CallJs(RxWatch* w, int arg) {
  Napi::Env env(w->env);
  EnterJs(w->env);
  {
    Napi::HandleScope scope(env);
    // MakeCallback: Node runs process.nextTick and microtask queues afterwards,
    // as for any I/O callback; then LeaveJs runs the turn's end (the links' send batches).
    w->cb.MakeCallback(env.Global(), { Napi::Number::New(env, arg) });
    if (env.IsExceptionPending()) {
      Napi::Error e = env.GetAndClearPendingException();
      napi_fatal_exception(w->env, e.Value());
    }
  }
  LeaveJs(w->env);
}

// Reads raw copies into the ring until it is full or the socket is empty.
// Copies come in arrival order, so the ones for the datagrams just read from
// the UDP socket are the oldest (after any whose datagram the UDP socket
// dropped): the ring never evicts here, or it would lose exactly those.
static void DrainRaw(RxWatch* w) {
  struct mmsghdr msgs[MAX_SLOTS];
  struct iovec iov[MAX_SLOTS];
  uint8_t buf[MAX_SLOTS][RAW_SNAP];
  while (w->rawCount < RAW_RING) {
    uint32_t want = RAW_RING - w->rawCount;
    if (want > (uint32_t)MAX_SLOTS) want = MAX_SLOTS;
    for (uint32_t i = 0; i < want; i++) {
      iov[i].iov_base = buf[i];
      iov[i].iov_len = RAW_SNAP;
      memset(&msgs[i].msg_hdr, 0, sizeof msgs[i].msg_hdr);
      msgs[i].msg_hdr.msg_iov = &iov[i];
      msgs[i].msg_hdr.msg_iovlen = 1;
      msgs[i].msg_len = 0;
    }
    int k = recvmmsg(w->rawFd, msgs, want, MSG_DONTWAIT, nullptr);
    if (k <= 0) return;
    for (int i = 0; i < k; i++) {
      uint32_t at = (w->rawHead + w->rawCount) % RAW_RING;
      memcpy(w->raw[at], buf[i], RAW_SNAP);
      w->rawLen[at] = msgs[i].msg_len < RAW_SNAP ? msgs[i].msg_len : RAW_SNAP;
      w->rawCount++;
    }
    if ((uint32_t)k < want) return;
  }
}

// Whether raw copy r is datagram i: same source address and port, and the
// same first bytes of the IB packet (BTH: opcode, QPN, PSN). Both views come
// from one skb, so a corrupted packet matches its own (equally corrupted) copy.
static bool RawIs(RxWatch* w, uint32_t r, int i) {
  const uint8_t* p = w->raw[r];
  uint32_t len = w->rawLen[r];
  if (len < 20) return false;
  uint32_t ihl = (uint32_t)(p[0] & 0x0f) * 4;
  if ((p[0] >> 4) != 4 || ihl < 20 || len < ihl + 8) return false;
  uint32_t src = ((uint32_t)p[12] << 24) | ((uint32_t)p[13] << 16) | ((uint32_t)p[14] << 8) | p[15];
  uint32_t sport = ((uint32_t)p[ihl] << 8) | p[ihl + 1];
  if (src != w->meta[i * 4 + 2] || sport != w->meta[i * 4 + 3]) return false;
  uint32_t have = len - ihl - 8, dlen = w->msgs[i].msg_len;
  uint32_t cmp = have < 12 ? have : 12;
  if (cmp > dlen) cmp = dlen;
  return memcmp(p + ihl + 8, w->data + (size_t)i * w->slotSize, cmp) == 0;
}

// For each of the n datagrams just read, finds its raw copy and puts the
// sender's IPv4 ID and DF into meta: meta[4i+1] |= 1 << 31 (ID known) |
// DF << 30, meta[4i+3] |= ID << 16 (for a GRO datagram: its first segment's). A datagram with IP options gets none (the
// ICRC of such a packet cannot be checked against a UDP view anyway). Copies
// older than a match belong to datagrams the UDP socket dropped: discarded.
static void MatchRaw(RxWatch* w, int n) {
  DrainRaw(w);
  for (int i = 0; i < n; i++) {
    uint32_t dlen = w->meta[i * 4];
    if (dlen == 0) { w->gsoLeft = 0; continue; }  // cut: JS drops it
    if (w->gsoLeft > 0) {
      if (w->meta[i * 4 + 2] == w->gsoSrc && w->meta[i * 4 + 3] == w->gsoPort && dlen <= w->gsoLeft) {
        w->meta[i * 4 + 1] |= 0x80000000u | (w->gsoDf << 30);
        w->meta[i * 4 + 3] |= (w->gsoId & 0xffff) << 16;
        w->gsoId++;
        w->gsoLeft -= dlen;
        continue;
      }
      w->gsoLeft = 0;
    }
    bool found = false;
    for (int round = 0; round < 64 && !found; round++) {
      for (uint32_t j = 0; j < w->rawCount && !found; j++) {
        uint32_t r = (w->rawHead + j) % RAW_RING;
        if (!RawIs(w, r, i)) continue;
        found = true;
        const uint8_t* p = w->raw[r];
        if ((p[0] & 0x0f) == 5) {
          uint32_t id = ((uint32_t)p[4] << 8) | p[5];
          uint32_t df = (p[6] & 0x40) ? 1 : 0;
          uint32_t total = ((uint32_t)p[2] << 8) | p[3];
          w->meta[i * 4 + 1] |= 0x80000000u | (df << 30);
          w->gsoSrc = w->meta[i * 4 + 2];
          w->gsoPort = w->meta[i * 4 + 3];
          w->meta[i * 4 + 3] |= id << 16;
          // More bytes than this datagram: the first segment of a GSO send.
          if (total > 28 + dlen) { w->gsoLeft = total - 28 - dlen; w->gsoId = id + 1; w->gsoDf = df; }
        }
        // Copies before it are of datagrams the UDP socket dropped.
        w->rawHead = (r + 1) % RAW_RING;
        w->rawCount -= j + 1;
      }
      // Not in a full ring: the raw socket (twice the UDP socket's buffer) keeps a copy of every
      // datagram the UDP socket keeps, so all of these are older, of datagrams the UDP socket
      // dropped (after an overflow there can be thousands): discard them and read on. A ring that
      // is not full holds everything queued, possibly copies of datagrams not read yet: kept.
      if (found || w->rawCount < RAW_RING) break;
      w->rawHead = 0;
      w->rawCount = 0;
      DrainRaw(w);
    }
    // Not found: its copy was lost after all; JS infers this datagram's ID.
  }
}

// One non-blocking recvmmsg pass on the watch's socket into its slots: the datagrams read (their
// meta filled in, raw IDs matched), 0 when none waited or on an error (the next read reports it).
// Shared by the event path (OnPoll) and busy polling (RxPoll), so both hand JS the same view.
static int ReadBatch(RxWatch* w) {
  for (uint32_t i = 0; i < w->slots; i++) {
    w->iov[i].iov_base = w->data + (size_t)i * w->slotSize;
    w->iov[i].iov_len = w->slotSize;
    struct msghdr* m = &w->msgs[i].msg_hdr;
    m->msg_name = &w->from[i];
    m->msg_namelen = sizeof w->from[i];
    m->msg_iov = &w->iov[i];
    m->msg_iovlen = 1;
    m->msg_control = w->ctrl[i];
    m->msg_controllen = sizeof w->ctrl[i];
    m->msg_flags = 0;
    w->msgs[i].msg_len = 0;
  }
  int n = recvmmsg(w->fd, w->msgs, w->slots, MSG_DONTWAIT, nullptr);
  w->batchN = n > 0 ? (uint32_t)n : 0;  // the slots now hold this batch (placement reads it)
  if (n <= 0) return 0;  // EAGAIN (level-triggered: another event follows), or an error: nothing to hand over
  for (int i = 0; i < n; i++) {
    struct msghdr* m = &w->msgs[i].msg_hdr;
    uint32_t seg = 0;
    for (struct cmsghdr* c = CMSG_FIRSTHDR(m); c; c = CMSG_NXTHDR(m, c)) {
      if (c->cmsg_level == SOL_UDP && c->cmsg_type == UDP_GRO) {
        int v = 0;
        memcpy(&v, CMSG_DATA(c), sizeof v);
        seg = (uint32_t)v;
      }
    }
    // A datagram longer than the slot was cut: hand over length 0 (JS counts and drops it).
    w->meta[i * 4 + 0] = (m->msg_flags & MSG_TRUNC) ? 0 : w->msgs[i].msg_len;
    w->meta[i * 4 + 1] = seg;
    w->meta[i * 4 + 2] = ntohl(w->from[i].sin_addr.s_addr);
    w->meta[i * 4 + 3] = ntohs(w->from[i].sin_port);
  }
  if (w->rawFd >= 0) MatchRaw(w, n);
  if (w->icrcOk) VerifyIcrcs(w, n);
  return n;
}

static void OnPoll(uv_poll_t* h, int status, int events) {
  RxWatch* w = static_cast<RxWatch*>(h->data);
  if (w->closing) return;
  if (status < 0) return;  // an error on the socket: the next read reports it
  if (events & UV_WRITABLE) {
    w->wantWrite = false;
    uv_poll_start(&w->poll, UV_READABLE, OnPoll);
    CallJs(w, -1);
    if (w->closing) return;
  }
  if (!(events & UV_READABLE)) return;
  int n = ReadBatch(w);
  if (n > 0) CallJs(w, n);
}

// rxPoll(handle) -> n: busy polling. One ReadBatch now; n > 0 datagrams are handed to the watch's
// cb(n) before this returns, as a plain call from the JS caller's stack (no MakeCallback: no
// microtask checkpoint in the middle of the caller's code; a throw in cb reaches the caller).
// 0: nothing waited; -1: the watch is closing. The uv poll stays armed: a readiness it reports
// for what was read here finds the socket empty (EAGAIN) and hands over nothing.
static Napi::Value RxPoll(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsExternal()) return Napi::Number::New(env, -1);
  RxWatch* w = info[0].As<Napi::External<RxWatch>>().Data();
  if (w->closing) return Napi::Number::New(env, -1);
  int n = ReadBatch(w);
  if (n > 0) w->cb.Call({ Napi::Number::New(env, n) });
  if (env.IsExceptionPending()) return env.Undefined();  // thrown on in the caller
  return Napi::Number::New(env, n);
}

// rxStart(fd, data: Buffer, meta: Uint32Array, slots, slotSize, cb(n)) -> handle
// Watches fd on Node's loop. cb(n > 0): n datagrams are in data (slot i at
// i * slotSize) with meta[4i..4i+3] = length, GRO segment size (0: one
// datagram), source IPv4, source port; they are overwritten after cb returns.
// cb(-1): the socket is writable again (after rxWantWrite).
static Napi::Value RxStart(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 6 || !info[1].IsBuffer() || !info[2].IsTypedArray() || !info[5].IsFunction()) return env.Null();
  int fd = info[0].As<Napi::Number>().Int32Value();
  Napi::Buffer<uint8_t> data = info[1].As<Napi::Buffer<uint8_t>>();
  Napi::Uint32Array meta = info[2].As<Napi::Uint32Array>();
  uint32_t slots = info[3].As<Napi::Number>().Uint32Value();
  uint32_t slotSize = info[4].As<Napi::Number>().Uint32Value();
  if (slots == 0 || slots > MAX_SLOTS || (size_t)slots * slotSize > data.Length() || meta.ElementLength() < (size_t)slots * 4) return env.Null();
  uv_loop_t* loop = nullptr;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok || !loop) return env.Null();
  RxWatch* w = new RxWatch();
  w->fd = fd;
  w->env = env;
  w->cb = Napi::Persistent(info[5].As<Napi::Function>());
  w->dataRef = Napi::Persistent(data.As<Napi::Object>());
  w->metaRef = Napi::Persistent(meta.As<Napi::Object>());
  w->data = data.Data();
  w->meta = meta.Data();
  w->slots = slots;
  w->slotSize = slotSize;
  w->wantWrite = false;
  w->closing = false;
  if (uv_poll_init(loop, &w->poll, fd) != 0) { delete w; return env.Null(); }
  w->poll.data = w;
  uv_poll_start(&w->poll, UV_READABLE, OnPoll);
  return Napi::External<RxWatch>::New(env, w);
}

// rxWantWrite(handle): call cb(-1) once the socket is writable (after EAGAIN on send).
static Napi::Value RxWantWrite(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsExternal()) return env.Undefined();
  RxWatch* w = info[0].As<Napi::External<RxWatch>>().Data();
  if (w->closing || w->wantWrite) return env.Undefined();
  w->wantWrite = true;
  uv_poll_start(&w->poll, UV_READABLE | UV_WRITABLE, OnPoll);
  return env.Undefined();
}

static void OnClosed(uv_handle_t* h) {
  RxWatch* w = static_cast<RxWatch*>(h->data);
  close(w->fd);
  if (w->rawFd >= 0) close(w->rawFd);
  w->cb.Reset();
  w->dataRef.Reset();
  w->metaRef.Reset();
  w->icrcRef.Reset();
  PlaceDisarmAll(&w->place, w->env);
  w->place.ctl = nullptr;
  w->placeRef.Reset();
  if (!w->closed.IsEmpty()) {
    Napi::Env env(w->env);
    Napi::HandleScope scope(env);
    w->closed.MakeCallback(env.Global(), {});
    if (env.IsExceptionPending()) {
      Napi::Error e = env.GetAndClearPendingException();
      napi_fatal_exception(w->env, e.Value());
    }
    w->closed.Reset();
  }
  delete w;
}

// rxStop(handle, done?): stops watching, closes the socket, then calls done()
// (the address is free again only then).
static Napi::Value RxStop(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsExternal()) return env.Undefined();
  RxWatch* w = info[0].As<Napi::External<RxWatch>>().Data();
  if (w->closing) return env.Undefined();
  if (info.Length() > 1 && info[1].IsFunction()) w->closed = Napi::Persistent(info[1].As<Napi::Function>());
  w->closing = true;
  PlaceDisarmAll(&w->place, env);  // no byte placed after close (the Buffers are let go now)
  uv_poll_stop(&w->poll);
  uv_close(reinterpret_cast<uv_handle_t*>(&w->poll), OnClosed);
  return env.Undefined();
}

// rxIcrcStart(handle, ok: Uint32Array, dstIpv4, dstPort) -> 0 or -EINVAL: from the next read on,
// ok[2i], ok[2i+1] (a 64-bit bitmap, low word first) say which segments of datagram i have an
// ICRC that verified in C, as sent to dstIpv4:dstPort (the socket's own address; fast-rx.cc says
// for which IPv4 IDs). Unset bits tell nothing: JS checks those packets itself.
static Napi::Value RxIcrcStart(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 4 || !info[0].IsExternal() || !info[1].IsTypedArray()) return Napi::Number::New(env, -EINVAL);
  RxWatch* w = info[0].As<Napi::External<RxWatch>>().Data();
  Napi::Uint32Array ok = info[1].As<Napi::Uint32Array>();
  uint32_t dst = info[2].As<Napi::Number>().Uint32Value();
  if (w->closing || ok.ElementLength() < (size_t)w->slots * 2 || dst == 0) return Napi::Number::New(env, -EINVAL);
  w->icrcRef = Napi::Persistent(ok.As<Napi::Object>());
  w->icrcOk = ok.Data();
  w->icrcDst = dst;
  w->icrcDport = info[3].As<Napi::Number>().Uint32Value() & 0xffff;
  return Napi::Number::New(env, 0);
}

// rxPlaceStart(handle, ctl: Uint32Array(PLACE_CTL_WORDS)) -> 0 or -EINVAL: RX direct placement on
// this watch (place-rx.cc); ctl is where each placement call reports what it placed.
static Napi::Value RxPlaceStart(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsExternal() || !info[1].IsTypedArray()) return Napi::Number::New(env, -EINVAL);
  RxWatch* w = info[0].As<Napi::External<RxWatch>>().Data();
  Napi::Uint32Array ctl = info[1].As<Napi::Uint32Array>();
  if (w->closing || !w->icrcOk || ctl.ElementLength() < PLACE_CTL_WORDS) return Napi::Number::New(env, -EINVAL);
  w->placeRef = Napi::Persistent(ctl.As<Napi::Object>());
  w->place.ctl = ctl.Data();
  memset(w->place.ctl, 0, PLACE_CTL_WORDS * sizeof(uint32_t));
  return Napi::Number::New(env, 0);
}

static PlaceBatch BatchOf(RxWatch* w) {
  PlaceBatch b;
  b.data = w->data;
  b.meta = w->meta;
  b.icrcOk = w->icrcOk;
  b.n = w->batchN;
  b.slotSize = w->slotSize;
  return b;
}

// rxArm(handle, qpn, psn, pmtu, buf, off, budget, srcIpv4, srcPort, slot, seg, opcode) -> packets
// placed (>= 0) or -errno. Arms (or re-arms) qpn for opcode (PLACE_OP_*; absent: WRITE MIDDLE);
// slot >= 0: JS is handing over the current batch and packet `seg` of slot `slot` is the next it
// would process: placement starts there at once.
static Napi::Value RxArm(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 11 || !info[0].IsExternal() || !info[4].IsTypedArray()) return Napi::Number::New(env, -EINVAL);
  RxWatch* w = info[0].As<Napi::External<RxWatch>>().Data();
  if (w->closing || !w->place.ctl || !w->icrcOk) return Napi::Number::New(env, -EINVAL);
  double off = info[5].As<Napi::Number>().DoubleValue(), budget = info[6].As<Napi::Number>().DoubleValue();
  if (!(off >= 0) || !(budget >= 0)) return Napi::Number::New(env, -EINVAL);
  int r = PlaceSetArm(&w->place, env, info[4], info[1].As<Napi::Number>().Uint32Value(), info[2].As<Napi::Number>().Uint32Value(),
                      info[3].As<Napi::Number>().Uint32Value(), (size_t)off, (size_t)budget, info[7].As<Napi::Number>().Uint32Value(),
                      info[8].As<Napi::Number>().Uint32Value(),
                      info.Length() > 11 && info[11].IsNumber() ? info[11].As<Napi::Number>().Uint32Value() : PLACE_OP_WRITE_MIDDLE);
  if (r < 0) return Napi::Number::New(env, r);
  int32_t slot = info[9].As<Napi::Number>().Int32Value();
  if (slot < 0) return Napi::Number::New(env, 0);
  return Napi::Number::New(env, PlaceRun(&w->place, env, BatchOf(w), (uint32_t)slot, info[10].As<Napi::Number>().Uint32Value()));
}

// rxPlace(handle, slot, seg) -> packets placed from packet seg of slot on (the batch being handed over).
static Napi::Value RxPlace(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 3 || !info[0].IsExternal()) return Napi::Number::New(env, 0);
  RxWatch* w = info[0].As<Napi::External<RxWatch>>().Data();
  if (w->closing || !w->place.ctl || !w->icrcOk) return Napi::Number::New(env, 0);
  return Napi::Number::New(env, PlaceRun(&w->place, env, BatchOf(w), info[1].As<Napi::Number>().Uint32Value(), info[2].As<Napi::Number>().Uint32Value()));
}

// rxDisarm(handle, qpn): qpn's arms (if any) are gone when this returns; qpn < 0: every QP's.
static Napi::Value RxDisarm(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsExternal()) return env.Undefined();
  RxWatch* w = info[0].As<Napi::External<RxWatch>>().Data();
  double q = info[1].As<Napi::Number>().DoubleValue();
  if (q < 0) {
    PlaceDisarmAll(&w->place, env);
    return env.Undefined();
  }
  PlaceDisarmQpn(&w->place, env, (uint32_t)q);
  return env.Undefined();
}

// rawOpen4(ipv4: number, port: number, netdev: string, bufBytes?: number) -> fd or -errno (EPERM without CAP_NET_RAW)
// A non-blocking raw IPPROTO_UDP socket that sees a copy of every IPv4 UDP
// datagram to ip:port, cut to its headers and BTH by a socket filter (so a
// copy costs little and no other traffic reaches it). It never sends. Linux
// hands raw sockets their copy before the UDP socket gets the datagram
// (ip_protocol_deliver_rcu: raw_local_deliver, then udp_rcv).
static Napi::Value RawOpen4(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 3) return Napi::Number::New(env, -EINVAL);
  uint32_t ip = info[0].As<Napi::Number>().Uint32Value();
  uint32_t port = info[1].As<Napi::Number>().Uint32Value();
  std::string ifname = info[2].As<Napi::String>().Utf8Value();
  if (port == 0 || port > 0xffff) return Napi::Number::New(env, -EINVAL);
  int fd = socket(AF_INET, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_UDP);
  if (fd < 0) return Napi::Number::New(env, -errno);
  // Offsets are from the IPv4 header: a raw socket's filter sees the packet from there.
  struct sock_filter code[] = {
    BPF_STMT(BPF_LD | BPF_W | BPF_ABS, 16),                 // destination address
    BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, ip, 0, 6),
    BPF_STMT(BPF_LD | BPF_H | BPF_ABS, 6),                  // flags + fragment offset
    BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, 0x1fff, 4, 0),     // a non-first fragment has no UDP header
    BPF_STMT(BPF_LDX | BPF_B | BPF_MSH, 0),                 // X = IPv4 header length
    BPF_STMT(BPF_LD | BPF_H | BPF_IND, 2),                  // UDP destination port
    BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, port, 0, 1),
    BPF_STMT(BPF_RET | BPF_K, RAW_SNAP),                    // keep the headers and the BTH only
    BPF_STMT(BPF_RET | BPF_K, 0),
  };
  struct sock_fprog prog;
  prog.len = sizeof code / sizeof code[0];
  prog.filter = code;
  // Attach the filter before anything can queue; drop what slipped in before it.
  if (setsockopt(fd, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof prog) < 0) { int e = errno; close(fd); return Napi::Number::New(env, -e); }
  if (!ifname.empty() && setsockopt(fd, SOL_SOCKET, SO_BINDTODEVICE, ifname.c_str(), (socklen_t)ifname.size()) < 0) {
    int e = errno; close(fd); return Napi::Number::New(env, -e);
  }
  // Each copy is charged the whole packet's truesize (a clone), so with twice the UDP socket's
  // buffer the raw socket does not drop a copy whose datagram the UDP socket keeps.
  int bytes = info.Length() > 3 && info[3].IsNumber() ? info[3].As<Napi::Number>().Int32Value() : 8 << 20;
  if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &bytes, sizeof bytes) < 0) setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bytes, sizeof bytes);
  uint8_t junk[RAW_SNAP];
  for (int i = 0; i < 4096 && recv(fd, junk, sizeof junk, MSG_DONTWAIT) >= 0; i++) {}
  return Napi::Number::New(env, fd);
}

// rxAttachRaw(handle, rawFd, keepGro): from now on each poll also reads rawFd
// and marks the datagrams whose IPv4 ID it saw (see MatchRaw). The watch owns
// rawFd from here and closes it with the UDP socket. keepGro: the socket is on
// loopback, where nothing is GRO-merged: a GRO datagram there is a sender's
// GSO send, whose segments have IDs counting on from the first (JS numbers
// them), so UDP GRO can stay on.
static Napi::Value RxAttachRaw(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsExternal()) return Napi::Number::New(env, -EINVAL);
  RxWatch* w = info[0].As<Napi::External<RxWatch>>().Data();
  if (w->closing || w->rawFd >= 0) return Napi::Number::New(env, -EINVAL);
  w->rawFd = info[1].As<Napi::Number>().Int32Value();
  if (info.Length() > 2 && info[2].ToBoolean().Value()) return Napi::Number::New(env, 0);
  // Elsewhere no UDP GRO from here: a datagram coalesced from several keeps only the first one's IPv4
  // header (UDP GRO does not require the IDs to count on), so the others' IDs would be lost.
  // Without it a NIC delivers each datagram with its own header, and loopback delivers a
  // GSO send as one raw copy followed by its segments (MatchRaw numbers them).
  int zero = 0;
  setsockopt(w->fd, SOL_UDP, UDP_GRO, &zero, sizeof zero);
  return Napi::Number::New(env, 0);
}

static Napi::Value SetIntSockopt(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 4) return Napi::Number::New(env, -EINVAL);
  int fd = info[0].As<Napi::Number>().Int32Value();
  int level = info[1].As<Napi::Number>().Int32Value();
  int name = info[2].As<Napi::Number>().Int32Value();
  int value = info[3].As<Napi::Number>().Int32Value();
  int r = setsockopt(fd, level, name, &value, sizeof value);
  return Napi::Number::New(env, r == 0 ? 0 : -errno);
}

static Napi::Value BindToDevice(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2) return Napi::Number::New(env, -EINVAL);
  int fd = info[0].As<Napi::Number>().Int32Value();
  std::string ifname = info[1].As<Napi::String>().Utf8Value();
  int r = setsockopt(fd, SOL_SOCKET, SO_BINDTODEVICE, ifname.c_str(), (socklen_t)ifname.size());
  return Napi::Number::New(env, r == 0 ? 0 : -errno);
}

// packetOpen(ifname: string, ethertype: number, bufBytes: number) -> fd or -errno
// A non-blocking AF_PACKET SOCK_RAW socket bound to the netdev and to one
// Ethertype (RoCEv1: 0x8915): it receives only those frames (with their
// Ethernet header) and sends whole frames given with their Ethernet header.
// Our own sends are not looped back to it (PACKET_IGNORE_OUTGOING, Linux 4.20;
// older kernels: the JS side drops frames from its own MAC). EPERM without
// CAP_NET_RAW; ENODEV when the netdev does not exist. Read it with rxStart.
static Napi::Value PacketOpen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 3 || !info[0].IsString()) return Napi::Number::New(env, -EINVAL);
  std::string ifname = info[0].As<Napi::String>().Utf8Value();
  uint32_t proto = info[1].As<Napi::Number>().Uint32Value();
  int bufBytes = info[2].As<Napi::Number>().Int32Value();
  if (proto == 0 || proto > 0xffff) return Napi::Number::New(env, -EINVAL);
  unsigned idx = if_nametoindex(ifname.c_str());
  if (idx == 0) return Napi::Number::New(env, -ENODEV);
  int fd = socket(AF_PACKET, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, htons((uint16_t)proto));
  if (fd < 0) return Napi::Number::New(env, -errno);
  int one = 1;
  setsockopt(fd, SOL_PACKET, PACKET_IGNORE_OUTGOING, &one, sizeof one);
  if (bufBytes > 0) {
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bufBytes, sizeof bufBytes);
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bufBytes, sizeof bufBytes);
  }
  struct sockaddr_ll sll;
  memset(&sll, 0, sizeof sll);
  sll.sll_family = AF_PACKET;
  sll.sll_protocol = htons((uint16_t)proto);
  sll.sll_ifindex = (int)idx;
  if (bind(fd, reinterpret_cast<struct sockaddr*>(&sll), sizeof sll) != 0) {
    int e = errno;
    close(fd);
    return Napi::Number::New(env, -e);
  }
  return Napi::Number::New(env, fd);
}

// packetSend(fd, frame: Buffer, len) -> bytes sent or -errno (EAGAIN: the socket buffer is full)
// One Ethernet frame out of a bound packet socket (the netdev and protocol of its bind).
static Napi::Value PacketSend(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 3 || !info[1].IsBuffer()) return Napi::Number::New(env, -EINVAL);
  int fd = info[0].As<Napi::Number>().Int32Value();
  Napi::Buffer<uint8_t> b = info[1].As<Napi::Buffer<uint8_t>>();
  uint32_t len = info[2].As<Napi::Number>().Uint32Value();
  if (len > b.Length()) return Napi::Number::New(env, -EINVAL);
  ssize_t r = send(fd, b.Data(), len, MSG_DONTWAIT);
  return Napi::Number::New(env, r < 0 ? -errno : (double)r);
}

// packetAddMulticast(fd, ifname: string, mac: Buffer (6 bytes)) -> 0 or -errno
// The netdev accepts frames to that multicast MAC while the packet socket is open
// (PACKET_ADD_MEMBERSHIP, PACKET_MR_MULTICAST; the kernel drops it at close): a NIC
// filters multicast it was not told about, and LACPDUs go to the slow-protocols
// address 01:80:c2:00:00:02 (IEEE 802.1AX), which teamd adds with SIOCADDMULTI.
static Napi::Value PacketAddMulticast(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 3 || !info[1].IsString() || !info[2].IsBuffer()) return Napi::Number::New(env, -EINVAL);
  int fd = info[0].As<Napi::Number>().Int32Value();
  Napi::Buffer<uint8_t> mac = info[2].As<Napi::Buffer<uint8_t>>();
  if (mac.Length() != 6) return Napi::Number::New(env, -EINVAL);
  unsigned idx = if_nametoindex(info[1].As<Napi::String>().Utf8Value().c_str());
  if (idx == 0) return Napi::Number::New(env, -ENODEV);
  struct packet_mreq mr;
  memset(&mr, 0, sizeof mr);
  mr.mr_ifindex = (int)idx;
  mr.mr_type = PACKET_MR_MULTICAST;
  mr.mr_alen = 6;
  memcpy(mr.mr_address, mac.Data(), 6);
  int r = setsockopt(fd, SOL_PACKET, PACKET_ADD_MEMBERSHIP, &mr, sizeof mr);
  return Napi::Number::New(env, r == 0 ? 0 : -errno);
}

// neighLookup(family: 4 | 6, addr: Buffer (4 or 16 bytes), ifname: string) -> Buffer (6-byte MAC), null, or -errno
// The kernel's neighbour table (ARP for IPv4, ND for IPv6) entry of addr on ifname, by one
// RTM_GETNEIGH dump on a NETLINK_ROUTE socket: the MAC when the entry is usable (REACHABLE, STALE,
// DELAY, PROBE, PERMANENT or NOARP), else null (absent, INCOMPLETE or FAILED: the caller triggers
// resolution by sending to the address). RoCEv1 frames need the MAC, as rdma_addr's resolution does.
static Napi::Value NeighLookup(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 3 || !info[1].IsBuffer() || !info[2].IsString()) return Napi::Number::New(env, -EINVAL);
  int fam = info[0].As<Napi::Number>().Int32Value() == 6 ? AF_INET6 : AF_INET;
  Napi::Buffer<uint8_t> addr = info[1].As<Napi::Buffer<uint8_t>>();
  size_t alen = fam == AF_INET6 ? 16 : 4;
  if (addr.Length() != alen) return Napi::Number::New(env, -EINVAL);
  unsigned idx = if_nametoindex(info[2].As<Napi::String>().Utf8Value().c_str());
  if (idx == 0) return Napi::Number::New(env, -ENODEV);
  int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
  if (fd < 0) return Napi::Number::New(env, -errno);
  struct timeval tv = {1, 0};  // a dump of the table answers at once; never block the loop long
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  struct {
    struct nlmsghdr nh;
    struct ndmsg nd;
  } req;
  memset(&req, 0, sizeof req);
  req.nh.nlmsg_len = NLMSG_LENGTH(sizeof(struct ndmsg));
  req.nh.nlmsg_type = RTM_GETNEIGH;
  req.nh.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
  req.nh.nlmsg_seq = 1;
  req.nd.ndm_family = (uint8_t)fam;
  if (send(fd, &req, req.nh.nlmsg_len, 0) < 0) {
    int e = errno;
    close(fd);
    return Napi::Number::New(env, -e);
  }
  static const uint16_t USABLE = NUD_REACHABLE | NUD_STALE | NUD_DELAY | NUD_PROBE | NUD_PERMANENT | NUD_NOARP;
  std::vector<uint8_t> buf(32768);
  uint8_t mac[6];
  bool found = false, done = false;
  while (!done) {
    ssize_t n = recv(fd, buf.data(), buf.size(), 0);
    if (n <= 0) break;
    for (struct nlmsghdr* h = reinterpret_cast<struct nlmsghdr*>(buf.data()); NLMSG_OK(h, (size_t)n); h = NLMSG_NEXT(h, n)) {
      if (h->nlmsg_type == NLMSG_DONE || h->nlmsg_type == NLMSG_ERROR) {
        done = true;
        break;
      }
      if (h->nlmsg_type != RTM_NEWNEIGH || found) continue;
      struct ndmsg* nd = reinterpret_cast<struct ndmsg*>(NLMSG_DATA(h));
      if (nd->ndm_family != fam || (unsigned)nd->ndm_ifindex != idx || !(nd->ndm_state & USABLE)) continue;
      const uint8_t* dst = nullptr;
      const uint8_t* ll = nullptr;
      int rlen = (int)RTM_PAYLOAD(h);
      for (struct rtattr* a = reinterpret_cast<struct rtattr*>((char*)nd + NLMSG_ALIGN(sizeof(struct ndmsg))); RTA_OK(a, rlen); a = RTA_NEXT(a, rlen)) {
        if (a->rta_type == NDA_DST && RTA_PAYLOAD(a) == alen) dst = reinterpret_cast<const uint8_t*>(RTA_DATA(a));
        if (a->rta_type == NDA_LLADDR && RTA_PAYLOAD(a) == 6) ll = reinterpret_cast<const uint8_t*>(RTA_DATA(a));
      }
      if (dst && ll && memcmp(dst, addr.Data(), alen) == 0) {
        memcpy(mac, ll, 6);
        found = true;
      }
    }
  }
  close(fd);
  if (!found) return env.Null();
  return Napi::Buffer<uint8_t>::Copy(env, mac, 6);
}

// addrList() -> [label, family (4 | 6), address string][] or -errno
// Every interface address, by one RTM_GETADDR dump on a NETLINK_ROUTE socket. Unlike getifaddrs as
// libuv filters it (os.networkInterfaces lists only interfaces that are up and running), this keeps
// the addresses of a link without carrier: the kernel's GID table keeps them too (roce_gid_mgmt.c
// removes GIDs on an address's NETDEV_DOWN, not on the link's), so a pulled cable must not empty
// the port's table. IPv4 names are the address label (eth0:1 for an alias), IPv6 the device name.
static Napi::Value AddrList(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
  if (fd < 0) return Napi::Number::New(env, -errno);
  struct timeval tv = {1, 0};  // a dump answers at once; never block the loop long
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  struct {
    struct nlmsghdr nh;
    struct ifaddrmsg ifa;
  } req;
  memset(&req, 0, sizeof req);
  req.nh.nlmsg_len = NLMSG_LENGTH(sizeof(struct ifaddrmsg));
  req.nh.nlmsg_type = RTM_GETADDR;
  req.nh.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
  req.nh.nlmsg_seq = 1;
  req.ifa.ifa_family = AF_UNSPEC;
  if (send(fd, &req, req.nh.nlmsg_len, 0) < 0) {
    int e = errno;
    close(fd);
    return Napi::Number::New(env, -e);
  }
  Napi::Array out = Napi::Array::New(env);
  uint32_t count = 0;
  std::vector<uint8_t> buf(65536);
  bool done = false, failed = false;
  while (!done) {
    ssize_t n = recv(fd, buf.data(), buf.size(), 0);
    if (n <= 0) {
      failed = true;
      break;
    }
    for (struct nlmsghdr* h = reinterpret_cast<struct nlmsghdr*>(buf.data()); NLMSG_OK(h, (size_t)n); h = NLMSG_NEXT(h, n)) {
      if (h->nlmsg_type == NLMSG_DONE) {
        done = true;
        break;
      }
      if (h->nlmsg_type == NLMSG_ERROR) {
        done = failed = true;
        break;
      }
      if (h->nlmsg_type != RTM_NEWADDR) continue;
      struct ifaddrmsg* ifa = reinterpret_cast<struct ifaddrmsg*>(NLMSG_DATA(h));
      if (ifa->ifa_family != AF_INET && ifa->ifa_family != AF_INET6) continue;
      const void* local = nullptr;
      const void* address = nullptr;
      const char* label = nullptr;
      int rlen = (int)IFA_PAYLOAD(h);
      for (struct rtattr* a = IFA_RTA(ifa); RTA_OK(a, rlen); a = RTA_NEXT(a, rlen)) {
        if (a->rta_type == IFA_LOCAL) local = RTA_DATA(a);
        else if (a->rta_type == IFA_ADDRESS) address = RTA_DATA(a);
        else if (a->rta_type == IFA_LABEL) label = reinterpret_cast<const char*>(RTA_DATA(a));
      }
      // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer's on a point-to-point link.
      const void* own = local ? local : address;
      if (!own) continue;
      char name[IF_NAMESIZE + 16];
      if (label) {
        strncpy(name, label, sizeof name - 1);
        name[sizeof name - 1] = 0;
      } else if (!if_indextoname(ifa->ifa_index, name)) {
        continue;
      }
      char text[INET6_ADDRSTRLEN];
      if (!inet_ntop(ifa->ifa_family, own, text, sizeof text)) continue;
      Napi::Array row = Napi::Array::New(env, 3);
      row.Set(0u, Napi::String::New(env, name));
      row.Set(1u, Napi::Number::New(env, ifa->ifa_family == AF_INET6 ? 6 : 4));
      row.Set(2u, Napi::String::New(env, text));
      out.Set(count++, row);
    }
  }
  close(fd);
  if (failed) return Napi::Number::New(env, -EIO);
  return out;
}

// sendPackets(fd, bufs: Buffer[], lens: number[], n, ipv4: number, port, gsoSize, tos?)
// Sends n packets (each bufs[i][0..lens[i])) to one IPv4 destination from the
// socket fd. gsoSize > 0: one sendmsg whose payload is the packets back to
// back, with UDP_SEGMENT = gsoSize, so the kernel cuts it into n datagrams
// (every packet but the last must be exactly gsoSize long). gsoSize = 0: one
// sendmmsg with one message per packet. Returns the number of packets sent
// (all or, for sendmmsg, a prefix) or -errno (EAGAIN: the socket buffer is full).
// tos > 0: each datagram carries an IP_TOS control message (the AV's traffic
// class, DSCP + ECN; IPv4 masks it out of the ICRC).
static Napi::Value SendPackets(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 7) return Napi::Number::New(env, -EINVAL);
  int fd = info[0].As<Napi::Number>().Int32Value();
  Napi::Array bufs = info[1].As<Napi::Array>();
  Napi::Array lens = info[2].As<Napi::Array>();
  uint32_t n = info[3].As<Napi::Number>().Uint32Value();
  uint32_t ip = info[4].As<Napi::Number>().Uint32Value();
  int port = info[5].As<Napi::Number>().Int32Value();
  int gso = info[6].As<Napi::Number>().Int32Value();
  int tos = info.Length() > 7 && info[7].IsNumber() ? info[7].As<Napi::Number>().Int32Value() : 0;
  if (n == 0 || n > 64) return Napi::Number::New(env, -EINVAL);
  struct sockaddr_in dst;
  memset(&dst, 0, sizeof dst);
  dst.sin_family = AF_INET;
  dst.sin_port = htons((uint16_t)port);
  dst.sin_addr.s_addr = htonl(ip);
  struct iovec iov[64];
  for (uint32_t i = 0; i < n; i++) {
    Napi::Value b = bufs[i];
    Napi::Value l = lens[i];
    if (!b.IsBuffer()) return Napi::Number::New(env, -EINVAL);
    Napi::Buffer<uint8_t> buf = b.As<Napi::Buffer<uint8_t>>();
    uint32_t len = l.As<Napi::Number>().Uint32Value();
    if (len > buf.Length()) return Napi::Number::New(env, -EINVAL);
    iov[i].iov_base = buf.Data();
    iov[i].iov_len = len;
  }
  if (gso > 0) {
    char ctrl[CMSG_SPACE(sizeof(uint16_t)) + CMSG_SPACE(sizeof(int))];
    memset(ctrl, 0, sizeof ctrl);
    struct msghdr m;
    memset(&m, 0, sizeof m);
    m.msg_name = &dst;
    m.msg_namelen = sizeof dst;
    m.msg_iov = iov;
    m.msg_iovlen = n;
    m.msg_control = ctrl;
    m.msg_controllen = CMSG_SPACE(sizeof(uint16_t)) + (tos > 0 ? CMSG_SPACE(sizeof(int)) : 0);
    struct cmsghdr* c = CMSG_FIRSTHDR(&m);
    c->cmsg_level = SOL_UDP;
    c->cmsg_type = UDP_SEGMENT;
    c->cmsg_len = CMSG_LEN(sizeof(uint16_t));
    uint16_t seg = (uint16_t)gso;
    memcpy(CMSG_DATA(c), &seg, sizeof seg);
    if (tos > 0) {
      c = CMSG_NXTHDR(&m, c);
      c->cmsg_level = IPPROTO_IP;
      c->cmsg_type = IP_TOS;
      c->cmsg_len = CMSG_LEN(sizeof(int));
      memcpy(CMSG_DATA(c), &tos, sizeof tos);
    }
    ssize_t r = sendmsg(fd, &m, 0);
    return Napi::Number::New(env, r < 0 ? -errno : (double)n);
  }
  struct mmsghdr msgs[64];
  char tctrl[CMSG_SPACE(sizeof(int))];
  memset(msgs, 0, sizeof(struct mmsghdr) * n);
  memset(tctrl, 0, sizeof tctrl);
  if (tos > 0) {
    // One control message serves every datagram of the call (the kernel only reads it).
    struct msghdr tm;
    memset(&tm, 0, sizeof tm);
    tm.msg_control = tctrl;
    tm.msg_controllen = sizeof tctrl;
    struct cmsghdr* c = CMSG_FIRSTHDR(&tm);
    c->cmsg_level = IPPROTO_IP;
    c->cmsg_type = IP_TOS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &tos, sizeof tos);
  }
  for (uint32_t i = 0; i < n; i++) {
    msgs[i].msg_hdr.msg_name = &dst;
    msgs[i].msg_hdr.msg_namelen = sizeof dst;
    msgs[i].msg_hdr.msg_iov = &iov[i];
    msgs[i].msg_hdr.msg_iovlen = 1;
    if (tos > 0) {
      msgs[i].msg_hdr.msg_control = tctrl;
      msgs[i].msg_hdr.msg_controllen = sizeof tctrl;
    }
  }
  int r = sendmmsg(fd, msgs, n, 0);
  return Napi::Number::New(env, r < 0 ? -errno : r);
}

// ------------------------------------------------------------ address events

// One NETLINK_ROUTE socket subscribed to the IPv4/IPv6 address groups and the link group
// (RTM_NEWADDR / RTM_DELADDR, and RTM_NEWLINK for what changes which netdevs are tied to a
// port: a bond's active slave, a VLAN created or moved). JS re-reads the address list on each
// report rather than applying the messages one by one, so a lost message (ENOBUFS when the
// socket overflowed) costs nothing but that re-read.
struct AddrWatch {
  uv_poll_t poll;
  int fd;
  napi_env env;
  Napi::FunctionReference cb;
  bool closing;
};

static void OnAddrPoll(uv_poll_t* h, int status, int events) {
  AddrWatch* w = static_cast<AddrWatch*>(h->data);
  if (w->closing || status < 0 || !(events & UV_READABLE)) return;
  uint32_t addr = 0, link = 0, lost = 0;
  alignas(struct nlmsghdr) char buf[16384];
  // Bounded: 64 reads per readable event; level-triggered, so anything left comes back next turn.
  for (int i = 0; i < 64; i++) {
    ssize_t r = recv(w->fd, buf, sizeof buf, MSG_DONTWAIT);
    if (r < 0) {
      if (errno == ENOBUFS) { lost++; continue; }
      break;
    }
    int len = (int)r;
    for (struct nlmsghdr* m = (struct nlmsghdr*)buf; NLMSG_OK(m, len); m = NLMSG_NEXT(m, len)) {
      if (m->nlmsg_type == RTM_NEWADDR || m->nlmsg_type == RTM_DELADDR) addr++;
      else if (m->nlmsg_type == RTM_NEWLINK || m->nlmsg_type == RTM_DELLINK) link++;
    }
  }
  if (addr == 0 && link == 0 && lost == 0) return;
  Napi::Env env(w->env);
  Napi::HandleScope scope(env);
  w->cb.MakeCallback(env.Global(), { Napi::Number::New(env, addr), Napi::Number::New(env, link), Napi::Number::New(env, lost) });
  if (env.IsExceptionPending()) {
    Napi::Error e = env.GetAndClearPendingException();
    napi_fatal_exception(w->env, e.Value());
  }
}

// addrWatchStart(cb(addrMsgs, linkMsgs, overflows)) -> handle, or -errno
// The poll handle is unref'd: watching addresses never keeps the process alive.
static Napi::Value AddrWatchStart(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsFunction()) return Napi::Number::New(env, -EINVAL);
  int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, NETLINK_ROUTE);
  if (fd < 0) return Napi::Number::New(env, -errno);
  struct sockaddr_nl a;
  memset(&a, 0, sizeof a);
  a.nl_family = AF_NETLINK;
  a.nl_groups = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR;
  if (bind(fd, (struct sockaddr*)&a, sizeof a) < 0) { int e = errno; close(fd); return Napi::Number::New(env, -e); }
  uv_loop_t* loop = nullptr;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok || !loop) { close(fd); return Napi::Number::New(env, -EINVAL); }
  AddrWatch* w = new AddrWatch();
  w->fd = fd;
  w->env = env;
  w->closing = false;
  w->cb = Napi::Persistent(info[0].As<Napi::Function>());
  if (uv_poll_init(loop, &w->poll, fd) != 0) { close(fd); delete w; return Napi::Number::New(env, -EINVAL); }
  w->poll.data = w;
  uv_poll_start(&w->poll, UV_READABLE, OnAddrPoll);
  uv_unref(reinterpret_cast<uv_handle_t*>(&w->poll));
  return Napi::External<AddrWatch>::New(env, w);
}

static void OnAddrClosed(uv_handle_t* h) {
  AddrWatch* w = static_cast<AddrWatch*>(h->data);
  close(w->fd);
  w->cb.Reset();
  delete w;
}

// addrWatchStop(handle): stops watching and closes the socket.
static Napi::Value AddrWatchStop(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsExternal()) return env.Undefined();
  AddrWatch* w = info[0].As<Napi::External<AddrWatch>>().Data();
  if (w->closing) return env.Undefined();
  w->closing = true;
  uv_poll_stop(&w->poll);
  uv_close(reinterpret_cast<uv_handle_t*>(&w->poll), OnAddrClosed);
  return env.Undefined();
}

// AF_UNIX SOCK_SEQPACKET, for a bond's control socket (src/lag/bond-ctl.ts): teamd's usock is a
// SEQPACKET socket (one message per send, teamd_usock.c) and libteam's teamdctl connects to nothing
// else; Node's net makes only SOCK_STREAM unix sockets.
// seqpacketOpen(path, listen) -> fd (non-blocking; bound and listening, or connected), or -errno.
static Napi::Value SeqpacketOpen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsString()) return Napi::Number::New(env, -EINVAL);
  std::string path = info[0].As<Napi::String>().Utf8Value();
  bool listening = info[1].ToBoolean().Value();
  struct sockaddr_un a;
  memset(&a, 0, sizeof a);
  a.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof a.sun_path) return Napi::Number::New(env, -ENAMETOOLONG);
  memcpy(a.sun_path, path.data(), path.size());
  int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return Napi::Number::New(env, -errno);
  socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + path.size() + 1);
  int r = listening ? bind(fd, (struct sockaddr*)&a, len) : connect(fd, (struct sockaddr*)&a, len);
  if (r == 0 && listening) r = listen(fd, 10);  // USOCK_MAX_CLIENT_COUNT
  if (r < 0) { int e = errno; close(fd); return Napi::Number::New(env, -e); }
  return Napi::Number::New(env, fd);
}

// unixAccept(fd) -> a non-blocking connection fd, or -errno (-EAGAIN: none waiting).
static Napi::Value UnixAccept(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsNumber()) return Napi::Number::New(env, -EINVAL);
  int c = accept4(info[0].As<Napi::Number>().Int32Value(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
  return Napi::Number::New(env, c < 0 ? -errno : c);
}

// unixRecv(fd) -> the next message (a Buffer), null at end of stream, or -errno (-EAGAIN: none yet).
// The message's size from SIOCINQ, as teamd_usock_recv_msg reads it.
static Napi::Value UnixRecv(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsNumber()) return Napi::Number::New(env, -EINVAL);
  int fd = info[0].As<Napi::Number>().Int32Value();
  int want = 0;
  if (ioctl(fd, SIOCINQ, &want) < 0) return Napi::Number::New(env, -errno);
  std::vector<char> buf((size_t)want + 1);
  ssize_t n = recv(fd, buf.data(), (size_t)want + 1, MSG_DONTWAIT);
  if (n < 0) return Napi::Number::New(env, -errno);
  if (n == 0) return env.Null();
  return Napi::Buffer<char>::Copy(env, buf.data(), (size_t)n);
}

// unixSend(fd, buf) -> bytes sent (one message), or -errno.
static Napi::Value UnixSend(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsNumber() || !info[1].IsBuffer()) return Napi::Number::New(env, -EINVAL);
  Napi::Buffer<char> b = info[1].As<Napi::Buffer<char>>();
  ssize_t n = send(info[0].As<Napi::Number>().Int32Value(), b.Data(), b.Length(), MSG_NOSIGNAL | MSG_DONTWAIT);
  return Napi::Number::New(env, n < 0 ? -errno : (double)n);
}

// A readable fd watched on Node's loop (unref'd): cb() each time it is readable; stopping closes the fd.
struct FdWatch {
  uv_poll_t poll;
  int fd;
  napi_env env;
  Napi::FunctionReference cb;
  bool closing;
};

static void OnFdPoll(uv_poll_t* h, int status, int events) {
  FdWatch* w = static_cast<FdWatch*>(h->data);
  if (w->closing) return;
  Napi::Env env(w->env);
  Napi::HandleScope scope(env);
  w->cb.MakeCallback(env.Global(), { Napi::Number::New(env, status < 0 ? status : 0) });
  if (env.IsExceptionPending()) {
    Napi::Error e = env.GetAndClearPendingException();
    napi_fatal_exception(w->env, e.Value());
  }
}

// fdWatchStart(fd, cb(status)) -> handle, or -errno
static Napi::Value FdWatchStart(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsNumber() || !info[1].IsFunction()) return Napi::Number::New(env, -EINVAL);
  uv_loop_t* loop = nullptr;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok || !loop) return Napi::Number::New(env, -EINVAL);
  FdWatch* w = new FdWatch();
  w->fd = info[0].As<Napi::Number>().Int32Value();
  w->env = env;
  w->closing = false;
  w->cb = Napi::Persistent(info[1].As<Napi::Function>());
  if (uv_poll_init(loop, &w->poll, w->fd) != 0) { w->cb.Reset(); delete w; return Napi::Number::New(env, -EINVAL); }
  w->poll.data = w;
  uv_poll_start(&w->poll, UV_READABLE | UV_DISCONNECT, OnFdPoll);
  uv_unref(reinterpret_cast<uv_handle_t*>(&w->poll));
  return Napi::External<FdWatch>::New(env, w);
}

static void OnFdClosed(uv_handle_t* h) {
  FdWatch* w = static_cast<FdWatch*>(h->data);
  close(w->fd);
  w->cb.Reset();
  delete w;
}

// fdWatchStop(handle): stops watching and closes the fd.
static Napi::Value FdWatchStop(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsExternal()) return env.Undefined();
  FdWatch* w = info[0].As<Napi::External<FdWatch>>().Data();
  if (w->closing) return env.Undefined();
  w->closing = true;
  uv_poll_stop(&w->poll);
  uv_close(reinterpret_cast<uv_handle_t*>(&w->poll), OnFdClosed);
  return env.Undefined();
}

// copyBytes(src, s, dst, d, n) -> n, or -1 (nothing copied) if either range is outside its array.
// Buffer.prototype.copy of part of a buffer builds a Uint8Array view of the source on every call
// (node lib/buffer.js _copyActual): one young-generation object per packet on the responder's and the
// requester's copy paths. A memcpy behind one call allocates nothing (issue 15: the 60 s heap check).
static napi_value CopyBytes(napi_env env, napi_callback_info cbi) {
  size_t argc = 5;
  napi_value argv[5];
  napi_value ret;
  if (napi_get_cb_info(env, cbi, &argc, argv, nullptr, nullptr) != napi_ok || argc < 5) {
    napi_create_int32(env, -1, &ret);
    return ret;
  }
  napi_typedarray_type t1, t2;
  size_t l1 = 0, l2 = 0;
  void *p1 = nullptr, *p2 = nullptr;
  uint32_t s = 0, d = 0, n = 0;
  if (napi_get_typedarray_info(env, argv[0], &t1, &l1, &p1, nullptr, nullptr) != napi_ok ||
      napi_get_typedarray_info(env, argv[2], &t2, &l2, &p2, nullptr, nullptr) != napi_ok || t1 != napi_uint8_array ||
      t2 != napi_uint8_array || napi_get_value_uint32(env, argv[1], &s) != napi_ok ||
      napi_get_value_uint32(env, argv[3], &d) != napi_ok || napi_get_value_uint32(env, argv[4], &n) != napi_ok ||
      (uint64_t)s + n > l1 || (uint64_t)d + n > l2) {
    napi_create_int32(env, -1, &ret);
    return ret;
  }
  if (n > 0) memmove(static_cast<uint8_t*>(p2) + d, static_cast<uint8_t*>(p1) + s, n);
  napi_create_uint32(env, n, &ret);
  return ret;
}

// clockNow(f64) writes CLOCK_MONOTONIC (libuv's hrtime clock, performance.now()'s) in ms into f64[0].
// Node 20's performance.now() returns a new heap number from C++ on every call; the transport reads
// the clock several times per packet (ACK deadlines, the IPv4 ID window), each one a young object.
// Written into the caller's array, the value stays an unboxed double in optimized code.
static napi_value ClockNow(napi_env env, napi_callback_info cbi) {
  size_t argc = 1;
  napi_value argv[1];
  if (napi_get_cb_info(env, cbi, &argc, argv, nullptr, nullptr) != napi_ok || argc < 1) return nullptr;
  napi_typedarray_type t;
  size_t len = 0;
  void* p = nullptr;
  if (napi_get_typedarray_info(env, argv[0], &t, &len, &p, nullptr, nullptr) != napi_ok || t != napi_float64_array ||
      len < 1)
    return nullptr;
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  static_cast<double*>(p)[0] = (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
  return nullptr;
}

// deferStart(cb) -> handle; deferArm(handle): cb() runs once in the check phase of this (or, armed from
// there, the next) loop turn, as a setImmediate callback would: a check handle, plus an idle handle
// that keeps the poll phase from blocking while armed, as Node's own immediates have. What it saves
// is setImmediate's per-call objects (an Immediate, its async ids, the async-resource stack entry):
// the transport defers its requester runs once per turn with ACKs coming in (issue 15, the 60 s heap
// check). One per environment (sched.ts); closed by an async cleanup hook when the environment ends.
struct Defer {
  uv_check_t check;
  uv_idle_t idle;
  napi_env env = nullptr;
  Napi::FunctionReference cb;
  bool armed = false;
  bool closing = false;
  int open = 2;
  napi_async_cleanup_hook_handle hook = nullptr;
};

static void OnDeferIdle(uv_idle_t*) {}

static void OnDeferCheck(uv_check_t* h) {
  Defer* d = static_cast<Defer*>(h->data);
  uv_check_stop(&d->check);
  uv_idle_stop(&d->idle);
  d->armed = false;
  if (d->closing) return;
  Napi::Env env(d->env);
  napi_env nenv = d->env;
  EnterJs(nenv);
  {
    Napi::HandleScope scope(env);
    // MakeCallback: ticks and microtasks run afterwards, as after an immediate.
    d->cb.MakeCallback(env.Global(), {});
    if (env.IsExceptionPending()) {
      Napi::Error e = env.GetAndClearPendingException();
      napi_fatal_exception(nenv, e.Value());
    }
  }
  LeaveJs(nenv);
}

static void OnDeferClosed(uv_handle_t* h) {
  Defer* d = static_cast<Defer*>(h->data);
  if (--d->open > 0) return;
  napi_async_cleanup_hook_handle hook = d->hook;
  delete d;
  if (hook) napi_remove_async_cleanup_hook(hook);
}

static void OnDeferCleanup(napi_async_cleanup_hook_handle hook, void* arg) {
  Defer* d = static_cast<Defer*>(arg);
  d->hook = hook;
  d->closing = true;
  // The environment is ending: its references go with it.
  d->cb.SuppressDestruct();
  uv_check_stop(&d->check);
  uv_idle_stop(&d->idle);
  uv_close(reinterpret_cast<uv_handle_t*>(&d->check), OnDeferClosed);
  uv_close(reinterpret_cast<uv_handle_t*>(&d->idle), OnDeferClosed);
}

static Napi::Value DeferStart(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsFunction()) return env.Null();
  uv_loop_t* loop = nullptr;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok || !loop) return env.Null();
  Defer* d = new Defer();
  d->env = env;
  if (uv_check_init(loop, &d->check) != 0) {
    delete d;
    return env.Null();
  }
  if (uv_idle_init(loop, &d->idle) != 0) {
    d->open = 1;
    d->check.data = d;
    uv_close(reinterpret_cast<uv_handle_t*>(&d->check), OnDeferClosed);
    return env.Null();
  }
  d->check.data = d;
  d->idle.data = d;
  d->cb = Napi::Persistent(info[0].As<Napi::Function>());
  napi_async_cleanup_hook_handle hook = nullptr;
  if (napi_add_async_cleanup_hook(env, OnDeferCleanup, d, &hook) != napi_ok) {
    d->closing = true;
    d->cb.Reset();
    uv_close(reinterpret_cast<uv_handle_t*>(&d->check), OnDeferClosed);
    uv_close(reinterpret_cast<uv_handle_t*>(&d->idle), OnDeferClosed);
    return env.Null();
  }
  d->hook = hook;
  return Napi::External<Defer>::New(env, d);
}

static napi_value DeferArm(napi_env env, napi_callback_info cbi) {
  size_t argc = 1;
  napi_value argv[1];
  void* p = nullptr;
  if (napi_get_cb_info(env, cbi, &argc, argv, nullptr, nullptr) != napi_ok || argc < 1 ||
      napi_get_value_external(env, argv[0], &p) != napi_ok || p == nullptr)
    return nullptr;
  Defer* d = static_cast<Defer*>(p);
  if (d->armed || d->closing) return nullptr;
  d->armed = true;
  uv_check_start(&d->check, OnDeferCheck);
  uv_idle_start(&d->idle, OnDeferIdle);
  return nullptr;
}

// The TX fast path (fast-tx.cc): txSegments, TX_HDR_STRIDE.
void InitFastTx(Napi::Env env, Napi::Object exports);
// The CRC-32 both fast paths share (crc32.cc): txCrc32, crcBench.
void InitCrc32(Napi::Env env, Napi::Object exports);

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("sendPackets", Napi::Function::New(env, SendPackets));
  exports.Set("deferStart", Napi::Function::New(env, DeferStart));
  {
    napi_value f;
    if (napi_create_function(env, "copyBytes", NAPI_AUTO_LENGTH, CopyBytes, nullptr, &f) == napi_ok)
      exports.Set("copyBytes", Napi::Value(env, f));
    if (napi_create_function(env, "clockNow", NAPI_AUTO_LENGTH, ClockNow, nullptr, &f) == napi_ok)
      exports.Set("clockNow", Napi::Value(env, f));
    if (napi_create_function(env, "deferArm", NAPI_AUTO_LENGTH, DeferArm, nullptr, &f) == napi_ok)
      exports.Set("deferArm", Napi::Value(env, f));
    if (napi_create_function(env, "turnEndStart", NAPI_AUTO_LENGTH, TurnEndStart, nullptr, &f) == napi_ok)
      exports.Set("turnEndStart", Napi::Value(env, f));
  }
  exports.Set("setIntSockopt", Napi::Function::New(env, SetIntSockopt));
  exports.Set("bindToDevice", Napi::Function::New(env, BindToDevice));
  exports.Set("udpOpen4", Napi::Function::New(env, UdpOpen4));
  exports.Set("localPort", Napi::Function::New(env, LocalPort));
  exports.Set("udpOpenTx4", Napi::Function::New(env, UdpOpenTx4));
  exports.Set("rxStart", Napi::Function::New(env, RxStart));
  exports.Set("rxPoll", Napi::Function::New(env, RxPoll));
  exports.Set("rxWantWrite", Napi::Function::New(env, RxWantWrite));
  exports.Set("rxStop", Napi::Function::New(env, RxStop));
  exports.Set("rawOpen4", Napi::Function::New(env, RawOpen4));
  exports.Set("rxAttachRaw", Napi::Function::New(env, RxAttachRaw));
  exports.Set("rxIcrcStart", Napi::Function::New(env, RxIcrcStart));
  exports.Set("rxPlaceStart", Napi::Function::New(env, RxPlaceStart));
  exports.Set("rxArm", Napi::Function::New(env, RxArm));
  exports.Set("rxPlace", Napi::Function::New(env, RxPlace));
  exports.Set("rxDisarm", Napi::Function::New(env, RxDisarm));
  InitCrc32(env, exports);
  InitFastRx(env, exports);
  exports.Set("addrWatchStart", Napi::Function::New(env, AddrWatchStart));
  exports.Set("addrWatchStop", Napi::Function::New(env, AddrWatchStop));
  exports.Set("packetOpen", Napi::Function::New(env, PacketOpen));
  exports.Set("packetSend", Napi::Function::New(env, PacketSend));
  exports.Set("packetAddMulticast", Napi::Function::New(env, PacketAddMulticast));
  exports.Set("neighLookup", Napi::Function::New(env, NeighLookup));
  exports.Set("addrList", Napi::Function::New(env, AddrList));
  exports.Set("seqpacketOpen", Napi::Function::New(env, SeqpacketOpen));
  exports.Set("unixAccept", Napi::Function::New(env, UnixAccept));
  exports.Set("unixRecv", Napi::Function::New(env, UnixRecv));
  exports.Set("unixSend", Napi::Function::New(env, UnixSend));
  exports.Set("fdWatchStart", Napi::Function::New(env, FdWatchStart));
  exports.Set("fdWatchStop", Napi::Function::New(env, FdWatchStop));
  InitFastTx(env, exports);
  Napi::Object c = Napi::Object::New(env);
  c.Set("SOL_SOCKET", Napi::Number::New(env, (double)(SOL_SOCKET)));
  c.Set("IPPROTO_IP", Napi::Number::New(env, (double)(IPPROTO_IP)));
  c.Set("IPPROTO_IPV6", Napi::Number::New(env, (double)(IPPROTO_IPV6)));
  c.Set("IPPROTO_UDP", Napi::Number::New(env, (double)(IPPROTO_UDP)));
  c.Set("IP_MTU_DISCOVER", Napi::Number::New(env, (double)(IP_MTU_DISCOVER)));
  c.Set("IP_PMTUDISC_DO", Napi::Number::New(env, (double)(IP_PMTUDISC_DO)));
  c.Set("IP_TOS", Napi::Number::New(env, (double)(IP_TOS)));
  c.Set("IPV6_TCLASS", Napi::Number::New(env, (double)(IPV6_TCLASS)));
  c.Set("UDP_NO_CHECK6_RX", Napi::Number::New(env, (double)(UDP_NO_CHECK6_RX)));
  c.Set("SO_RCVBUF", Napi::Number::New(env, (double)(SO_RCVBUF)));
  c.Set("SO_SNDBUF", Napi::Number::New(env, (double)(SO_SNDBUF)));
  exports.Set("constants", c);
  return exports;
}

NODE_API_MODULE(softroce_native, Init)
