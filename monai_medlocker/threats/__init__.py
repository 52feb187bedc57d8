"""The thief's toolbox for the threat study: preprocessing before the target model, and removal attacks.

:mod:`monai_medlocker.threats.preprocessing` needs only the core dependencies; the removal attacks of
:mod:`monai_medlocker.threats.removal` need OpenCV (the ``threats`` extra), imported when first used.
"""

from monai_medlocker.threats.preprocessing import THIEF_PREPROCESSING, get_thief_preprocessing
from monai_medlocker.threats.removal import (
    REMOVAL_ATTACKS,
    CollectionAttack,
    LearnedRemover,
    box_fidelity,
    get_removal_attack,
    locate_logo,
    train_remover,
)

__all__ = [
    "THIEF_PREPROCESSING",
    "get_thief_preprocessing",
    "REMOVAL_ATTACKS",
    "get_removal_attack",
    "locate_logo",
    "box_fidelity",
    "train_remover",
    "LearnedRemover",
    "CollectionAttack",
]
