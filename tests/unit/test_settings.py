"""Settings read from PLAYERPULSE_* environment variables."""

from __future__ import annotations

import io
import os
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from app.settings import DEFAULT_FEATURES, Settings, SettingsError

pytestmark = pytest.mark.unit


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def not_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stderr", io.StringIO())


@pytest.mark.usefixtures("not_a_terminal")
def test_defaults_without_any_variable() -> None:
    settings = Settings.from_env({})
    assert settings.data_dir == Path("./var")
    assert settings.database_url is None
    assert settings.kafka_brokers is None
    assert settings.embedded_postgres
    assert settings.embedded_broker
    assert settings.features_path == DEFAULT_FEATURES
    assert DEFAULT_FEATURES.name == "features.example.toml"
    assert DEFAULT_FEATURES.is_file()
    assert settings.log_format == "json"
    assert settings.lake_dir == Path("./var") / "lake"
    assert settings == Settings()


def test_log_format_defaults_to_console_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stderr", Terminal())
    assert Settings.from_env({}).log_format == "console"
    assert Settings.from_env({"PLAYERPULSE_LOG_FORMAT": "json"}).log_format == "json"


@pytest.mark.usefixtures("not_a_terminal")
def test_contract_variables_are_read() -> None:
    settings = Settings.from_env(
        {
            "PLAYERPULSE_DATA_DIR": "/srv/pp",
            "PLAYERPULSE_DATABASE_URL": "postgresql://u:p@db:5432/pp",
            "PLAYERPULSE_KAFKA_BROKERS": "k1:9092,k2:9092",
            "PLAYERPULSE_FEATURES": "/etc/pp/features.toml",
            "PLAYERPULSE_LOG_FORMAT": "console",
        }
    )
    assert settings.data_dir == Path("/srv/pp")
    assert isinstance(settings.data_dir, Path)
    assert settings.lake_dir == Path("/srv/pp/lake")
    assert settings.database_url == "postgresql://u:p@db:5432/pp"
    assert settings.kafka_brokers == "k1:9092,k2:9092"
    assert not settings.embedded_postgres
    assert not settings.embedded_broker
    assert settings.features_path == Path("/etc/pp/features.toml")
    assert isinstance(settings.features_path, Path)
    assert settings.log_format == "console"


EXAMPLES = {
    bool: ("true", True),
    int: ("17", 17),
    float: ("0.25", 0.25),
    str: ("custom", "custom"),
}


@pytest.mark.parametrize(
    "name",
    [
        f.name
        for f in fields(Settings)
        if f.name not in ("log_format", "features_path", "broker", "tls_cert", "tls_key")
    ],
)
@pytest.mark.usefixtures("not_a_terminal")
def test_each_variable_is_parsed_to_the_type_of_its_field(name: str) -> None:
    default = getattr(Settings(), name)
    variable = "PLAYERPULSE_" + name.upper()
    raw: str
    expected: object
    if isinstance(default, Path):
        raw, expected = "/tmp/elsewhere", Path("/tmp/elsewhere")
    elif name == "lake_retention_days":  # an optional number: unset keeps everything
        raw, expected = "17", 17
    elif name == "kafka_home":  # an optional path: unset uses the user's cache
        raw, expected = "/tmp/elsewhere", Path("/tmp/elsewhere")
    elif name == "cors_origins":  # comma-separated origins
        raw, expected = (
            "https://a.example,http://b.example:8080",
            "https://a.example,http://b.example:8080",
        )
    elif name == "dedup_horizon":  # a duration, in seconds
        raw, expected = "90m", 5400
    elif name == "disk_min_free":  # a size or a percentage
        raw, expected = "750MB", "750MB"
    elif default is None:
        raw, expected = "a-url-or-brokers", "a-url-or-brokers"
    else:
        raw, expected = EXAMPLES[type(default)]
    value = getattr(Settings.from_env({variable: raw}), name)
    assert value == expected
    assert type(value) is type(expected)
    assert value != default


@pytest.mark.parametrize(
    ("variable", "raw", "kind"),
    [
        ("PLAYERPULSE_TOPIC_PARTITIONS", "eight", "int"),
        ("PLAYERPULSE_FOLD_BATCH_MAX", "2.5", "int"),
        ("PLAYERPULSE_MAX_BODY_BYTES", "5MB", "int"),
        ("PLAYERPULSE_PRODUCE_TIMEOUT_S", "ten", "seconds"),
        ("PLAYERPULSE_LAKE_FLUSH_S", "10s", "float"),
        ("PLAYERPULSE_LAKE_RETENTION_DAYS", "30d", "int"),
    ],
)
def test_an_invalid_number_names_the_variable(variable: str, raw: str, kind: str) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env({variable: raw})
    assert variable in str(info.value)
    assert repr(raw) in str(info.value)
    assert kind in str(info.value)


