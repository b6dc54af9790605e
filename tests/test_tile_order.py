"""The persistent sm90 forward's tile order (csrc/common/tile_order.h, with the work shape from
common/block_range.h), run on the host: a C program built against the headers themselves
prints, for each shape, the plateau and the (query block, head) of every loop index; these
tests check that every tile comes exactly once, the orders the header documents, and the load
balance it claims. A lost tile would leave rows of out unwritten; a duplicate would compute
them twice. No GPU is needed."""
import os
import shutil
import subprocess

import pytest

from conftest import REPO_ROOT

CC = shutil.which("gcc") or shutil.which("cc")

PROBE = r"""
#include <stdio.h>
#include <stdlib.h>
#include "common/tile_order.h"
/* argv: heads_batches len_q len_k window_left window_right causal block_m block_n grid */
int main(int argc, char **argv) {
    if (argc != 10) return 2;
    int a[9];
    for (int i = 0; i < 9; ++i) a[i] = atoi(argv[i + 1]);
    const fa_mask m = fa_mask_make(a[1], a[2], a[3], a[4], a[5]);
    const int num_m_blocks = (a[1] + a[6] - 1) / a[6];
    const fa_block_plateau work = fa_block_range_plateau(&m, num_m_blocks, a[6], a[7]);
    const fa_tile_order o = fa_tile_order_make(a[0], num_m_blocks, work, a[8]);
    printf("%d %d %d %d %d %d %d\n", work.begin, work.end, o.plateau_begin, o.plateau_end, work.rising_only,
           o.pair_tiles, o.num_iters);
    for (int mb = 0; mb < num_m_blocks; ++mb) {
        const fa_block_range r = fa_block_range_span(&m, mb * a[6], a[6], a[7]);
        printf("%d%c", r.n_max - r.n_min, mb + 1 < num_m_blocks ? ' ' : '\n');
    }
    for (int t = 0; t < o.num_iters; ++t) {
        int hb;
        const int mb = fa_tile_at(&o, t, a[8], &hb);
        printf("%d %d\n", mb, hb);
    }
    return 0;
}
"""


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    if CC is None:
        pytest.skip("needs a C compiler (gcc or cc)")
    d = tmp_path_factory.mktemp("tile_order")
    (d / "probe.c").write_text(PROBE)
    exe = d / "probe"
    cmd = [CC, "-std=c99", "-O1", "-Wall", "-Werror", "-I", os.path.join(REPO_ROOT, "csrc"), str(d / "probe.c"),
           "-o", str(exe)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout}{proc.stderr}"
    return str(exe)


class Order:
    def __init__(self, exe, heads_batches, len_q, len_k, left=-1, right=-1, causal=False,
                 block_m=128, block_n=128, grid=132):
        args = [heads_batches, len_q, len_k, left, right, int(causal), block_m, block_n, grid]
        out = subprocess.run([exe, *map(str, args)], capture_output=True, text=True, timeout=60,
                             check=True).stdout.splitlines()
        (self.work_begin, self.work_end, self.begin, self.end, self.rising_only, self.pair_tiles,
         self.num_iters) = map(int, out[0].split())
        self.blocks = [int(x) for x in out[1].split()]  # key blocks of each query block
        self.indices = [tuple(map(int, line.split())) for line in out[2:]]
        self.heads_batches, self.grid = heads_batches, grid
        assert len(self.indices) == self.num_iters

    def tiles(self):
        return [(mb, hb) for mb, hb in self.indices if mb >= 0]

    def busiest_over_mean(self, fixed=1.5):
        """The busiest CTA's work over the mean; a tile costs its key blocks plus a fixed part."""
        load = [0.0] * self.grid
        for t, (mb, _) in enumerate(self.indices):
            if mb >= 0 and self.blocks[mb] > 0:
                load[t % self.grid] += self.blocks[mb] + fixed
        return max(load) / (sum(load) / self.grid)


