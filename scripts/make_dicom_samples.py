"""Write the bundle's DICOM samples from its PNG samples (run once; the files are committed).

    .venv/bin/python scripts/make_dicom_samples.py

- ``op8_colour.dcm``: Ophthalmic Photography 8 Bit, JPEG Baseline (YBR_FULL_422, lossy) of
  ``fundus_c.png``, as many fundus cameras send it;
- ``op8_redfree.dcm``: a red-free (MONOCHROME2) JPEG Baseline view of ``fundus_m.png``
  (its green channel).
Each gets the PNG's lesion masks under its own stem.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from monai_medlocker.io.dicom_build import fundus_dataset

SAMPLES = Path(__file__).resolve().parents[1] / "bundle" / "samples"
STUDY, SERIES_COLOUR, SERIES_REDFREE = "1.2.826.0.1.3680043.8.498.2026112601", "1.2.826.0.1.3680043.8.498.2026112601.1", \
    "1.2.826.0.1.3680043.8.498.2026112601.2"


def main() -> None:
    for source, name, mono, series, number in (("fundus_c", "op8_colour", False, SERIES_COLOUR, 1),
                                               ("fundus_m", "op8_redfree", True, SERIES_REDFREE, 2)):
        rgb = np.asarray(Image.open(SAMPLES / f"{source}.png").convert("RGB"))
        ds = fundus_dataset(rgb[..., 1] if mono else rgb, iod="op8", transfer_syntax="jpeg-baseline",
                            study_uid=STUDY, series_uid=series, series_number=number, instance_number=1,
                            patient_id="MLK-SAMPLE", patient_name="Sample^Fundus")
        ds.save_as(SAMPLES / f"{name}.dcm", enforce_file_format=True)
        for mask in SAMPLES.glob(f"{source}_*.png"):
            shutil.copy(mask, SAMPLES / mask.name.replace(source, name))
        print(f"wrote {SAMPLES / name}.dcm")


if __name__ == "__main__":
    main()
