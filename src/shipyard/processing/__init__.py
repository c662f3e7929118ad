"""Declared pre- and post-processing: text and image inputs, pooling, class labels."""

from shipyard.processing.spec import (
    ImageProcessing,
    LabelProcessing,
    Processing,
    TextProcessing,
)

__all__ = ["ImageProcessing", "LabelProcessing", "Processing", "TextProcessing"]
