"""Writing synthetic cases as files: PNG, DICOM in every transfer syntax, and a non-image DICOM.

Writing some compressed transfer syntaxes needs optional encoders (imagecodecs for the JPEG
family, pyjpegls for JPEG-LS): `can_write` says which the installed ones cover.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Literal

import numpy as np
from pydicom.uid import UID, ExplicitVRLittleEndian

from . import streams
from .cases import DEMO_NOTICE, SyntheticCase

# canonical region -> DICOM BodyPartExamined (upper case, a term the demo spec maps back)
BODY_PART: dict[str, str] = {
    "ankle": "ANKLE",
    "clavicle": "CLAVICLE",
    "elbow": "ELBOW",
    "femur": "FEMUR",
    "foot": "FOOT",
    "forearm": "FOREARM",
    "hand": "HAND",
    "hip": "HIP",
    "humerus": "HUMERUS",
    "knee": "KNEE",
    "pelvis": "PELVIS",
    "ribs": "RIB",
    "shoulder": "SHOULDER",
    "spine": "SPINE",
    "tibia_fibula": "LEG",
    "wrist": "WRIST",
}

_BODY_PART_REGION = {v: k for k, v in BODY_PART.items()}
# Midline regions: DICOM ImageLaterality "U" (unpaired); the burned-in marker still says R/L.
_UNPAIRED = frozenset({"pelvis", "spine"})
# Approximate field of view (long side, mm) per region, for ImagerPixelSpacing.
_FIELD_MM = {
    "ankle": 240,
    "clavicle": 300,
    "elbow": 240,
    "femur": 430,
    "foot": 240,
    "forearm": 300,
    "hand": 240,
    "hip": 300,
    "humerus": 350,
    "knee": 300,
    "pelvis": 430,
    "ribs": 350,
    "shoulder": 300,
    "spine": 430,
    "tibia_fibula": 430,
    "wrist": 200,
}


def png_bytes(case: SyntheticCase, bits: int = 16) -> bytes:
    """Grayscale PNG, brighter = denser. Values are rescaled to the full 8 / 16-bit range."""
    import io

    from PIL import Image

    if bits not in (8, 16):
        raise ValueError(f"bits must be 8 or 16, got {bits}")
    arr = case.pixels.astype(np.float64) * (((1 << bits) - 1) / case.max_value)
    arr = np.rint(arr)
    img = Image.fromarray(arr.astype(np.uint8)) if bits == 8 else Image.fromarray(arr.astype(np.uint16))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def write_png(case: SyntheticCase, path: str | Path, bits: int = 16) -> Path:
    """The case as a PNG file (see `png_bytes`)."""
    path = Path(path)
    path.write_bytes(png_bytes(case, bits))
    return path


def _ts():
    from pydicom import uid as U

    return U


def _transfer_syntaxes():
    U = _ts()
    return {
        "explicit_vr_little_endian": U.ExplicitVRLittleEndian,
        "implicit_vr_little_endian": U.ImplicitVRLittleEndian,
        "explicit_vr_big_endian": U.ExplicitVRBigEndian,
        "deflated_explicit_vr_little_endian": U.DeflatedExplicitVRLittleEndian,
        "rle_lossless": U.RLELossless,
        "jpeg2000_lossless": U.JPEG2000Lossless,
        "jpeg2000_lossy": U.JPEG2000,
        "jpegls_lossless": U.JPEGLSLossless,
        "jpegls_near_lossless": U.JPEGLSNearLossless,
        "jpeg_lossless_sv1": U.JPEGLosslessSV1,
        "jpeg_baseline_8bit": U.JPEGBaseline8Bit,
        "jpeg_extended_12bit": U.JPEGExtended12Bit,
    }


#: Every transfer syntax write_dicom knows (name -> UID); see can_write() for the
#: encoders actually installed and LOSSLESS for which are lossless.
TRANSFER_SYNTAXES: dict[str, UID] = _transfer_syntaxes()
#: The lossless ones (pixels round-trip exactly).
LOSSLESS: frozenset[UID] = frozenset(
    TRANSFER_SYNTAXES[k]
    for k in (
        "explicit_vr_little_endian",
        "implicit_vr_little_endian",
        "explicit_vr_big_endian",
        "deflated_explicit_vr_little_endian",
        "rle_lossless",
        "jpeg2000_lossless",
        "jpegls_lossless",
        "jpeg_lossless_sv1",
    )
)
_IMAGECODECS_SYNTAXES = ("jpeg_lossless_sv1", "jpeg_baseline_8bit", "jpeg_extended_12bit")


def _imagecodecs_ok() -> bool:
    try:
        import imagecodecs

        return bool(imagecodecs.JPEG8.available)
    except Exception:
        return False


def can_write(transfer_syntax: UID | str) -> bool:
    """True if write_dicom can write this transfer syntax with the installed encoders."""
    ts = UID(str(transfer_syntax))
    if ts not in TRANSFER_SYNTAXES.values():
        return False
    if not ts.is_compressed:
        return True
    if ts in (TRANSFER_SYNTAXES[k] for k in _IMAGECODECS_SYNTAXES):
        return _imagecodecs_ok()
    from pydicom.pixels import get_encoder

    try:
        return bool(get_encoder(ts).is_available)
    except Exception:
        return False


def writable_transfer_syntaxes() -> dict[str, UID]:
    """The subset of TRANSFER_SYNTAXES that the installed encoders can write."""
    return {k: v for k, v in TRANSFER_SYNTAXES.items() if can_write(v)}


# region -> keyword of its code in DICOM CID 4031 (Common Anatomic Regions), as pydicom names it
_ANATOMY_CODE = {
    "ankle": "AnkleJoint",
    "clavicle": "Clavicle",
    "elbow": "ElbowJoint",
    "femur": "Femur",
    "foot": "Foot",
    "forearm": "Forearm",
    "hand": "Hand",
    "hip": "Hip",
    "humerus": "Humerus",
    "knee": "Knee",
    "pelvis": "Pelvis",
    "ribs": "Rib",
    "shoulder": "Shoulder",
    "spine": "Spine",
    "tibia_fibula": "LowerLeg",
    "wrist": "WristJoint",
}


def _code_items(cid: str, keyword: str | None) -> list:
    """[code item] from pydicom's copy of a DICOM context group, [] if unknown."""
    if keyword is None:
        return []
    from pydicom.dataset import Dataset
    from pydicom.sr.codedict import codes

    try:
        code = getattr(getattr(codes, cid), keyword)
    except (AttributeError, KeyError):
        return []
    item = Dataset()
    item.CodeValue = code.value
    item.CodingSchemeDesignator = code.scheme_designator
    item.CodeMeaning = code.meaning
    return [item]


