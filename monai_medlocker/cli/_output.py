"""What the commands print: results on stdout, diagnostics on stderr, and ``--json`` summaries.

With ``--json``, stdout holds exactly one JSON object: the command's summary with a ``results``
list of one row per image, each with at least ``image`` (its path or name), ``image_id`` (the id
its certificate and grants use; ``None`` where there is none), ``status`` (for verify: the verdict)
and ``message`` (why it failed, or ``None``). The human-readable summary then goes to stderr.
"""

from __future__ import annotations

import contextlib
import json
import sys
from typing import Iterator

__all__ = ["json_summary", "print_json", "print_result", "results_to_stderr"]


def json_summary(command: str, summary: dict, rows: list[dict], status_key: str = "status",
                 message_keys: tuple[str, ...] = ("error", "detail", "reason")) -> dict:
    """``summary`` with ``command`` and one normalised row per image in ``results`` (each row's own fields kept)."""
    results = []
    for row in rows:
        message = next((row[k] for k in message_keys if row.get(k)), None)
        results.append({"image": row.get("image"), "image_id": row.get("image_id"), "status": row.get(status_key),
                        "message": message, **{k: v for k, v in row.items() if k not in ("image", "image_id")}})
    return {"command": command, **{k: v for k, v in summary.items() if k != "results"}, "results": results}


def print_json(report: dict) -> None:
    """The one JSON object of a ``--json`` run, on stdout."""
    print(json.dumps(report, indent=2, default=str), file=sys.stdout, flush=True)


def print_result(text: str, as_json: bool) -> None:
    """A human-readable result: stdout, or stderr when stdout is kept for ``--json``."""
    print(text, file=sys.stderr if as_json else sys.stdout, flush=True)


@contextlib.contextmanager
def results_to_stderr(active: bool) -> Iterator[None]:
    """While ``active`` (``--json``), whatever a workflow prints to stdout goes to stderr instead."""
    if not active:
        yield
        return
    with contextlib.redirect_stdout(sys.stderr):
        yield
