// softroce native RX direct placement (issue 15, RX): the full-MTU MIDDLE packets of an RC SEND or
// RDMA WRITE (the responder's) or of an RDMA READ's responses (the requester's) that the transport
// armed the addon to expect are copied straight from the receive slots into the registered memory
// they land in, without a trip through JS per packet.
//
// The TypeScript transport stays the authority (place.ts): the responder arms a QP after it has
// handled a SEND's or a WRITE's FIRST or MIDDLE, the completer after it has taken a READ's FIRST or
// MIDDLE response in order, each knowing from its own state exactly what the next packets must be:
// the one opcode (RC_SEND_MIDDLE 0x01, RC_RDMA_WRITE_MIDDLE 0x07, RC_RDMA_READ_RESPONSE_MIDDLE 0x0E),
// the expected PSN, a full path-MTU payload with no pad, from the connected peer's address and
// UDP port, landing at the offset it would copy to, within a byte budget of whole MTUs (a WRITE's
// or READ's leaves its LAST packet, >= 1 byte, to JS; a SEND's LAST has an opcode of its own). A packet that is all of that is one the per-packet path would accept and
// copy with no other effect than its bookkeeping, which JS applies per run (native-link.ts
// reports runs, place.ts applies them). ANY other packet to an armed QPN disarms every arm of
// that QP here, before JS sees it, so JS handles it in order after everything placed before it.
//
// When: only inside a call from JS (PlaceArm with a position, PlaceRun), during the hand-over of a
// receive batch, at the position JS has reached in it: packets are placed as a prefix of what
// JS would process next, so the order of every effect is the per-packet path's. Nothing here runs
// from the event loop on its own.
//
// Memory safety: an arm holds a napi reference to the Buffer (the MR's memory), so the memory
// cannot be collected while armed; and JS disarms synchronously (same thread) before anything
// that makes the memory unusable (deregistration, QP state change or destroy, an error, link
// close). Every copy is bounds-checked against the Buffer's length as armed.
#include <napi.h>
#include <stdint.h>
#include <string.h>

#include "place-rx.h"

static inline uint32_t Be24(const uint8_t* p) { return ((uint32_t)p[0] << 16) | ((uint32_t)p[1] << 8) | p[2]; }

static inline PlaceArm* Bucket(PlaceTable* t, uint32_t qpn) { return &t->arms[(qpn % PLACE_BUCKETS) * PLACE_BUCKET_ARMS]; }

// qpn's arm for opcode op (any of qpn's arms: op 0).
static PlaceArm* FindArm(PlaceTable* t, uint32_t qpn, uint32_t op) {
  PlaceArm* b = Bucket(t, qpn);
  for (uint32_t i = 0; i < PLACE_BUCKET_ARMS; i++)
    if (b[i].used && b[i].qpn == qpn && (op == 0 || b[i].op == op)) return &b[i];
  return nullptr;
}

void PlaceDisarm(PlaceTable* t, napi_env env, PlaceArm* a) {
  if (!a->used) return;
  a->used = false;
  if (a->ref) napi_delete_reference(env, a->ref);
  a->ref = nullptr;
  a->base = nullptr;
  t->count--;
  if (t->ctl) t->ctl[PLACE_CTL_ARMED] = t->count;
}

void PlaceDisarmAll(PlaceTable* t, napi_env env) {
  for (uint32_t i = 0; i < PLACE_MAX_ARMS; i++) PlaceDisarm(t, env, &t->arms[i]);
}

void PlaceDisarmQpn(PlaceTable* t, napi_env env, uint32_t qpn) {
  PlaceArm* b = Bucket(t, qpn & 0xffffff);
  for (uint32_t i = 0; i < PLACE_BUCKET_ARMS; i++)
    if (b[i].used && b[i].qpn == (qpn & 0xffffff)) PlaceDisarm(t, env, &b[i]);
}

