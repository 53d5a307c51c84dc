"""The radiograph rule (`fracscan.scorable`) and the SDK's use of it: projection radiographs only."""

from __future__ import annotations

import pydicom
import pytest
from conftest import EXAMPLES
from pydicom import uid

from fracscan.client import InvalidInput
from fracscan.client.sources import read_source
from fracscan.scorable import not_a_radiograph


def header(sop_class: str, modality: str | None, photometric: str | None = "MONOCHROME2", samples: int = 1):
    ds = pydicom.Dataset()
    ds.SOPClassUID = sop_class
    if modality is not None:
        ds.Modality = modality
    if photometric is not None:
        ds.PhotometricInterpretation = photometric
    ds.SamplesPerPixel = samples
    return ds


@pytest.mark.parametrize(
    ("sop_class", "modality", "photometric"),
    [
        (uid.ComputedRadiographyImageStorage, "CR", "MONOCHROME1"),
        (uid.DigitalXRayImageStorageForPresentation, "DX", "MONOCHROME2"),
        (uid.DigitalXRayImageStorageForProcessing, "DX", "MONOCHROME1"),
        (uid.SecondaryCaptureImageStorage, "CR", "MONOCHROME2"),  # a captured radiograph that says so
    ],
)
def test_projection_radiographs_are_scored(sop_class, modality, photometric):
    assert not_a_radiograph(header(sop_class, modality, photometric)) is None


@pytest.mark.parametrize(
    ("ds", "expected"),
    [
        (header(uid.CTImageStorage, "CT"), "not a projection radiograph: SOP Class 'CT Image Storage', Modality CT"),
        (header(uid.UltrasoundImageStorage, "US"), "SOP Class 'Ultrasound Image Storage', Modality US"),
        (header(uid.DigitalMammographyXRayImageStorageForPresentation, "MG"), "Mammography"),
        (header(uid.DigitalXRayImageStorageForPresentation, "MG"), "Modality must be CR or DX"),
        (header(uid.DigitalXRayImageStorageForPresentation, None), "Modality missing"),
        (header(uid.SecondaryCaptureImageStorage, "OT"), "SOP Class 'Secondary Capture Image Storage', Modality OT"),
        (header(uid.SecondaryCaptureImageStorage, "DX", "RGB", 3), "Photometric Interpretation RGB, 3 sample(s)"),
        (header(uid.DigitalXRayImageStorageForPresentation, "DX", None), "Photometric Interpretation missing"),
        (header(uid.DigitalXRayImageStorageForPresentation, "DX", "PALETTE COLOR"), "PALETTE COLOR"),
        (header(uid.BasicTextSRStorage, "SR", None), "not an image: SOP Class 'Basic Text SR Storage', Modality SR"),
    ],
)
def test_everything_else_is_not_scored_and_the_reason_names_class_and_modality(ds, expected):
    reason = not_a_radiograph(ds)
    assert reason is not None and expected in reason


def test_the_sdk_refuses_a_ct_before_sending(tmp_path):
    ds = pydicom.dcmread(EXAMPLES / "wrist_fracture.dcm")
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = uid.CTImageStorage
    ds.Modality = "CT"
    path = tmp_path / "ct.dcm"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(InvalidInput, match="not a projection radiograph: SOP Class 'CT Image Storage', Modality CT"):
        read_source(str(path))
    assert read_source(str(EXAMPLES / "wrist_fracture.dcm")).kind == "dicom"
