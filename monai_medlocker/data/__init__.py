"""Fundus data: the procedural synthetic fundus lab (:mod:`monai_medlocker.data.synthetic`).

Datalist reading and validation live in :mod:`monai_medlocker.data.datalist`.
"""

from monai_medlocker.data.synthetic import (
    CAMERA_ARTEFACT_RATES,
    DEFAULT_LAB_VERSION,
    GRADE_WEIGHT_PRESETS,
    GRADE_NAMES,
    LESION_NAMES,
    LESION_TYPES,
    LAB_VERSIONS,
    LOOKALIKE_RATES,
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
    "CAMERA_ARTEFACT_RATES",
    "DEFAULT_LAB_VERSION",
    "GRADE_WEIGHT_PRESETS",
    "GRADE_NAMES",
    "LESION_NAMES",
    "LESION_TYPES",
    "LAB_VERSIONS",
    "LOOKALIKE_RATES",
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
