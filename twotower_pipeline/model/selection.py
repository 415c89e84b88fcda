"""The selection half of top-K: the k best columns of each row of a score block, compiled by numba.

`torch.topk` spends about 2.5 us a row of 1,000 scores on this machine, several times the matrix
product that made them, so selection is the bottleneck of batch scoring. Per row, this kernel:

1. takes the maximum of each group of G = 8 scores (columns w, w+W, ..., w+7W; the loop is
   vectorised because G is a compile-time constant);
2. takes the smallest of k block maxima of those: k distinct scores are at least that large, so it
   bounds the k-th largest from below; the groups above it are ranked by counting, which gives the
   exact k-th largest group maximum, a tighter bound;
3. copies the scores of the groups above the bound that are themselves above it (branch-free) and
   ranks those few candidates by counting (vectorised; ties go to the lower column, as a stable
   sort of -score would), or, when ties leave too many, by insertion.

Every top-k column is a candidate: its group's maximum is at least its score, which is at least
the k-th largest, which is at least the bound. Excluded columns are set to -inf first; slots left
without a finite score get column -1.
"""

from __future__ import annotations

import numpy as np
from numba import njit

#: Scores per group (a compile-time constant: the group-maximum loop vectorises over groups).
G = 8
#: Candidates ranked by counting (m * m comparisons); more than this (ties) go by insertion.
RANK_LIMIT = 128
#: IEEE semantics kept for -inf (the exclusion marker); only reassociation-type flags are on.
_FASTMATH = {"reassoc", "nsz", "arcp", "contract", "afn"}
_JIT = dict(nogil=True, cache=True, boundscheck=False, fastmath=_FASTMATH)


@njit(inline="always", **_JIT)
def _rank_by_counting(values, columns, m, ranks):
    """ranks[i] = number of candidates that come before candidate i (higher score, or equal score
    and lower column)."""
    for i in range(m):
        v = values[i]
        c = columns[i]
        before = np.int32(0)
        for t in range(m):
            u = values[t]
            before += np.int32((u > v) | ((u == v) & (columns[t] < c)))
        ranks[i] = before


@njit(inline="always", **_JIT)
def _insert_top(row_values, row_columns, k, values, columns, m):
    """Top k of m candidates by insertion (for many ties); slots start at -inf / column n."""
    for i in range(m):
        s = values[i]
        c = columns[i]
        last = row_values[k - 1]
        if s > last or (s == last and c < row_columns[k - 1]):
            p = k - 1
            while p > 0 and (row_values[p - 1] < s or (row_values[p - 1] == s and row_columns[p - 1] > c)):
                row_values[p] = row_values[p - 1]
                row_columns[p] = row_columns[p - 1]
                p -= 1
            row_values[p] = s
            row_columns[p] = c


@njit(inline="always", **_JIT)
def _select_row(row, k, out_values, out_columns, group_max, groups, group_values, values, columns, ranks):
    n = row.shape[0]
    width = n // G                       # groups; columns [G * width, n) are candidates always
    for t in range(k):
        out_values[t] = -np.inf
        out_columns[t] = n
    m = 0
    if width < k:                        # too few groups for a bound: every column is a candidate
        for j in range(n):
            values[m] = row[j]
            columns[m] = j
            m += 1
    else:
        for w in range(width):                                   # 1. group maxima
            best = row[w]
            for g in range(1, G):
                s = row[g * width + w]
                best = best if best > s else s
            group_max[w] = best
        block = width // k                                       # 2. smallest of k block maxima
        bound = np.float32(np.inf)
        for b in range(k):
            end = width if b == k - 1 else (b + 1) * block
            best = group_max[b * block]
            for w in range(b * block + 1, end):
                s = group_max[w]
                best = best if best > s else s
            bound = bound if bound < best else best
        n_groups = 0
        for w in range(width):                                   # groups above it (branch-free)
            groups[n_groups] = w
            group_values[n_groups] = group_max[w]
            n_groups += group_max[w] >= bound
        if n_groups <= RANK_LIMIT:                               # exact k-th largest group maximum
            _rank_by_counting(group_values, groups, n_groups, ranks)
            for i in range(n_groups):
                if ranks[i] == k - 1:
                    bound = group_values[i]
        for i in range(n_groups):                                # 3. candidates above the bound
            if group_values[i] >= bound:
                w = groups[i]
                for g in range(G):
                    j = g * width + w
                    values[m] = row[j]
                    columns[m] = j
                    m += row[j] >= bound
        for j in range(G * width, n):
            values[m] = row[j]
            columns[m] = j
            m += 1
    if m <= RANK_LIMIT:
        _rank_by_counting(values, columns, m, ranks)
        for i in range(m):
            r = ranks[i]
            if r < k:
                out_values[r] = values[i]
                out_columns[r] = columns[i]
    else:
        _insert_top(out_values, out_columns, k, values, columns, m)
    for t in range(k):
        if out_values[t] == -np.inf:
            out_columns[t] = -1


@njit(**_JIT)
def select_top_k(scores, k, exclude_indptr, exclude_columns, out_values, out_columns):
    """scores [c, n] float32 (overwritten where excluded) -> out_values [c, k], out_columns [c, k],
    each row sorted by score descending. Row r excludes exclude_columns[exclude_indptr[r]:
    exclude_indptr[r + 1]] (a CSR slice for these c rows; indptr may start above 0)."""
    c, n = scores.shape
    group_max = np.empty(max(1, n // G), np.float32)
    groups = np.empty(max(1, n // G), np.int32)
    group_values = np.empty(max(1, n // G), np.float32)
    values = np.empty(n, np.float32)
    columns = np.empty(n, np.int32)
    ranks = np.empty(max(n, n // G), np.int32)
    for r in range(c):
        row = scores[r]
        for p in range(exclude_indptr[r], exclude_indptr[r + 1]):
            row[exclude_columns[p]] = -np.inf
        _select_row(row, k, out_values[r], out_columns[r], group_max, groups, group_values, values, columns, ranks)
