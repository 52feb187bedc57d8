"""The thief's toolbox for the threat study: preprocessing before the target model, and removal attacks.

``monai_medlocker.threats.preprocessing`` needs only the core dependencies;
``monai_medlocker.threats.removal`` needs OpenCV (the ``threats`` extra).
"""

from monai_medlocker.threats.preprocessing import THIEF_PREPROCESSING, get_thief_preprocessing

__all__ = ["THIEF_PREPROCESSING", "get_thief_preprocessing"]
