"""PACS round trips: pull a study over DICOMweb, protect it, store a derived series back."""

from monai_medlocker.pacs.dicomweb import DicomWebPacs, PacsError, StoreResult, json_has_medlocker_block, json_value
from monai_medlocker.pacs.dimse import DimseStore
from monai_medlocker.pacs.study import FUNDUS_SOP_CLASSES, StudyProtector, format_study_summary

__all__ = [
    "DicomWebPacs",
    "DimseStore",
    "FUNDUS_SOP_CLASSES",
    "PacsError",
    "StoreResult",
    "StudyProtector",
    "format_study_summary",
    "json_has_medlocker_block",
    "json_value",
]
