"""Training, evaluation and prediction behind the `kseg` command."""

from kseg.training.evaluate import evaluate_model, format_table
from kseg.training.predict import predict_files, predict_logits
from kseg.training.recalibrate import recalibrate_batch_norm
from kseg.training.spec import DataSpec, load_run
from kseg.training.strategy import STRATEGIES, get_strategy
from kseg.training.trainer import LOSSES, SCHEDULES, build_loss, build_schedule, split, train

__all__ = [
    "recalibrate_batch_norm",
    "LOSSES",
    "SCHEDULES",
    "STRATEGIES",
    "DataSpec",
    "build_loss",
    "build_schedule",
    "evaluate_model",
    "format_table",
    "get_strategy",
    "load_run",
    "predict_files",
    "predict_logits",
    "split",
    "train",
]