int PlaceSetArm(PlaceTable* t, napi_env env, napi_value buf, uint32_t qpn, uint32_t psn, uint32_t pmtu, size_t off, size_t budget, uint32_t src,
                uint32_t sport, uint32_t op) {
  if (op != PLACE_OP_SEND_MIDDLE && op != PLACE_OP_WRITE_MIDDLE && op != PLACE_OP_READ_MIDDLE) return -22;
  PlaceArm* a = FindArm(t, qpn & 0xffffff, op);
  if (a) PlaceDisarm(t, env, a);
  if (pmtu < 256 || pmtu > 4096 || budget < pmtu || budget % pmtu != 0) return -22;
  void* data = nullptr;
  size_t len = 0;
  if (napi_get_typedarray_info(env, buf, nullptr, &len, &data, nullptr, nullptr) != napi_ok || !data) return -22;
  if (off > len || budget > len - off) return -22;  // the whole budget inside the Buffer, or nothing
  PlaceArm* b = Bucket(t, qpn & 0xffffff);
  for (uint32_t i = 0; i < PLACE_BUCKET_ARMS; i++) {
    if (b[i].used) continue;
    a = &b[i];
    if (napi_create_reference(env, buf, 1, &a->ref) != napi_ok) return -12;
    a->used = true;
    a->op = (uint8_t)op;
    a->qpn = qpn & 0xffffff;
    a->psn = psn & 0xffffff;
    a->pmtu = pmtu;
    a->base = (uint8_t*)data;
    a->len = len;
    a->off = off;
    a->budget = budget;
    a->src = src;
    a->sport = sport & 0xffff;
    t->count++;
    if (t->ctl) t->ctl[PLACE_CTL_ARMED] = t->count;
    return 0;
  }
  return -28;  // bucket full: this QP stays on the per-packet path
}

uint32_t PlaceRun(PlaceTable* t, napi_env env, const PlaceBatch& b, uint32_t slot, uint32_t seg) {
  uint32_t* ctl = t->ctl;
  ctl[PLACE_CTL_COUNT] = 0;
  if (t->count == 0) return 0;
  PlaceArm* run = nullptr;
  uint32_t count = 0;
  for (uint32_t i = slot; i < b.n; i++, seg = 0) {
    const uint32_t* m = b.meta + i * 4;
    uint32_t len = m[0];
    if (len == 0) goto done;  // a cut datagram: JS drops it; stop here (conservative)
    uint32_t sz = m[1] & 0xffff;
    if (sz == 0 || sz >= len) sz = len;
    uint32_t nseg = (len + sz - 1) / sz;
    const uint8_t* d = b.data + (size_t)i * b.slotSize;
    for (uint32_t k = seg; k < nseg; k++) {
      uint32_t off = k * sz;
      uint32_t n = len - off < sz ? len - off : sz;
      if (n < 12) goto done;  // no BTH: JS counts it malformed; it names no QP
      const uint8_t* ib = d + off;
      uint32_t qpn = Be24(ib + 5);
      if (!FindArm(t, qpn, 0)) goto done;     // not ours to place: JS handles it (nothing disarmed)
      PlaceArm* a = FindArm(t, qpn, ib[0]);  // the arm for this opcode, if any
      if (run && a != run) goto done;        // one arm per run: JS asks again from here
      bool icrcOk = k < 64 && ((b.icrcOk[i * 2 + (k >> 5)] >> (k & 31)) & 1);
      uint32_t psn = Be24(ib + 9);
      bool placeable = a && icrcOk && (ib[1] & 0x3f) == 0                          // the arm's MIDDLE, pad 0, TVer 0
                       && ((((uint32_t)ib[2] << 8) | ib[3]) & 0x7fff) == 0x7fff  // default P_Key (recv.ts)
                       && psn == a->psn && n == 12 + a->pmtu + 4 && m[2] == a->src && (m[3] & 0xffff) == a->sport &&
                       a->budget >= a->pmtu && a->off + a->pmtu <= a->len;
      if (!placeable) {
        // Any other packet to an armed QP: every arm of the QP is disarmed before JS sees it (a
        // duplicate, a gap, a LAST, a corrupted one, an ACK, a request of the other direction...):
        // the transport handles it as ever.
        PlaceDisarmQpn(t, env, qpn);
        goto done;
      }
      memcpy(a->base + a->off, ib + 12, a->pmtu);
      if (count == 0) ctl[PLACE_CTL_FIRST_PSN] = a->psn;
      run = a;
      count++;
      a->off += a->pmtu;
      a->budget -= a->pmtu;
      a->psn = (a->psn + 1) & 0xffffff;
      ctl[PLACE_CTL_ACKREQ] = ib[8] >> 7;
      if (ib[8] & 0x80) goto done;  // an AckReq ends the run: only a run's last packet asks for an ACK
      // Budget spent: stays armed until JS sees the next packet (the LAST), which disarms it here.
    }
  }
done:
  if (count > 0) {
    ctl[PLACE_CTL_QPN] = run->qpn;
    ctl[PLACE_CTL_PMTU] = run->pmtu;
    ctl[PLACE_CTL_OPCODE] = run->op;
    ctl[PLACE_CTL_COUNT] = count;
  }
  return count;
}
