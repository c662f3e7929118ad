"""A loaded, verified model version: manifest plus a runtime, with a friendly infer()."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path

import numpy as np
import onnx

from shipyard.errors import IntegrityError, PackageError
from shipyard.package.graph_specs import graph_signature
from shipyard.package.hashing import sha256_bytes
from shipyard.package.manifest import MODEL_FILE, Manifest
from shipyard.package.store import read_verified, resolve_version_dir
from shipyard.package.swap import read_stable
from shipyard.package.tensorspec import TensorSpec
from shipyard.processing import padding
from shipyard.processing.padding import BatchPadding
from shipyard.processing.runtime import Processor, verified_reader
from shipyard.runtime.base import Runtime, RuntimeOptions
from shipyard.runtime.onnxrt import OnnxRuntime
from shipyard.runtime.synthesis import InputHints, graph_hints


class Model:
    """One version of a packaged model, verified on load and ready for inference."""

    def __init__(
        self,
        path: Path,
        manifest: Manifest,
        runtime: Runtime,
        *,
        graph_hints: Mapping[str, InputHints] | None = None,
        assets: Mapping[str, bytes] | None = None,
        batch_padding: BatchPadding | None = None,
    ) -> None:
        self.path = path
        self.manifest = manifest
        self.runtime = runtime
        self.graph_hints: dict[str, InputHints] = dict(graph_hints or {})
        """What the graph says about valid input values (for synthesized warm-up inputs)."""
        self.processor: Processor | None = None
        """The declared text/image/label processing (manifest `processing`), loaded now so
        a bad tokenizer refuses the version at load. `assets`: an encrypted package's
        processing assets, decrypted in memory; `batch_padding`: what the graph allows the
        batcher to pad (`shipyard.processing.padding.batch_padding`)."""
        if manifest.processing is not None:
            try:
                self.processor = Processor.load(
                    manifest.processing,
                    read_file=verified_reader(
                        {p: f.sha256 for p, f in manifest.files.items()},
                        str(path),
                        decrypted=assets,
                    ),
                    where=str(path),
                    batch_padding=batch_padding,
                )
            except BaseException:
                runtime.close()
                raise

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> int:
        return self.manifest.version

    @property
    def inputs(self) -> list[TensorSpec]:
        return self.manifest.inputs

    @property
    def outputs(self) -> list[TensorSpec]:
        return self.manifest.outputs

    def infer(
        self,
        inputs: Mapping[str, np.ndarray] | np.ndarray,
        output_names: Sequence[str] | None = None,
    ) -> dict[str, np.ndarray]:
        """Run the model; a bare array is accepted when the model has exactly one input."""
        if isinstance(inputs, np.ndarray):
            if len(self.inputs) != 1:
                raise PackageError(
                    f"{self.name} takes {len(self.inputs)} inputs "
                    f"({[s.name for s in self.inputs]}); pass a dict of name -> array"
                )
            inputs = {self.inputs[0].name: inputs}
        return self.runtime.infer(inputs, output_names)

    def close(self) -> None:
        self.runtime.close()

    def __repr__(self) -> str:
        return f"Model({self.name!r}, version={self.version}, path={str(self.path)!r})"


def load_model(
    path: str | Path,
    *,
    version: int | None = None,
    options: RuntimeOptions | None = None,
    public_key: str | Path | None = None,
    kek: bytes | None = None,
) -> Model:
    """Verify a package version (schema, digest, every hash, signature) and open a session.

    With `public_key`, a valid `model.sig` made by its private key is required. An encrypted
    package needs its key-encryption key: `kek`, else $SHIPYARD_KEK; it is decrypted in memory.
    """
    version_dir = resolve_version_dir(Path(path), version)
    return read_stable(
        version_dir,
        partial(_load, version_dir, options=options, public_key=public_key, kek=kek),
        discard=Model.close,
    )


def _load(
    version_dir: Path,
    *,
    options: RuntimeOptions | None,
    public_key: str | Path | None,
    kek: bytes | None,
) -> Model:
    signed: dict[str, str] | None = None
    if public_key is not None:
        from shipyard.security.signing import verify_version

        signed = verify_version(version_dir, public_key).digests
    manifest = read_verified(version_dir)
    model_path = version_dir / MODEL_FILE
    external: dict[str, bytes] = {}
    assets: dict[str, bytes] = {}
    payload: bytes | Path
    if manifest.external_data and manifest.encryption is None:
        # Weights past 2 GB stay in their files: ONNX Runtime reads them from the paths whose
        # hashes were verified just now; only the graph is read here.
        payload = model_path
        try:
            proto = onnx.load(str(model_path), load_external_data=False)
        except Exception as exc:
            raise IntegrityError(str(model_path), f"not a readable ONNX model ({exc})") from exc
    else:
        if manifest.encryption is not None:
            model_path = version_dir / manifest.encryption.file
            payload, external, assets = _decrypt(version_dir, manifest, kek)
        else:
            payload = model_path.read_bytes()
            # Re-hash the exact bytes handed to the runtime: a swap after verification is caught.
            digest = sha256_bytes(payload)
            if digest != manifest.files[MODEL_FILE].sha256:
                raise IntegrityError(str(model_path), "changed while loading (sha256 mismatch)")
            if signed is not None and signed.get(MODEL_FILE) != digest:
                raise IntegrityError(
                    str(model_path), "differs from the signed file (changed while loading)"
                )
        try:
            proto = onnx.load_from_string(payload)
        except Exception as exc:
            raise IntegrityError(str(model_path), f"not a readable ONNX model ({exc})") from exc
    _check_graph(model_path, manifest, proto)
    runtime = OnnxRuntime(
        payload,
        inputs=manifest.inputs,
        outputs=manifest.outputs,
        options=options,
        source=str(model_path),
        external_data=external,
    )
    text = manifest.processing.text if manifest.processing is not None else None
    return Model(
        version_dir,
        manifest,
        runtime,
        graph_hints=graph_hints(proto),
        assets=assets,
        batch_padding=padding.batch_padding(text, proto) if text is not None else None,
    )


def _decrypt(
    version_dir: Path, manifest: Manifest, kek: bytes | None
) -> tuple[bytes, dict[str, bytes], dict[str, bytes]]:
    """The model, its external data files and its processing assets, decrypted in memory."""
    from shipyard.security.encryption import (
        decrypt_assets,
        decrypt_external_data,
        decrypt_model_bytes,
    )
    from shipyard.security.errors import KeyRequiredError
    from shipyard.security.keys import kek_from_env

    kek = kek if kek is not None else kek_from_env()
    if kek is None:
        raise KeyRequiredError(
            f"{manifest.name} version {manifest.version} ({version_dir}): model is encrypted; "
            "pass --key-file or set SHIPYARD_KEK"
        )
    model = decrypt_model_bytes(version_dir, manifest, kek)
    external = decrypt_external_data(version_dir, manifest, kek)
    return model, external, decrypt_assets(version_dir, manifest, kek)


def _check_graph(path: Path, manifest: Manifest, proto: onnx.ModelProto) -> None:
    inputs, outputs = graph_signature(proto)
    _check_signature(path, "input", manifest.inputs, inputs)
    _check_signature(path, "output", manifest.outputs, outputs)


def _check_signature(
    path: Path, kind: str, declared: Sequence[TensorSpec], actual: Sequence[TensorSpec]
) -> None:
    want = [(s.name, s.dtype, len(s.shape)) for s in declared]
    got = [(s.name, s.dtype, len(s.shape)) for s in actual]
    if want != got:
        raise IntegrityError(str(path), f"graph {kind}s {got} do not match the manifest's {want}")
