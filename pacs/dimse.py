"""C-STORE the results to a DICOM node (pynetdicom SCU): the DIMSE transport, a thin shell.

    store_datasets(results, Destination.parse("ORTHANC@pacs.example:4242"))

One association per call; every dataset must come back with a Success or Warning status, else
`StoreFailed` says which SOP Instance UID was refused and with what status (never a patient
attribute), so the caller can keep the work and try again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE

DEFAULT_CALLING_AE = "FRACSCAN"
SUCCESS_OR_WARNING = {0x0000, 0xB000, 0xB006, 0xB007}


class StoreFailed(ConnectionError):
    """The destination could not be reached or refused a dataset: worth another try later."""


@dataclass(frozen=True)
class Destination:
    """A DICOM node: AE title, host, port."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Destination:
        """From `AET@HOST:PORT` (the form `fracscan listen --store-to` takes)."""
        aet, at, address = text.partition("@")
        host, colon, port = address.rpartition(":")
        if not (at and colon and aet and host and port.isdigit() and len(aet) <= 16):
            raise ValueError(f"expected AET@HOST:PORT (AE title at most 16 characters), got {text!r}")
        return cls(aet, host, int(port))

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


def store_datasets(
    datasets: Sequence[Dataset], destination: Destination, calling_ae: str = DEFAULT_CALLING_AE, timeout: float = 30.0
) -> None:
    """C-STORE every dataset over one association; StoreFailed unless each one is accepted."""
    if not datasets:
        return
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    for sop_class in sorted({str(ds.SOPClassUID) for ds in datasets}):
        ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    if not assoc.is_established:
        raise StoreFailed(f"no association with {destination}")
    try:
        for message_id, ds in enumerate(datasets, start=1):  # one Message ID per request on the association
            status = assoc.send_c_store(ds, msg_id=message_id)
            code = getattr(status, "Status", None)
            if code not in SUCCESS_OR_WARNING:
                shown = "no response" if code is None else f"0x{code:04X}"
                raise StoreFailed(f"{destination} refused {ds.SOPInstanceUID}: status {shown}")
    finally:
        assoc.release()
