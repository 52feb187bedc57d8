"""Training/evaluation workflow pieces: DR grading metrics and the MONAI handlers that report them."""

from monai_medlocker._lazy import lazy_exports

# Imported on first use (PEP 562), so that the light commands do not load torch or MONAI.
__getattr__, __dir__ = lazy_exports(__name__, {
    "handlers": (
        "ClassificationReportHandler", "EpochCheckpoint", "QuadraticKappa", "format_report", "write_json_atomic",
    ),
    "metrics": (
        "REFERABLE_GRADE", "classification_report", "confusion_matrix", "multiclass_auc", "per_class_accuracy",
        "protection_metrics", "quadratic_weighted_kappa", "referable_metrics",
    ),
})

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
