"""The synthetic fundus lab, one room per part: ``raster`` (drawing helpers), ``anatomy`` (geometry, vessels,
disc, macula, background), ``lesions`` (lesion types, grading rules, lesion plan, layout and drawing), ``camera``
(capture artefacts and finishing), ``render`` (one image) and ``dataset`` (datasets on disk).

The stable public API is :mod:`monai_medlocker.data.synthetic`, which re-exports the public names.
"""
