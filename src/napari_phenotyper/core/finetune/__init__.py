"""Fine-tuning segmenters on corrected masks (see :func:`iter_finetune` and ``docs/fine-tuning.md``)."""

from .data import TrainingData, check_training_pairs, load_training_folder, split_indices
from .run import (
    BACKENDS,
    FinetuneRequest,
    FinetuneResult,
    default_model_name,
    default_settings,
    iter_finetune,
    next_version_name,
    score_model,
)

__all__ = [
    "BACKENDS",
    "FinetuneRequest",
    "FinetuneResult",
    "TrainingData",
    "check_training_pairs",
    "default_model_name",
    "default_settings",
    "iter_finetune",
    "load_training_folder",
    "next_version_name",
    "score_model",
    "split_indices",
]
