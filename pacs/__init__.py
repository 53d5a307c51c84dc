"""fracscan.pacs: results into the PACS, and the PACS as a source (extra: `pacs`).

    from fracscan.pacs.results import build_results, write_results   # SR, GSPS, SC for a scored image
    from fracscan.pacs.dicomweb import DicomWeb, predict_study        # WADO-RS in, STOW-RS out
    from fracscan.pacs.listener import Listener, ListenerConfig      # a DICOM node (C-STORE SCP)

One writer a module (`sr`, `gsps`, `sc`, and `study_sr` for a study answer, with `uids`, `context`
and `filing` beside them), one transport a module (`dimse`, `dicomweb`), and the node (`listener`). The wing sits on the SDK (`fracscan.client`)
and the core; neither imports it, so `pip install fracscan` never needs highdicom or pynetdicom.
"""
