"""Presentation helpers shared by the pages (no Streamlit run needed)."""

from __future__ import annotations


def test_blank_cells_read_as_a_dash_and_their_column_keeps_one_type():
    from datetime import UTC, datetime

    from dashboard import ui

    when = datetime(2026, 12, 7, 8, 0, 45, 80846, tzinfo=UTC)
    rows = ui.blanks([{"since": when, "n": 3, "name": "a"}, {"since": None, "n": float("nan"), "name": "b"}])
    assert rows == [{"since": "2026-12-07 08:00:45", "n": "3", "name": "a"},  # the header names the zone
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


def test_a_column_of_numbers_with_a_blank_is_padded_to_sort_and_align_as_numbers():
    from dashboard import ui

    rows = ui.blanks([{"status": 200, "ms": 5.0}, {"status": None, "ms": 12.25}, {"status": 41, "ms": None}])
    pad = ui.FIGURE_SPACE
    assert [r["status"] for r in rows] == ["200", pad * 2 + ui.BLANK, pad + "41"]
    assert [r["ms"] for r in rows] == [pad + "5.0", "12.25", pad + ui.BLANK]
    # The browser sorts text by collation, where the figure space comes before every digit: a
    # wider number then sorts after a narrower one, as by value, and the blank first.
    assert all(len(r["status"]) == 3 for r in rows)


def test_times_follow_the_chosen_zone_outside_a_page_too():
    from datetime import UTC, datetime

    from dashboard import ui

    when = datetime(2026, 1, 31, 12, 0, 0, tzinfo=UTC)
    assert ui.zone_name() == "UTC" and ui.fmt_time(when) == "2026-01-31 12:00:00 UTC"
    assert ui.fmt_time(datetime(2026, 1, 31, 12, 0, 0)) == "2026-01-31 12:00:00 UTC"  # naive: UTC, as stored
    assert ui.fmt_epoch(1e20) == "out of range" and ui.fmt_time(None) == ui.BLANK
    assert ui._zone_info("Europe/Paris") is not None
    assert ui._zone_info("../../etc/passwd") is None and ui._zone_info("Not/AZone") is None


def test_markdown_in_a_label_is_escaped_to_plain_text():
    from dashboard import ui

    escaped = ui.md_escape("![x](http://evil.example/t.png) **b** :red[c] $x$\nnext")
    assert escaped == r"\!\[x\]\(http\:\/\/evil\.example\/t\.png\) \*\*b\*\* \:red\[c\] \$x\$ next"


def test_a_tenant_is_labelled_by_its_site_and_product_and_a_shared_site_by_its_key_too():
    from dashboard.ui import tenant_labels

    def install(key: str, host: str) -> dict:
        return {"client_key": key, "base_url": f"https://{host}/wiki", "product": "confluence"}

    installs = [install("f409854c-bd75-4c1e", "acme.atlassian.net"),
                install("0b7a2e11-9f3c-4d2a", "beta.atlassian.net"),
                install("9d1c0a77-aa00-4bbb", "beta.atlassian.net")]
    labels = tenant_labels(installs)
    assert labels["f409854c-bd75-4c1e"] == "acme.atlassian.net · Confluence"
    assert labels["0b7a2e11-9f3c-4d2a"] == "beta.atlassian.net · Confluence (0b7a2e11…)"
    assert labels["9d1c0a77-aa00-4bbb"] == "beta.atlassian.net · Confluence (9d1c0a77…)"
