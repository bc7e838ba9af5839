"""Running a model on many players at once, and gathering concurrent runs into one.

``session.run`` costs about the same for one row as for a hundred (its fixed cost,
converting feeds and outputs, dwarfs a small model's arithmetic), so predictions asked
for in the same event-loop turn share one run over stacked rows: :func:`run_many`.
A row that cannot run (a value its input type cannot hold) gets its own error; the other
rows still get their answer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .runtime import LoadedModel, PredictionFailed, row_json

Answer = dict[str, Any] | PredictionFailed
"""A row's outputs, or why it could not run."""


def run_many(model: LoadedModel, rows: Sequence[Mapping[str, Any]]) -> list[Answer]:
    """Each row's outputs (as :meth:`LoadedModel.run` gives them), in one ``session.run``.

    Falls back to one run per row when the batch cannot run as a whole (a bad value in
    some row, or a model whose outputs are not one per row), so each row gets its own
    answer or its own error.
    """
    if len(rows) == 1 or not model.batchable:
        return [_run_one(model, row) for row in rows]
    feeds: dict[str, Any] = {}
    try:
        for binding in model.bindings:
            columns = binding.features
            matrix = [[values.get(name) for name in columns] for values in rows]
            if any(None in line for line in matrix):
                matrix = [model.filled(binding, line) for line in matrix]
            feeds[binding.name] = np.array(matrix, dtype=binding.dtype)
        outputs = model.session.run(model.output_names, feeds)
    except Exception:  # a row the batch cannot hold: find it by running rows alone
        return [_run_one(model, row) for row in rows]
    count = len(rows)
    for value in outputs:
        if isinstance(value, np.ndarray):
            if value.ndim == 0 or value.shape[0] != count:
                return [_run_one(model, row) for row in rows]
        elif not isinstance(value, list) or len(value) != count:
            return [_run_one(model, row) for row in rows]
    names = model.output_names
    return [
        {name: row_json(value[i]) for name, value in zip(names, outputs, strict=True)}
        for i in range(count)
    ]


def _run_one(model: LoadedModel, row: Mapping[str, Any]) -> Answer:
    try:
        return model.run(row)
    except PredictionFailed as exc:
        return exc


class _Pending:
    __slots__ = ("futures", "rows")

    def __init__(self) -> None:
        self.rows: list[Mapping[str, Any]] = []
        self.futures: list[asyncio.Future[tuple[Answer, float]]] = []


class ModelBatcher:
    """Gathers the runs asked for in one event-loop turn, per loaded model, into one
    :func:`run_many`; each caller gets its row's answer and the run's duration (s)."""

    def __init__(self) -> None:
        self._pending: dict[int, tuple[LoadedModel, _Pending]] = {}
        self._scheduled = False
        self.runs = 0
        self.rows = 0

    async def run(self, model: LoadedModel, values: Mapping[str, Any]) -> tuple[Answer, float]:
        """The outputs for ``values`` (or why not), and how long the shared run took."""
        entry = self._pending.get(id(model))
        if entry is None:
            entry = (model, _Pending())
            self._pending[id(model)] = entry
        future: asyncio.Future[tuple[Answer, float]] = asyncio.get_running_loop().create_future()
        entry[1].rows.append(values)
        entry[1].futures.append(future)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, {}
        for model, batch in pending.values():
            started = time.perf_counter()
            try:
                answers = run_many(model, batch.rows)
            except Exception as exc:  # never leave a caller waiting
                for future in batch.futures:
                    if not future.done():
                        future.set_exception(exc)
                continue
            took = time.perf_counter() - started
            self.runs += 1
            self.rows += len(batch.rows)
            for future, answer in zip(batch.futures, answers, strict=True):
                if not future.done():  # a caller cancelled meanwhile
                    future.set_result((answer, took))
