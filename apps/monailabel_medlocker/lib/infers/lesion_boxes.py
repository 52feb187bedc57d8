"""The ``medlocker_lesion_boxes`` infer task: the lesion maps and WSM boxes protect would use, as a label."""

from __future__ import annotations

import tempfile

from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from monai_medlocker.io.image import save_png

from lib.medlocker_steps import LESION_LABELS, WSM_LABEL, MedLockerSteps

__all__ = ["LesionBoxesTask"]


class LesionBoxesTask(InferTask):
    """Show where the logo may not go: a label map (WSM boxes, lesion pixels by type) and the boxes as JSON.

    Uses the protect workflow's own lesion source and WSM settings, so it shows exactly the WSM
    that :class:`~lib.infers.protect.ProtectTask` respects. The lesion boxes are the owner's
    information (DESIGN invariant 6): this task is for the data owner's annotators, and its result
    must not be published with the protected images.
    """

    def __init__(self, steps: MedLockerSteps) -> None:
        super().__init__(type=InferType.DETECTION, labels={"wsm_box": WSM_LABEL, **LESION_LABELS}, dimension=2,
                         description="MedLocker: the lesion maps and WSM boxes the logo must avoid (owner only)")
        self.steps = steps

    def is_valid(self) -> bool:
        return True

    def __call__(self, request) -> tuple[str, dict]:
        label, info = self.steps.lesion_boxes(request["image"])
        with tempfile.NamedTemporaryFile(prefix="medlocker-wsm-", suffix=".png", delete=False) as tmp:
            pass
        save_png(tmp.name, label)
        return tmp.name, info
