"""What every benchmark result starts with: what it measured, the command that made it, and when."""

from __future__ import annotations

import sys
from datetime import datetime, timezone
from pathlib import Path


def result_header(benchmark: str, script: str, argv: list[str] | None = None) -> dict:
    """``benchmark``, the ``command`` (``script``'s name and ``argv``, default ``sys.argv[1:]``) and the UTC ``date``."""
    args = sys.argv[1:] if argv is None else argv
    return {"benchmark": benchmark, "command": " ".join(["python", f"benchmarks/{Path(script).name}", *args]),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
