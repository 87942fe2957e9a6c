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

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
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
