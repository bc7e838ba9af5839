import gc

from app import metrics


def _seconds(generation: int) -> float:
    value = metrics.GC_SECONDS.labels(str(generation))._value.get()
    return float(value)


def test_every_collection_is_counted_by_generation_once() -> None:
    metrics.watch_gc()
    metrics.watch_gc()  # a second call must not count twice
    assert sum(getattr(c, "__name__", "") == "on_gc" for c in gc.callbacks) == 1
    full_before, young_before = _seconds(2), _seconds(0)
    garbage: list[object] = []
    garbage.append(garbage)  # a cycle: only the collector frees it
    del garbage
    gc.collect(2)
    assert _seconds(2) > full_before
    full_after = _seconds(2)
    gc.collect(0)
    assert _seconds(0) > young_before
    assert _seconds(2) == full_after
