"""The feature definitions the stored profiles were built with."""

from __future__ import annotations

from sqlalchemy import insert, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from .tables import (
    feature_defs,
)


class FeatureDefRepository:
    """Fingerprints of the features the stored profiles were built with."""

    async def fingerprints(self, conn: AsyncConnection) -> dict[str, str]:
        """Feature name -> fingerprint, as last recorded."""
        rows = await conn.execute(select(feature_defs.c.name, feature_defs.c.fingerprint))
        return {r.name: r.fingerprint for r in rows}

    async def record(self, conn: AsyncConnection, fingerprints: dict[str, str]) -> None:
        """Record the features profiles are now built with."""
        await conn.execute(feature_defs.delete())
        if fingerprints:
            await conn.execute(
                insert(feature_defs),
                [{"name": n, "fingerprint": f} for n, f in sorted(fingerprints.items())],
            )

    async def lock(self, conn: AsyncConnection) -> None:
        """Serialise feature checks and rebuilds across processes (transaction-scoped)."""
        await conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('playerpulse:features'))"))
