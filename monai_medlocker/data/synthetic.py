"""Procedural colour fundus photographs with diabetic-retinopathy lesions, masks and ICDR grades.

The "synthetic fundus lab" draws macula-centred 45-degree-style fundus photographs: a circular field
of view (FOV) on black with a soft rim (sometimes cut by flat chords, as many cameras do), an
orange-red fundus whose pigmentation, hue, brightness, contrast, vignetting and uneven illumination
vary per image, a choroidal (tigroid) pattern and mottling, a bright optic disc with a paler cup, a
darker macula and fovea about 2.5 disc diameters temporal to the disc (right or left eye), and a
branching tree of arteries (lighter, thinner) and veins (darker, wider) leaving the disc in arcades,
tapering at each branch. Sensor noise, defocus blur and JPEG compression finish the image (lab v2 adds
capture artefacts and DR look-alikes: see Lab versions below).
All geometry is drawn in units of the image side ``S`` from random streams that do not depend on
``S``, so an image at 256 px is (up to noise and compression) a downsampled copy of the one at 1024 px.

Lesions (the four IDRiD segmentation types), each with its own binary mask:

* ``MA`` microaneurysms: small dark-red round dots, radius ``S/600 .. S/280`` but at least 1 px.
* ``HE`` haemorrhages: dot/blot (roundish, irregular, radius ``S/120 .. S/50``) and flame-shaped
  (elongated along the nerve-fibre direction); for grade 4 also a large boat-shaped preretinal
  haemorrhage (half-width ``S/15 .. S/8``, flat upper fluid level) near the arcades. Preretinal
  haemorrhages are part of the ``HE`` mask but are counted separately as ``PRH``.
* ``EX`` hard exudates: small bright yellow waxy spots in clusters or partial (circinate) rings
  around the macula.
* ``SE`` soft exudates (cotton-wool spots): pale fluffy blobs with soft edges, radius ``S/60 .. S/30``,
  mostly along the vascular arcades.

Mask rule: each lesion is drawn from a coverage field ``alpha`` in ``[0, 1]`` (1 inside the shape,
falling to 0 across an anti-aliased or, for cotton-wool spots, feathered edge); its colour change
scales with ``alpha`` (times a per-lesion strength) and is zero where ``alpha`` is. The lesion's mask is
exactly ``alpha > 0.5`` (inside the FOV); the faint outer half of a feathered edge is drawn but not
masked, and a lesion smaller than a pixel keeps its nearest pixel (alpha 1) so that it is never lost.
Masks of different types never overlap except in rare placements where no free spot was found.
Grade-4 images may also show neovascular tufts (thin tortuous new vessels) that have no mask, as in IDRiD.

Grades (ICDR 0-4) follow from the lesion counts by :func:`grade_from_lesions`; these rules are the
source of truth, and every generated label is computed from what was actually drawn:

* **4 (PDR)**: at least one preretinal haemorrhage (``PRH >= 1``).
* **3 (severe NPDR)**, a simplified "4-2-1" rule: at least ``SEVERE_HE_PER_QUADRANT`` (5) intraretinal
  haemorrhages in each of the four quadrants, **or** at least ``SEVERE_SOFT_EXUDATES`` (4) soft
  exudates together with haemorrhages in all four quadrants.
* **2 (moderate NPDR)**: any haemorrhage, hard exudate or soft exudate, short of the above.
* **1 (mild NPDR)**: microaneurysms only.
* **0 (no DR)**: no lesions.

Quadrants (``QUADRANTS``: superotemporal, superonasal, inferonasal, inferotemporal) are split by the
horizontal and vertical lines through the fovea; a haemorrhage belongs to the quadrant of its centre.
Referable DR is grade >= 2.

Generation samples a target grade and then lesions with a clear gap between classes: grade 1 has
3-15 microaneurysms; grade 2 has haemorrhages in at most two quadrants (at most 3 per quadrant)
and/or exudates, and at most 2 soft exudates; grade 3 has 5-9 haemorrhages in every quadrant, or 2-4
per quadrant with 4-7 soft exudates; grade 4 adds a preretinal haemorrhage to a grade-2 or grade-3
background. Grade-0 images are not perfectly clean: they may carry camera dust, faint drusen,
peripapillary atrophy, flare and blur, none of which is a lesion type.

Lab versions (``lab_version`` of :func:`synthesize_fundus`, :func:`generate_dataset` and ``medlocker synth``):

* **1**, the original lab, kept bit for bit (the committed benchmark results, the bundle samples and the shipped
  demo models were made with it); benchmarks and ``medlocker train-demo`` pin it.
* **2** (default), the realistic lab. For the same seed it has v1's eye, vessels, lesions, masks and grade; v1's
  faint drusen and dust rings are replaced by the following, each drawn independently per image with the given
  probability (so most images show none or one capture artefact, a few several; rates are rough figures for
  screening photographs), on top of v1's per-image variation (brightness, uneven illumination, vignetting,
  colour cast, mild blur, sensor noise, JPEG at quality 60-95 for 90 % of images):

  - capture artefacts (``CAMERA_ARTEFACT_RATES``): defocus 18 % (Gaussian sigma 0.9-2.2 px at 512 px),
    under-exposure 12 % (x0.5-0.75), over-exposure 8 % (x1.25-1.6, bright parts clip), an illumination
    crescent at the rim 15 % (bright 55 % / dark 45 %), rim flare 12 % (a bluish-white arc at the edge), a
    small-pupil shadow 12 % (darkened periphery from 50-75 % of the radius), eyelash shadows 6 % (1-3 dark
    blurred streaks from the top or bottom), dust specks on the optics 25 % (1-6 dark soft spots or streaks);
  - DR look-alikes (``LOOKALIKE_RATES``), which are not lesions: drusen 20 % (5-40 soft pale yellow-white
    dots around the macula: hard-exudate look-alikes), pigment clumps 10 % (1-8 brown-black specks in the
    mid-periphery: microaneurysm / dot-haemorrhage look-alikes), vessel light reflex 45 % (a thin whitish
    central stripe on the larger vessels). They are placed off every lesion's drawing window, so they never
    enter a mask, a count or the grade, and never paint over a lesion pixel (the final blur and JPEG still mix
    neighbouring pixels).

  ``FundusSample.meta["artefacts"]`` and ``meta["lookalikes"]`` say what each v2 image shows.

Grade mix: ``generate_dataset(..., grade_weights=...)`` takes five weights or a preset name from
``GRADE_WEIGHT_PRESETS``: ``"uniform"`` (default) or ``"eyepacs"``, the real-world imbalance of EyePACS
(73 / 7 / 15 / 2.5 / 2.5 % for grades 0-4).

The code lives in :mod:`monai_medlocker.data.lab` (``anatomy``, ``lesions``, ``lookalikes``, ``camera``, ``render``,
``dataset``); this module is its stable public facade.
"""


