"""`monailabel start_server` with the MedLocker app on loopback, for tests/test_label_app.py and benchmarks/bench_label.py.

Standard library only (the caller's interpreter need not have monailabel): the server runs from
``.venv-label`` as an activated venv would run it, with this checkout's package on PYTHONPATH. The
app folder is copied into the work folder first, since start_server makes model/, logs/ and bin/ in it.
"""

from __future__ import annotations

import email.parser
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from orthanc_server import free_port

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "apps" / "monailabel_medlocker"
LABEL_BIN = REPO / ".venv-label" / "bin"


def label_env(threads: int) -> dict:
    """The environment of the app's processes: the activated .venv-label, this checkout's package, ``threads`` threads."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS=str(threads))
    env["PATH"] = f"{LABEL_BIN}{os.pathsep}{env.get('PATH', '')}"  # the monailabel script runs `python` from PATH
    return env


def multipart_fields(content_type: str, body: bytes) -> dict[str, bytes]:
    """The parts of a multipart/form-data body (MONAI Label's ``output=all`` answer) by field name."""
    message = email.parser.BytesParser().parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    return {part.get_param("name", header="content-disposition"): part.get_payload(decode=True)
            for part in message.get_payload()}


class LabelServer:
    """One MONAI Label server with the MedLocker app.

    Args:
        studies: the studies folder. conf: the app's ``--conf`` pairs. work: a folder for the app copy and the log.
        threads: OMP_NUM_THREADS of the server. start_timeout: seconds to wait for ``/info/``.
    """

    def __init__(self, studies: Path, conf: dict, work: Path, threads: int = 1, start_timeout: float = 120) -> None:
        self.studies, self.conf, self.work = Path(studies), dict(conf), Path(work)
        self.threads, self.start_timeout = threads, start_timeout
        self.log = self.work / "server.log"
        self.base = ""
        self.process: subprocess.Popen | None = None
        self.start_seconds: float | None = None

    def start(self) -> "LabelServer":
        app = self.work / "app"
        shutil.copytree(APP, app, ignore=shutil.ignore_patterns("__pycache__", "model", "logs", "bin", "output"))
        port = free_port()
        self.base = f"http://127.0.0.1:{port}"
        conf = [arg for key, value in self.conf.items() for arg in ("--conf", key, str(value))]
        t0 = time.perf_counter()
        with self.log.open("wb") as sink:
            self.process = subprocess.Popen(
                ["monailabel", "start_server", "--app", str(app), "--studies", str(self.studies), "--host", "127.0.0.1",
                 "--port", str(port), *conf], stdout=sink, stderr=subprocess.STDOUT, env=label_env(self.threads),
                cwd=self.work, start_new_session=True)
        deadline = t0 + self.start_timeout
        while time.perf_counter() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"monailabel start_server exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.base}/info/", timeout=5) as response:
                    if response.status == 200:
                        self.start_seconds = time.perf_counter() - t0
                        return self
            except OSError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"monailabel start_server did not answer within {self.start_timeout} s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.is_file() else ""

    def infer(self, task: str, image: str, output: str | None = None) -> tuple[int, str, bytes]:
        """``POST /infer/<task>?image=<image>``: (HTTP status, content type, body)."""
        query = f"image={urllib.request.quote(image)}" + (f"&output={output}" if output else "")
        request = urllib.request.Request(f"{self.base}/infer/{task}?{query}", method="POST")
        try:
            with urllib.request.urlopen(request, timeout=300) as response:
                return response.status, response.headers.get("Content-Type", ""), response.read()
        except urllib.error.HTTPError as err:
            return err.code, err.headers.get("Content-Type", ""), err.read()

    def protect(self, image: str) -> tuple[dict, bytes]:
        """The protect task's public record and protected image file for one image id (``output=all``)."""
        status, content_type, body = self.infer("medlocker_protect", image)
        if status != 200:
            raise RuntimeError(f"medlocker_protect {image}: HTTP {status}: {body[-2000:]!r}")
        fields = multipart_fields(content_type, body)
        return json.loads(fields["params"]), fields["image"]

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def __enter__(self) -> "LabelServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
