"""C-STORE through DICOM networking (DIMSE, ``pynetdicom``): the other way to send derived instances.

Some clinics' PACS take images only over DIMSE. :class:`DimseStore` has the same ``store``
interface as :class:`~monai_medlocker.pacs.dicomweb.DicomWebPacs`, so the study workflow can pull
over DICOMweb and push over C-STORE. Each instance's C-STORE status is reported; an association
that cannot be established is retried ``retries`` times, then reported as :class:`PacsError`.
"""

from __future__ import annotations

import time

from pydicom.dataset import Dataset

from monai_medlocker.pacs.dicomweb import PacsError, StoreResult

__all__ = ["DimseStore"]

# C-STORE warning statuses: the instance was stored (coerced, elements discarded, ...), PS3.4 B.2.3.
_STORED_WITH_WARNING = (0xB000, 0xB006, 0xB007)


class DimseStore:
    """A C-STORE SCP (the PACS's DICOM port).

    Args:
        host, port: the PACS's DICOM address.
        called_aet: the PACS's application entity title.
        calling_aet: ours.
        retries: association attempts.
        backoff: seconds before the second attempt; doubled after each failure.
        timeout: seconds for the association and each DIMSE message.
    """

    def __init__(self, host: str, port: int, called_aet: str = "ANY-SCP", calling_aet: str = "MEDLOCKER",
                 retries: int = 3, backoff: float = 0.5, timeout: float = 30.0) -> None:
        if int(retries) < 1:
            raise ValueError(f"retries must be at least 1, got {retries}")
        self.host, self.port, self.called_aet, self.calling_aet = host, int(port), called_aet, calling_aet
        self.retries, self.backoff, self.timeout = int(retries), float(backoff), float(timeout)
        self.url = f"dicom://{called_aet}@{host}:{self.port}"
        self._unreachable: PacsError | None = None  # after one failed association, fail fast

    def _associate(self, datasets: list[Dataset]):
        from pynetdicom import AE

        if self._unreachable is not None:
            raise self._unreachable
        ae = AE(ae_title=self.calling_aet)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout
        contexts = sorted({(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for ds in datasets})
        for sop_class, syntax in contexts:
            ae.add_requested_context(sop_class, [syntax])
        delay, last = self.backoff, "no answer"
        for attempt in range(1, self.retries + 1):
            assoc = ae.associate(self.host, self.port, ae_title=self.called_aet)
            if assoc.is_established:
                return assoc
            last = "association rejected" if assoc.is_rejected else "association aborted or no answer"
            if attempt < self.retries:
                time.sleep(delay)
                delay *= 2
        self._unreachable = PacsError(f"PACS {self.url}: C-STORE association failed after {self.retries} attempts ({last})")
        raise self._unreachable

    def store(self, datasets: list[Dataset], study_uid: str | None = None) -> StoreResult:
        """C-STORE each dataset on one association; the result lists the instances the PACS accepted."""
        result = StoreResult()
        assoc = self._associate(datasets)
        try:
            for ds in datasets:
                uid = str(ds.SOPInstanceUID)
                status = assoc.send_c_store(ds)
                code = getattr(status, "Status", None)
                if code == 0x0000 or code in _STORED_WITH_WARNING:
                    result.stored.append(uid)
                else:
                    result.failed[uid] = "no response" if code is None else f"C-STORE status 0x{code:04X}"
        finally:
            assoc.release()
        return result