SHAPES = [
    # (heads_batches, len_q, len_k, left, right, causal, block_m, block_n, grid)
    (16, 16384, 16384, -1, -1, False, 128, 176, 132),   # full
    (16, 16384, 16384, -1, -1, True, 128, 128, 132),    # causal, pairs
    (8, 1030, 1030, -1, -1, True, 128, 80, 132),        # causal, partial last block, m descending
    (16, 16384, 16384, 4096, 0, False, 128, 128, 132),  # sliding window
    (32, 16384, 16384, 1024, 0, True, 128, 128, 132),
    (64, 4096, 4096, 1024, 0, False, 128, 128, 132),
    (16, 16384, 16384, 2048, 2048, False, 128, 128, 132),
    (16, 16384, 16384, -1, 300, False, 128, 128, 132),   # right edge only: the work rises
    (16, 16384, 16384, 300, -1, False, 128, 128, 132),   # left edge only: it falls
    (32, 2048, 8192, 8191, 0, False, 128, 128, 132),     # the KV-cache op's appending window
    (32, 512, 8192, 8191, 0, False, 128, 128, 132),
    (3, 1000, 300, 17, 5, False, 128, 64, 7),            # seqlen_q > seqlen_k, rows without keys
    (5, 700, 700, 0, 0, False, 128, 128, 3),             # the diagonal alone
    (7, 100, 5000, 255, 1, False, 128, 128, 4),          # one query block
    (2, 5000, 0, -1, -1, False, 128, 128, 5),            # no keys
    (5, 3000, 2999, 128, 255, False, 192, 128, 11),      # three-consumer tiles
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_every_tile_comes_exactly_once(probe, shape):
    o = Order(probe, *shape)
    num_m_blocks = len(o.blocks)
    tiles = o.tiles()
    assert len(tiles) == len(set(tiles)) == num_m_blocks * o.heads_batches
    assert set(tiles) == {(mb, hb) for mb in range(num_m_blocks) for hb in range(o.heads_batches)}
    assert 0 <= o.begin < o.end <= num_m_blocks


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_the_plateau_holds_the_most_key_blocks_and_the_work_falls_away_from_it(probe, shape):
    o = Order(probe, *shape)
    b, begin, end = o.blocks, o.work_begin, o.work_end
    top = max(b)
    assert 0 <= begin < end <= len(b)
    # One key block of slack: with block_n != block_m the two ends of a range step unevenly.
    assert all(top - 1 <= b[mb] <= top for mb in range(begin, end)), (begin, end, b)
    assert all(b[mb] <= b[mb + 1] + 1 for mb in range(0, begin - 1)), b
    assert all(b[mb] >= b[mb + 1] - 1 for mb in range(end, len(b) - 1)), b


def test_full_attention_goes_head_by_head(probe):
    """(batch, head) outer and query blocks inner: the CTAs running together share one head's
    K/V in L2."""
    o = Order(probe, 16, 2048, 2048)
    assert not o.pair_tiles
    assert o.tiles() == [(mb, hb) for hb in range(16) for mb in range(16)]


def test_causal_with_few_tiles_goes_longest_first(probe):
    o = Order(probe, 8, 1024, 1024, causal=True)  # 64 tiles on 132 CTAs: no pairs
    assert o.rising_only and not o.pair_tiles
    assert o.tiles() == [(mb, hb) for mb in reversed(range(8)) for hb in range(8)]


@pytest.mark.parametrize("left, causal, pairs", [(-1, True, True), (8191, False, True), (1024, False, False),
                                                 (1024, True, False)])
def test_pairs_are_taken_where_the_work_rises_to_the_last_block(probe, left, causal, pairs):
    """Causal, and a window whose left edge hides nothing (the KV-cache op's appending launch),
    pair each head's longest tile with its shortest; a sliding window does not."""
    o = Order(probe, 32, 2048 * 4, 8192, left=left, right=0, causal=causal)
    assert o.pair_tiles == pairs
    if pairs:
        # Round r of CTA c: the long tile for even r, its partner for odd r.
        for c in range(o.grid):
            mine = [o.indices[t] for t in range(c, o.num_iters, o.grid)]
            for long_tile, short_tile in zip(mine[0::2], mine[1::2]):
                if short_tile[0] >= 0:
                    assert short_tile[1] == long_tile[1]
                    assert short_tile[0] + long_tile[0] == len(o.blocks) - 1


@pytest.mark.parametrize("shape, bound", [
    ((16, 16384, 16384, 4096, 0, False), 1.05),   # was 1.17 head by head
    ((32, 16384, 16384, 1024, 0, True), 1.03),    # was 1.04
    ((16, 16384, 16384, 2048, 2048, False), 1.05),  # was 1.10
    ((16, 16384, 16384, -1, -1, True), 1.04),     # causal in pairs
])
def test_no_cta_gets_much_more_than_its_share(probe, shape, bound):
    """The header's claim: with the plateau first and then the nearest query blocks, the busiest
    of 132 CTAs has at most a few percent more work than the mean (head by head throughout,
    the sliding windows above had 1.04-1.17x)."""
    assert Order(probe, *shape).busiest_over_mean() <= bound


def test_a_sliding_window_over_many_heads_goes_head_by_head(probe):
    """With 64 (batch, head) pairs on 132 CTAs the plateau-first tail would hold two query
    blocks of a head at a time, too few to share their keys in L2: head by head instead, as
    full attention (FA_TILE_TAIL_BLOCKS_IN_FLIGHT)."""
    o = Order(probe, 64, 4096, 4096, left=1024, right=0)
    assert (o.begin, o.end) == (0, 32) and not o.pair_tiles
    assert o.tiles() == [(mb, hb) for hb in range(64) for mb in range(32)]
    assert Order(probe, 33, 4096, 4096, left=1024, right=0).begin > 0  # 132 / 33 = 4 blocks in flight