def _uid(*parts) -> str:
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=["fracscan-synthetic", *[str(p) for p in parts]])


def _file_dataset(path: Path | str, sop_class: str, instance_uid: str, transfer_syntax: str):
    """An empty Part-10 dataset with its file meta; the SOP Class/Instance UIDs are set on both."""
    from pydicom.dataset import FileDataset, FileMetaDataset

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = instance_uid
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationVersionName = "FRACSCAN_SYNTH"
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = instance_uid
    return ds


def _ds_str(x: float) -> str:
    s = f"{x:.6g}"
    return s[:16]


def write_dicom(
    case: SyntheticCase,
    path: str | Path,
    *,
    transfer_syntax: UID | str = ExplicitVRLittleEndian,
    photometric: Literal["MONOCHROME1", "MONOCHROME2"] = "MONOCHROME2",
    modality: Literal["DX", "CR"] = "DX",
    body_part: str | None = None,
    patient_name: str = "SYNTHETIC^DEMO",
    patient_id: str | None = None,
    rescale_intercept: float | None = None,
) -> Path:
    """Write a DICOM Part-10 file of the case.

    MONOCHROME1 stores ``max - value``, so inverting MONOCHROME1 recovers ``case.pixels``.
    JPEG Baseline stores an 8-bit version (``round(v * 255 / max)``) and JPEG Extended a
    12-bit version of the pixels (both lossy anyway). ``rescale_intercept`` None draws it
    from the seed (mostly 0).
    """
    import pydicom
    from pydicom.sequence import Sequence as DSequence

    U = _ts()
    ts = UID(str(transfer_syntax))
    if ts not in TRANSFER_SYNTAXES.values():
        raise ValueError(f"unsupported transfer syntax {ts} ({ts.name})")
    if not can_write(ts):
        raise RuntimeError(
            f"no encoder installed for {ts.name}: "
            + (
                "install imagecodecs"
                if ts in (TRANSFER_SYNTAXES[k] for k in _IMAGECODECS_SYNTAXES)
                else "install the pydicom encoder plugin (e.g. pyjpegls for JPEG-LS)"
            )
        )
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"photometric must be MONOCHROME1 or MONOCHROME2, got {photometric!r}")
    if modality not in ("DX", "CR"):
        raise ValueError(f"modality must be DX or CR, got {modality!r}")
    path = Path(path)
    rm = streams.rng(case.seed, streams.META)

    # stored pixel values
    bits = case.bits_stored
    arr = case.pixels.astype(np.uint16)
    if ts == U.JPEGBaseline8Bit:
        bits = 8
        arr = np.rint(arr.astype(float) * (255 / case.max_value)).astype(np.uint16)
    elif ts == U.JPEGExtended12Bit and bits > 12:
        bits = 12
        arr = np.rint(arr.astype(float) * (4095 / case.max_value)).astype(np.uint16)
    maxv = (1 << bits) - 1
    if photometric == "MONOCHROME1":
        arr = (maxv - arr).astype(np.uint16)
    lossy = ts not in LOSSLESS

    sop_class = U.DigitalXRayImageStorageForPresentation if modality == "DX" else U.ComputedRadiographyImageStorage
    study_uid = _uid(case.seed, "study")
    series_uid = _uid(case.seed, "series", modality, photometric)
    inst_uid = _uid(case.seed, "instance", modality, photometric, bits, ts if lossy else "")

    ds = _file_dataset(path, sop_class, inst_uid, ts)

    when = _dt.datetime(2020, 1, 1, 8, 0, 0) + _dt.timedelta(
        days=int(rm.integers(0, 1500)), seconds=int(rm.integers(0, 10 * 3600))
    )
    region = case.region
    bp = (body_part if body_part is not None else BODY_PART.get(region, region.upper())).upper()
    view = "PA" if region in ("hand", "wrist") else "AP"

    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = when.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = when.strftime("%H%M%S")
    ds.AccessionNumber = ""
    ds.Modality = modality
    ds.Manufacturer = "fracscan synthetic generator (DEMO)"
    ds.InstitutionName = "SYNTHETIC"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = f"XR {region.upper().replace('_', ' ')} 2 VIEWS"
    ds.SeriesDescription = f"{bp} {view}"
    ds.PatientName = patient_name
    ds.PatientID = patient_id if patient_id is not None else f"DEMO-{case.seed}"
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "SYNTHETIC IMAGE - NEVER IDENTIFIED"
    ds.BodyPartExamined = bp
    ds.ViewPosition = view
    ds.KVP = _ds_str(float(rm.choice([50, 55, 60, 66, 70, 77, 81, 85])))
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    lat = case.laterality
    # DX carries the image-level ImageLaterality; CR (no DX Anatomy module) the series-level
    # Laterality. DICOM forbids Laterality when ImageLaterality is present.
    if modality == "DX":
        ds.ImageLaterality = "U" if region in _UNPAIRED else lat
    elif region not in _UNPAIRED:
        ds.Laterality = lat
    ds.AnatomicRegionSequence = DSequence(_code_items("cid4031", _ANATOMY_CODE.get(_BODY_PART_REGION.get(bp, ""))))
    if modality == "DX":
        ds.ViewCodeSequence = DSequence(
            _code_items("cid4010", "PosteroAnterior" if view == "PA" else "AnteroPosterior")
        )
    ds.PatientOrientation = ["L" if lat == "R" else "R", "F"]
    ds.ImageComments = DEMO_NOTICE
    ds.BurnedInAnnotation = "YES"
    if modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.PixelIntensityRelationship = "LOG"
        ds.PixelIntensityRelationshipSign = 1 if photometric == "MONOCHROME1" else -1
        ds.PresentationLUTShape = "INVERSE" if photometric == "MONOCHROME1" else "IDENTITY"
        ds.DetectorType = "SCINTILLATOR"
        ds.PositionerType = ""
        ds.AcquisitionContextSequence = DSequence([])
    spacing = _FIELD_MM.get(region, 300) / max(case.shape)
    ds.ImagerPixelSpacing = [_ds_str(spacing), _ds_str(spacing)]

    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = case.shape
    ds.BitsAllocated = 8 if bits == 8 else 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0

    draw = rm.random()
    if rescale_intercept is None:
        rescale_intercept = 0.0 if draw < 0.75 else float(rm.choice([-1024.0, -512.0, 100.0]))
    slope = 1.0
    ds.RescaleIntercept = _ds_str(rescale_intercept)
    ds.RescaleSlope = _ds_str(slope)
    ds.RescaleType = "US"
    # window from the field's percentiles, in modality units of the stored values
    fx0, fy0, fx1, fy1 = case.field
    inner = arr[fy0:fy1, fx0:fx1] if (fx1 > fx0 and fy1 > fy0) else arr
    p1, p99 = np.percentile(inner, [30, 99.7] if photometric == "MONOCHROME2" else [0.3, 70])
    ds.WindowCenter = _ds_str((p1 + p99) / 2 * slope + rescale_intercept)
    ds.WindowWidth = _ds_str(max(1.0, (p99 - p1) * slope))
    ds.LossyImageCompression = "01" if lossy else "00"

    if ts.is_compressed:
        ds.PixelData = arr.astype(np.uint8 if bits == 8 else np.uint16).tobytes()
        ds.file_meta.TransferSyntaxUID = U.ExplicitVRLittleEndian
        _compress(ds, arr, ts, bits)
        if lossy:
            ds.LossyImageCompression = "01"
    elif ts == U.ExplicitVRBigEndian:
        ds.PixelData = arr.astype(">u2").tobytes()
        ds["PixelData"].VR = "OW"
    else:
        ds.PixelData = arr.tobytes()
        ds["PixelData"].VR = "OW"
    ds.file_meta.TransferSyntaxUID = ts
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path


