// softroce native helper: only the syscalls Node's dgram lacks.
//
// Everything here operates on a socket file descriptor that JS already owns
// (a dgram socket's fd). It never allocates JS objects per packet and never
// throws: failures return -errno and JS maps them to a typed RdmaError.
//
// Why each option exists:
//  - IP_MTU_DISCOVER = IP_PMTUDISC_DO: Linux then sends DF with IPv4 ID 0.
//    The RoCEv2 ICRC covers the IPv4 ID, so a sender must know it; with the
//    default (IP_PMTUDISC_WANT) the kernel picks a hashed, unpredictable ID.
//  - IP_TOS / IPV6_TCLASS: the AV traffic class (DSCP/ECN) of RoCEv2.
//  - UDP_NO_CHECK6_RX: rxe sends IPv6 RoCE with a zero UDP checksum, which a
//    normal UDPv6 socket drops.
//  - SO_BINDTODEVICE: LAG ports pin each socket to one slave interface.
#include <napi.h>
#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <arpa/inet.h>
#include <sys/uio.h>
#include <vector>

#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#ifndef SOL_UDP
#define SOL_UDP 17
#endif

#ifndef UDP_NO_CHECK6_RX
#define UDP_NO_CHECK6_RX 102
#endif

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

static Napi::Value GetIntSockopt(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 3) return Napi::Number::New(env, -EINVAL);
  int fd = info[0].As<Napi::Number>().Int32Value();
  int level = info[1].As<Napi::Number>().Int32Value();
  int name = info[2].As<Napi::Number>().Int32Value();
  int value = 0;
  socklen_t len = sizeof value;
  int r = getsockopt(fd, level, name, &value, &len);
  // Option values are non-negative for every option used here, so a negative
  // return is unambiguous.
  return Napi::Number::New(env, r == 0 ? value : -errno);
}

static Napi::Value BindToDevice(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2) return Napi::Number::New(env, -EINVAL);
  int fd = info[0].As<Napi::Number>().Int32Value();
  std::string ifname = info[1].As<Napi::String>().Utf8Value();
  int r = setsockopt(fd, SOL_SOCKET, SO_BINDTODEVICE, ifname.c_str(), (socklen_t)ifname.size());
  return Napi::Number::New(env, r == 0 ? 0 : -errno);
}

// sendPackets(fd, bufs: Buffer[], lens: number[], n, ipv4: number, port, gsoSize)
// Sends n packets (each bufs[i][0..lens[i])) to one IPv4 destination from the
// socket fd. gsoSize > 0: one sendmsg whose payload is the packets back to
// back, with UDP_SEGMENT = gsoSize, so the kernel cuts it into n datagrams
// (every packet but the last must be exactly gsoSize long). gsoSize = 0: one
// sendmmsg with one message per packet. Returns the number of packets sent
// (all or, for sendmmsg, a prefix) or -errno (EAGAIN: the socket buffer is full).
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
    char ctrl[CMSG_SPACE(sizeof(uint16_t))];
    memset(ctrl, 0, sizeof ctrl);
    struct msghdr m;
    memset(&m, 0, sizeof m);
    m.msg_name = &dst;
    m.msg_namelen = sizeof dst;
    m.msg_iov = iov;
    m.msg_iovlen = n;
    m.msg_control = ctrl;
    m.msg_controllen = sizeof ctrl;
    struct cmsghdr* c = CMSG_FIRSTHDR(&m);
    c->cmsg_level = SOL_UDP;
    c->cmsg_type = UDP_SEGMENT;
    c->cmsg_len = CMSG_LEN(sizeof(uint16_t));
    uint16_t seg = (uint16_t)gso;
    memcpy(CMSG_DATA(c), &seg, sizeof seg);
    ssize_t r = sendmsg(fd, &m, 0);
    return Napi::Number::New(env, r < 0 ? -errno : (double)n);
  }
  struct mmsghdr msgs[64];
  memset(msgs, 0, sizeof(struct mmsghdr) * n);
  for (uint32_t i = 0; i < n; i++) {
    msgs[i].msg_hdr.msg_name = &dst;
    msgs[i].msg_hdr.msg_namelen = sizeof dst;
    msgs[i].msg_hdr.msg_iov = &iov[i];
    msgs[i].msg_hdr.msg_iovlen = 1;
  }
  int r = sendmmsg(fd, msgs, n, 0);
  return Napi::Number::New(env, r < 0 ? -errno : r);
}

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("sendPackets", Napi::Function::New(env, SendPackets));
  exports.Set("setIntSockopt", Napi::Function::New(env, SetIntSockopt));
  exports.Set("getIntSockopt", Napi::Function::New(env, GetIntSockopt));
  exports.Set("bindToDevice", Napi::Function::New(env, BindToDevice));
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
