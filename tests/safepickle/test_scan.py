"""The opcode scanner accepts real fitted models in every pickle/joblib flavour and nothing else."""

from __future__ import annotations

import io
import pickle
import struct
import sys
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.cluster import KMeans
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import (
    GradientBoostingClassifier,
    HistGradientBoostingClassifier,
    RandomForestClassifier,
)
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from sklearn.svm import SVC

from shipyard.errors import NotFoundError, UnsafePickleError, UnsupportedModelError, UsageError
from shipyard.safepickle.allowlist import hard_deny_reason
from shipyard.safepickle.load import load_pickle_file
from shipyard.safepickle.scan import DEFAULT_ALLOWLIST, scan_bytes, scan_file


class Doubler(TransformerMixin, BaseEstimator):
    """A user's own transformer: not on the allowlist unless the user says so."""

    def fit(self, x: Any, y: Any = None) -> Doubler:
        return self

    def transform(self, x: Any) -> Any:
        return np.asarray(x, dtype=float) * 2


DOUBLER = f"{Doubler.__module__}.{Doubler.__qualname__}"


def _mixed(x: np.ndarray) -> np.ndarray:
    out = np.empty((len(x), 4), dtype=object)
    out[:, :3] = x[:, :3]
    out[:, 3] = np.where(x[:, 3] > 1.0, "wide", "narrow")
    return out


def _pipeline() -> Pipeline:
    columns = ColumnTransformer(
        [
            ("num", StandardScaler(), [0, 1, 2]),
            ("cat", OneHotEncoder(handle_unknown="ignore"), [3]),
        ]
    )
    return Pipeline([("prep", columns), ("clf", LogisticRegression(max_iter=500))])


MODELS: dict[str, Callable[[], Any]] = {
    "logistic": lambda: LogisticRegression(max_iter=500),
    "forest": lambda: RandomForestClassifier(n_estimators=8, random_state=0),
    "boosting": lambda: GradientBoostingClassifier(n_estimators=10, random_state=0),
    "svc": lambda: SVC(),
    "pipeline": _pipeline,
    "kmeans": lambda: KMeans(n_clusters=3, n_init=2, random_state=0),
}
FORMATS = ["pickle-0", "pickle-2", "pickle-5", "joblib", "zlib", "gzip", "bz2", "lzma", "xz"]


@pytest.fixture(scope="module")
def fitted(iris: tuple[np.ndarray, np.ndarray]) -> dict[str, tuple[Any, np.ndarray]]:
    x, y = iris
    out: dict[str, tuple[Any, np.ndarray]] = {}
    for name, make in MODELS.items():
        data = _mixed(x) if name == "pipeline" else x
        model = make()
        model.fit(data) if name == "kmeans" else model.fit(data, y)
        out[name] = (model, data)
    return out


def _dump(obj: object, path: Path, fmt: str) -> str:
    """Write obj in the given flavour; return the format the scanner should report."""
    if fmt.startswith("pickle-"):
        path.write_bytes(pickle.dumps(obj, protocol=int(fmt.split("-")[1])))
        return "pickle"
    if fmt == "joblib":
        joblib.dump(obj, path)
        return "joblib"
    joblib.dump(obj, path, compress=(fmt, 3))
    return f"joblib-compressed:{fmt}"


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", list(MODELS))
def test_fitted_models_scan_clean_and_predict_identically(
    fitted: dict[str, tuple[Any, np.ndarray]], tmp_path: Path, name: str, fmt: str
) -> None:
    model, data = fitted[name]
    path = tmp_path / "model.bin"
    expected = _dump(model, path, fmt)
    report = scan_file(path)
    assert report.safe, [f.describe() for f in report.findings]
    assert report.format == expected
    assert report.pickles >= 1
    loaded: Any = load_pickle_file(path, trust_pickle=True)
    assert type(loaded) is type(model)
    np.testing.assert_array_equal(loaded.predict(data), model.predict(data))


def test_default_allowlist_never_overlaps_the_hard_deny_list() -> None:
    for full in DEFAULT_ALLOWLIST:
        module, _, name = full.rpartition(".")
        assert hard_deny_reason(module, name) is None, full


