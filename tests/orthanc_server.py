"""A real Orthanc PACS (Debian's ``orthanc`` + ``orthanc-dicomweb``) on loopback, for the PACS tests.

Each server gets its own storage folder and free ports, so tests never touch a system Orthanc.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

ORTHANC_BINARY = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


def orthanc_available() -> bool:
    return os.access(ORTHANC_BINARY, os.X_OK) and os.path.exists(DICOMWEB_PLUGIN)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OrthancServer:
    """Start Orthanc with the DICOMweb plugin in ``folder``; ``url`` is its DICOMweb root."""

    def __init__(self, folder: Path, aet: str = "MLKORTHANC", users: dict | None = None) -> None:
        self.folder = Path(folder)
        self.users = users  # HTTP Basic users (name -> password); None = no authentication
        self.http_port, self.dicom_port, self.aet = free_port(), free_port(), aet
        self.process: subprocess.Popen | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def url(self) -> str:
        return self.base + "/dicom-web"

    def start(self, timeout: float = 60.0) -> "OrthancServer":
        self.folder.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "MedLockerTest", "StorageDirectory": str(self.folder / "db"), "IndexDirectory": str(self.folder / "db"),
            "HttpPort": self.http_port, "DicomPort": self.dicom_port, "DicomAet": self.aet,
            "RemoteAccessAllowed": False, "AuthenticationEnabled": bool(self.users), "HttpBindAddress": "127.0.0.1",
            "RegisteredUsers": self.users or {},
            "DicomServerEnabled": True, "Plugins": [DICOMWEB_PLUGIN],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "Host": "127.0.0.1", "Ssl": False},
            "StorageCompression": False, "OverwriteInstances": False,
        }
        cfg = self.folder / "orthanc.json"
        cfg.write_text(json.dumps(config, indent=1))
        self.log = open(self.folder / "orthanc.log", "wb")
        self.process = subprocess.Popen([ORTHANC_BINARY, str(cfg)], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with code {self.process.returncode}; see {self.folder / 'orthanc.log'}")
            try:
                with urllib.request.urlopen(self.base + "/system", timeout=2) as r:
                    if r.status == 200:
                        return self
            except urllib.error.HTTPError as err:
                if err.code == 401:  # up, and asking for credentials
                    return self
                time.sleep(0.2)
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer on {self.base} within {timeout} s; see {self.folder / 'orthanc.log'}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process = None

    def upload(self, path: Path) -> dict:
        """Store one file through Orthanc's REST API (as a modality would send it)."""
        req = urllib.request.Request(self.base + "/instances", data=Path(path).read_bytes(), method="POST",
                                     headers={"Content-Type": "application/dicom"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())

    def get_json(self, route: str):
        with urllib.request.urlopen(self.base + route, timeout=30) as r:
            return json.loads(r.read())

    def get_bytes(self, route: str) -> bytes:
        with urllib.request.urlopen(self.base + route, timeout=30) as r:
            return r.read()

    def __enter__(self) -> "OrthancServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
