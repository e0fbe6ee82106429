"""Exact ``numpy.percentile`` (linear interpolation) of many scaled copies of one matrix, fast.

LINe's weight pruning needs, for every class c, t_c = percentile(R_c, p_w) over the C*D entries
of R_c = a_c[None, :] * W with a_c = |Cm[c, :]| >= 0 (Ahn et al., CVPR 2023, Sec. 3.3). Doing it
with numpy.percentile costs one product and one partition of C*D float64 values per class
(about 15 s for ImageNet's C = 1000, D = 2048). This module gets the identical float64 value
without touching all C*D entries of each class:

1. Column order. Since a_cj >= 0, w -> fl(a_cj * w) is non-decreasing (IEEE rounding is
   monotone), so sorting each column of W once also sorts every column of every R_c.
   ``count(t)`` = #{(k, j): fl(a_cj * W[k, j]) <= t} is then a binary search per column
   (log2(C) steps over D columns, vectorised over classes); it is exact because it compares the
   very products numpy would compute.
2. Bracket. A fixed random sample of entries gives sample quantiles lo <= t_c <= hi (with a wide
   margin); exact counts of entries below lo and up to hi give each column's index range inside
   [lo, hi]. Only those entries (a few percent) are multiplied and partitioned to get the two
   order statistics numpy interpolates between. If the bracket misses (rare), that class falls
   back to the full product.
3. Interpolation. numpy >= 1.22's "linear" method: virtual index v = (n - 1) * (p / 100),
   gamma = v - floor(v), lerp(a, b, gamma) = a + (b - a) * gamma, or b - (b - a) * (1 - gamma)
   when gamma >= 0.5 (``lerp``).

``array_percentile`` is the same exact value for one large float32 array read in row blocks
(ReAct's threshold over every ID training activation, 2.6e9 values at ImageNet scale): two
counting passes over order-preserving integer keys find the two order statistics, with no
float64 copy and no sort of the whole array.

The by-product ``cutoffs[c, j]`` = #{k: fl(a_cj * W[k, j]) <= t_c} describes class c's mask
exactly: (k, j) is kept (R_c[k, j] > t_c) iff ``column_rank[k, j] >= cutoffs[c, j]``, where
``column_rank[k, j]`` = #{k': W[k', j] < W[k, j]} (tied weights have tied products, so a tie
group is kept or dropped as a whole).
"""

from __future__ import annotations

import math

import numpy as np

SAMPLE_SIZE = 16384
SAMPLE_SEED = 0
MARGIN_SD = 6.0  # bracket half-width in standard deviations of the sample rank
CLASS_CHUNK = 64


def percentile_positions(n: int, p: float) -> tuple[int, int, float]:
    """(k0, k1, gamma): numpy's linear percentile is lerp(sorted[k0], sorted[k1], gamma)."""
    q = np.true_divide(p, 100)
    v = (n - 1) * q
    if v >= n - 1:
        return n - 1, n - 1, float(v - np.floor(v))
    if v < 0:
        return 0, 0, float(v - np.floor(v))
    k0 = int(np.floor(v))
    return k0, k0 + 1, float(v - np.floor(v))


def lerp(a: float, b: float, gamma: float) -> float:
    """numpy's ``_lerp`` for float64 scalars (the form changes at gamma = 0.5 for accuracy)."""
    a, b, gamma = np.float64(a), np.float64(b), np.float64(gamma)
    diff = b - a
    if gamma >= 0.5:
        return float(b - diff * (1 - gamma))
    return float(a + diff * gamma)


_KEY_TYPES = {32: (np.float32, np.uint32), 64: (np.float64, np.uint64)}


def _sortable_keys(block: np.ndarray, bits: int) -> np.ndarray:
    """Unsigned keys whose order is the float order: the sign bit flipped for x >= 0, every bit
    flipped for x < 0 (float16 is widened to float32 exactly). NaNs fall outside [-inf, inf]."""
    float_type, uint_type = _KEY_TYPES[bits]
    raw = np.ascontiguousarray(block, dtype=float_type).view(uint_type).ravel()
    sign = uint_type(bits - 1)
    flip = (raw >> sign) * uint_type(2 ** (bits - 1) - 1) | uint_type(2 ** (bits - 1))
    return raw ^ flip


