"""Seeded, deterministic SYNTHETIC radiographs: DEMO ONLY, NOT ANATOMY, NOT FOR CLINICAL USE.

What this package is for:

* training the small DEMO ensemble (``demo/demo.toml``, built by ``fracscan.demo.build``),
* the ``examples/`` folder (:func:`write_examples`),
* DICOM / PNG test files in every transfer syntax the installed encoders can write
  (:func:`write_dicom`, :func:`write_png`, :func:`write_non_image_dicom`),
* realistic inputs for the ONNX parity check (:func:`fracscan.demo.inputs.synthetic_radiographs`).

The pictures are *plausible*, not anatomical: long bones are tubes (bright cortex, darker
medulla, flared trabecular ends), hand / wrist / foot are sets of small bones, pelvis,
ribs and spine have their own simple shapes (``primitives``, ``phantoms``). Around them a
soft-tissue envelope (mid gray), outside it air (dark). A simple physical model turns bone and
soft-tissue path lengths into an attenuation, adds quantum (Poisson-like) and electronic noise
and a random exposure (gain / gamma / tone curve / heel effect); the whole layout is randomly
rotated, scaled, shifted and mirrored (laterality). A collimation border (black, noisy-dark or
uniformly bright, random width per side) and a burned-in bright "R" / "L" marker are added
last (``scenes``, ``render``).

A fractured case has a thin lucent (dark) line crossing one bone, sometimes with a
displaced or angulated fragment (``fractures``). ``SyntheticCase.box`` is the tight box around
the fracture line *in the final pixel coordinates* (computed on the final pixel grid, after
every transform), half-open: ``pixels[y0:y1, x0:x1]`` is the box.

Determinism: everything is drawn from independent numpy ``Generator`` streams seeded by
``(seed, stream)`` (``streams``). ``make_case(s, region=r, fracture=True)`` and
``make_case(s, region=r, fracture=False)`` share layout, exposure, noise, border and
marker: they differ only by the fracture (useful for honest tests).

Exam views (``views``): wrist, hand and ankle can be drawn ``make_case(..., view=v)`` for v in
:data:`VIEWS` (frontal / lateral / oblique): the limb is turned about its long axis before it is
drawn, so the view is what the bones show (superimposed in the lateral), never a flag.
:func:`exam_dataset` draws region, view and fracture uniformly (the Olczak et al. 2017 labels).

Only numpy, scipy, pillow and pydicom are needed to make the images; writing some
compressed DICOM transfer syntaxes needs optional encoders (see :data:`TRANSFER_SYNTAXES`
and :func:`can_write`).
"""

from __future__ import annotations

from .cases import DEMO_NOTICE, SyntheticCase, dataset, exam_dataset, make_case
from .examples import write_examples
from .fractures import FRACTURE_WIDTH
from .phantoms import LANDSCAPE, REGIONS
from .views import REGIONS_WITH_VIEWS, VIEWS
from .writers import (
    BODY_PART,
    LOSSLESS,
    TRANSFER_SYNTAXES,
    can_write,
    dicom_pixels,
    png_bytes,
    writable_transfer_syntaxes,
    write_dicom,
    write_non_image_dicom,
    write_png,
)

__all__ = [
    "BODY_PART",
    "DEMO_NOTICE",
    "FRACTURE_WIDTH",
    "LANDSCAPE",
    "LOSSLESS",
    "REGIONS",
    "REGIONS_WITH_VIEWS",
    "TRANSFER_SYNTAXES",
    "VIEWS",
    "SyntheticCase",
    "can_write",
    "dataset",
    "dicom_pixels",
    "exam_dataset",
    "make_case",
    "png_bytes",
    "writable_transfer_syntaxes",
    "write_dicom",
    "write_examples",
    "write_non_image_dicom",
    "write_png",
]
