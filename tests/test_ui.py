"""Presentation helpers shared by the pages (no Streamlit run needed)."""

from __future__ import annotations


def test_blank_cells_read_as_a_dash_and_their_column_keeps_one_type():
    from datetime import UTC, datetime

    from dashboard import ui

    when = datetime(2026, 12, 7, 8, 0, 45, 80846, tzinfo=UTC)
    rows = ui.blanks([{"since": when, "n": 3, "name": "a"}, {"since": None, "n": float("nan"), "name": "b"}])
    assert rows == [{"since": "2026-12-07 08:00:45+00:00", "n": "3", "name": "a"},
                    {"since": ui.BLANK, "n": ui.BLANK, "name": "b"}]
    untouched = [{"n": 1}]
    assert ui.blanks(untouched) is untouched


def test_a_site_is_named_by_its_host_and_told_apart_from_others_on_the_same_host():
    from dashboard import ui

    assert ui.site("https://acme.atlassian.net/wiki") == "acme.atlassian.net"
    assert ui.site("https://acme.atlassian.net/wiki/") == "acme.atlassian.net"
    assert ui.site("https://acme.atlassian.net") == "acme.atlassian.net"
    assert ui.site("http://127.0.0.1:41089/t/acme/wiki") == "127.0.0.1:41089/t/acme"
    assert ui.site("https://user:pw@example.com/wiki") == "example.com"
    assert ui.site(None) == "" and ui.site("not a url") == "not a url"