def _float_of_key(key: int, bits: int) -> float:
    float_type, uint_type = _KEY_TYPES[bits]
    top = 1 << (bits - 1)
    raw = key ^ top if key & top else key ^ ((1 << bits) - 1)
    return float(np.array([raw], dtype=uint_type).view(float_type)[0])


def array_percentile(blocks, n: int, p: float, dtype=np.float32) -> float:
    """numpy.percentile(all values as float64, p) exactly, from blocks of ``dtype`` values.

    ``blocks()`` returns a fresh iterator over the array's blocks (any shapes; ``n`` values in
    all). A radix selection on order-preserving integer keys: each pass counts the next 16 bits
    of the keys that share the prefix found so far, for the two order statistics numpy
    interpolates between (2 passes for float32 and float16, 4 for float64). Their float values
    are exact, so the result is numpy's lerp of the same two values; nothing is sorted or copied
    whole. Any NaN gives NaN, as in numpy.
    """
    if n == 0:
        raise ValueError("percentile of an empty array")
    bits = 64 if np.dtype(dtype) == np.float64 else 32
    inf_keys = _sortable_keys(np.array([-np.inf, np.inf]), bits)
    k0, k1, gamma = percentile_positions(n, p)
    found = {k: (0, k) for k in (k0, k1)}  # order statistic -> (key prefix, rank among that prefix)
    for level in range(bits // 16):
        shift = bits - 16 * (level + 1)
        counts = {prefix: np.zeros(1 << 16, dtype=np.int64) for prefix, _ in found.values()}
        seen = nans = 0
        for block in blocks():
            keys = _sortable_keys(block, bits)
            digits = (keys >> keys.dtype.type(shift)) & keys.dtype.type(0xFFFF)
            if level == 0:
                seen += keys.size
                nans += int(np.count_nonzero((keys < inf_keys[0]) | (keys > inf_keys[1])))
                counts[0] += np.bincount(digits, minlength=1 << 16)
                continue
            top = keys >> keys.dtype.type(shift + 16)
            for prefix, c in counts.items():
                c += np.bincount(digits[top == keys.dtype.type(prefix)], minlength=1 << 16)
        if level == 0 and seen != n:
            raise ValueError(f"the blocks hold {seen} values, expected {n}")
        if level == 0 and nans:
            return float("nan")
        for k, (prefix, rank) in found.items():
            starts = np.concatenate([[0], np.cumsum(counts[prefix])])
            digit = int(np.searchsorted(starts, rank, side="right") - 1)
            found[k] = ((prefix << 16) | digit, rank - int(starts[digit]))
    return lerp(_float_of_key(found[k0][0], bits), _float_of_key(found[k1][0], bits), gamma)


class ColumnSorted:
    """W (C, D) float64 with each column sorted once; exact counts of scaled entries below t."""

    def __init__(self, weight: np.ndarray):
        weight = np.ascontiguousarray(weight, dtype=np.float64)
        self.C, self.D = weight.shape
        self.weight = weight
        order = np.argsort(weight, axis=0, kind="stable")
        self.sorted = np.ascontiguousarray(np.take_along_axis(weight, order, axis=0))
        # Rank of each entry within its column = index of the first entry of its tie group.
        pos = np.arange(self.C)[:, None]
        new_value = np.ones_like(self.sorted, dtype=bool)
        new_value[1:] = self.sorted[1:] != self.sorted[:-1]
        tie_start = np.maximum.accumulate(np.where(new_value, pos, 0), axis=0)
        rank_dtype = np.int16 if self.C < np.iinfo(np.int16).max else np.int32
        self.column_rank = np.empty((self.C, self.D), dtype=rank_dtype)
        np.put_along_axis(self.column_rank, order, tie_start.astype(rank_dtype), axis=0)
        self._steps = max(1, math.ceil(math.log2(self.C + 1)))
        self._cols = np.arange(self.D)

    def count(self, scales: np.ndarray, t: np.ndarray, strict: bool = False) -> np.ndarray:
        """Per class and column: #{k: fl(scales[m, j] * W[k, j]) <= t[m]} (``<`` when strict).

        scales (M, D) >= 0, t (M,); returns (M, D) int64. Binary search on the sorted columns.
        """
        M = len(scales)
        lo = np.zeros((M, self.D), dtype=np.int64)
        hi = np.full((M, self.D), self.C, dtype=np.int64)
        t = np.asarray(t, dtype=np.float64)[:, None]
        for _ in range(self._steps):
            active = lo < hi
            mid = (lo + hi) >> 1
            v = scales * self.sorted[np.minimum(mid, self.C - 1), self._cols]
            below = (v < t) if strict else (v <= t)
            go_right = active & below
            lo = np.where(go_right, mid + 1, lo)
            hi = np.where(active & ~below, mid, hi)
        return lo

    def percentiles(self, scales: np.ndarray, p: float) -> tuple[np.ndarray, np.ndarray]:
        """t[m] = numpy.percentile(scales[m][None, :] * W, p) exactly, and the cutoffs (M, D).

        cutoffs[m, j] = #{k: fl(scales[m, j] * W[k, j]) <= t[m]}.
        """
        scales = np.ascontiguousarray(scales, dtype=np.float64)
        if (scales < 0).any() or not np.isfinite(scales).all():
            raise ValueError("scales must be finite and non-negative")
        n = self.C * self.D
        k0, k1, gamma = percentile_positions(n, p)
        thresholds = np.empty(len(scales))
        cutoffs = np.empty((len(scales), self.D), dtype=self.column_rank.dtype)
        sample = self._sample(n)
        for start in range(0, len(scales), CLASS_CHUNK):
            block = scales[start : start + CLASS_CHUNK]
            lo, hi = self._bracket(block, sample, n, k0, k1)
            below_lo = self.count(block, lo, strict=True)
            upto_hi = self.count(block, hi)
            for i, a in enumerate(block):
                L, U = below_lo[i], upto_hi[i]
                n_below = int(L.sum())
                if n_below <= k0 and int(U.sum()) > k1 and lo[i] == hi[i]:
                    # Both order statistics lie in [lo, hi] = one value (a class whose scales are all
                    # zero, say): that value is the percentile; no entry needs materialising.
                    thresholds[start + i] = lerp(lo[i], hi[i], gamma)
                    continue
                if n_below <= k0 and int(U.sum()) > k1:
                    vals = self._entries_between(a, L, U)
                    ranks = [k0 - n_below, k1 - n_below]
                else:  # the sample bracket missed: partition everything for this class
                    vals = (a[None, :] * self.weight).ravel()
                    ranks = [k0, k1]
                vals.partition(np.unique(ranks))
                thresholds[start + i] = lerp(vals[ranks[0]], vals[ranks[1]], gamma)
            cutoffs[start : start + len(block)] = self.count(block, thresholds[start : start + len(block)])
        return thresholds, cutoffs

    def _sample(self, n: int):
        """Fixed random entry positions (rows, cols) used to bracket every class's percentile."""
        rng = np.random.default_rng(SAMPLE_SEED)
        flat = rng.choice(n, size=min(SAMPLE_SIZE, n), replace=False)
        rows, cols = np.divmod(flat, self.D)
        return rows, cols, self.weight[rows, cols]

    def _bracket(self, block, sample, n, k0, k1) -> tuple[np.ndarray, np.ndarray]:
        """Values lo <= sorted[k0] and hi >= sorted[k1] (very likely), from the sample."""
        rows, cols, w = sample
        m = len(w)
        if m == n:  # the sample is everything: take the exact values
            lo_pos, hi_pos = k0, k1
        else:
            q = k0 / n
            sd = math.sqrt(m * q * (1 - q)) + 3.0
            lo_pos = math.floor(k0 / n * m - MARGIN_SD * sd - 1)
            hi_pos = math.ceil(k1 / n * m + MARGIN_SD * sd + 1)
        vals = block[:, cols] * w[None, :]
        lo = np.full(len(block), -np.inf)
        hi = np.full(len(block), np.inf)
        kth = [k for k in (lo_pos, hi_pos) if 0 <= k < m]
        if kth:
            vals.partition(kth, axis=1)
        if 0 <= lo_pos < m:
            lo = vals[:, lo_pos].copy()
        if 0 <= hi_pos < m:
            hi = vals[:, hi_pos].copy()
        return lo, hi

    def _entries_between(self, a: np.ndarray, L: np.ndarray, U: np.ndarray) -> np.ndarray:
        """fl(a_j * sorted[i, j]) for i in [L_j, U_j) of every column j, as one flat array."""
        lens = U - L
        total = int(lens.sum())
        cols = np.repeat(self._cols, lens)
        offsets = np.arange(total) - np.repeat(np.cumsum(lens) - lens, lens)
        rows = L[cols] + offsets
        return a[cols] * self.sorted[rows, cols]
