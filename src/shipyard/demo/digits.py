"""Demo PyTorch model: a small CNN trained on scikit-learn's 8×8 digits, packed as `digits`."""

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

SEED = 0
TEST_SIZE = 0.25
EPOCHS = 10
BATCH = 32
LEARNING_RATE = 3e-3
CALIBRATION_ROWS = 128
EVAL_FILE = "digits_eval.npz"
CALIBRATION_FILE = "digits_calibration.npz"
WEIGHTS_FILE = "digits_weights.npz"
CLASS_NAMES = [str(d) for d in range(10)]


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


def build_digits(repo: Path, data_dir: Path) -> tuple[PackResult, dict[str, np.ndarray]]:
    """Train and pack `digits`; also writes the eval set, a calibration set and the weights."""
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
            "input": "8×8 grey image, float32 [N, 1, 8, 8] scaled to [0, 1] (pixel / 16)",
            "train_rows": len(data.x_train),
            "test_rows": len(data.x_test),
            "training": {"epochs": EPOCHS, "batch": BATCH, "lr": LEARNING_RATE, "seed": SEED},
        },
    )
    data_dir.mkdir(parents=True, exist_ok=True)
    np.savez(data_dir / EVAL_FILE, x=data.x_test, y=data.y_test)
    np.savez(data_dir / CALIBRATION_FILE, x=data.x_train[:CALIBRATION_ROWS])
    save_weights(model, data_dir / WEIGHTS_FILE)
    input_name = result.manifest.inputs[0].name
    return result, {input_name: data.x_test[:2]}
