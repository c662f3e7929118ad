"""Keras importer: models and .keras/.h5 files on the torch backend survive pack → load → infer."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import shipyard
from shipyard.errors import UnsafePickleError, UsageError

pytest.importorskip("torch", reason="Keras runs on the torch backend: needs the 'keras' extra")
pytest.importorskip("onnxscript", reason="torch's dynamo ONNX exporter needs onnxscript")
if importlib.util.find_spec("keras") is None:
    pytest.skip("keras is not installed (the 'keras' extra)", allow_module_level=True)

if os.environ.get("KERAS_BACKEND", "torch") != "torch":  # the user's choice, not a regression
    pytest.skip("KERAS_BACKEND names another backend in this environment", allow_module_level=True)

from shipyard.importers.keras import import_keras

keras = import_keras()

ATOL = 1e-4


def _rand(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _sequential() -> Any:
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((6,), name="features"),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )


def _two_inputs() -> Any:
    keras.utils.set_random_seed(1)
    left = keras.Input((4,), name="left")
    right = keras.Input((2,), name="right")
    hidden = keras.layers.Dense(5, activation="relu")(keras.layers.Concatenate()([left, right]))
    score = keras.layers.Dense(3, name="score")(hidden)
    prob = keras.layers.Dense(1, activation="sigmoid", name="prob")(hidden)
    return keras.Model([left, right], [score, prob])


def _cnn() -> Any:
    keras.utils.set_random_seed(2)
    image = keras.Input((8, 8, 3), name="image")
    x = keras.layers.Conv2D(4, 3, padding="same")(image)
    norm = keras.layers.BatchNormalization()
    x = keras.layers.MaxPooling2D()(keras.layers.ReLU()(norm(x)))
    model = keras.Model(image, keras.layers.Dense(2)(keras.layers.Flatten()(x)))
    norm.moving_mean.assign(np.linspace(-0.5, 0.5, 4).astype("float32"))
    norm.moving_variance.assign(np.linspace(0.5, 2.0, 4).astype("float32"))
    return model


def _predict(model: Any, x: Any) -> list[np.ndarray]:
    out = model.predict(x, verbose=0)
    return [np.asarray(o) for o in out] if isinstance(out, list) else [np.asarray(out)]


def _pack_load(model: Any, tmp_path: Path, sample: Any = None) -> shipyard.Model:
    shipyard.pack(model, name="m", repo=tmp_path / "repo", sample_input=sample)
    return shipyard.load(tmp_path / "repo" / "m")


def test_sequential_object_without_sample(tmp_path: Path) -> None:
    model = _sequential()
    loaded = _pack_load(model, tmp_path)
    assert [(s.name, s.shape) for s in loaded.inputs] == [("features", (-1, 6))]
    assert loaded.manifest.source.framework == "keras"
    assert loaded.manifest.metadata["keras_backend"] == "torch"
    assert loaded.manifest.metadata["exporter"] == "torch.onnx.export(dynamo=True)"
    for batch in (3, 10):
        x = _rand(batch, 6, seed=batch)
        np.testing.assert_allclose(loaded.infer(x)["output"], _predict(model, x)[0], atol=ATOL)
    loaded.close()


def test_functional_two_inputs_two_outputs_object(tmp_path: Path) -> None:
    model = _two_inputs()
    loaded = _pack_load(model, tmp_path, {"right": _rand(2, 2), "left": _rand(2, 4)})
    assert [s.name for s in loaded.inputs] == ["left", "right"]
    assert [s.name for s in loaded.outputs] == ["score", "prob"]
    left, right = _rand(5, 4, seed=1), _rand(5, 2, seed=2)
    got = loaded.infer({"left": left, "right": right})
    want = _predict(model, [left, right])
    np.testing.assert_allclose(got["score"], want[0], atol=ATOL)
    np.testing.assert_allclose(got["prob"], want[1], atol=ATOL)
    loaded.close()


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_functional_two_inputs_from_file(tmp_path: Path, suffix: str) -> None:
    model = _two_inputs()
    path = tmp_path / f"model{suffix}"
    model.save(path)
    loaded = _pack_load(path, tmp_path)
    assert loaded.manifest.metadata["keras_file_format"] == suffix.lstrip(".")
    left, right = _rand(7, 4, seed=3), _rand(7, 2, seed=4)
    got = loaded.infer({"left": left, "right": right})
    want = _predict(model, [left, right])
    np.testing.assert_allclose(got["score"], want[0], atol=ATOL)
    np.testing.assert_allclose(got["prob"], want[1], atol=ATOL)
    loaded.close()


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_sequential_from_file(tmp_path: Path, suffix: str) -> None:
    model = _sequential()
    path = tmp_path / f"model{suffix}"
    model.save(path)
    loaded = _pack_load(path, tmp_path, _rand(4, 6))
    x = _rand(9, 6, seed=5)
    np.testing.assert_allclose(loaded.infer(x)["output"], _predict(model, x)[0], atol=ATOL)
    loaded.close()


def test_cnn_with_batchnorm_from_keras_file(tmp_path: Path) -> None:
    model = _cnn()
    path = tmp_path / "cnn.keras"
    model.save(path)
    loaded = _pack_load(path, tmp_path)
    assert loaded.inputs[0].shape == (-1, 8, 8, 3)
    x = _rand(3, 8, 8, 3, seed=6)
    np.testing.assert_allclose(loaded.infer(x)["output"], _predict(model, x)[0], atol=ATOL)
    loaded.close()


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_lambda_layer_file_is_refused(tmp_path: Path, suffix: str) -> None:
    model = keras.Sequential(
        [
            keras.Input((6,), name="features"),
            keras.layers.Lambda(lambda x: x * 2.0),
            keras.layers.Dense(2),
        ]
    )
    path = tmp_path / f"lambda{suffix}"
    model.save(path)
    with pytest.raises(UnsafePickleError, match="Lambda layer"):
        shipyard.pack(path, name="m", repo=tmp_path / "repo")
    assert not (tmp_path / "repo").exists()


def test_unknown_feature_dims_need_a_sample(tmp_path: Path) -> None:
    model = keras.Sequential([keras.Input((None, 3), name="seq"), keras.layers.Dense(2)])
    with pytest.raises(UsageError, match="sample_input"):
        shipyard.pack(model, name="m", repo=tmp_path)


def test_trained_model_on_bundled_data_round_trips(tmp_path: Path) -> None:
    """A real model: a Keras MLP trained on scikit-learn's breast-cancer data, via .keras."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    x, y = load_breast_cancer(return_X_y=True)
    x = ((x - x.mean(axis=0)) / x.std(axis=0)).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=0)
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((30,), name="features"),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(2, activation="softmax"),
        ]
    )
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(x_train, y_train, epochs=15, batch_size=32, verbose=0)
    path = tmp_path / "tabular.keras"
    model.save(path)
    packed = shipyard.load(shipyard.pack(path, name="tabular", repo=tmp_path / "m").path)
    probs = next(iter(packed.infer(x_test).values()))
    np.testing.assert_allclose(probs, np.asarray(model.predict(x_test, verbose=0)), atol=ATOL)
    accuracy = float((probs.argmax(axis=1) == y_test).mean())
    assert accuracy > 0.9


