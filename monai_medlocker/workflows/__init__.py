"""Training/evaluation workflow pieces: DR grading metrics and the MONAI handlers that report them."""

from monai_medlocker.workflows.handlers import (
    ClassificationReportHandler,
    EpochCheckpoint,
    QuadraticKappa,
    format_report,
    write_json_atomic,
)
from monai_medlocker.workflows.metrics import (
    REFERABLE_GRADE,
    classification_report,
    confusion_matrix,
    multiclass_auc,
    per_class_accuracy,
    protection_metrics,
    quadratic_weighted_kappa,
    referable_metrics,
)

__all__ = [
    "REFERABLE_GRADE",
    "ClassificationReportHandler",
    "EpochCheckpoint",
    "QuadraticKappa",
    "classification_report",
    "confusion_matrix",
    "format_report",
    "multiclass_auc",
    "per_class_accuracy",
    "protection_metrics",
    "quadratic_weighted_kappa",
    "referable_metrics",
    "write_json_atomic",
]
