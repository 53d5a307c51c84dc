"""The DICOM node's allow-list (`fracscan.pacs.access`): entries, addresses, ranges, host names, the file."""

from __future__ import annotations

import pytest

from fracscan.pacs.access import AllowList, Peer


def test_an_entry_is_an_ae_title_at_an_address_a_range_or_a_host_name():
    assert str(Peer.parse("CT01@10.1.2.3").network) == "10.1.2.3/32"
    assert str(Peer.parse("DX@10.1.2.0/24").network) == "10.1.2.0/24"
    assert Peer.parse("PACS@Pacs.Example").network is None and Peer.parse("PACS@Pacs.Example").host == "pacs.example"
    with pytest.raises(ValueError, match="write it as CT01@HOST"):
        Peer.parse("CT01")
    for bad in ("@10.0.0.1", "A_TITLE_LONGER_THAN_16@10.0.0.1", "CT01@", "CT01@bad host!"):
        with pytest.raises(ValueError):
            Peer.parse(bad)


def test_calling_ae_and_address_must_match_the_same_entry_and_the_called_ae_be_ours():
    allow = AllowList.parse(["CT01@10.1.2.3", "DX@10.1.4.0/28", "LOCAL@localhost"])
    assert allow.refusal("CT01", "FRACSCAN", "10.1.2.3", own_ae="FRACSCAN") is None
    assert allow.refusal("DX", "FRACSCAN", "10.1.4.9", own_ae="FRACSCAN") is None
    assert allow.refusal("LOCAL", "FRACSCAN", "127.0.0.1", own_ae="FRACSCAN") is None  # the name, resolved
    assert "not on the allow-list" in allow.refusal("CT01", "FRACSCAN", "10.1.4.9", own_ae="FRACSCAN")
    assert "not on the allow-list" in allow.refusal("DX", "FRACSCAN", "10.1.4.16", own_ae="FRACSCAN")
    assert "is not ours" in allow.refusal("CT01", "OTHER", "10.1.2.3", own_ae="FRACSCAN")
    assert allow.address_allowed("10.1.4.1") and not allow.address_allowed("10.1.5.1")
    anyone = AllowList.parse([], any_peer=True)
    assert anyone.refusal("WHOEVER", "FRACSCAN", "192.0.2.1", own_ae="FRACSCAN") is None
    assert "is not ours" in anyone.refusal("WHOEVER", "ELSE", "192.0.2.1", own_ae="FRACSCAN")


def test_the_allow_file_has_one_entry_a_line_and_comments(tmp_path):
    path = tmp_path / "allow.txt"
    path.write_text("# the PACS\nPACS@10.0.0.1   # forwarder\n\n  DX@10.0.1.0/24\n")
    assert AllowList.read_file(path) == ["PACS@10.0.0.1", "DX@10.0.1.0/24"]
    with pytest.raises(ValueError, match="cannot read the allow-list"):
        AllowList.read_file(tmp_path / "missing.txt")
