"""exp2_fma (csrc/kernels/sm90_softmax.cuh), the exponential on the FMA pipe that sm90 forward
variants may take for part of a row, emulated here in float32 with the header's own constants
(the clamp, the rounding shift and the coefficients, read from its source, so a change to any
of them is tested): its accuracy against 2^x, and the edge values the softmax relies on (a
masked score, -inf, is exactly +0.0; a lazily rescaled probability reaches 2^8 exactly; NaN
stays NaN, as on MUFU).
Host-only: the order of the operations is the emulation's, kept in step with the header's by
hand; the device function itself runs only in the dev/ variants that take it.

The emulation rounds each float32 add as the device's __fadd_rn does, and each fmaf through
float64 (the product of two float32 values is exact there; the sum rounds twice, which moves a
result by at most one float32 unit, far below the bound checked).
"""
import os
import re

import numpy as np
import pytest

from conftest import REPO_ROOT

HEADER = os.path.join(REPO_ROOT, "csrc", "kernels", "sm90_softmax.cuh")


NAMES = ("kRoundShift", "kLowest", "kC1", "kC2", "kC3")


def constants():
    """exp2_fma's named constants, as float32, in the order of NAMES."""
    with open(HEADER) as f:
        body = f.read().split("float exp2_fma(float x)", 1)[1].split("\n}\n", 1)[0]
    found = dict(re.findall(r"(k\w+) = (-?[0-9.]+)f", body))
    assert set(found) == set(NAMES), f"exp2_fma's constants are not where expected: {sorted(found)}"
    assert "max_nan_f32(x, kLowest)" in body, "exp2_fma no longer clamps x at kLowest"
    assert "fma_rn_f32(x, 0.f, r)" in body, "exp2_fma no longer adds 0 * x (NaN in, NaN out)"
    return tuple(np.float32(found[k]) for k in NAMES)


def fmaf(a, b, c):
    return (a.astype(np.float64) * np.float64(b) + np.float64(c)).astype(np.float32)


def canonical(y):
    """y with every NaN as the GPU's float arithmetic returns it: the canonical NaN, 0x7FFFFFFF
    (numpy keeps the quiet NaN 0x7FC00000, whose low bits the exponent trick would not see)."""
    return np.where(np.isnan(y), np.uint32(0x7FFFFFFF).view(np.float32), y).astype(np.float32)


def exp2_fma(x):
    shift, lowest, c1, c2, c3 = constants()
    x = np.maximum(np.asarray(x, dtype=np.float32), lowest)  # max.NaN: NaN passes
    shifted = canonical(x + shift)
    f = canonical(x - canonical(shifted - shift))
    p = canonical(fmaf(fmaf(fmaf(np.full_like(f, c3), f, c2), f, c1), f, 1.0))
    bits = p.view(np.uint32) + (shifted.view(np.uint32) << np.uint32(23))
    r = bits.astype(np.uint32).view(np.float32)
    with np.errstate(invalid="ignore"):
        return (x * np.float32(0) + r).astype(np.float32)


def test_exp2_fma_is_within_1_2e_4_of_exp2_over_the_softmax_range():
    x = np.linspace(-126.0, 8.0, 2_000_001, dtype=np.float32)
    rel = np.abs(exp2_fma(x).astype(np.float64) / np.exp2(x.astype(np.float64)) - 1.0)
    assert rel.max() < 1.2e-4  # float16 rounds P by up to 4.9e-4, bfloat16 by 3.9e-3


@pytest.mark.parametrize("x,expected", [
    (-np.inf, 0.0),   # a masked score
    (-127.0, 0.0),    # where -inf is clamped to
    (0.0, 1.0),       # the row max
    (8.0, 256.0),     # the largest lazily rescaled probability (FA_SM90_LAZY_RESCALE_LOG2)
])
def test_exp2_fma_edge_values_are_exact(x, expected):
    y = exp2_fma(np.array([x], dtype=np.float32))[0]
    assert y == expected and not np.signbit(y)


def test_exp2_fma_keeps_nan_as_mufu_does():
    # the clamp (max.NaN) lets NaN through, and 0 * NaN keeps the integer add's finite bits
    # from hiding it; without that step this returns a finite number
    y = exp2_fma(np.array([np.nan, 3.0], dtype=np.float32))
    assert np.isnan(y[0]) and y[1] == 8.0


def test_exp2_fma_near_the_clamp_stays_a_small_non_negative_number():
    x = np.linspace(-127.0, -126.0, 10_001, dtype=np.float32)
    y = exp2_fma(x)
    assert (y >= 0).all() and not np.signbit(y).any() and (y <= np.float32(2.0 ** -126)).all()
