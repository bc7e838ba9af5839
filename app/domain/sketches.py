"""Bounded, mergeable summaries kept as bytes in a profile's state (Apache DataSketches).

Each kind has ``add`` (absorb values), ``merge`` (of several serialised states) and a
read. States are the sketches' own binary forms, so a profile stays msgpack bytes.

- **HLL** (``approx_distinct``, and ``distinct_count`` past its exact cap): a
  HyperLogLog of ``2**HLL_LG_K`` 4-bit registers, at most ``HLL_MAX_BYTES``. Its relative
  standard error is 1.04 / sqrt(2**15) = 0.57%, so an estimate is within 2% of the truth
  with 99.95% confidence (3.5 standard errors) at any count, 100,000 included. Below
  about 1,000 values the sketch keeps hashed coupons and counts them, near exact.
  Registers are maxima, so what a sketch holds does not depend on the order values came
  in; the estimate is read with the composite estimator (a function of the registers
  only), never the order-dependent HIP accumulator, so it is order-independent too.
- **KLL** (``percentile``): a KLL quantile sketch with ``k = KLL_K``: rank error at
  most 0.9% (99% confidence, single quantile). While it holds at most ``KLL_K`` values
  it keeps every one and the quantile is exact (the nearest-rank value), whatever the
  order. Past that it compacts at random, so two folds of the same values may differ,
  each within the bound. At most ``KLL_MAX_BYTES``.
- **Frequent items** (``top_k``): a frequent-items sketch with ``2**FREQ_LG_MAX`` slots
  (at most 192 distinct values tracked). While a player has at most 192 distinct values
  the counts are exact and order-independent; past that each count is an estimate
  within ``epsilon * N`` of the truth (N the values seen, epsilon = 3.5 / 256 = 1.4%),
  and which values survive can depend on order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import datasketches as ds

HLL_LG_K = 15
HLL_MAX_BYTES = 16_500
"""Largest serialised HLL (measured: 16,464 bytes with 1,000,000 values)."""
KLL_K = 300
KLL_MAX_BYTES = 12_000
"""Generous bound on a serialised KLL sketch (measured: about 7,300 bytes at 10**6 values)."""
FREQ_LG_MAX = 8
FREQ_TRACKED = 192
"""Distinct values a frequent-items sketch tracks exactly (3/4 of its slots)."""
_HLL_TYPE = ds.HLL_4
_ALL_ACTIVE = ds.frequent_items_error_type.NO_FALSE_NEGATIVES


def hll_add(state: bytes | None, values: Iterable[str]) -> bytes:
    """``state`` (or an empty HLL) with ``values`` added."""
    sketch = ds.hll_sketch.deserialize(state) if state else ds.hll_sketch(HLL_LG_K, _HLL_TYPE)
    for value in values:
        sketch.update(value)
    return bytes(sketch.serialize_compact())


def hll_merge(states: Iterable[bytes]) -> bytes:
    """One HLL holding the union of ``states``."""
    union = ds.hll_union(HLL_LG_K)
    for state in states:
        union.update(ds.hll_sketch.deserialize(state))
    return bytes(union.get_result(_HLL_TYPE).serialize_compact())


def hll_estimate(state: bytes) -> float:
    """Estimated distinct values, from the registers only (order-independent)."""
    sketch = ds.hll_sketch.deserialize(state)
    union = ds.hll_union(HLL_LG_K)
    # Merging a sketch twice marks the union out of order: it then estimates from the
    # registers (composite estimator), not from the HIP accumulator, which depends on
    # the order the values came in.
    union.update(sketch)
    union.update(sketch)
    return float(union.get_estimate())


def _updated(kind: Any, empty: Callable[[], Any], state: bytes | None, value: Any) -> bytes:
    """``state`` (or ``empty()``) of sketch class ``kind`` with ``value`` added."""
    sketch = kind.deserialize(state) if state else empty()
    sketch.update(value)
    return bytes(sketch.serialize())


def _merged(kind: Any, empty: Callable[[], Any], states: Iterable[bytes]) -> bytes:
    """One sketch of class ``kind`` holding all of ``states``."""
    out = empty()
    for state in states:
        out.merge(kind.deserialize(state))
    return bytes(out.serialize())


def _new_kll() -> Any:
    return ds.kll_doubles_sketch(KLL_K)


def _new_freq() -> Any:
    return ds.frequent_strings_sketch(FREQ_LG_MAX)


def kll_add(state: bytes | None, value: float) -> bytes:
    """``state`` (or an empty KLL sketch) with ``value`` added."""
    return _updated(ds.kll_doubles_sketch, _new_kll, state, value)


def kll_merge(states: Iterable[bytes]) -> bytes:
    """One KLL sketch of all values of ``states``."""
    return _merged(ds.kll_doubles_sketch, _new_kll, states)


def kll_quantile(state: bytes, q: float) -> float:
    """The nearest-rank ``q`` quantile: the least value with a share >= ``q`` at or below it."""
    return float(ds.kll_doubles_sketch.deserialize(state).get_quantile(q, True))


def kll_exact(state: bytes) -> bool:
    """True while the sketch still holds every value it was given."""
    return not ds.kll_doubles_sketch.deserialize(state).is_estimation_mode()


def freq_add(state: bytes | None, value: str) -> bytes:
    """``state`` (or an empty frequent-items sketch) with one more ``value``."""
    return _updated(ds.frequent_strings_sketch, _new_freq, state, value)


def freq_merge(states: Iterable[bytes]) -> bytes:
    """One frequent-items sketch of all values of ``states``."""
    return _merged(ds.frequent_strings_sketch, _new_freq, states)


def freq_top(state: bytes, k: int) -> list[tuple[str, int]]:
    """The ``k`` most frequent values with their (estimated) counts, most frequent first.

    Ties are broken by the value's text, so the list does not depend on order.
    """
    sketch = ds.frequent_strings_sketch.deserialize(state)
    items = sketch.get_frequent_items(_ALL_ACTIVE, 0)
    ranked = sorted(((int(estimate), item) for item, estimate, _, _ in items), key=_rank)
    return [(item, count) for count, item in ranked[:k]]


def _rank(pair: tuple[int, str]) -> tuple[int, str]:
    return -pair[0], pair[1]


def hll_error_bound() -> float:
    """Relative standard error of the HLL used here."""
    return 1.04 / math.sqrt(2**HLL_LG_K)
