"""De-identification of what a protected DICOM instance publishes: DICOM PS3.15 Annex E.

The header of a published instance follows the Basic Application Level Confidentiality Profile
(PS3.15 E.1, table E.1-1): each attribute the table lists is removed (X), emptied (Z), replaced by a
dummy value (D) or, for UIDs (U), kept under the Retain UIDs Option (the default here: the derived
instance stays in its study, and grants name images by their SOP Instance UID) or replaced by a keyed
hash. Dates and times are removed unless the Retain Longitudinal Temporal Information with Full Dates
Option is asked for. The actions apply at every depth (inside sequence items too). Where the table
gives a choice (X/Z, Z/D, X/D, X/Z/D), the one that keeps a Type 1 or 2 attribute valid is taken: Z for
X/Z, Z/D and X/Z/D, a dummy date for a
date or time that may be Type 1 (X/D, X/Z/D), else removal. The instance then says what was done: PatientIdentityRemoved ``YES``,
DeidentificationMethod and DeidentificationMethodCodeSequence (CID 7050: 113100, plus 113110 and
113106 for the options).

Whatever the identity setting, two kinds of data never go out unless asked for (with the identity kept:
``keep_private``, ``keep_free_text``): private elements at
any depth (other vendors' data; the writer adds MedLocker's own block afterwards), and free-text
attributes that can carry findings (ImageComments and the profile's other comment, description and
history text), since a grader's note tells the grade the mark hides.

The attribute table is not typed in here: it comes from ``dicom-anonymizer`` (2.1.0, its
``dicomfields_2026c`` table, generated from the standard's 2026c edition). Compared before choosing:
``dicom-anonymizer`` ships table E.1-1 as data, every row with its action code (655 rows: 93 D, 42 Z,
415 X, 55 U, 50 with a choice, repeating groups as masks); ``deid`` 0.4.13 ships its own "best effort"
recipe (about 70 REMOVE/BLANK/REPLACE lines, not the table; it also pulls matplotlib); ``dicognito``
0.19.0 randomises a fixed set of attribute kinds (names, ids, addresses, dates, UIDs, equipment)
without the table. ``tests/test_deidentify.py`` checks the table against a whole copy of table E.1-1
made apart from dicom-anonymizer (``tests/data/ps3.15_table_e.1-1.tsv``, an older edition, every row) and
against rows of the 2026c edition.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
from dataclasses import dataclass
from functools import lru_cache

from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag

__all__ = ["DicomPrivacy", "annex_e_actions", "annex_e_action", "deidentify", "findings_text_tags", "mapped_uid",
           "BASIC_PROFILE", "RETAIN_UIDS", "RETAIN_FULL_DATES"]

# CID 7050 De-identification Method (PS3.16).
BASIC_PROFILE = ("113100", "DCM", "Basic Application Confidentiality Profile")
RETAIN_UIDS = ("113110", "DCM", "Retain UIDs Option")
RETAIN_FULL_DATES = ("113106", "DCM", "Retain Longitudinal Temporal Information Full Dates Option")
_TABLE_EDITION = "dicomfields_2026c"
# dicom-anonymizer's category names -> the standard's action codes.
_CATEGORIES = {"D_TAGS": "D", "Z_TAGS": "Z", "X_TAGS": "X", "U_TAGS": "U", "Z_D_TAGS": "Z/D", "X_Z_TAGS": "X/Z",
               "X_D_TAGS": "X/D", "X_Z_D_TAGS": "X/Z/D", "X_Z_U_STAR_TAGS": "X/Z/U*"}
_PIXEL_DATA = BaseTag(0x7FE00010)
_DATE_VRS = ("DA", "DT", "TM")
_TEXT_VRS = ("LT", "ST", "UT")
_TEXT_WORDS = ("Comment", "Description", "History", "Text", "Note", "Remark", "Reason")
_DUMMY = {"PN": "ANONYMIZED", "DA": "19000101", "TM": "000000", "DT": "19000101000000", "IS": "0", "DS": "0",
          "AS": "000Y", "CS": "ANONYMIZED", "UI": None}


@dataclass(frozen=True)
class DicomPrivacy:
    """What a published DICOM instance keeps of its source's header.

    Attributes:
        keep_identity: publish the patient, study and equipment identity as they are (a clinic's own
            PACS round trip); default: de-identify by the Basic Application Level Confidentiality Profile.
        keep_free_text: with ``keep_identity``, keep free-text attributes that can carry findings
            (ImageComments, descriptions); de-identified, the profile removes them anyway (they may name
            the patient; its Clean Descriptors Option is not offered).
        retain_uids: the Retain UIDs Option (default on); off, UIDs are replaced by a keyed hash
            (``uid_secret`` of :func:`deidentify`).
        retain_dates: the Retain Longitudinal Temporal Information with Full Dates Option.
        keep_private: with ``keep_identity``, keep other vendors' private elements (at any depth) on purpose;
            de-identified, the profile removes them (they may carry identity or findings).

    Raises:
        ValueError: ``keep_private`` without ``keep_identity``.
    """

    keep_identity: bool = False
    keep_free_text: bool = False
    retain_uids: bool = True
    retain_dates: bool = False
    keep_private: bool = False

    def __post_init__(self) -> None:
        if self.keep_private and not self.keep_identity:
            raise ValueError("keep_private (--keep-private) needs keep_identity (--keep-identity): a de-identified "
                             "instance never keeps private elements (PS3.15 E.1 removes them)")

    def to_record(self) -> dict:
        record = {"keep_identity": self.keep_identity, "keep_free_text": self.keep_free_text,
                  "retain_uids": self.retain_uids, "retain_dates": self.retain_dates}
        if self.keep_private:  # only then: earlier runs' settings stay as they were
            record["keep_private"] = True
        return record


@lru_cache(maxsize=1)
def annex_e_actions() -> tuple[dict[int, str], tuple[tuple[int, int, int, str], ...]]:
    """Table E.1-1 as (tag -> action code, masked rows (tag, group mask, element mask, action)).

    Raises:
        RuntimeError: dicom-anonymizer (a dependency of monai-medlocker) is missing or lacks the table.
    """
    try:
        from importlib import import_module

        table = import_module(f"dicomanonymizer.dicom_anonymization_databases.{_TABLE_EDITION}")
    except ImportError as err:
        raise RuntimeError(f"de-identifying DICOM needs dicom-anonymizer 2.1.0 with its {_TABLE_EDITION} table, a "
                           "dependency of monai-medlocker (reinstall it: pip install monai-medlocker); or keep the "
                           "identity on purpose (--keep-identity)") from err
    exact: dict[int, str] = {}
    masked = []
    for category, action in _CATEGORIES.items():
        for row in getattr(table, category):
            if len(row) == 2:
                exact[(row[0] << 16) | row[1]] = action
            else:
                group, element, group_mask, element_mask = row
                masked.append(((group << 16) | element, group_mask, element_mask, action))
    return exact, tuple(masked)


def annex_e_action(tag: int) -> str | None:
    """The profile's action code for ``tag`` (``"X"``, ``"Z"``, ``"D"``, ``"U"``, ``"X/Z"``, ...), or ``None``."""
    exact, masked = annex_e_actions()
    tag = int(tag)
    if tag in exact:
        return exact[tag]
    for base, group_mask, element_mask, action in masked:
        if ((tag >> 16) & group_mask) == (base >> 16) and ((tag & 0xFFFF) & element_mask) == (base & 0xFFFF):
            return action
    return None


