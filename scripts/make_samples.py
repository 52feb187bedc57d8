"""Regenerate bundle/samples: the demo input of the README's main job (seeded, deterministic).

    python scripts/make_samples.py

Writes four synthetic 512 px fundus images (grades 1-4) with their IDRiD-style lesion masks
beside them (``<stem>_MA.png`` ...), and a 512 px copy of the real CC0 photograph from
scikit-image with an empty ``_lesions.png`` mask: it is a normal fundus, so no region is forbidden.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from monai_medlocker.data.synthetic import LESION_TYPES, load_real_sample, synthesize_fundus  # noqa: E402

OUT = ROOT / "bundle" / "samples"
# Sample names that tell nothing of the grade (issue 18): grade -> stem.
SAMPLE_STEMS = {1: "fundus_q", 2: "fundus_c", 3: "fundus_m", 4: "fundus_h"}


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    for grade in (1, 2, 3, 4):
        sample = synthesize_fundus(512, seed=90_000 + grade, grade=grade, lab_version=1)  # the shipped samples are v1
        stem = SAMPLE_STEMS[grade]
        Image.fromarray(sample.image).save(OUT / f"{stem}.png", optimize=True)
        for t in LESION_TYPES:
            Image.fromarray((sample.masks[t] * 255).astype(np.uint8)).save(OUT / f"{stem}_{t}.png", optimize=True)
    real = Image.fromarray(load_real_sample()).resize((512, 512), Image.Resampling.LANCZOS)
    real.save(OUT / "retina_skimage.png", optimize=True)
    Image.fromarray(np.zeros((512, 512), np.uint8)).save(OUT / "retina_skimage_lesions.png", optimize=True)
    print(f"wrote samples to {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
