"""Model rollouts: which version answers which player, sticky per player."""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

from .guard import Guard


class RolloutError(ValueError):
    """A rollout that cannot be applied; the message says why."""


@dataclass(frozen=True, slots=True)
class Rollout:
    """Versions serving a model, as percentages of players, and an optional shadow.

    The shadow runs on every prediction and is logged, but never answers. A guard, if
    any, takes a serving version that breaks it out of the split (see ``app.domain.guard``).
    """

    split: dict[int, int]
    shadow: int | None = None
    guard: Guard | None = None
    _ladder: tuple[tuple[int, int], ...] = field(default=(), compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.split:
            raise RolloutError("split: name at least one version")
        if any(p < 0 or p > 100 for p in self.split.values()):
            raise RolloutError("split: each percentage must be between 0 and 100")
        if sum(self.split.values()) != 100:
            raise RolloutError(
                f"split: percentages must add up to 100, not {sum(self.split.values())}"
            )
        ladder, upper = [], 0
        for version in sorted(self.split):
            if self.split[version]:
                upper += self.split[version]
                ladder.append((upper, version))
        object.__setattr__(self, "_ladder", tuple(ladder))

    @classmethod
    def only(cls, version: int, shadow: int | None = None, guard: Guard | None = None) -> Rollout:
        """Everything to one version."""
        return cls({version: 100}, shadow, guard)

    @property
    def serving(self) -> list[int]:
        """The versions with a share of players, in order."""
        return sorted(v for v, p in self.split.items() if p)

    def without(self, version: int) -> Rollout:
        """This rollout with ``version`` out of the split; its share goes to the others.

        The others keep their proportions (largest remainders round to whole percents).
        Raises RolloutError if no other version serves.
        """
        rest = {v: p for v, p in self.split.items() if v != version and p}
        if not rest:
            raise RolloutError(f"version {version} is the only one serving; it cannot leave")
        total = sum(rest.values())
        exact = {v: p * 100 / total for v, p in rest.items()}
        shares = {v: int(x) for v, x in exact.items()}
        by_remainder = sorted(rest, key=lambda v: (-(exact[v] - shares[v]), v))
        for v in by_remainder[: 100 - sum(shares.values())]:
            shares[v] += 1
        shadow = None if self.shadow == version else self.shadow
        return Rollout(shares, shadow, self.guard)

    @property
    def main(self) -> int:
        """The version with the largest share (the newest among equals)."""
        return max(self.split, key=lambda v: (self.split[v], v))

    @property
    def versions(self) -> set[int]:
        """Every version this rollout runs, the shadow included."""
        return set(self.split) | ({self.shadow} if self.shadow is not None else set())

    def choose(self, key: str, player_id: str | None) -> int:
        """The version answering ``player_id``; the same for a player under this split.

        ``key`` names the model (game and name), so one player's bucket differs between
        models. Without a player, the main version answers.
        """
        if player_id is None:
            return self.main
        bucket = zlib.crc32(f"{key}\x1f{player_id}".encode()) % 100
        for upper, version in self._ladder:
            if bucket < upper:
                return version
        return self._ladder[-1][1]
