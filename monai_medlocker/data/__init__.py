"""Fundus data: the procedural synthetic fundus lab (:mod:`monai_medlocker.data.synthetic`).

Datalist reading and validation live in :mod:`monai_medlocker.data.datalist`.
"""

from monai_medlocker.data.synthetic import (
    GRADE_NAMES,
    LESION_NAMES,
    LESION_TYPES,
    MASK_ALPHA_THRESHOLD,
    MAX_SIZE,
    MIN_SIZE,
    QUADRANTS,
    REAL_SAMPLE_PATH,
    SEVERE_HE_PER_QUADRANT,
    SEVERE_SOFT_EXUDATES,
    FundusSample,
    generate_dataset,
    grade_from_lesions,
    load_real_sample,
    sample_seed,
    synthesize_fundus,
    write_real_sample,
)

__all__ = [
    "GRADE_NAMES",
    "LESION_NAMES",
    "LESION_TYPES",
    "MASK_ALPHA_THRESHOLD",
    "MAX_SIZE",
    "MIN_SIZE",
    "QUADRANTS",
    "REAL_SAMPLE_PATH",
    "SEVERE_HE_PER_QUADRANT",
    "SEVERE_SOFT_EXUDATES",
    "FundusSample",
    "generate_dataset",
    "grade_from_lesions",
    "load_real_sample",
    "sample_seed",
    "synthesize_fundus",
    "write_real_sample",
]
