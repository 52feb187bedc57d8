"""The ``medlocker_protect`` infer task: one datastore image in, its protected copy and public record out."""

from __future__ import annotations

import shutil
import tempfile
import time
from typing import Any

from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from lib.medlocker_steps import MedLockerSteps

__all__ = ["ProtectTask"]


def response_copy(path) -> str:
    """A temporary copy of an output for the response: MONAI Label deletes the result file once it is sent."""
    with tempfile.NamedTemporaryFile(prefix="medlocker-", suffix=path.suffix, delete=False) as tmp:
        pass
    shutil.copyfile(path, tmp.name)
    return tmp.name


class ProtectTask(InferTask):
    """Protect one image with the protect workflow (``medlocker protect``'s per-image step).

    The result is the protected image exactly as ``medlocker protect`` writes it (a lossless PNG, or a
    derived DICOM instance for a DICOM input) and, as the result JSON, only the public part of its
    record (:func:`~lib.medlocker_steps.public_record`) with the task's ``latencies`` (seconds: the
    protect step, and the whole task). The output and the full record are also kept in the app's
    output folder, as ``medlocker protect`` keeps them.

    An :class:`~monailabel.interfaces.tasks.infer_v2.InferTask` rather than a ``BasicInferTask``: the
    protect step does its own loading, model queries and writing, which BasicInferTask's
    pre-transforms / inferer / writer chain would only duplicate.
    """

    def __init__(self, steps: MedLockerSteps) -> None:
        super().__init__(type=InferType.OTHERS, labels=None, dimension=2,
                         description="MedLocker: stamp the owner's adversarial logo off the lesions (medlocker protect)")
        self.steps = steps

    def is_valid(self) -> bool:
        return True

    def config(self) -> dict[str, Any]:
        return {"output_dir": str(self.steps.output_dir)}

    def __call__(self, request) -> tuple[str | None, dict]:
        t0 = time.perf_counter()
        output, record, step_seconds = self.steps.protect(request["image"])
        result = response_copy(output) if output is not None else None
        # As BasicInferTask reports them: the protect step, and the whole task with the app's own work.
        record["latencies"] = {"protect": step_seconds, "total": round(time.perf_counter() - t0, 3)}
        return result, record