@lru_cache(maxsize=1)
def findings_text_tags() -> frozenset[int]:
    """Free text that can carry findings: ImageComments and the profile's text, comment, description and history rows."""
    exact, _ = annex_e_actions()
    out = {0x00204000}  # ImageComments
    for tag in exact:
        try:
            vr, keyword = dictionary_VR(tag), keyword_for_tag(tag)
        except KeyError:
            continue
        if vr in _TEXT_VRS + ("LO",) and any(w in keyword for w in _TEXT_WORDS):
            out.add(tag)
    return frozenset(out)


def mapped_uid(uid: str, secret: bytes) -> str:
    """A UID that stands for ``uid`` (the same one every time for the same secret) and reveals nothing of it."""
    digest = hmac.new(secret, str(uid).encode("ascii", "replace"), hashlib.sha256).digest()
    return "2.25." + str(int.from_bytes(digest[:16], "big"))


def _dummy(elem, uid_secret: bytes | None):
    if elem.VR == "SQ":
        return Sequence([])
    if elem.VR == "UI":
        return mapped_uid(str(elem.value), uid_secret) if uid_secret else None
    if elem.VR in ("US", "SS", "UL", "SL", "FL", "FD", "UV", "SV"):
        return 0
    if elem.VR in ("OB", "OW", "OD", "OF", "OL", "OV", "UN"):
        return b""
    return _DUMMY.get(elem.VR, "ANONYMIZED")


