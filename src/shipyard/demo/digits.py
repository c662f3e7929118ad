"""Demo PyTorch model: a small CNN trained on scikit-learn's 8×8 digits, packed as `digits`.

The package declares image processing and labels: a client sends a PNG/JPEG (BYTES input
`image`, decoded by Pillow to 8×8 grey-scale, pixel / 255) and gets `label` ("7") and the
top 3 beside the logits; the raw tensor input [N, 1, 8, 8] keeps working. The dataset's 17
grey levels (0..16) are stored as PNG levels 0..255, so a PNG drawn by hand (white ink on
black, like the dataset) is read the same way.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from shipyard.api import PackResult, pack
from shipyard.demo.images import png_bytes
from shipyard.processing.build import ProcessingPlan, combine, image_plan

SEED = 0
TEST_SIZE = 0.25
EPOCHS = 10
BATCH = 32
LEARNING_RATE = 3e-3
CALIBRATION_ROWS = 128
EVAL_FILE = "digits_eval.npz"
CALIBRATION_FILE = "digits_calibration.npz"
WEIGHTS_FILE = "digits_weights.npz"
SAMPLE_IMAGE = "digits_sample.png"
"""The first test image as a PNG: what the demo sends as BYTES."""
CLASS_NAMES = [str(d) for d in range(10)]
IMAGE = "size=8x8,mode=L,scale=1/255"
"""`--image`: the dataset's [0, 1] pixels, from 8-bit grey levels."""
TOP_K = 3


class DigitsCNN(nn.Module):
    """Conv → ReLU → MaxPool → Conv → ReLU → Flatten → Linear; input [N, 1, 8, 8] in [0, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(1, 16, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(32 * 4 * 4, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.layers(x)
        return out


@dataclass(frozen=True)
class DigitsData:
    """The digits images as float32 [N, 1, 8, 8] in [0, 1] with int64 labels, split once."""

    x_train: np.ndarray
    x_test: np.ndarray
    y_train: np.ndarray
    y_test: np.ndarray


def load_data() -> DigitsData:
    bunch = load_digits()
    # Pixel values are 0..16 in this dataset.
    x = (np.asarray(bunch.images, dtype=np.float32) / 16.0).reshape(-1, 1, 8, 8)
    y = np.asarray(bunch.target, dtype=np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=TEST_SIZE, random_state=SEED, stratify=y
    )
    return DigitsData(
        x_train=np.ascontiguousarray(x_train),
        x_test=np.ascontiguousarray(x_test),
        y_train=y_train,
        y_test=y_test,
    )


@contextmanager
def _deterministic() -> Iterator[None]:
    """Deterministic kernels while training, restoring the caller's torch setting afterwards."""
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


def train(data: DigitsData, *, epochs: int = EPOCHS) -> DigitsCNN:
    """Train the CNN with a fixed seed; a few seconds on two CPU cores."""
    with _deterministic():
        torch.manual_seed(SEED)
        model = DigitsCNN()
        optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
        loss_fn = nn.CrossEntropyLoss()
        x = torch.from_numpy(data.x_train)
        y = torch.from_numpy(data.y_train)
        order = torch.Generator().manual_seed(SEED)
        model.train()
        for _epoch in range(epochs):
            permutation = torch.randperm(len(x), generator=order)
            for start in range(0, len(x), BATCH):
                batch = permutation[start : start + BATCH]
                optimizer.zero_grad()
                loss = loss_fn(model(x[batch]), y[batch])
                loss.backward()
                optimizer.step()
        model.eval()
    return model


def logits(model: DigitsCNN, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out: np.ndarray = model(torch.from_numpy(np.asarray(x, dtype=np.float32))).numpy()
    return out


def accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(scores, axis=1) == labels))


def save_weights(model: DigitsCNN, path: Path) -> None:
    """Plain arrays (no pickle) so tests can rebuild the original network exactly."""
    arrays = {key: value.detach().numpy() for key, value in model.state_dict().items()}
    np.savez(path, **arrays)  # type: ignore[arg-type]


def load_weights(path: Path) -> DigitsCNN:
    model = DigitsCNN()
    with np.load(path, allow_pickle=False) as saved:
        state = {key: torch.from_numpy(saved[key]) for key in saved.files}
    model.load_state_dict(state)
    model.eval()
    return model


def to_png(x: np.ndarray) -> bytes:
    """One [1, 8, 8] (or [8, 8]) image in [0, 1] as an 8-bit grey PNG."""
    levels = np.rint(np.asarray(x, dtype=np.float64).reshape(8, 8) * 255)
    return png_bytes(np.clip(levels, 0, 255).astype(np.uint8))


def build_digits(repo: Path, data_dir: Path) -> tuple[PackResult, dict[str, np.ndarray]]:
    """Train and pack `digits`; also writes the eval set, a calibration set, the weights and
    a sample PNG."""
    data = load_data()
    model = train(data)
    test_accuracy = accuracy(logits(model, data.x_test), data.y_test)
    sample = data.x_test[:16]
    result = pack(
        model,
        name="digits",
        repo=repo,
        sample_input=sample,
        metadata={
            "dataset": "sklearn.datasets.load_digits",
            "class_names": CLASS_NAMES,
            "test_accuracy": round(test_accuracy, 6),
            "input": "a PNG/JPEG (BYTES `image`, read as 8×8 grey, pixel / 255), or float32 "
            "[N, 1, 8, 8] in [0, 1] (the dataset's pixel / 16)",
            "train_rows": len(data.x_train),
            "test_rows": len(data.x_test),
            "training": {"epochs": EPOCHS, "batch": BATCH, "lr": LEARNING_RATE, "seed": SEED},
        },
        processing=combine(image_plan(IMAGE), ProcessingPlan(labels=CLASS_NAMES, top_k=TOP_K)),
    )
    data_dir.mkdir(parents=True, exist_ok=True)
    np.savez(data_dir / EVAL_FILE, x=data.x_test, y=data.y_test)
    np.savez(data_dir / CALIBRATION_FILE, x=data.x_train[:CALIBRATION_ROWS])
    save_weights(model, data_dir / WEIGHTS_FILE)
    (data_dir / SAMPLE_IMAGE).write_bytes(to_png(data.x_test[0]))
    input_name = result.manifest.inputs[0].name
    return result, {input_name: data.x_test[:2]}
