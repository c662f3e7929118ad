"""Server settings sources and precedence, model.toml parsing, and structured logs."""

from __future__ import annotations

import logging
from pathlib import Path

import orjson
import pytest

from shipyard.serving.errors import ModelConfigError
from shipyard.serving.logs import JsonFormatter, RequestIdFilter, TextFormatter, request_id
from shipyard.serving.model_config import ModelConfig, VersionPolicy, read_model_config
from shipyard.serving.settings import ServerSettings, load_settings
from shipyard.serving.version_config import resolve


def test_defaults() -> None:
    settings = ServerSettings()
    assert (settings.host, settings.port, settings.log_format) == ("127.0.0.1", 8000, "text")
    assert settings.batching.enabled is None and settings.batching.max_queue_delay_us == 0
    assert settings.limits.max_body_bytes == 64 * 1024 * 1024


def test_precedence_overrides_then_env_then_toml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "shipyard.toml"
    config.write_text(
        'port = 9000\nlog_format = "json"\nrepository = "/srv/models"\n'
        "[batching]\nmax_batch_size = 8\nmax_queue_delay_us = 250\n"
    )
    from_file = load_settings(config)
    assert from_file.port == 9000 and from_file.log_format == "json"
    assert from_file.batching.max_batch_size == 8 and from_file.repository == Path("/srv/models")

    monkeypatch.setenv("SHIPYARD_PORT", "9100")
    monkeypatch.setenv("SHIPYARD_BATCHING__MAX_BATCH_SIZE", "64")
    from_env = load_settings(config)
    assert from_env.port == 9100 and from_env.batching.max_batch_size == 64
    assert from_env.batching.max_queue_delay_us == 250  # still from the file
    assert load_settings(config, port=1234).port == 1234

    monkeypatch.setenv("SHIPYARD_CONFIG_FILE", str(config))
    assert load_settings().log_format == "json"


def test_invalid_settings_name_the_problem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ModelConfigError, match="port"):
        load_settings(port=70000)
    bad = tmp_path / "bad.toml"
    bad.write_text("colour = 'blue'\n")
    with pytest.raises(ModelConfigError, match="colour"):
        load_settings(bad)
    with pytest.raises(ModelConfigError, match="not found"):
        load_settings(tmp_path / "missing.toml")


def test_model_toml(tmp_path: Path) -> None:
    assert read_model_config(tmp_path) == ModelConfig()
    (tmp_path / "model.toml").write_text(
        "instances = 3\nwarmup = false\n[batching]\nenabled = false\nmax_queue_size = 10\n"
        "[version_policy]\nspecific = [1, 4]\n[runtime]\nintra_op_threads = 2\n"
    )
    config = read_model_config(tmp_path)
    assert config.instances == 3 and config.warmup is False
    assert config.version_policy.select([1, 2, 3, 4, 5]) == [1, 4]
    assert config.runtime is not None and config.runtime.intra_op_threads == 2
    batching = resolve(config, ServerSettings()).batching
    assert batching.enabled is False and batching.max_queue_size == 10
    assert batching.max_batch_size == ServerSettings().batching.max_batch_size


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("instances = [1,\n", "not valid TOML"),
        ("instance = 2\n", "instance"),
        ("[batching]\nmax_batch_size = 0\n", "max_batch_size"),
        ("[version_policy]\nlatest = 1\nall = true\n", "exactly one"),
        ('version_policy = "newest"\n', "version_policy"),
    ],
)
def test_model_toml_errors_name_file_and_field(tmp_path: Path, text: str, problem: str) -> None:
    (tmp_path / "model.toml").write_text(text)
    with pytest.raises(ModelConfigError, match=problem) as info:
        read_model_config(tmp_path)
    assert "model.toml" in str(info.value)


def test_version_policies_select() -> None:
    versions = [3, 1, 2, 5]
    assert VersionPolicy().select(versions) == [5]
    assert VersionPolicy(latest=2).select(versions) == [3, 5]
    assert VersionPolicy.model_validate("all").select(versions) == [1, 2, 3, 5]
    assert VersionPolicy(specific=(2, 9)).select(versions) == [2]
    assert VersionPolicy(latest=2).describe() == "latest = 2"


def _record(message: str, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord(
        "shipyard.serving.test", logging.INFO, __file__, 1, message, (), None
    )
    for key, value in extra.items():
        setattr(record, key, value)
    RequestIdFilter().filter(record)
    return record


def test_json_and_text_logs_carry_the_request_id() -> None:
    token = request_id.set("rid-1")
    try:
        line = JsonFormatter().format(_record("loaded", model="m", version=2))
        text = TextFormatter().format(_record("loaded", model="m"))
    finally:
        request_id.reset(token)
    doc = orjson.loads(line)
    assert doc["message"] == "loaded" and doc["request_id"] == "rid-1"
    assert doc["model"] == "m" and doc["version"] == 2 and doc["level"] == "info"
    assert "[rid-1]" in text and "model=m" in text
