"""MedLocker for MONAI Label: protect a datastore's fundus images, and show the lesion boxes the logo avoids.

Run it with ``monailabel start_server --app apps/monailabel_medlocker --studies STUDIES`` (see
``bundle/docs/monailabel.md``). Infer tasks:

* ``medlocker_protect``: the image's protected copy, as ``medlocker protect STUDIES OUTPUT`` writes it
  (same bundle settings, same pixels), and the public part of its record as the result JSON;
* ``medlocker_lesion_boxes``: a label map of the WSM boxes and lesion pixels, and the boxes as JSON.

Settings (``--conf KEY VALUE``): ``output`` (where protected images and their full records go;
default ``<app>/output``, never inside STUDIES) and any ``medlocker protect`` option by its name
(``seed``, ``max_queries``, ``optimizer``, ``lesion_segmenter``, ``key``, ``passphrase_env``...).
"""

from __future__ import annotations

import logging
import os

from fastapi import HTTPException
from monailabel.config import settings
from monailabel.datastore.local import LocalDatastore
from monailabel.interfaces.app import MONAILabelApp

import monai_medlocker
from monai_medlocker.io.image import SUPPORTED_SUFFIXES

from lib.infers import LesionBoxesTask, ProtectTask
from lib.medlocker_steps import OUTPUT_CONF, MedLockerSteps, RefusedImage

logger = logging.getLogger(__name__)

PROTECT_TASK = "medlocker_protect"
LESION_BOXES_TASK = "medlocker_lesion_boxes"


class MedLockerApp(MONAILabelApp):
    """The MONAI Label app: the protect workflow behind MONAI Label's ``/infer`` endpoint."""

    def __init__(self, app_dir: str, studies: str, conf: dict) -> None:
        conf = dict(conf or {})
        output = conf.get(OUTPUT_CONF) or os.path.join(app_dir, "output")
        # Built before MONAILabelApp.__init__, which calls init_infers().
        self.steps = MedLockerSteps(studies, output, conf)
        super().__init__(app_dir=app_dir, studies=studies, conf=conf, name="MedLocker",
                         description="Lesion-aware adversarial visible watermarks for fundus photographs",
                         version=monai_medlocker.__version__)

    def init_datastore(self):
        if self.studies.startswith(("http://", "https://")):
            return super().init_datastore()
        # MONAI Label's own image types plus every format `medlocker protect` reads (DICOM, JPEG, TIFF, BMP).
        extensions = list(dict.fromkeys([*settings.MONAI_LABEL_DATASTORE_FILE_EXT, *(f"*{s}" for s in SUPPORTED_SUFFIXES)]))
        return LocalDatastore(self.studies, extensions=extensions, auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
                              read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY)

    def init_infers(self):
        return {PROTECT_TASK: ProtectTask(self.steps), LESION_BOXES_TASK: LesionBoxesTask(self.steps)}

    def infer(self, request, datastore=None):
        """MONAI Label's infer, after checking that a MedLocker task's image is an image of the datastore.

        A refusal is an ``HTTPException`` whose detail names the image: 404 for an id the datastore
        does not hold, 400 for a file the app will not protect (a server path, an upload, a lesion
        mask), 422 when the protect step fails on the image. MONAI Label's server would turn any
        other exception into a bare "Internal Server Error".
        """
        image = request.get("image")
        if request.get("model") in (PROTECT_TASK, LESION_BOXES_TASK):
            if not isinstance(image, str) or not image:
                raise HTTPException(400, f"{request.get('model')}: give the id of an image of the datastore "
                                    f"(?image=ID), got {image!r}")
            store = datastore or self.datastore()
            if os.path.exists(image):  # MONAI Label would take a server path or an uploaded file as it is
                raise HTTPException(400, f"image {image!r}: only images of the datastore are protected; add it to "
                                    f"the studies folder {self.studies} and ask for its id")
            if not store.get_image_uri(image):
                raise HTTPException(404, f"image {image!r} is not in the datastore {self.studies}")
            if request.get("model") == PROTECT_TASK:
                request = {**request, "save_label": False}  # a protected image is not a label of its original
        try:
            return super().infer(request, datastore)
        except RefusedImage as err:
            raise HTTPException(400, f"image {image!r}: {err}") from err
        except ValueError as err:  # the protect step's message names the file and the problem
            raise HTTPException(422, f"image {image!r}: {err}") from err
