"""The lake store on local disk: commits make rewrites appear at once, settling deletes
what they replaced; the S3 settings from the AWS variables."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from app import lake_store
from app.settings import ObjectStoreSettings, Settings, SettingsError


def _table(n: int) -> pa.Table:
    return pa.table({"player_id": [f"p{i}" for i in range(n)]})


def test_a_commit_swaps_files_at_once_and_settling_deletes_the_replaced(tmp_path: Path) -> None:
    root = str(tmp_path / "lake")
    old = [
        lake_store.write_table(root, "k", "g", "d", f"part-{i}.parquet", _table(2))
        for i in range(2)
    ]
    commit_id = lake_store.new_commit_id()
    new = lake_store.write_table(
        root, "k", "g", "d", lake_store.rewrite_name(commit_id, 0), _table(4)
    )
    # Written but not committed: readers still see the old files only.
    assert {f.name for f in lake_store.visible_files([root], "k")} == {f.name for f in old}
    lake_store.commit(root, "k", "g", "d", commit_id, [new], old, grace_s=60)
    listing = lake_store.list_lake([root], "k")
    assert [f.name for f in listing.files] == [new.name]
    assert {f.name for f in listing.hidden} == {f.name for f in old}
    assert all(Path(f.path).exists() for f in old)  # kept for running readers
    assert lake_store.settle([root], "k") == 0  # not yet: within the grace
    assert lake_store.settle([root], "k", now=listing.pending[commit_id][2].at + 61) == 2
    assert not any(Path(f.path).exists() for f in old)
    assert [f.name for f in lake_store.visible_files([root], "k")] == [new.name]
    commits = tmp_path / "lake" / "k" / "game=g" / "date=d" / "_commits"
    assert [p.name for p in commits.iterdir()] == [f"{commit_id}.done"]


def test_local_rewrites_delete_at_once(tmp_path: Path) -> None:
    root = str(tmp_path)
    old = lake_store.write_table(root, "events", "g", "d", "part-1.parquet", _table(1))
    commit_id = lake_store.new_commit_id()
    lake_store.commit(root, "events", "g", "d", commit_id, [], [old])
    assert not Path(old.path).exists()
    assert lake_store.visible_files([root]) == []


def test_object_store_settings_come_from_the_aws_variables() -> None:
    env = {
        "AWS_ACCESS_KEY_ID": "AKIA",
        "AWS_SECRET_ACCESS_KEY": "very-secret",
        "AWS_DEFAULT_REGION": "eu-west-1",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9000",
    }
    settings = ObjectStoreSettings.from_env(env)
    assert (settings.access_key, settings.region) == ("AKIA", "eu-west-1")
    assert settings.endpoint_url == "http://127.0.0.1:9000"
    assert "very-secret" not in repr(settings)
    env["AWS_ENDPOINT_URL_S3"] = "http://s3.local:9000"
    assert ObjectStoreSettings.from_env(env).endpoint_url == "http://s3.local:9000"


def test_lake_urls_may_be_s3_and_nothing_else() -> None:
    settings = Settings.from_env({"PLAYERPULSE_LAKE_URL": "s3://bucket/lake"})
    assert settings.lake_root == "s3://bucket/lake"
    with pytest.raises(SettingsError, match="LAKE_COLD_URL"):
        Settings.from_env({"PLAYERPULSE_LAKE_COLD_URL": "gs://bucket/lake"})
    with pytest.raises(lake_store.LakeStoreError, match="name a bucket"):
        lake_store.filesystem("s3://")
