"""Processing assets are encrypted with the model, decrypted in memory, signed and checked."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import shipyard
from shipyard.errors import IntegrityError
from shipyard.model import load_model
from shipyard.package.hashing import sha256_bytes
from shipyard.package.manifest import FileEntry, read_manifest
from shipyard.security import encryption
from shipyard.security.encryption import encrypt_version
from shipyard.security.errors import DecryptionError
from shipyard.security.keys import KeyPaths, init_keys, read_secret
from shipyard.security.signing import sign_version, verify_version

from .test_text import app_client
from .tiny import tiny_sample

pytestmark = pytest.mark.timeout(120)
TOKENIZER = "assets/tokenizer.json"
TEXTS = {"text": np.array(["hello world", "a"], dtype=object)}


@pytest.fixture
def keys(tmp_path: Path) -> KeyPaths:
    return init_keys(tmp_path / "keys")


@pytest.fixture(autouse=True)
def _no_ambient_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SHIPYARD_KEK", raising=False)


def embeddings(model: shipyard.Model) -> np.ndarray:
    assert model.processor is not None
    out: np.ndarray = model.infer(model.processor.preprocess(TEXTS).inputs)["sentence_embedding"]
    return out


def test_encrypt_covers_the_tokenizer_and_the_server_reads_it_in_memory(
    tiny_text_repo: Path, keys: KeyPaths, tmp_path: Path
) -> None:
    version = tiny_text_repo / "tiny" / "1"
    plaintext = (version / TOKENIZER).read_bytes()
    plain = shipyard.load(tiny_text_repo / "tiny")
    want = embeddings(plain)
    plain.close()
    manifest = encrypt_version(version, read_secret(keys.data_key))
    assert manifest.encryption is not None
    assert [(a.plain, a.file) for a in manifest.encryption.assets] == [
        (TOKENIZER, TOKENIZER + ".enc")
    ]
    assert manifest.encryption.assets[0].plaintext_sha256 == sha256_bytes(plaintext)
    assert sorted(manifest.files) == ["assets/tokenizer.json.enc", "model.onnx.enc"]
    # No file under the test folder holds the tokenizer's text any more (the vocabulary).
    needle = b'"hello":4'
    assert needle in plaintext.replace(b" ", b"")
    for path in version.rglob("*"):
        if path.is_file():
            assert needle not in path.read_bytes().replace(b" ", b""), path
    model = load_model(tiny_text_repo / "tiny", kek=read_secret(keys.data_key))
    np.testing.assert_array_equal(embeddings(model), want)
    model.close()
    # A second run under the same key changes nothing.
    again = encrypt_version(version, read_secret(keys.data_key))
    assert again.digest == read_manifest(version).digest == manifest.digest


@pytest.mark.anyio
async def test_server_takes_text_for_an_encrypted_package(
    tiny_text_repo: Path, keys: KeyPaths
) -> None:
    encrypt_version(tiny_text_repo / "tiny" / "1", read_secret(keys.data_key))
    async with app_client(tiny_text_repo, key_file=keys.data_key) as client:
        reply = await client.post("/v1/embeddings", json={"model": "tiny", "input": ["a"]})
        assert reply.status_code == 200, reply.text
        assert len(reply.json()["data"][0]["embedding"]) == 4


def test_tampered_encrypted_tokenizer_is_refused(tiny_text_repo: Path, keys: KeyPaths) -> None:
    version = tiny_text_repo / "tiny" / "1"
    kek = read_secret(keys.data_key)
    encrypt_version(version, kek)
    target = version / (TOKENIZER + ".enc")
    original = target.read_bytes()
    flipped = bytearray(original)
    flipped[len(flipped) // 2] ^= 1
    target.write_bytes(bytes(flipped))
    with pytest.raises(IntegrityError, match=r"tokenizer\.json\.enc.*sha256 does not match"):
        load_model(tiny_text_repo / "tiny", kek=kek)
    # Even with the manifest re-sealed over the changed bytes, the cipher itself refuses it.
    manifest = read_manifest(version)
    files = dict(manifest.files)
    files[TOKENIZER + ".enc"] = FileEntry(sha256=sha256_bytes(bytes(flipped)), size=len(flipped))
    resealed = manifest.model_copy(update={"files": files}).sealed()
    (version / "manifest.json").write_text(resealed.to_json(), encoding="utf-8")
    with pytest.raises(DecryptionError, match=r"tokenizer\.json\.enc: chunk 1 of 1 fails auth"):
        load_model(tiny_text_repo / "tiny", kek=kek)


def test_signature_covers_the_encrypted_asset(tiny_text_repo: Path, keys: KeyPaths) -> None:
    version = tiny_text_repo / "tiny" / "1"
    kek = read_secret(keys.data_key)
    encrypt_version(version, kek)
    sign_version(version, keys.signing_key)
    assert TOKENIZER + ".enc" in verify_version(version, keys.public_key).files
    model = load_model(tiny_text_repo / "tiny", kek=kek, public_key=keys.public_key)
    assert model.processor is not None
    model.close()


def test_a_version_encrypted_before_assets_were_gets_them_encrypted(
    tiny_text_repo: Path, keys: KeyPaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    version = tiny_text_repo / "tiny" / "1"
    kek = read_secret(keys.data_key)
    with monkeypatch.context() as patch:  # how `shipyard encrypt` behaved before
        patch.setattr(encryption, "plain_assets", lambda manifest: [])
        old = encrypt_version(version, kek)
    assert old.encryption is not None and not old.encryption.assets
    assert (version / TOKENIZER).is_file()
    upgraded = encrypt_version(version, kek)
    assert upgraded.encryption is not None
    assert [a.plain for a in upgraded.encryption.assets] == [TOKENIZER]
    assert upgraded.encryption.wrapped_key == old.encryption.wrapped_key  # same data key
    assert not (version / TOKENIZER).exists()
    model = load_model(tiny_text_repo / "tiny", kek=kek)
    assert embeddings(model).shape == (2, 4)
    np.testing.assert_allclose(
        np.linalg.norm(model.infer(tiny_sample())["sentence_embedding"], axis=1), 1.0, rtol=1e-5
    )
    model.close()


def test_tampered_plain_tokenizer_names_the_file(tiny_text_repo: Path) -> None:
    tokenizer = tiny_text_repo / "tiny" / "1" / TOKENIZER
    data = tokenizer.read_bytes()
    swapped = re.sub(rb'"a":(\s*)6', rb'"a":\g<1>7', data)  # same size: only the hash tells
    assert swapped != data and len(swapped) == len(data)
    tokenizer.write_bytes(swapped)
    with pytest.raises(IntegrityError, match=r"assets/tokenizer\.json: sha256 does not match"):
        shipyard.load(tiny_text_repo / "tiny")
