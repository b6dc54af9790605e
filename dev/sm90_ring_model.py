"""sm90_ring_model.py -- the three-consumer K/V ring protocol of the sm90 forward
(sm90_pipeline.cuh, sm90_fwd_kernel.cuh: load_tile_start, ConsumerRing::release_v), modelled
and run under random interleavings of its 12 consumer warps.

Model. A CTA walks tiles of n key blocks each (n may be 0); every warp consumes every block
of every tile in the same order, so block positions are global: position p uses ring slot
p % STAGES. A load may go into a slot only once all 12 warps released the slot's previous
position (the empty barrier's phase). Loads come from two places:
  tile start  each warpgroup's thread 0, once its 4 warps met after their last reads of the
              previous tile, adds 1 to the CTA's one count of tile starts, as the kernel does
              (kOffTileStarts) -- only for a tile with key blocks: a warpgroup passes a tile
              without blocks with no wait on the ring, so its count for a later tile could
              land among the others' counts for this one; the one that completes a multiple
              of 3 loads the tile's first min(STAGES, n) blocks (at the kernel's start the
              kernel meets after these loads; nothing was released yet, so the order does not
              matter there);
  refill      a warp's release of tile block i adds 1 to the slot's count when block i + STAGES
              is in the tile; the release that completes a multiple of 12 loads block i + STAGES.
A warp consumes a position only once it is loaded (the full barrier).

Checked over random tile lists and interleavings: no position is loaded twice or into a slot
still in use, every position is loaded, the walk never deadlocks, and the warpgroup that
issues a tile's first blocks never waits for a slot.

    python dev/sm90_ring_model.py [TRIALS] [--count-keyless]
        prints "N trials: PASS" or the first failure; --count-keyless counts tiles without
        key blocks too (the rule before the fix), which fails
"""
import random
import sys

STAGES = 3
WARPGROUPS = 3
WARPS = 4          # per warpgroup
RELEASES = WARPGROUPS * WARPS


class Ring:
    def __init__(self, tiles):
        self.tiles = tiles
        self.first = [sum(tiles[:t]) for t in range(len(tiles))]
        self.positions = sum(tiles)
        self.loaded = [False] * self.positions
        self.released = [0] * self.positions     # warps done with the position
        self.count = [0] * STAGES                # refill counts per slot
        self.starts = 0                          # the CTA's count of tile starts
        self.count_keyless = False

    def slot_free(self, p):
        return p < STAGES or self.released[p - STAGES] == RELEASES

    def load(self, p, who):
        assert not self.loaded[p], f"position {p} loaded twice ({who})"
        assert self.slot_free(p), f"position {p} loaded into a slot in use ({who})"
        self.loaded[p] = True

    def tile_start(self, t):
        """A warpgroup's thread 0 at tile t's start: the loads it must issue."""
        if t >= len(self.tiles) or (self.tiles[t] == 0 and not self.count_keyless):
            return []
        c = self.starts
        self.starts += 1
        if c % WARPGROUPS != WARPGROUPS - 1:
            return []
        return [self.first[t] + i for i in range(min(STAGES, self.tiles[t]))]

    def release(self, t, i):
        """A warp done with block i of tile t."""
        p = self.first[t] + i
        self.released[p] += 1
        if i + STAGES < self.tiles[t]:
            c = self.count[p % STAGES]
            self.count[p % STAGES] += 1
            if c % RELEASES == RELEASES - 1:
                self.load(p + STAGES, "refill")


def walk(tiles, rnd, count_keyless=False):
    """One interleaving; returns None or a failure message."""
    ring = Ring(tiles)
    ring.count_keyless = count_keyless
    # per warp: its warpgroup and index, the tile and block it is at, and its state
    warps = [dict(g=g, w=w, t=0, i=0, state="start") for g in range(WARPGROUPS) for w in range(WARPS)]
    arrived = {}  # (warpgroup, tile) -> its warps at the meeting before the tile

    def step(x):
        """One move of warp x; False when it is blocked."""
        if x["state"] == "start":            # the warpgroup meets after its last reads of tile t - 1
            key = (x["g"], x["t"])
            arrived[key] = arrived.get(key, 0) + 1
            x["state"] = "meeting"
            return True
        if x["state"] == "meeting":
            if arrived[(x["g"], x["t"])] < WARPS:
                return False
            if x["w"] == 0:                  # thread 0: tile t's loads (load_tile_start)
                for p in ring.tile_start(x["t"]):
                    assert ring.slot_free(p), "the warpgroup issuing a tile's first blocks waits for a slot"
                    ring.load(p, "tile start")
            x["state"] = "blocks" if x["t"] < len(tiles) else "done"
            x["i"] = 0
            return True
        if x["state"] == "blocks":
            if x["i"] == tiles[x["t"]]:
                x["t"] += 1
                x["state"] = "start"
                return True
            if not ring.loaded[ring.first[x["t"]] + x["i"]]:
                return False
            ring.release(x["t"], x["i"])
            x["i"] += 1
            return True
        return False

    while any(x["state"] != "done" for x in warps):
        order = [x for x in warps if x["state"] != "done"]
        rnd.shuffle(order)
        if not any(step(x) for x in order):
            return "deadlock: " + ", ".join(f"wg{x['g']}.w{x['w']} {x['state']} tile {x['t']} block {x['i']}"
                                            for x in warps if x["state"] != "done")
    if not all(ring.loaded):
        return "a position was never loaded"
    return None


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    count_keyless = "--count-keyless" in sys.argv[1:]
    trials = int(args[0]) if args else 3000
    rnd = random.Random(1)
    for trial in range(trials):
        tiles = [rnd.choice([0, 0, 1, 2, 3, 4, 5, 8]) for _ in range(rnd.randint(1, 6))]
        try:
            failure = walk(tiles, random.Random(trial), count_keyless)
        except AssertionError as e:
            failure = str(e)
        if failure:
            print(f"trial {trial}, tiles {tiles}: FAIL: {failure}")
            return 1
    print(f"{trials} trials: PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
