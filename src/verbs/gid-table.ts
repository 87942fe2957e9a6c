/**
 * A port's GID table, live (issue 12 item 3), laid out as the kernel's GID cache
 * (drivers/infiniband/core/cache.c, fed by roce_gid_mgmt.c) lays out a RoCE port that supports
 * both RoCE versions:
 *  - indexes 0 and 1 are reserved for the default GID (fe80::/64 + EUI-64 of the MAC), RoCE v1
 *    then RoCE v2 (gid_table_reserve_default: one default slot per GID type, types ascending);
 *  - every address of a netdev tied to the port is added once per RoCE type, v1 then v2, each
 *    into the lowest free slot (find_gid's first empty entry);
 *  - a deleted address leaves holes that a later address may take; nothing moves, so an index a
 *    QP or AH holds keeps naming the same entry for as long as that entry lives;
 *  - the same GID on the same netdev is one entry per type (__ib_cache_gid_add looks it up by
 *    GID, type and netdev first), so a netdev's fe80:: link-local address, which is the
 *    default GID, is not added twice;
 *  - a full table refuses the address with ENOSPC (the kernel logs "GID table full").
 *
 * Each slot carries a generation (`gen`, 0 when empty) that changes whenever an entry is put
 * there. A QP's or AH's destination records the generation of its source GID when it is set
 * (rxe holds a reference to the gid attr instead); the transport compares the two before each
 * send (build.ts), one array read, so a send from an entry that is gone, or whose slot a new
 * address has taken since, is dropped and counted instead of leaving from the wrong address.
 */
import { VerbsError } from './errors.js';
import * as V from './validate.js';
import { gidToString, macToDefaultGid, type Gid } from '../roce/gid.js';

export type GidType = 'RoCE v1' | 'RoCE v2';
export interface GidEntry {
  index: number;
  gid: Gid;
  type: GidType;
  /** the netdev the address is on (the device, not an alias label) */
  netdev: string;
}

/** The kernel's two RoCE GID types, in the order each address takes its slots. */
const TYPES: readonly GidType[] = ['RoCE v1', 'RoCE v2'];
/** Slots 0..RESERVED-1 hold the default GID, one per type. */
const RESERVED = TYPES.length;

/** The GID table length when a device is opened without `gidTblLen` (the Mellanox manual's per-port hardware limit). */
export const DEFAULT_GID_TBL_LEN = 128;

/** One address a port's table should hold: the GID and the netdev it is on. */
export interface WantedGid {
  gid: Gid;
  netdev: string;
}

/** What a sync changed: whether any entry came or went, and the addresses a full table refused for the first time. */
export interface GidSyncResult {
  changed: boolean;
  refused: VerbsError[];
}

function sameGid(a: Uint8Array, b: Uint8Array): boolean {
  for (let i = 0; i < 16; i++) if (a[i] !== b[i]) return false;
  return true;
}

export class GidTable {
  /** gid_tbl_len: the number of slots */
  readonly len: number;
  /** per index, the generation of the entry there; 0 = empty (the transport's check, build.ts) */
  readonly gen: Uint32Array;
  readonly #slots: Array<GidEntry | null>;
  #nextGen = 1;
  /** per slot, the entry that last left it and its generation (a flapping link brings it back: sync) */
  readonly #last: ({ e: GidEntry; gen: number } | null)[];
  /** addresses refused because the table was full, by key: counted and reported once, until they go away */
  readonly #refused = new Set<string>();