def _compress(ds, arr: np.ndarray, ts, bits: int) -> None:
    U = _ts()
    if ts in (TRANSFER_SYNTAXES[k] for k in _IMAGECODECS_SYNTAXES):
        import imagecodecs
        from pydicom.encaps import encapsulate

        if ts == U.JPEGLosslessSV1:
            frame = imagecodecs.jpeg8_encode(arr.astype(np.uint16), lossless=True, predictor=1, bitspersample=bits)
        elif ts == U.JPEGBaseline8Bit:
            frame = imagecodecs.jpeg8_encode(arr.astype(np.uint8), level=92)
            ds.LossyImageCompressionMethod = "ISO_10918_1"
        else:  # JPEG Extended 12 bit
            frame = imagecodecs.jpeg8_encode(arr.astype(np.uint16), level=92, bitspersample=12)
            ds.LossyImageCompressionMethod = "ISO_10918_1"
        ds.PixelData = encapsulate([bytes(frame)])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        if ts != U.JPEGLosslessSV1:
            ds.LossyImageCompressionRatio = _ds_str(arr.size * (1 if bits == 8 else 2) / len(frame))
        ds.file_meta.TransferSyntaxUID = ts
        return
    kw: dict = {}
    if ts == U.JPEG2000:
        kw["j2k_cr"] = [10]
    if ts == U.JPEGLSNearLossless:
        kw["jls_error"] = 3
    ds.compress(ts, arr, generate_instance_uid=False, **kw)
    if ts == U.JPEG2000:
        ds.LossyImageCompressionMethod = "ISO_15444_1"
    elif ts == U.JPEGLSNearLossless:
        ds.LossyImageCompressionMethod = "ISO_14495_1"


