"""Every malicious file is refused by the scanner and the loader, and no payload ever runs."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from make_attacks import Attack, make_attacks, naive_load_command

from shipyard.errors import UnsafePickleError
from shipyard.safepickle.load import load_pickle_file
from shipyard.safepickle.scan import scan_file

ATTACK_NAMES = [
    "os_system",
    "posix_system",
    "subprocess_popen",
    "subprocess_check_output",
    "builtins_eval",
    "builtins_exec",
    "builtins_getattr",
    "builtins_import",
    "py2_builtin_eval",
    "operator_attrgetter",
    "operator_methodcaller",
    "functools_partial",
    "importlib_import_module",
    "stack_global_memo_proto4",
    "stack_global_computed",
    "inst_proto0",
    "obj_proto1",
    "sklearn_nested_payload",
    "concatenated_second_malicious",
    "truncated_after_payload",
    "trailing_garbage",
    "ext_opcode",
    "extra_allowed_os_system",
    "numpy_ndarray_raw_buffer",
    "numpy_forged_dtype_flags",
    "numpy_malformed_dtype_state",
    "numpy_object_array_short_list",
    "joblib_after_array",
    "joblib_zlib",
    "joblib_gzip",
    "joblib_lzma",
    "joblib_bz2",
    "joblib_object_array",
    "joblib_sklearn_nested",
    "joblib_frame_desync",
    "joblib_forged_dtype",
    "torch_zip_payload",
    "zip_pickle_member",
]
# attacks whose payload a naive loader really runs (checked in a subprocess)
LIVE = [
    "os_system",
    "stack_global_memo_proto4",
    "stack_global_computed",
    "inst_proto0",
    "truncated_after_payload",
    "sklearn_nested_payload",
    "joblib_after_array",
    "joblib_gzip",
    "joblib_object_array",
    "joblib_frame_desync",
    "torch_zip_payload",
]


@pytest.fixture(scope="module")
def canary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("canary") / "PWNED"


@pytest.fixture(scope="module")
def attacks(tmp_path_factory: pytest.TempPathFactory, canary: Path) -> dict[str, Attack]:
    generated = make_attacks(tmp_path_factory.mktemp("attacks"), canary)
    return {attack.name: attack for attack in generated}


@pytest.fixture(autouse=True)
def _canary_stays_absent(canary: Path) -> object:
    assert not canary.exists()
    yield
    assert not canary.exists(), "a payload ran"


def _matches(attack: Attack, report_findings: tuple[object, ...]) -> bool:
    return any(
        attack.expect == getattr(f, "global_name", None)
        or attack.expect in getattr(f, "reason", "")
        for f in report_findings
    )


def test_every_attack_is_generated(attacks: dict[str, Attack]) -> None:
    assert sorted(attacks) == sorted(ATTACK_NAMES)


@pytest.mark.parametrize("name", ATTACK_NAMES)
def test_scan_refuses(attacks: dict[str, Attack], name: str) -> None:
    attack = attacks[name]
    report = scan_file(attack.path)
    assert not report.safe
    assert _matches(attack, report.findings), [f.describe() for f in report.findings]
    assert all(f.position >= 0 for f in report.findings)
    if attack.extra_allowed:
        with pytest.raises(UnsafePickleError, match="hard-deny"):
            scan_file(attack.path, extra_allowed=attack.extra_allowed)


@pytest.mark.parametrize("name", ATTACK_NAMES)
def test_loader_refuses_untrusted(attacks: dict[str, Attack], name: str) -> None:
    with pytest.raises(UnsafePickleError, match="--trust-pickle"):
        load_pickle_file(attacks[name].path, trust_pickle=False)


@pytest.mark.parametrize("name", ATTACK_NAMES)
def test_loader_refuses_trusted(attacks: dict[str, Attack], name: str) -> None:
    attack = attacks[name]
    with pytest.raises(UnsafePickleError):
        load_pickle_file(attack.path, trust_pickle=True, extra_allowed=attack.extra_allowed)


def test_findings_point_at_the_payload(attacks: dict[str, Attack]) -> None:
    report = scan_file(attacks["joblib_after_array"].path)
    (finding,) = [f for f in report.findings if f.global_name == "posix.system"]
    assert finding.opcode == "STACK_GLOBAL"
    assert finding.position > 64 * 8  # after the raw bytes of the 64-float array
    assert report.format == "joblib"


def test_payloads_are_live(tmp_path: Path) -> None:
    """The attacks are real: loaded naively (in a subprocess) each one creates its canary."""
    live: list[tuple[Attack, Path]] = []
    for name in LIVE:
        canary = tmp_path / f"{name}.canary"
        (attack,) = make_attacks(tmp_path / name, canary, only={name})
        live.append((attack, canary))
    subprocess.run(naive_load_command([a for a, _ in live]), check=True, timeout=120)
    ran = {attack.name for attack, canary in live if canary.exists()}
    assert ran == set(LIVE)
