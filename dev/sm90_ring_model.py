"""sm90_ring_model.py -- the three-consumer K/V ring protocol of the sm90 forward
(sm90_pipeline.cuh, sm90_fwd_kernel.cuh: load_tile_start, ConsumerRing::release_v,
sm90_fwd_mainloop.cuh: the order of a warp's waits and releases), modelled and run under
random interleavings of its 12 consumer warps.

Model. A CTA walks tiles of n key blocks each (n may be 0); block positions are global:
position p uses ring slot p % STAGES for its K and its V. A load (K and V of one position)
may go into a slot only once all 12 warps released both halves of the slot's previous
position (the empty barriers' phases). Loads come from two places:
  tile start  each warpgroup's thread 0, once its 4 warps met after their last reads of the
              previous tile, counts on the CTA's one count of tile starts modulo 3, as the
              kernel does (kOffTileStarts) -- only for a tile with key blocks: a warpgroup
              passes a tile without blocks with no wait on the ring, so its count for a later
              tile could land among the others' counts for this one; the count that completes
              a round loads the tile's first min(STAGES, n) blocks;
  refill      a warp's release of block i's V counts on the slot's release count modulo 12
              when block i + STAGES is in the tile; the count that completes a round loads
              block i + STAGES.
A warp waits for a half (the full barrier) before it reads it. Its waits and releases, in the
kernel's order, for its warpgroup's blocks b0 (the top one) .. b(m-1) of a tile:
  blocks above the warpgroup's causal diagonal (the tile's top `skip` blocks): wait K, release
    K, wait V, release V, each in turn;
  a ragged last key block (zero_v_tail): wait V(b0) first;
  first_block_probs: wait K(b0), release K(b0);
  key_block_turn j = 1 .. m-1: wait K(bj) (j = 1 only), wait V(bj-1), release K(bj), wait
    K(bj+1) (j < m-1: the split softmax wait, while V(bj-1) is still held), release V(bj-1);
  last_block_pv: wait V(bm-1), release V(bm-1).
Holding V(t - 1) while waiting for K(t + 1) is why the ring needs 3 slots: with 2, K(t + 1)
goes into V(t - 1)'s slot, which no warp releases before it has K(t + 1).

Checked over random tile lists, skip counts and interleavings: no position is loaded twice or
into a slot still in use, every position is loaded, the walk never deadlocks, and the
warpgroup that issues a tile's first blocks never waits for a slot.

    python dev/sm90_ring_model.py [TRIALS] [--count-keyless] [--stages N]
        prints "N trials: PASS" or the first failure. --count-keyless counts tiles without
        key blocks too (the rule before the fix), which fails; --stages 2 deadlocks.
"""
import random
import sys

WARPGROUPS = 3
WARPS = 4          # per warpgroup
RELEASES = WARPGROUPS * WARPS


class Ring:
    def __init__(self, tiles, stages, count_keyless):
        self.tiles = tiles
        self.stages = stages
        self.count_keyless = count_keyless
        self.first = [sum(tiles[:t]) for t in range(len(tiles))]
        self.positions = sum(tiles)
        self.loaded = [False] * self.positions
        self.released = {"k": [0] * self.positions, "v": [0] * self.positions}
        self.count = [0] * stages                # refill counts per slot, modulo RELEASES
        self.starts = 0                          # the CTA's count of tile starts, modulo 3

    def slot_free(self, p):
        q = p - self.stages
        return q < 0 or (self.released["k"][q] == RELEASES and self.released["v"][q] == RELEASES)

    def load(self, p, who):
        assert not self.loaded[p], f"position {p} loaded twice ({who})"
        assert self.slot_free(p), f"position {p} loaded into a slot in use ({who})"
        self.loaded[p] = True

    def tile_start(self, t):
        """A warpgroup's thread 0 at tile t's start: the loads it must issue."""
        if t >= len(self.tiles) or (self.tiles[t] == 0 and not self.count_keyless):
            return []
        completes = self.starts == WARPGROUPS - 1
        self.starts = 0 if completes else self.starts + 1
        if not completes:
            return []
        return [self.first[t] + i for i in range(min(self.stages, self.tiles[t]))]

    def release(self, half, t, i):
        """A warp done with one half of block i of tile t."""
        p = self.first[t] + i
        self.released[half][p] += 1
        if half == "v" and i + self.stages < self.tiles[t]:
            slot = p % self.stages
            completes = self.count[slot] == RELEASES - 1
            self.count[slot] = 0 if completes else self.count[slot] + 1
            if completes:
                self.load(p + self.stages, "refill")


