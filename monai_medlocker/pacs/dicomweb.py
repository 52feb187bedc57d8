"""A DICOMweb PACS (QIDO-RS, WADO-RS, STOW-RS) through ``dicomweb-client``, with bounded retries.

Every call that reaches the network goes through :meth:`DicomWebPacs._call`: a refused
connection, a timeout or an HTTP 5xx answer is retried ``retries`` times with exponential
backoff, then reported as :class:`PacsError` naming the PACS, the operation and the last error.
HTTP 4xx answers are not retried: they will not get better.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, TypeVar

from pydicom.dataset import Dataset

from monai_medlocker.io.private_tags import PRIVATE_CREATOR, PRIVATE_GROUP

__all__ = ["PacsError", "DicomWebPacs", "StoreResult", "json_value", "json_has_medlocker_block"]

T = TypeVar("T")


class PacsError(RuntimeError):
    """The PACS could not be reached or refused an operation; the message names both."""

    user_facing = True


@dataclass
class StoreResult:
    """What a STOW-RS request stored: SOP Instance UIDs confirmed by the PACS, and the failed ones."""

    stored: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def json_value(item: dict, tag: str, default=None):
    """The first value of ``tag`` (8 hex digits) in a DICOM JSON object."""
    values = item.get(tag.upper(), {}).get("Value") or []
    if not values:
        return default
    value = values[0]
    if isinstance(value, dict) and "Alphabetic" in value:
        return value["Alphabetic"]
    return value


def json_has_medlocker_block(item: dict) -> bool:
    """True when a DICOM JSON object (WADO-RS metadata) carries the MedLocker private block."""
    group = f"{PRIVATE_GROUP:04X}"
    for element in range(0x10, 0x100):
        if json_value(item, f"{group}{element:04X}") == PRIVATE_CREATOR:
            return True
    return False


def _auth_header(env_name: str | None) -> dict:
    """The Authorization header from an environment variable (``user:password`` or ``Bearer <token>``)."""
    import base64
    import os

    if not env_name:
        return {}
    value = os.environ.get(env_name)
    if not value:
        raise ValueError(f"PACS credentials: environment variable {env_name} is not set or empty")
    if value.startswith("Bearer "):
        return {"Authorization": value}
    if ":" not in value:
        raise ValueError(f"PACS credentials in {env_name} must be 'user:password' or 'Bearer <token>'")
    return {"Authorization": "Basic " + base64.b64encode(value.encode("utf-8")).decode("ascii")}


def _retryable(err: Exception) -> bool:
    import requests

    if isinstance(err, (requests.ConnectionError, requests.Timeout)):
        return True
    if isinstance(err, requests.HTTPError) and err.response is not None:
        return err.response.status_code >= 500
    return False


class DicomWebPacs:
    """One DICOMweb service.

    Args:
        url: the DICOMweb root, e.g. ``http://127.0.0.1:8042/dicom-web``.
        retries: attempts per operation (at least 1).
        backoff: seconds before the second attempt; doubled after each failure.
        timeout: seconds per HTTP request.
        headers: extra HTTP headers.
        auth_env: name of an environment variable holding the PACS credentials: ``user:password``
            (HTTP Basic) or ``Bearer <token>``. Credentials never go on the command line or in configs.
    """

    def __init__(self, url: str, retries: int = 3, backoff: float = 0.5, timeout: float = 30.0,
                 headers: dict | None = None, auth_env: str | None = None) -> None:
        from dicomweb_client.api import DICOMwebClient

        if not str(url).startswith(("http://", "https://")):
            raise ValueError(f"PACS url must start with http:// or https://, got {url!r}")
        if int(retries) < 1:
            raise ValueError(f"retries must be at least 1, got {retries}")
        self.url = str(url).rstrip("/")
        self.retries, self.backoff = int(retries), float(backoff)
        headers = {**(headers or {}), **_auth_header(auth_env)}
        self.client = DICOMwebClient(self.url, timeout=timeout, headers=headers)
        self.client.set_http_retry_params(retry=False)  # one retry policy, ours: bounded and reported

    def _call(self, operation: str, fn: Callable[..., T], *args, **kwargs) -> T:
        delay = self.backoff
        for attempt in range(1, self.retries + 1):
            try:
                return fn(*args, **kwargs)
            except Exception as err:
                if not _retryable(err):
                    raise PacsError(f"PACS {self.url}: {operation} failed: {type(err).__name__}: {err}") from err
                if attempt == self.retries:
                    raise PacsError(
                        f"PACS {self.url}: {operation} failed after {self.retries} attempts: {type(err).__name__}: {err}"
                    ) from err
                time.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")  # pragma: no cover

    def _dicom_json(self, operation: str, answer) -> list[dict]:
        """``answer`` checked to be DICOM JSON (a list of objects of tag -> attribute object).

        Raises:
            PacsError: anything else, named with the PACS and the operation.
        """
        def bad(what: str) -> PacsError:
            return PacsError(f"PACS {self.url}: {operation}: malformed DICOM JSON answer ({what})")

        if not isinstance(answer, list):
            raise bad(f"expected a list of objects, got a JSON {type(answer).__name__}")
        for index, item in enumerate(answer):
            if not isinstance(item, dict):
                raise bad(f"item {index} is a JSON {type(item).__name__}, not an object")
            for tag, attribute in item.items():
                if not isinstance(attribute, dict) or not isinstance(attribute.get("Value", []), list):
                    raise bad(f"item {index}, attribute {tag}: expected an object with a Value list")
        return answer

    def study_series(self, study_uid: str) -> list[dict]:
        """QIDO-RS: the series of a study (DICOM JSON), each with its Series Instance UID.

        Raises:
            PacsError: the PACS failed, or answered something that is not DICOM JSON series.
        """
        operation = f"search for the series of study {study_uid}"
        series = self._dicom_json(operation, self._call(operation, self.client.search_for_series, study_uid))
        for index, item in enumerate(series):
            if not isinstance(json_value(item, "0020000E"), str):
                raise PacsError(f"PACS {self.url}: {operation}: malformed DICOM JSON answer (series {index} has no "
                                "Series Instance UID)")
        return series

    def series_metadata(self, study_uid: str, series_uid: str) -> list[dict]:
        """WADO-RS: the metadata of every instance in a series, private elements included.

        Raises:
            PacsError: the PACS failed, or answered something that is not DICOM JSON.
        """
        operation = f"retrieve metadata of series {series_uid} of study {study_uid}"
        return self._dicom_json(operation, self._call(operation, self.client.retrieve_series_metadata,
                                                      study_uid, series_uid))

    def retrieve(self, study_uid: str, series_uid: str, sop_uid: str) -> Dataset:
        """WADO-RS: one instance as stored (any transfer syntax the PACS holds)."""
        return self._call(f"retrieve instance {sop_uid}", self.client.retrieve_instance, study_uid, series_uid, sop_uid,
                          media_types=(("application/dicom", "*"),))

    def store(self, datasets: list[Dataset], study_uid: str) -> StoreResult:
        """STOW-RS: store instances into a study; the PACS's answer says exactly which were stored."""
        response = self._call(f"store {len(datasets)} instance(s) into study {study_uid}", self.client.store_instances,
                              datasets, study_uid)
        result = StoreResult()
        for item in response.get("ReferencedSOPSequence", []) if response is not None else []:
            result.stored.append(str(item.ReferencedSOPInstanceUID))
        for item in response.get("FailedSOPSequence", []) if response is not None else []:
            result.failed[str(item.ReferencedSOPInstanceUID)] = f"failure reason {item.get('FailureReason', 'unknown')}"
        return result
