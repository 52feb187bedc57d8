"""The owner's look at a protect run before publishing: ``private/montage.png``.

Each row shows an original beside its protected copy (the first ``limit`` protected images, in
manifest order), so that the owner sees where the marks went and how visible they are before
publishing ``public/``. It shows the originals, so it stays in ``private/``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from monai_medlocker.io.files import atomic_write_bytes

__all__ = ["MONTAGE", "protect_montage"]

MONTAGE = "montage.png"
_LABEL = 14  # pixels of the name strip above each row


def _thumbnail(path: Path, size: int) -> Image.Image:
    """``path`` fitted into ``size`` x ``size`` on black (a grey tile when it cannot be read)."""
    from monai_medlocker.io.image import load_fundus

    tile = Image.new("RGB", (size, size), (0, 0, 0))
    try:
        pixels, _ = load_fundus(path)
    except Exception:  # the montage is a convenience: an unreadable file must not stop the run
        return Image.new("RGB", (size, size), (96, 96, 96))
    img = Image.fromarray(np.ascontiguousarray(pixels))
    img.thumbnail((size, size), Image.Resampling.LANCZOS)
    tile.paste(img, ((size - img.width) // 2, (size - img.height) // 2))
    return tile


def protect_montage(output_dir: str | Path, input_root: str | Path, rows: list[dict], limit: int = 8,
                    size: int = 256) -> str | None:
    """Write ``OUT/private/montage.png`` from a protect run's manifest rows; its path relative to ``OUT``, or ``None``.

    Args:
        output_dir: the protect output folder.
        input_root: the input folder (or a datalist's folder): the originals are ``input_root / row["image"]``.
        rows: the manifest rows (``image``, ``status``, ``output``).
        limit: at most this many images.
        size: the side of each thumbnail in pixels.
    """
    output_dir, input_root = Path(output_dir), Path(input_root)
    done = [r for r in rows if r.get("output") and r.get("status") in ("protected", "already-done")][:limit]
    if not done:
        return None
    gap = 4
    sheet = Image.new("RGB", (2 * size + 3 * gap, len(done) * (size + _LABEL + gap) + gap), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, row in enumerate(done):
        top = gap + i * (size + _LABEL + gap)
        draw.text((gap, top + 1), f"{row['image']}: original | protected", fill=(0, 0, 0))
        sheet.paste(_thumbnail(input_root / row["image"], size), (gap, top + _LABEL))
        sheet.paste(_thumbnail(output_dir / row["output"], size), (2 * gap + size, top + _LABEL))
    path = output_dir / "private" / MONTAGE
    from io import BytesIO

    buffer = BytesIO()
    sheet.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue(), mode=0o600)  # originals: the owner's alone, as private/ is
    return f"private/{MONTAGE}"