def tile_ops(n, skip, zero_v_tail):
    """A warp's waits ("wk", "wv") and releases ("rk", "rv") over a tile's blocks 0 .. n-1."""
    ops = []
    for i in range(skip):
        ops += [("wk", i), ("rk", i), ("wv", i), ("rv", i)]
    b = list(range(skip, n))
    m = len(b)
    if m == 0:
        return ops
    if zero_v_tail:
        ops.append(("wv", b[0]))
    ops += [("wk", b[0]), ("rk", b[0])]
    for j in range(1, m):
        if j == 1:
            ops.append(("wk", b[1]))
        ops += [("wv", b[j - 1]), ("rk", b[j])]
        if j < m - 1:
            ops.append(("wk", b[j + 1]))
        ops.append(("rv", b[j - 1]))
    ops += [("wv", b[m - 1]), ("rv", b[m - 1])]
    return ops


def walk(tiles, rnd, stages, count_keyless=False):
    """One interleaving; returns None or a failure message."""
    ring = Ring(tiles, stages, count_keyless)
    # Per tile: each warpgroup's blocks above its diagonal (warpgroup 2 holds the tile's last
    # rows and skips none; a lower one skips at least as many), and a ragged last key block.
    skips = []
    for n in tiles:
        s2 = 0
        s1 = rnd.randint(s2, n) if rnd.random() < 0.5 else s2
        s0 = rnd.randint(s1, n) if rnd.random() < 0.5 else s1
        skips.append((s0, s1, s2))
    zero = [rnd.random() < 0.3 for _ in tiles]
    warps = []
    for g in range(WARPGROUPS):
        for w in range(WARPS):
            program = []
            for t, n in enumerate(tiles):
                program.append(("meet", t))
                program += [(op, t, i) for op, i in tile_ops(n, skips[t][g], zero[t])]
            program.append(("meet", len(tiles)))
            warps.append(dict(g=g, w=w, program=program, pc=0))
    arrived = {}  # (warpgroup, tile) -> its warps at the meeting before the tile

    def step(x):
        """One move of warp x; False when it is blocked."""
        op = x["program"][x["pc"]]
        if op[0] == "meet":                  # the warpgroup meets after its last reads of tile t - 1
            key = (x["g"], op[1])
            if not x.get("arrived"):
                arrived[key] = arrived.get(key, 0) + 1
                x["arrived"] = True
                return True
            if arrived[key] < WARPS:
                return False
            if x["w"] == 0:                  # thread 0: tile t's loads (load_tile_start)
                for p in ring.tile_start(op[1]):
                    assert ring.slot_free(p), "the warpgroup issuing a tile's first blocks waits for a slot"
                    ring.load(p, "tile start")
            x["arrived"] = False
        elif op[0] in ("wk", "wv"):
            if not ring.loaded[ring.first[op[1]] + op[2]]:
                return False
        else:
            ring.release(op[0][1], op[1], op[2])
        x["pc"] += 1
        return True

    while any(x["pc"] < len(x["program"]) for x in warps):
        order = [x for x in warps if x["pc"] < len(x["program"])]
        rnd.shuffle(order)
        if not any(step(x) for x in order):
            return "deadlock: " + ", ".join(f"wg{x['g']}.w{x['w']} at {x['program'][x['pc']]}"
                                            for x in order)
    if not all(ring.loaded):
        return "a position was never loaded"
    return None


def main():
    argv = sys.argv[1:]
    stages = 3
    if "--stages" in argv:
        k = argv.index("--stages")
        stages = int(argv[k + 1])
        del argv[k:k + 2]
    count_keyless = "--count-keyless" in argv
    args = [a for a in argv if not a.startswith("--")]
    trials = int(args[0]) if args else 3000
    rnd = random.Random(1)
    for trial in range(trials):
        tiles = [rnd.choice([0, 0, 1, 2, 3, 4, 5, 8]) for _ in range(rnd.randint(1, 6))]
        try:
            failure = walk(tiles, random.Random(trial), stages, count_keyless)
        except AssertionError as e:
            failure = str(e)
        if failure:
            print(f"trial {trial}, tiles {tiles}: FAIL: {failure}")
            return 1
    print(f"{trials} trials: PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
