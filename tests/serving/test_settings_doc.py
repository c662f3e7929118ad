"""docs/serving.md's settings table is the one generated from the settings' docstrings."""

from __future__ import annotations

from pathlib import Path

from shipyard.serving import settings_doc
from shipyard.serving.settings import ServerSettings

DOC = Path(__file__).resolve().parents[2] / "docs" / "serving.md"


def test_every_setting_has_a_docstring() -> None:
    assert settings_doc.undocumented() == []


def test_the_settings_table_in_the_docs_is_generated() -> None:
    text = DOC.read_text(encoding="utf-8")
    assert settings_doc.replace_table(text) == text, (
        f"the settings table in {DOC} differs from the settings' docstrings; regenerate it "
        f"with `{settings_doc.REGENERATE}`"
    )


def test_the_table_names_every_setting_with_its_environment_variable() -> None:
    table = settings_doc.settings_table()
    for name in ServerSettings.model_fields:
        assert f"| `{name}" in table
    assert "| `limits.max_body_bytes` | `SHIPYARD_LIMITS__MAX_BODY_BYTES` | 64 MiB |" in table
    assert "| `batching.enabled` | `SHIPYARD_BATCHING__ENABLED` | none |" in table
