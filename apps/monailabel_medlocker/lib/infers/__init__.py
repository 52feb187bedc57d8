from .lesion_boxes import LesionBoxesTask
from .protect import ProtectTask

__all__ = ["ProtectTask", "LesionBoxesTask"]
