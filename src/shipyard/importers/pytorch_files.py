"""Open .pt2 and .pt/.pth files safely: refuse TorchScript, scan the pickles, then load.

.pt/.pt2 are zip archives of pickles. Every file is scanned with
`shipyard.safepickle.scan` before torch opens it. The scan matters for .pt2 too:
torch 2.13's `torch.export.load` does not restrict itself to `weights_only=True` — it loads
pickled tensor-subclass weights and constants with `torch.load(weights_only=False)`, opaque
constants with `pickle.loads`, and legacy-format archives with `weights_only=True` falling
back to `weights_only=False`.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from shipyard.errors import UnsafePickleError, UnsupportedModelError
from shipyard.importers.pytorch_checks import summary
from shipyard.importers.pytorch_export import quiet


def load_checked(
    path: Path, *, trust_pickle: bool, extra_allowed: Iterable[str]
) -> torch.nn.Module | torch.export.ExportedProgram:
    """The ExportedProgram in a .pt2, or the whole nn.Module pickled in a .pt/.pth."""
    _refuse_torchscript(path)
    from shipyard.safepickle.scan import scan_file

    report = scan_file(path, extra_allowed=tuple(extra_allowed))
    pt2 = path.suffix.lower() == ".pt2"
    if not report.safe:
        raise UnsafePickleError(_unsafe_message(path, report, pt2=pt2, trust_pickle=trust_pickle))
    if pt2:
        return _load_pt2(path)
    return _load_pickled_module(path, trust_pickle=trust_pickle)


def _load_pt2(path: Path) -> torch.export.ExportedProgram:
    try:
        with quiet():
            return torch.export.load(str(path))
    except Exception as exc:
        raise UnsupportedModelError(
            f"{path}: not a readable torch.export archive ({summary(exc)}); create it with "
            "torch.export.save(torch.export.export(model, args), path)"
        ) from exc


def _load_pickled_module(path: Path, *, trust_pickle: bool) -> torch.nn.Module:
    try:
        obj: Any = torch.load(path, weights_only=True, map_location="cpu")
    except Exception:
        obj = None  # holds objects beyond tensors: most likely a whole pickled nn.Module
    if obj is None or isinstance(obj, torch.nn.Module):
        if not trust_pickle:
            raise UnsafePickleError(
                f"{path}: holds pickled Python objects (a whole nn.Module?), and loading one runs "
                "its classes' code. Prefer torch.export.save to a .pt2 or pack the live module; "
                "otherwise review the file and pass --trust-pickle (trust_pickle=True)"
            )
        try:
            obj = torch.load(path, weights_only=False, map_location="cpu")
        except Exception as exc:
            raise UnsupportedModelError(f"{path}: torch.load failed ({summary(exc)})") from exc
    if isinstance(obj, torch.nn.Module):
        return obj
    if isinstance(obj, Mapping) and any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UnsupportedModelError(
            f"{path}: holds a state_dict (weights only), which cannot be converted without the "
            "model's code; build the module in Python, load_state_dict() it, and pack the live "
            "module, or save it with torch.export.save to a .pt2 and pack that"
        )
    raise UnsupportedModelError(
        f"{path}: holds a {type(obj).__name__}, not a torch.nn.Module; pack the live module or "
        "a torch.export .pt2 file"
    )


def _refuse_torchscript(path: Path) -> None:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return  # not a zip: the pickle scan reports on it
    if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
        raise UnsupportedModelError(
            f"{path}: is a TorchScript archive (torch.jit.save), which Shipyard does not import; "
            "pack the eager nn.Module or a torch.export .pt2 file instead"
        )


def _unsafe_message(path: Path, report: Any, *, pt2: bool, trust_pickle: bool) -> str:
    findings = list(report.findings)
    shown = "; ".join(f.describe() for f in findings[:8])
    more = f"; and {len(findings) - 8} more" if len(findings) > 8 else ""
    if pt2:
        advice = "Review them and pass --allow-global for each global you trust"
    else:
        advice = (
            "A whole pickled nn.Module names its own classes and torch.nn's; review them, then "
            "pass --allow-global for each one you trust"
            + ("" if trust_pickle else " together with --trust-pickle")
            + " (safer: torch.export.save to a .pt2, or pack the live module from Python)"
        )
    return f"{path}: unsafe to load ({len(findings)} finding(s)): {shown}{more}. {advice}"
