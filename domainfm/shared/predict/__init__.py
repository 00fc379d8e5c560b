"""``predict``: downstream models over raw input files, written in the formats their users' tools open.

The shared part (:mod:`.runner`) finds the inputs, holds the output folder, resumes, checksums and
summarises; each domain's ``predict`` module says what one input becomes (:data:`.runner.PredictOne`).
"""

from domainfm.shared.predict.runner import (
    InputFile,
    Outputs,
    PredictError,
    PredictionRun,
    PredictOne,
    collect_inputs,
    is_predictions_folder,
    load_for_domain,
    run_predictions,
)

__all__ = [
    "InputFile",
    "Outputs",
    "PredictError",
    "PredictOne",
    "PredictionRun",
    "collect_inputs",
    "is_predictions_folder",
    "load_for_domain",
    "run_predictions",
]
