"""Tiny text encoder, tokenizer and image classifier built in code (no downloads)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

TINY_VOCAB = {
    "[PAD]": 0,
    "[UNK]": 1,
    "[CLS]": 2,
    "[SEP]": 3,
    "hello": 4,
    "world": 5,
    "a": 6,
    "b": 7,
}
DIM = 4


def write_tiny_tokenizer(path: Path) -> Path:
    """A WordLevel tokenizer.json: whitespace words, [CLS] text [SEP]."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    tokenizer = Tokenizer(models.WordLevel(TINY_VOCAB, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()  # type: ignore[assignment]
    tokenizer.post_processor = processors.TemplateProcessing(  # type: ignore[assignment]
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(path))
    return path


def tiny_table() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((len(TINY_VOCAB), DIM)).astype(np.float32)


def tiny_encoder() -> Any:
    """input_ids, attention_mask int64 [N, T] -> last_hidden_state = (E[ids] @ W) float [N, T, D]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.eye(DIM, dtype=np.float32) * 2.0
    nodes = [
        helper.make_node("Gather", ["E", "input_ids"], ["emb"]),
        helper.make_node("MatMul", ["emb", "W"], ["last_hidden_state"]),
        helper.make_node("Cast", ["attention_mask"], ["mask_unused"], to=TensorProto.FLOAT),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"]),
        ],
        [
            helper.make_tensor_value_info(
                "last_hidden_state", TensorProto.FLOAT, ["batch", "seq", DIM]
            )
        ],
        initializer=[numpy_helper.from_array(tiny_table(), "E"), numpy_helper.from_array(w, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def tiny_sample() -> dict[str, np.ndarray]:
    return {
        "input_ids": np.array([[2, 4, 5, 3], [2, 6, 3, 0]], dtype=np.int64),
        "attention_mask": np.array([[1, 1, 1, 1], [1, 1, 1, 0]], dtype=np.int64),
    }


def reference_embedding(ids: np.ndarray, mask: np.ndarray, *, pooling: str = "mean") -> np.ndarray:
    tokens = tiny_table()[ids] * 2.0
    if pooling == "cls":
        pooled = tokens[:, 0]
    else:
        m = mask[..., None].astype(np.float32)
        pooled = (tokens * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    result: np.ndarray = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
    return result


def tiny_classifier() -> Any:
    """x float [N, 1, 8, 8] -> probabilities = softmax(flatten(x) @ W) [N, 10]."""
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(1).standard_normal((64, 10)).astype(np.float32)
    nodes = [
        helper.make_node("Flatten", ["x"], ["flat"]),
        helper.make_node("MatMul", ["flat", "W"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tinycls",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 10])],
        initializer=[numpy_helper.from_array(w, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model