def test_dynamic_axes_beyond_the_batch(tmp_path: Path) -> None:
    """A sequence model whose time axis is declared dynamic runs at other lengths."""
    keras.utils.set_random_seed(3)
    tokens = keras.Input((None, 4), name="tokens")
    pooled = keras.layers.GlobalAveragePooling1D()(keras.layers.Dense(6, activation="relu")(tokens))
    model = keras.Model(tokens, keras.layers.Dense(2, name="score")(pooled))
    result = shipyard.pack(
        model,
        name="seq",
        repo=tmp_path,
        sample_input=_rand(3, 5, 4),
        dynamic_axes={"tokens": {1: "time"}},
    )
    loaded = shipyard.load(result.path)
    assert loaded.inputs[0].shape == (-1, -1, 4)
    for batch, length in ((2, 3), (4, 9)):
        x = _rand(batch, length, 4, seed=batch)
        got = next(iter(loaded.infer(x).values()))
        np.testing.assert_allclose(got, np.asarray(model.predict(x, verbose=0)), atol=ATOL)


def test_input_and_output_names_that_equal_exporter_node_names(tmp_path: Path) -> None:
    """Inputs named `cat`/`concat` and outputs `dense`/`add` clash with the exporter's own
    value names (its Concat output is `cat`); the package still keeps the user's names."""
    keras.utils.set_random_seed(4)
    cat = keras.Input((4,), name="cat")
    concat = keras.Input((2,), name="concat")
    hidden = keras.layers.Dense(5, activation="relu", name="hidden")(
        keras.layers.Concatenate(name="join")([cat, concat])
    )
    dense = keras.layers.Dense(3, name="dense")(hidden)
    add = keras.layers.Dense(1, name="add")(hidden)
    model = keras.Model([cat, concat], [dense, add])
    result = shipyard.pack(model, name="clash", repo=tmp_path)
    loaded = shipyard.load(result.path)
    assert [s.name for s in loaded.inputs] == ["cat", "concat"]
    assert [s.name for s in loaded.outputs] == ["dense", "add"]
    a, b = _rand(6, 4, seed=5), _rand(6, 2, seed=6)
    got = loaded.infer({"cat": a, "concat": b})
    want = _predict(model, [a, b])
    np.testing.assert_allclose(got["dense"], want[0], atol=ATOL)
    np.testing.assert_allclose(got["add"], want[1], atol=ATOL)
    loaded.close()


def test_rename_values_renames_clashing_internal_values() -> None:
    """The renaming helper on a hand-built graph: an internal `x` moves aside for input `x`."""
    import onnx
    from onnx import TensorProto, helper

    from shipyard.importers.graph_names import rename_values

    graph = helper.make_graph(
        [
            helper.make_node("Relu", ["p_in"], ["x"]),
            helper.make_node("Neg", ["x"], ["p_out"]),
        ],
        "g",
        [helper.make_tensor_value_info("p_in", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info("p_out", TensorProto.FLOAT, ["batch", 2])],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    rename_values(proto.graph, {"p_in": "x", "p_out": "y"})
    onnx.checker.check_model(proto, full_check=True)
    assert [v.name for v in proto.graph.input] == ["x"]
    assert [v.name for v in proto.graph.output] == ["y"]
    assert [list(n.input) for n in proto.graph.node] == [["x"], ["x_1"]]
    assert [list(n.output) for n in proto.graph.node] == [["x_1"], ["y"]]