  constructor(len: number, netdev: string, mac: Uint8Array) {
    if (!Number.isInteger(len) || len < RESERVED)
      throw new VerbsError('EINVAL', 'ibv_open_device', `gidTblLen must be an integer >= ${RESERVED}, got ${len}`, 'gidTblLen');
    this.len = len;
    this.gen = new Uint32Array(len);
    this.#slots = new Array<GidEntry | null>(len).fill(null);
    this.#last = new Array<{ e: GidEntry; gen: number } | null>(len).fill(null);
    const gid = macToDefaultGid(mac);
    TYPES.forEach((type, index) => this.#put(index, { index, gid, type, netdev }));
  }

  /** The valid entries in index order (what show_gids and ibv_devinfo -v list). */
  entries(): GidEntry[] {
    return this.#slots.filter((e): e is GidEntry => e !== null);
  }

  /** The entry at `index`, or null for a hole or an index past the table (ibv_query_gid gives the zero GID there). */
  get(index: number): GidEntry | null {
    return this.#slots[index] ?? null;
  }

  /** The index of `gid` of `type` (any netdev), or -1. */
  indexOf(gid: Gid, type: GidType): number {
    const e = this.#slots.find((s) => s !== null && s.type === type && sameGid(s.gid, gid));
    return e ? e.index : -1;
  }

  /**
   * Makes the table hold exactly the default GID and `want` (in that order for what is new):
   * entries whose address is not wanted any more leave their slots empty, new addresses take the
   * lowest free slots, v1 then v2. An address that does not fit is refused with ENOSPC; it is
   * reported in `refused` the first time only (a poll every 500 ms must not count it again each
   * time), and tried again on every sync, so it gets in once a slot frees up.
   */
  sync(want: readonly WantedGid[]): GidSyncResult {
    let changed = false;
    const refused: VerbsError[] = [];
    const wanted = (e: GidEntry): boolean => want.some((w) => w.netdev === e.netdev && sameGid(w.gid, e.gid));
    for (let i = RESERVED; i < this.len; i++) {
      const e = this.#slots[i];
      if (e && !wanted(e)) {
        this.#slots[i] = null;
        this.#last[i] = { e, gen: this.gen[i]! };
        this.gen[i] = 0;
        changed = true;
      }
    }
    const stillRefused = new Set<string>();
    for (const w of want) {
      for (const type of TYPES) {
        if (this.#find(w.gid, type, w.netdev) >= 0) continue;
        // An address that comes back takes the slot it left, with the generation it had there, if
        // nothing took that slot meanwhile: os.networkInterfaces() (libuv) lists only interfaces
        // that are up and running, so a link that goes down and up again looks like a delete and
        // an add, while on Linux the addresses and the GID table stay as they were. QPs on the
        // address carry on after the flap (their sends while it was gone were dropped and counted).
        const back = this.#lastSlot(w.gid, type, w.netdev);
        if (back >= 0) {
          this.#slots[back] = { index: back, gid: w.gid, type, netdev: w.netdev };
          this.gen[back] = this.#last[back]!.gen;
          this.#last[back] = null;
          changed = true;
          continue;
        }
        const free = this.#slots.indexOf(null, RESERVED);
        const key = `${Buffer.from(w.gid).toString('hex')}/${w.netdev}/${type}`;
        if (free < 0) {
          stillRefused.add(key);
          if (!this.#refused.has(key)) refused.push(full(w, type, this.len));
          continue;
        }
        this.#put(free, { index: free, gid: w.gid, type, netdev: w.netdev });
        changed = true;
      }
    }
    this.#refused.clear();
    for (const k of stillRefused) this.#refused.add(k);
    return { changed, refused };
  }

  /** The slot whose GID, type and netdev all match, or -1 (the kernel's lookup before an add; the default GID is on the port's netdev). */
  #find(gid: Gid, type: GidType, netdev: string): number {
    for (let i = 0; i < this.len; i++) {
      const e = this.#slots[i];
      if (e && e.type === type && sameGid(e.gid, gid) && e.netdev === netdev) return i;
    }
    return -1;
  }

  /** The empty slot this GID, type and netdev last held, or -1. */
  #lastSlot(gid: Gid, type: GidType, netdev: string): number {
    for (let i = RESERVED; i < this.len; i++) {
      const l = this.#last[i];
      if (l && this.#slots[i] === null && l.e.type === type && l.e.netdev === netdev && sameGid(l.e.gid, gid)) return i;
    }
    return -1;
  }

  #put(index: number, e: GidEntry): void {
    this.#slots[index] = e;
    this.#last[index] = null;
    this.gen[index] = this.#nextGen;
    // Never 0 (the empty mark), and unequal to what a slot held before for 2^32 - 1 adds.
    this.#nextGen = this.#nextGen === 0xffffffff ? 1 : this.#nextGen + 1;
  }
}

function full(w: WantedGid, type: GidType, len: number): VerbsError {
  return new VerbsError('ENOSPC', 'ib_cache_gid_add', `GID table full (${len} entries): no slot for ${gidToString(w.gid)} (${type}) on ${w.netdev}`, 'gid');
}

/**
 * An AV's source GID index (optional): within gid_tbl_len (EINVAL), and naming an entry that
 * exists now (ENODATA, as the kernel's rdma_get_gid_attr refuses a hole: what ibv_modify_qp and
 * ibv_create_ah return for a GID index whose address is gone).
 */
export function checkSgidIndex(op: string, arg: string, x: unknown, gids: GidTable): void {
  V.optInt(op, arg, x, 0, gids.len - 1);
  if (x !== undefined && gids.get(x as number) === null) throw new VerbsError('ENODATA', op, `GID index ${x as number} is empty`, arg);
}
