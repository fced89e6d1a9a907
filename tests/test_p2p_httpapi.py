"""The P2P-over-HTTP wire format (shared.p2p.httpapi): paths per version, the
[base64url] values, query parameters, JSON bodies, headers."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.annex.keys import Key
from shared.p2p import httpapi as h

U = "ecf6d4ca-07e8-11ef-8990-9b8c1f696bf6"
C = "79a5a1f4-07e8-11ef-873d-97f93ca91925"
KEY = Key.parse("SHA256E-s3--2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae.txt")


def test_value_encoding_as_the_spec_says() -> None:
    assert h.decode_value("[Zm9v]") == b"foo"
    assert h.encode_value("foo") == "foo"
    assert h.encode_value("[foo]") == "[W2Zvb10=]"
    assert h.decode_value("[W2Zvb10=]") == b"[foo]"
    assert h.decode_value("[W2Zvb10]") == b"[foo]"  # padding optional
    assert h.encode_value(b"\xff") == "[_w==]"
    with pytest.raises(h.HttpApiError):
        h.decode_value("[not base64!]")


@given(st.binary(max_size=64))
def test_values_round_trip(raw: bytes) -> None:
    assert h.decode_value(h.encode_value(raw)) == raw


def test_paths_per_version() -> None:
    for v in range(5):
        r = h.parse_path(h.path(U, v, h.GET, KEY))
        assert r == h.Route(U, v, h.GET, KEY)
        for op in (h.CHECKPRESENT, h.LOCKCONTENT, h.KEEPLOCKED, h.REMOVE, h.PUT):
            assert h.parse_path(f"/git-annex/{U}/v{v}/{op}") == h.Route(U, v, op)
    assert h.parse_path(f"/git-annex/{U}/key/{KEY}") == h.Route(U, None, h.GET, KEY)
    for op in (h.REMOVE_BEFORE, h.GETTIMESTAMP):
        assert h.parse_path(f"/git-annex/{U}/v3/{op}").operation == op
        for v in (0, 1, 2):
            with pytest.raises(h.RouteNotFound):
                h.parse_path(f"/git-annex/{U}/v{v}/{op}")
    with pytest.raises(h.RouteNotFound):
        h.parse_path(f"/git-annex/{U}/v0/putoffset")
    for bad in (f"/git-annex/{U}/v5/checkpresent", f"/git-annex/{U}/v4/nope", "/", "/x/y/z"):
        with pytest.raises(h.RouteNotFound):
            h.parse_path(bad)
    with pytest.raises(h.HttpApiError):  # a key with a path segment is refused
        h.parse_path(f"/git-annex/{U}/v4/key/SHA1--a%2F..%2Fb")


def test_odd_key_in_path_and_query() -> None:
    odd = Key.parse("WORM-s1--a&b=c%d[x]")
    assert h.parse_path(h.path(U, 4, h.GET, odd)).key == odd
    q = h.render_query(h.Params(clientuuid=C, key=odd, bypass=("g1", "g2"), offset=5))
    p = h.parse_query(q, h.Route(U, 4, h.PUT))
    assert (p.key, p.clientuuid, p.bypass, p.offset) == (odd, C, ("g1", "g2"), 5)


def test_query_requirements() -> None:
    with pytest.raises(h.HttpApiError, match="clientuuid"):
        h.parse_query(f"key={KEY}", h.Route(U, 4, h.CHECKPRESENT))
    with pytest.raises(h.HttpApiError, match="key"):
        h.parse_query(f"clientuuid={C}", h.Route(U, 4, h.REMOVE))
    with pytest.raises(h.HttpApiError, match="timestamp"):
        h.parse_query(f"clientuuid={C}&key={KEY}", h.Route(U, 4, h.REMOVE_BEFORE))
    with pytest.raises(h.HttpApiError, match="bypass"):
        h.parse_query(f"clientuuid={C}&key={KEY}&bypass=x", h.Route(U, 1, h.PUT))
    with pytest.raises(h.HttpApiError, match="data-present"):
        h.parse_query(f"clientuuid={C}&key={KEY}&data-present=true", h.Route(U, 3, h.PUT))
    with pytest.raises(h.HttpApiError, match="offset"):
        h.parse_query("offset=-1")
    assert h.parse_query("lockid=foo", h.Route(U, 0, h.KEEPLOCKED)).lockid == "foo"
    assert h.parse_query("", h.Route(U, None, h.GET)) == h.Params()


def test_json_bodies() -> None:
    assert h.render(h.CheckPresentResult(True)) == b'{"present":true}'
    assert h.render(h.RemoveResult(True, ("a",)), 2) == b'{"removed":true,"plusuuids":["a"]}'
    assert h.render(h.RemoveResult(True, ("a",)), 1) == b'{"removed":true}'
    assert h.render(h.PutResult(False), 0) == b'{"stored":false}'
    assert h.render(h.PutOffsetResult(10)) == b'{"offset":10}'
    assert h.render(h.PutOffsetResult(None, True, ("u",)), 4) == (
        b'{"alreadyhave":true,"plusuuids":["u"]}'
    )
    assert h.render(h.PutOffsetResult(None, True, ("u",)), 1) == b'{"alreadyhave":true}'
    assert h.render(h.LockResult(True, "[x]")) == b'{"locked":true,"lockid":"[W3hd]"}'
    assert h.render(h.LockResult(False)) == b'{"locked":false}'
    assert h.render(h.GetTimestampResult(59459392)) == b'{"timestamp":59459392}'
    cases: list[tuple[h.Answer, Callable[[bytes], h.Answer]]] = [
        (h.CheckPresentResult(False), h.parse_checkpresent),
        (h.RemoveResult(False, ("x", "y")), h.parse_remove),
        (h.PutResult(True, ("x",)), h.parse_put),
        (h.PutOffsetResult(7), h.parse_putoffset),
        (h.PutOffsetResult(None, True, ("x",)), h.parse_putoffset),
        (h.LockResult(True, "id"), h.parse_lock),
        (h.GetTimestampResult(3), h.parse_timestamp),
        (h.UnlockRequest(True), h.parse_unlock),
    ]
    for answer, parse in cases:
        assert parse(h.render(answer)) == answer
    assert h.parse_put(b'{"stored": true}') == h.PutResult(True)  # v1: no plusuuids
    for bad in (b"", b"[]", b'{"present": 1}', b"nope"):
        with pytest.raises(h.HttpApiError):
            h.parse_checkpresent(bad)


def test_keeplocked_lines_and_headers() -> None:
    s = h.LineSplitter(limit=64)
    assert s.feed(b'{"unlock": false}\n{"unl') == [b'{"unlock": false}']
    assert s.feed(b'ock": true}') == []
    assert s.end() == [b'{"unlock": true}']
    with pytest.raises(h.HttpApiError):
        s.feed(b"x" * 100)
    assert h.parse_data_length(" 12 ") == 12
    assert h.parse_data_length(None) is None
    with pytest.raises(h.HttpApiError):
        h.parse_data_length("-1")
    assert h.parse_basic_auth(h.basic_auth("alice", "pa:ss wörd")) == ("alice", "pa:ss wörd")
    for bad in (None, "", "Bearer x", "Basic !!!", "Basic " + "YWxpY2U="):
        assert h.parse_basic_auth(bad) is None
    assert 'realm="git-annex"' in h.challenge()
