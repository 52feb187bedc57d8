"""Run MONAI Label infer requests against the MedLocker app in this process (run with .venv-label's python).

Used by tests/test_label_app.py, whose own interpreter has no monailabel. The app is loaded with
monailabel's own loader (``app_instance``), as ``monailabel start_server`` loads it.

    python tests/label_inprocess.py APP_DIR STUDIES CONF_JSON REQUESTS_JSON RESULTS_DIR

Prints one line ``RESULT <json>`` per request (monailabel may log to stdout too):
``{"file": ..., "params": ...}`` (the result file moved into RESULTS_DIR, as MONAI Label's server
deletes it once sent) or ``{"status": ..., "detail": ...}`` for a refusal.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    app_dir, studies, conf, requests, results = argv
    from fastapi import HTTPException
    from monailabel.interfaces.utils.app import app_instance

    app = app_instance(app_dir=app_dir, studies=studies, conf=json.loads(conf))
    results_dir = Path(results)
    for index, request in enumerate(json.loads(requests)):
        try:
            result = app.infer(request)
        except HTTPException as err:
            print("RESULT", json.dumps({"status": err.status_code, "detail": err.detail}), flush=True)
            continue
        kept = None
        if result.get("file"):
            kept = results_dir / f"{index}{Path(result['file']).suffix}"
            shutil.move(result["file"], kept)
        print("RESULT", json.dumps({"file": None if kept is None else str(kept), "params": result["params"]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