def _choice(action: str, vr: str) -> str:
    """One action out of the table's choices: a dummy only for a date or time (it may be Type 1, as the OP
    image's Acquisition DateTime is), else empty where allowed (Type 2 stays valid), else removed."""
    if "/" not in action:
        return action
    options = action.split("/")
    if "D" in options and vr in _DATE_VRS:
        return "D"
    return "Z" if "Z" in options else "X" if "X" in options else "D"


def _clean(ds: Dataset, privacy: DicomPrivacy, uid_secret: bytes | None, top: bool) -> None:
    text = () if privacy.keep_free_text else findings_text_tags()
    for elem in list(ds):
        tag = int(elem.tag)
        if BaseTag(tag).is_private:
            if not privacy.keep_private:
                del ds[elem.tag]  # other vendors' data, at any depth
            elif elem.VR == "SQ":  # a kept private sequence: the standard attributes inside it are cleaned too
                for item in elem.value:
                    _clean(item, privacy, uid_secret, False)
            continue
        if top and tag >> 16 in (0x0002, 0x7FE0):
            continue  # file meta and pixel data: not header content
        if tag in text:
            del ds[elem.tag]
            continue
        action = None if privacy.keep_identity else annex_e_action(tag)
        if action is not None and privacy.retain_dates and elem.VR in _DATE_VRS:
            action = None
        if action == "U" or action == "X/Z/U*":
            if action == "U" and not privacy.retain_uids:
                elem.value = mapped_uid(str(elem.value), uid_secret) if elem.value else elem.value
            action = None  # X/Z/U*: the referenced-image sequences stay; their UIDs are handled inside
        if action is None:
            if elem.VR == "SQ":
                for item in elem.value:
                    _clean(item, privacy, uid_secret, False)
        else:
            action = _choice(action, elem.VR)
            if action == "X":
                del ds[elem.tag]
            elif action == "Z":
                elem.value = Sequence([]) if elem.VR == "SQ" else None
            else:
                elem.value = _dummy(elem, uid_secret)


def deidentify(source: Dataset, privacy: DicomPrivacy = DicomPrivacy(), uid_secret: bytes | None = None) -> Dataset:
    """A copy of ``source`` (pixel data left out) with what ``privacy`` does not keep taken out, at every depth.

    Args:
        source: the source instance (not modified).
        privacy: what to keep; default: the Basic Profile with the Retain UIDs Option, no private
            elements and no free text.
        uid_secret: the key of the UID hash, needed when ``privacy.retain_uids`` is off.

    Raises:
        ValueError: UIDs to replace without a ``uid_secret``.
        RuntimeError: de-identification asked for without dicom-anonymizer installed.
    """
    if not privacy.keep_identity and not privacy.retain_uids and not uid_secret:
        raise ValueError("replacing UIDs (retain_uids off) needs uid_secret, the key of the UID hash")
    held = source._dict.pop(_PIXEL_DATA, None)  # not copied: the writer replaces the pixels anyway
    try:
        ds = copy.deepcopy(source)
    finally:
        if held is not None:
            source._dict[_PIXEL_DATA] = held
    _clean(ds, privacy, uid_secret, True)
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "MediaStorageSOPInstanceUID" in meta and "SOPInstanceUID" in ds:
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID  # the file meta must not keep a replaced UID
    if not privacy.keep_identity:
        ds.PatientIdentityRemoved = "YES"
        codes = [BASIC_PROFILE] + ([RETAIN_UIDS] if privacy.retain_uids else []) + \
            ([RETAIN_FULL_DATES] if privacy.retain_dates else [])
        ds.DeidentificationMethod = "; ".join(["PS3.15 E.1 Basic Profile"] + [c[2][:-7] for c in codes[1:]])[:64]
        items = []
        for value, scheme, meaning in codes:
            item = Dataset()
            item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
            items.append(item)
        ds.DeidentificationMethodCodeSequence = items
        ds.LongitudinalTemporalInformationModified = "UNMODIFIED" if privacy.retain_dates else "REMOVED"
    return ds