@pytest.mark.parametrize(
    "name", ["os.system", "posix.system", "builtins.eval", "builtins.getattr", "numpy.load"]
)
def test_extra_allowed_cannot_unlock_hard_denied_globals(name: str) -> None:
    with pytest.raises(UnsafePickleError, match="hard-deny"):
        scan_bytes(pickle.dumps(1), extra_allowed=[name])


@pytest.mark.parametrize("name", ["os", "mypkg.*", "a..b", "mypkg.Model extra"])
def test_extra_allowed_must_be_exact_names(name: str) -> None:
    with pytest.raises(UsageError, match="module.QualName"):
        scan_bytes(pickle.dumps(1), extra_allowed=[name])


def test_users_own_class_needs_extra_allowed(tmp_path: Path, iris: Any) -> None:
    x, y = iris
    model = Pipeline([("double", Doubler()), ("clf", LogisticRegression(max_iter=500))])
    model.fit(x, y)
    path = tmp_path / "custom.joblib"
    joblib.dump(model, path)
    report = scan_file(path)
    assert [f.global_name for f in report.findings] == [DOUBLER]
    with pytest.raises(UnsafePickleError, match=f"--allow-global {DOUBLER}"):
        load_pickle_file(path, trust_pickle=True)
    assert scan_file(path, extra_allowed=[DOUBLER]).safe
    loaded: Any = load_pickle_file(path, trust_pickle=True, extra_allowed=[DOUBLER])
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))


def test_scanning_never_imports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    canary = tmp_path / "imported"
    (tmp_path / "probe_side_effect.py").write_text(
        f"open({str(canary)!r}, 'w').close()\nclass Thing:\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    data = b"\x80\x04" + b"\x8c\x11probe_side_effect\x8c\x05Thing\x93)\x81."
    assert not scan_bytes(data).safe
    assert scan_bytes(data, extra_allowed=["probe_side_effect.Thing"]).safe
    assert not canary.exists()
    assert "probe_side_effect" not in sys.modules


def test_stack_global_is_resolved_through_the_memo() -> None:
    def u8(text: str) -> bytes:
        return b"\x8c" + bytes([len(text)]) + text.encode()

    data = (
        b"\x80\x04" + u8("posix") + b"\x94" + u8("system") + b"\x94" + b"00"
        + u8("builtins") + u8("set") + b"00" + b"h\x00h\x01\x93" + u8("true") + b"\x85R."
    )  # fmt: skip
    report = scan_bytes(data)
    assert report.globals == ("posix.system",)
    (finding,) = report.findings
    assert (finding.opcode, finding.position) == ("STACK_GLOBAL", data.index(b"\x93"))


def test_python2_names_are_mapped_like_pickle_does() -> None:
    report = scan_bytes(pickle.dumps({1, 2}, protocol=2))
    assert report.safe
    assert report.globals == ("builtins.set",)
    assert not scan_bytes(b"c__builtin__\neval\n(Vx\ntR.").safe


def test_concatenated_benign_pickles(tmp_path: Path) -> None:
    path = tmp_path / "two.pkl"
    path.write_bytes(pickle.dumps({"a": 1}) + pickle.dumps([2]))
    report = scan_file(path)
    assert report.safe and report.pickles == 2
    assert load_pickle_file(path, trust_pickle=True) == {"a": 1}


def test_joblib_object_arrays_are_nested_pickles() -> None:
    buffer = io.BytesIO()  # a file object: joblib writes no alignment padding
    arr = np.arange(5.0)
    joblib.dump({"objs": np.array(["a", None, 3], dtype=object), "x": arr, "y": arr}, buffer)
    report = scan_bytes(buffer.getvalue())
    assert report.safe and report.format == "joblib"
    assert report.pickles == 2


def test_structured_dtypes_and_histogram_boosting(tmp_path: Path, iris: Any) -> None:
    x, y = iris
    model = HistGradientBoostingClassifier(max_iter=5).fit(x, y)
    path = tmp_path / "hgb.joblib"
    joblib.dump(model, path)
    assert scan_file(path).safe
    loaded: Any = load_pickle_file(path, trust_pickle=True)
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))


