"""The DICOM node's spool (`fracscan.pacs.spool`): owner-only files, the bound, the failed folder's retention."""

from __future__ import annotations

import os
import time

import pytest

from fracscan.pacs.spool import Spool, SpoolFull


def test_set_aside_instances_keep_their_reason_and_go_after_keep_failed_days(tmp_path):
    spool = Spool(tmp_path / "spool", keep_failed_days=7)
    old, recent = spool.put("1.2.3", b"old" * 10), spool.put("1.2.4", b"recent" * 10)
    for path, reason in ((old, "not analysed: DICOM has no pixel data"), (recent, "internal error: ValueError")):
        kept = spool.fail(path, reason)
        assert kept.stat().st_mode & 0o777 == 0o600 and kept.with_suffix(".reason").read_text() == reason + "\n"
    assert spool.failed_dir.stat().st_mode & 0o777 == 0o700
    eight_days_ago = time.time() - 8 * 86400
    for path in (spool.failed_dir / "1.2.3.dcm", spool.failed_dir / "1.2.3.reason"):
        os.utime(path, (eight_days_ago, eight_days_ago))
    assert spool.prune_failed() == 1
    assert sorted(p.name for p in spool.failed_dir.iterdir()) == ["1.2.4.dcm", "1.2.4.reason"]


def test_the_bound_refuses_without_leaving_a_partial_file(tmp_path):
    spool = Spool(tmp_path / "spool", max_bytes=1000)
    spool.put("1.2.3", b"x" * 600)
    with pytest.raises(SpoolFull, match=r"--spool-max-bytes 1000 \(600 bytes in use, 600 more asked\)"):
        spool.put("1.2.4", b"y" * 600)
    assert [p.name for p in spool.incoming.iterdir()] == ["1.2.3.dcm"]
    assert (spool.incoming / "1.2.3.dcm").stat().st_mode & 0o777 == 0o600
