"""The non-identifying acquisition facts of an input: what `fracscan monitor` groups results by.

Read from the DICOM header on the client side (the server's answer carries none): modality,
manufacturer and model name, photometric interpretation, size, bits stored, pixel spacing, transfer
syntax, view position and body part as coded. Never a patient, study date, accession, institution
or station attribute: the keywords read are listed in ACQUISITION_TAGS and nothing else is touched.
A PNG or other non-DICOM input has only its size.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import pydicom

# Result-row key -> the DICOM keyword it is read from (the only attributes read).
ACQUISITION_TAGS = {
    "modality": "Modality",
    "manufacturer": "Manufacturer",
    "model_name": "ManufacturerModelName",
    "photometric": "PhotometricInterpretation",
    "rows": "Rows",
    "columns": "Columns",
    "bits_stored": "BitsStored",
    "pixel_spacing": "PixelSpacing",
    "transfer_syntax": "TransferSyntaxUID",  # from the file meta
    "view_position": "ViewPosition",
    "body_part": "BodyPartExamined",
}
CSV_PREFIX = "acq_"


@dataclass(frozen=True)
class Acquisition:
    """One input's acquisition facts; None where unknown (every text field for a non-DICOM input)."""

    modality: str | None = None
    manufacturer: str | None = None
    model_name: str | None = None
    photometric: str | None = None
    rows: int | None = None
    columns: int | None = None
    bits_stored: int | None = None
    pixel_spacing: tuple[float, float] | None = None
    transfer_syntax: str | None = None
    view_position: str | None = None
    body_part: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the row's nested `acquisition` object (pixel_spacing a list of 2 floats or null)."""
        out = asdict(self)
        out["pixel_spacing"] = list(self.pixel_spacing) if self.pixel_spacing else None
        return out

    def to_csv(self) -> dict[str, Any]:
        """Flattened for CSV: `acq_<key>`, pixel spacing as "row\\col" (DICOM's own separator)."""
        d = self.to_dict()
        d["pixel_spacing"] = "\\".join(f"{v:g}" for v in self.pixel_spacing) if self.pixel_spacing else None
        return {CSV_PREFIX + k: v for k, v in d.items()}

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> Acquisition:
        """Back from a row's `acquisition` object (unknown keys ignored, malformed values become None)."""
        if not isinstance(raw, dict):
            return cls()
        values: dict[str, Any] = {}
        for f in fields(cls):
            value = raw.get(f.name)
            if f.name in ("rows", "columns", "bits_stored"):
                value = _int(value)
            elif f.name == "pixel_spacing":
                value = _spacing(value)
            else:
                value = _text(value)
            values[f.name] = value
        return cls(**values)


def csv_columns() -> list[str]:
    return [CSV_PREFIX + f.name for f in fields(Acquisition)]


def from_dataset(ds: pydicom.Dataset) -> Acquisition:
    """The facts of a DICOM header; a value that cannot be read is None (the facts never fail a result)."""

    def get(keyword: str) -> Any:
        try:
            if keyword == "TransferSyntaxUID":
                meta = getattr(ds, "file_meta", None)
                return meta.get(keyword) if meta is not None else None
            return ds.get(keyword)
        except Exception:  # a malformed value: not a fact
            return None

    values: dict[str, Any] = {key: get(keyword) for key, keyword in ACQUISITION_TAGS.items()}
    return Acquisition.from_dict(values)


def from_size(width: int | None, height: int | None) -> Acquisition:
    """A non-DICOM input: its size only."""
    return Acquisition(rows=height, columns=width)


def _text(value: Any) -> str | None:
    text = str(value).strip() if value is not None else ""
    return text or None


def _int(value: Any) -> int | None:
    try:
        return int(value) if value is not None and value != "" else None
    except (TypeError, ValueError):
        return None


def _spacing(value: Any) -> tuple[float, float] | None:
    if isinstance(value, str):
        value = value.split("\\")
    try:
        pair = tuple(float(v) for v in value)  # pydicom's MultiValue, a list, a tuple
    except (TypeError, ValueError):
        return None
    return (pair[0], pair[1]) if len(pair) == 2 else None