def test_frames_are_followed_like_the_python_unpickler() -> None:
    def frame(body: bytes) -> bytes:
        return b"\x95" + struct.pack("<Q", len(body)) + body

    assert scan_bytes(b"\x80\x04" + frame(b"K\x01.")).safe
    early_stop = scan_bytes(b"\x80\x04" + frame(b"K\x01.K\x02"))
    assert "frame" in early_stop.findings[0].reason
    chained = b"\x80\x04" + frame(b"K\x01" + frame(b"")) + b"."  # next frame starts at the end
    assert scan_bytes(chained).safe
    overlap = scan_bytes(b"\x80\x04" + frame(b"K\x01" + frame(b"0")[:-1] + b"0") + b".")
    assert "new frame before end" in overlap.findings[0].reason


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"\x80\x04K\x01", "truncated"),
        (b"\x80\x04\xffK\x01.", "invalid pickle opcode"),
        (b"ZF0x10      ", "Z-file"),
        (zlib.compress(pickle.dumps([1])) + b"x", "never returns"),
        (b"\x78\x9cnot zlib", "corrupt"),
        (b"PK\x03\x04broken", "not a readable zip"),
        (pickle.dumps(1) + b"\n", "not a complete pickle"),
        (b"\x80\x05\x97.", "out-of-band"),
    ],
)
def test_unparseable_input_is_a_finding(data: bytes, reason: str) -> None:
    report = scan_bytes(data)
    assert not report.safe
    assert reason in report.findings[0].reason


def test_decompression_is_capped() -> None:
    data = zlib.compress(b"\x80\x04" + b"N0" * (1 << 16) + b"N.")
    assert scan_bytes(data).safe
    capped = scan_bytes(data, max_decompressed_bytes=1 << 16)
    assert "limit" in capped.findings[0].reason


def test_zip_without_pickles(tmp_path: Path) -> None:
    path = tmp_path / "model.skops"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("schema.json", "{}")
    report = scan_file(path)
    assert (report.format, report.safe, report.pickles) == ("zip", True, 0)
    with pytest.raises(UnsupportedModelError):
        load_pickle_file(path, trust_pickle=True)
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("model.pkl", pickle.dumps([1, 2]))
    report = scan_file(path)
    assert (report.format, report.pickles) == ("zip", 1)
    assert "unknown layout" in report.findings[0].reason


def test_torch_checkpoints(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    module = torch.nn.Sequential(torch.nn.Linear(3, 2))
    weights = tmp_path / "weights.pt"
    torch.save(module.state_dict(), weights)
    report = scan_file(weights)
    assert (report.format, report.safe) == ("torch-zip", True)
    assert "torch._utils._rebuild_tensor_v2" in report.globals
    with pytest.raises(UnsupportedModelError, match="weights_only=True"):
        load_pickle_file(weights, trust_pickle=True)

    whole = tmp_path / "module.pt"
    torch.save(module, whole)
    found = {f.global_name for f in scan_file(whole).findings}
    assert "torch.nn.modules.linear.Linear" in found
    assert all(f.member and f.member.endswith("data.pkl") for f in scan_file(whole).findings)

    legacy = tmp_path / "legacy.pt"
    torch.save(module.state_dict(), legacy, _use_new_zipfile_serialization=False)
    report = scan_file(legacy)
    assert report.format == "torch-legacy"
    assert "_use_new_zipfile_serialization=True" in report.findings[0].reason


def test_exported_program_archives_are_scanned(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    program = torch.export.export(torch.nn.Linear(3, 2), (torch.randn(2, 3),))
    path = tmp_path / "model.pt2"
    torch.export.save(program, path)
    report = scan_file(path)
    assert (report.format, report.safe) == ("torch-export", True)
    assert report.pickles >= 1  # the example inputs are a torch.save zip inside the archive


def test_untrusted_pickles_are_always_refused(tmp_path: Path) -> None:
    path = tmp_path / "benign.pkl"
    path.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(UnsafePickleError, match="skops or ONNX"):
        load_pickle_file(path, trust_pickle=False)
    assert load_pickle_file(path, trust_pickle=True) == [1, 2, 3]


def test_missing_files_raise_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        scan_file(tmp_path / "nope.pkl")
    with pytest.raises(NotFoundError):
        load_pickle_file(tmp_path / "nope.pkl", trust_pickle=True)
