"""The synthetic fundus lab, one room per part: ``raster`` (drawing helpers), ``anatomy`` (geometry, vessels,
disc, macula, background), ``lesions`` (lesion types, grading rules, lesion plan, layout and drawing),
``lookalikes`` (lab v2's DR look-alikes: drusen, pigment clumps, vessel reflex), ``camera`` (capture artefacts
and finishing), ``render`` (one image, lab versions) and ``dataset`` (datasets on disk, grade-weight presets).

The stable public API is :mod:`monai_medlocker.data.synthetic`, which re-exports the public names.
"""

__all__: list[str] = []