def test_an_invalid_log_format_is_refused() -> None:
    with pytest.raises(SettingsError, match="PLAYERPULSE_LOG_FORMAT"):
        Settings.from_env({"PLAYERPULSE_LOG_FORMAT": "xml"})


@pytest.mark.usefixtures("not_a_terminal")
def test_empty_and_unknown_variables_are_ignored() -> None:
    settings = Settings.from_env(
        {
            "PLAYERPULSE_DATABASE_URL": "",
            "PLAYERPULSE_TOPIC_PARTITIONS": "",
            "PLAYERPULSE_NO_SUCH_THING": "x",
            "OTHER_TOPIC_PARTITIONS": "99",
            "playerpulse_topic_partitions": "99",
        }
    )
    assert settings == Settings()


@pytest.mark.usefixtures("not_a_terminal")
def test_from_env_reads_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in os.environ if k.startswith("PLAYERPULSE_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("PLAYERPULSE_FEATURES", "/x/f.toml")
    monkeypatch.setenv("PLAYERPULSE_FOLD_BATCH_MAX", "5")
    settings = Settings.from_env()
    assert settings.features_path == Path("/x/f.toml")
    assert settings.fold_batch_max == 5


def test_with_endpoints_points_at_concrete_services() -> None:
    settings = Settings(data_dir=Path("/d")).with_endpoints(
        database_url="postgresql://x", kafka_brokers="h:1"
    )
    assert (settings.database_url, settings.kafka_brokers) == ("postgresql://x", "h:1")
    assert settings.data_dir == Path("/d")
    assert not settings.embedded_postgres
    assert not settings.embedded_broker


@pytest.mark.usefixtures("not_a_terminal")
def test_broker_and_workers_settings() -> None:
    assert Settings.from_env({}).broker == "kafka"  # durable unless asked otherwise
    assert Settings.from_env({"PLAYERPULSE_BROKER": "memory"}).broker == "memory"
    with pytest.raises(SettingsError, match="PLAYERPULSE_BROKER must be kafka or memory"):
        Settings.from_env({"PLAYERPULSE_BROKER": "tansu"})
    assert Settings.from_env({"PLAYERPULSE_WORKERS": "3"}).worker_count == 3
    assert Settings.from_env({}).worker_count == len(os.sched_getaffinity(0))
    with pytest.raises(SettingsError, match="PLAYERPULSE_WORKERS"):
        Settings.from_env({"PLAYERPULSE_WORKERS": "-1"})


def test_a_negative_retention_is_refused() -> None:
    with pytest.raises(SettingsError, match="PLAYERPULSE_LAKE_RETENTION_DAYS"):
        Settings.from_env({"PLAYERPULSE_LAKE_RETENTION_DAYS": "-1"})
    assert Settings.from_env({}).lake_retention_days is None


@pytest.mark.parametrize(
    ("raw", "seconds"), [("24h", 86400), ("60s", 60), ("7d", 604800), ("90", 90)]
)
def test_the_dedup_horizon_is_a_duration(raw: str, seconds: int) -> None:
    assert Settings.from_env({"PLAYERPULSE_DEDUP_HORIZON": raw}).dedup_horizon == seconds


@pytest.mark.parametrize("raw", ["a day", "0", "-5m", "1.5h", "24 h"])
def test_a_bad_dedup_horizon_names_the_variable_and_the_form(raw: str) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env({"PLAYERPULSE_DEDUP_HORIZON": raw})
    assert "PLAYERPULSE_DEDUP_HORIZON" in str(info.value)
    assert repr(raw) in str(info.value)
    assert "such as 24h" in str(info.value)


def test_cors_origins_are_parsed_and_checked() -> None:
    settings = Settings.from_env({"PLAYERPULSE_CORS_ORIGINS": " https://A.example/ , *"})
    assert settings.cors_everywhere == frozenset({"https://a.example", "*"})
    with pytest.raises(SettingsError, match=r"CORS_ORIGINS.*'game\.example' is not an origin"):
        Settings.from_env({"PLAYERPULSE_CORS_ORIGINS": "game.example"})


def test_tls_needs_both_the_certificate_and_the_key() -> None:
    both = Settings.from_env(
        {"PLAYERPULSE_TLS_CERT": "/etc/pp/cert.pem", "PLAYERPULSE_TLS_KEY": "/etc/pp/key.pem"}
    )
    assert (both.tls_cert, both.tls_key) == (Path("/etc/pp/cert.pem"), Path("/etc/pp/key.pem"))
    with pytest.raises(SettingsError, match="TLS_CERT and PLAYERPULSE_TLS_KEY go together"):
        Settings.from_env({"PLAYERPULSE_TLS_CERT": "/etc/pp/cert.pem"})