from monai_medlocker.data.lab.camera import CAMERA_ARTEFACT_RATES
from monai_medlocker.data.lab.dataset import (
    GRADE_WEIGHT_PRESETS,
    REAL_SAMPLE_PATH,
    generate_dataset,
    load_real_sample,
    sample_seed,
    write_real_sample,
)
from monai_medlocker.data.lab.lesions import (
    GRADE_NAMES,
    LESION_NAMES,
    LESION_TYPES,
    MASK_ALPHA_THRESHOLD,
    QUADRANTS,
    SEVERE_HE_PER_QUADRANT,
    SEVERE_SOFT_EXUDATES,
    grade_from_lesions,
)
from monai_medlocker.data.lab.lookalikes import LOOKALIKE_RATES
from monai_medlocker.data.lab.render import (
    DEFAULT_LAB_VERSION,
    LAB_VERSIONS,
    MAX_SIZE,
    MIN_SIZE,
    FundusSample,
    synthesize_fundus,
)

__all__ = [
    "LESION_TYPES",
    "LESION_NAMES",
    "GRADE_NAMES",
    "QUADRANTS",
    "SEVERE_HE_PER_QUADRANT",
    "SEVERE_SOFT_EXUDATES",
    "MIN_SIZE",
    "MAX_SIZE",
    "MASK_ALPHA_THRESHOLD",
    "REAL_SAMPLE_PATH",
    "LAB_VERSIONS",
    "DEFAULT_LAB_VERSION",
    "CAMERA_ARTEFACT_RATES",
    "LOOKALIKE_RATES",
    "GRADE_WEIGHT_PRESETS",
    "FundusSample",
    "synthesize_fundus",
    "grade_from_lesions",
    "sample_seed",
    "generate_dataset",
    "write_real_sample",
    "load_real_sample",
]
