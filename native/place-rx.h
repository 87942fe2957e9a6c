// RX direct placement (place-rx.cc): the arms JS set, per receive watch (softroce.cc RxWatch).
#pragma once
#include <node_api.h>
#include <stddef.h>
#include <stdint.h>

// Arms per receive socket, found by QPN: bucket qpn % PLACE_BUCKETS holds up to PLACE_BUCKET_ARMS
// (a QP may hold two arms, one per opcode). A device hands out QPNs in sequence, so its QPs spread
// over the buckets: a thousand QPs, each mid-WRITE, are all armed, and a packet's lookup reads one
// bucket. An arm for a full bucket is refused (that QP stays on the per-packet path). 64 arms in
// one list left 936 of 1,000 QPs writing at once on the per-packet path (issue 15's 1,000-QP case).
static const uint32_t PLACE_BUCKETS = 1024;
static const uint32_t PLACE_BUCKET_ARMS = 4;
static const uint32_t PLACE_MAX_ARMS = PLACE_BUCKETS * PLACE_BUCKET_ARMS;

// What an arm places (IBA 9.2.1 table 38), each a BTH, a full path-MTU payload, no pad, an ICRC:
// RC SEND MIDDLE and RC RDMA WRITE MIDDLE (the responder's arms), RC RDMA READ RESPONSE MIDDLE (the
// requester's).
static const uint8_t PLACE_OP_SEND_MIDDLE = 0x01;
static const uint8_t PLACE_OP_WRITE_MIDDLE = 0x07;
static const uint8_t PLACE_OP_READ_MIDDLE = 0x0e;

// The words of the ctl array JS shares with the watch (rxPlaceStart): how many QPs are armed,
// and what the last PlaceRun placed (one QP's consecutive packets, in PSN order).
enum {
  PLACE_CTL_ARMED = 0,
  PLACE_CTL_QPN = 1,
  PLACE_CTL_FIRST_PSN = 2,
  PLACE_CTL_COUNT = 3,
  PLACE_CTL_PMTU = 4,
  PLACE_CTL_ACKREQ = 5,  // the run's last packet asked for an ACK (no other packet of a run does)
  PLACE_CTL_OPCODE = 6,  // the run's packets' opcode (PLACE_OP_WRITE_MIDDLE or PLACE_OP_READ_MIDDLE)
  PLACE_CTL_WORDS = 8,
};

struct PlaceArm {
  bool used;
  uint8_t op;  // PLACE_OP_*: the one opcode this arm places
  uint32_t qpn, psn, pmtu, src, sport;
  uint8_t* base;
  size_t len, off, budget;
  napi_ref ref;  // holds the armed Buffer while armed
};

struct PlaceTable {
  PlaceArm arms[PLACE_MAX_ARMS];
  uint32_t count;
  uint32_t* ctl;  // null: placement not started on this watch
};

// The receive batch JS is handing over (the watch's slots as ReadBatch left them).
struct PlaceBatch {
  const uint8_t* data;
  const uint32_t* meta;
  const uint32_t* icrcOk;
  uint32_t n, slotSize;
};

int PlaceSetArm(PlaceTable* t, napi_env env, napi_value buf, uint32_t qpn, uint32_t psn, uint32_t pmtu, size_t off, size_t budget, uint32_t src,
                uint32_t sport, uint32_t op);
void PlaceDisarm(PlaceTable* t, napi_env env, PlaceArm* a);
void PlaceDisarmAll(PlaceTable* t, napi_env env);
// Every arm of qpn is gone when this returns.
void PlaceDisarmQpn(PlaceTable* t, napi_env env, uint32_t qpn);
// Places the longest placeable prefix of the batch from packet `seg` of slot `slot` (one QP);
// returns how many packets, described in ctl.
uint32_t PlaceRun(PlaceTable* t, napi_env env, const PlaceBatch& b, uint32_t slot, uint32_t seg);
