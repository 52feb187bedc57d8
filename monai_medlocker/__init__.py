"""MedLocker for MONAI: lesion-aware adversarial visible watermarks for fundus datasets."""

__version__ = "0.1.0"

__all__ = ["__version__"]
