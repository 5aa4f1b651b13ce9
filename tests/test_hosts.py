"""The allowed-hosts policy (pure): which baseUrls may install, and host moves."""

from __future__ import annotations

import pytest

from collector.errors import ConfigurationError, HostMoved, HostNotAllowed
from collector.hosts import ATLASSIAN_HOSTS, LOOPBACK_HOSTS, HostPolicy, host_of


@pytest.mark.parametrize("url", [
    "https://acme.atlassian.net/wiki", "https://ACME.Atlassian.NET/wiki", "https://acme.atlassian.net./",
    "https://team.jira.com", "https://dev.jira-dev.com/wiki", "https://agency.atlassian-us-gov-mod.net/wiki",
])
def test_atlassian_sites_may_install_by_default(url):
    HostPolicy().check_install(url)


@pytest.mark.parametrize("url, why", [
    ("https://evil.example/wiki", "not in the allowed hosts"),
    ("https://atlassian.net/wiki", "not in the allowed hosts"),  # the apex is no site
    ("https://evilatlassian.net/wiki", "not in the allowed hosts"),
    ("https://acme.atlassian.net.evil.example/wiki", "not in the allowed hosts"),
    ("https://acme.atlassian.net@evil.example/wiki", "not in the allowed hosts"),
    ("http://acme.atlassian.net/wiki", "not https"),
    ("http://127.0.0.1:9000/wiki", "not in the allowed hosts"),  # loopback only when configured
    ("not a url", "not in the allowed hosts"),
    ("", "not in the allowed hosts"),
])
def test_other_hosts_and_plain_http_are_refused_with_the_reason(url, why):
    with pytest.raises(HostNotAllowed, match=why) as caught:
        HostPolicy().check_install(url)
    assert caught.value.code == "host_not_allowed"


def test_loopback_is_allowed_over_http_only_when_asked_for():
    policy = HostPolicy.configure(loopback=True)
    assert policy.patterns == (*ATLASSIAN_HOSTS, *LOOPBACK_HOSTS)
    policy.check_install("http://127.0.0.1:9000/t/acme/wiki")
    policy.check_install("http://localhost:9000/wiki")
    policy.check_install("http://[::1]:9000/wiki")


def test_configuration_from_the_environment(monkeypatch):
    monkeypatch.setenv("CONNECT_AUDIT_ALLOWED_HOSTS", "acme.atlassian.net, *.example.org")
    monkeypatch.setenv("CONNECT_AUDIT_ALLOW_HOST_MOVES", "yes")
    policy = HostPolicy.configure()
    assert policy == HostPolicy(("acme.atlassian.net", "*.example.org"), allow_moves=True)
    policy.check_install("https://wiki.example.org")
    with pytest.raises(HostNotAllowed):
        policy.check_install("https://other.atlassian.net/wiki")
    assert HostPolicy.configure("*").allows("anything.example")  # "*" turns the policy off
    monkeypatch.setenv("CONNECT_AUDIT_ALLOW_HOST_MOVES", "perhaps")
    with pytest.raises(ConfigurationError, match="use 1 or 0"):
        HostPolicy.configure()


@pytest.mark.parametrize("bad", [
    "https://acme.atlassian.net", "a*.atlassian.net", "*.", "acme.atlassian.net:443"])
def test_a_pattern_that_is_not_a_host_is_a_configuration_error(bad):
    with pytest.raises(ConfigurationError, match="is not a host pattern"):
        HostPolicy((bad,))


def test_moves_between_hosts_are_refused_unless_allowed():
    HostPolicy().check_move("https://acme.atlassian.net/wiki", "https://ACME.atlassian.net/")  # same host
    with pytest.raises(HostMoved, match=r"'acme\.atlassian\.net' to 'acme-corp\.atlassian\.net'"):
        HostPolicy().check_move("https://acme.atlassian.net/wiki", "https://acme-corp.atlassian.net/wiki")
    HostPolicy(allow_moves=True).check_move("https://acme.atlassian.net/wiki", "https://x.atlassian.net")
    assert host_of("https://user@Acme.Atlassian.net:443/wiki") == "acme.atlassian.net"