def dicom_pixels(path: str | Path) -> np.ndarray:
    """Read back a file written by write_dicom as MONOCHROME2-sense stored values (test helper)."""
    import pydicom

    ds = pydicom.dcmread(path)
    arr = ds.pixel_array.astype(np.int64)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        arr = ((1 << int(ds.BitsStored)) - 1) - arr
    return arr


def write_non_image_dicom(path: str | Path, seed: int = 0) -> Path:
    """A Basic Text SR DICOM file: valid DICOM, no PixelData (for bad-input tests)."""
    import pydicom
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence as DSequence
    from pydicom.uid import BasicTextSRStorage, ExplicitVRLittleEndian

    path = Path(path)
    inst = _uid(seed, "sr-instance")
    ds = _file_dataset(path, BasicTextSRStorage, inst, ExplicitVRLittleEndian)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.StudyDate = ds.ContentDate = "20200101"
    ds.StudyTime = ds.ContentTime = "080000"
    ds.AccessionNumber = ""
    ds.Modality = "SR"
    ds.Manufacturer = "fracscan synthetic generator (DEMO)"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "SYNTHETIC TEXT REPORT"
    ds.PatientName = "SYNTHETIC^DEMO"
    ds.PatientID = f"DEMO-SR-{seed}"
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyInstanceUID = _uid(seed, "sr-study")
    ds.SeriesInstanceUID = _uid(seed, "sr-series")
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.ReferencedPerformedProcedureStepSequence = DSequence([])
    ds.PerformedProcedureCodeSequence = DSequence([])
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"

    def code(value: str, scheme: str, meaning: str) -> Dataset:
        c = Dataset()
        c.CodeValue, c.CodingSchemeDesignator, c.CodeMeaning = value, scheme, meaning
        return c

    ds.ConceptNameCodeSequence = DSequence([code("18782-3", "LN", "Radiology Study observation (narrative)")])
    item = Dataset()
    item.RelationshipType = "CONTAINS"
    item.ValueType = "TEXT"
    item.ConceptNameCodeSequence = DSequence([code("121071", "DCM", "Finding")])
    item.TextValue = DEMO_NOTICE + ". This object has no image."
    ds.ContentSequence = DSequence([item])
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path
