"""``connect-audit qsh`` and ``connect-audit token inspect``: output, JSON fields, exit codes."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from collector.cli import main
from collector.qsh import query_string_hash
from collector.signing import lifecycle_token, request_token, rsa_key_pair, sign_hs256

NOW = 1_700_000_000
CK = "tenant-7d1c"
SECRET = "cli-test-shared-secret-0123456789-abcdefghij"
APP = "https://app.example.com/connect"
URL = "/connect/panel?pageId=1&spaceKey=DS"


def token(**changes) -> str:
    return request_token(
        client_key=changes.pop("client_key", CK),
        shared_secret=changes.pop("secret", SECRET),
        method="GET",
        url=APP + "/panel?spaceKey=DS&pageId=1",
        base_url=APP,
        now=changes.pop("now", NOW),
        account_id="account-1",
        **changes,
    )


@pytest.fixture
def installs_file(tmp_path) -> str:
    path = tmp_path / "installs.json"
    path.write_text(json.dumps({CK: SECRET}))
    return str(path)


@pytest.fixture
def cli(capsys, monkeypatch):
    """Run connect-audit in-process: returns (status, stdout, stderr)."""

    def run(*argv: str, stdin: str = "") -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        try:
            status = main(list(argv))
        except SystemExit as exc:  # argparse's own usage errors
            status = exc.code
        out, err = capsys.readouterr()
        assert SECRET not in out and SECRET not in err
        return status, out, err

    return run


def inspect_json(cli, *argv: str, stdin: str = "") -> tuple[int, dict]:
    status, out, _ = cli("token", "inspect", *argv, "--json", stdin=stdin)
    return status, json.loads(out)


# --------------------------------------------------------------------------- qsh


def test_qsh_prints_canonical_request_and_hash(cli):
    status, out, _ = cli("qsh", "get", "https://x.atlassian.net/wiki/rest/api/space?limit=2&start=0",
                         "--base-url", "https://x.atlassian.net/wiki")
    assert status == 0
    canonical = "GET&/rest/api/space&limit=2&start=0"
    assert out.splitlines() == [canonical, hashlib.sha256(canonical.encode()).hexdigest()]


def test_qsh_json(cli):
    status, out, _ = cli("qsh", "POST", "/a/?b=1+1", "--json")
    assert status == 0
    assert json.loads(out) == {"canonical": "POST&/a&b=1%201", "qsh": query_string_hash("POST", "/a/?b=1+1")}


def test_qsh_usage_error(cli):
    status, _, err = cli("qsh", "GET")
    assert status == 2 and "URL" in err


# --------------------------------------------------------------------------- token inspect


def test_accepted_token(cli, installs_file):
    status, report = inspect_json(cli, token(), "--installs", installs_file, "--method", "GET",
                                  "--url", URL, "--app-base-url", APP, "--now", str(NOW + 60))
    assert status == 0
    assert report["verdict"] == "accepted" and report["reason"] is None
    assert report["header"] == {"alg": "HS256", "typ": "JWT"}
    assert report["claims"]["iss"] == CK and report["claims"]["sub"] == "account-1"
    assert report["canonical"] == "GET&/panel&pageId=1&spaceKey=DS"
    assert report["expected_qsh"] == report["token_qsh"]
    assert report["diagnosis"] is None
    assert report["times"]["age_seconds"] == 60 and report["times"]["expires_in_seconds"] == 120
    assert report["install"] == {"client_key": CK, "active": True, "base_url": ""}


def test_qsh_mismatch_with_diagnosis(cli, installs_file):
    status, report = inspect_json(cli, token(), "--installs", installs_file, "--method", "GET",
                                  "--url", "/connect/panel/?pageId=1&spaceKey=DS", "--now", str(NOW))
    assert status == 1
    assert report["reason"] == "qsh_mismatch"
    assert report["canonical"] == "GET&/connect/panel&pageId=1&spaceKey=DS"
    assert report["token_qsh"] == query_string_hash("GET", "/panel?pageId=1&spaceKey=DS")
    assert report["diagnosis"]["matched_mistake"] == "base_path_stripped"
    assert report["diagnosis"]["mistaken_canonical"] == "GET&/panel&pageId=1&spaceKey=DS"


def test_rejections_never_print_the_secret_or_signature(cli, installs_file):
    forged = token(secret="another-secret-entirely-0123456789")
    signature = forged.rsplit(".", 1)[1]
    for extra in ((), ("--json",)):
        status, out, err = cli("token", "inspect", forged, "--installs", installs_file,
                               "--now", str(NOW), *extra)
        assert status == 1
        assert "bad_signature" in out
        assert signature not in out and signature not in err
        assert forged not in out


def test_pasted_from_stdin_with_quotes_and_prefix(cli, installs_file):
    status, report = inspect_json(cli, "-", "--installs", installs_file, "--now", str(NOW),
                                  stdin=f'  "JWT {token()}"\n')
    assert status == 0
    assert report["verdict"] == "accepted"
    assert report["qsh_checked"] is False
    assert any("cleaned up" in hint for hint in report["hints"])


def test_malformed_token_still_shows_what_can_be_read(cli, installs_file):
    status, report = inspect_json(cli, token() + "==", "--installs", installs_file, "--now", str(NOW))
    assert status == 1
    assert report["reason"] == "malformed"
    assert report["claims"]["iss"] == CK  # decoded leniently, for display only


def test_time_hints(cli, installs_file):
    status, report = inspect_json(cli, token(now=NOW + 600), "--installs", installs_file,
                                  "--now", str(NOW))
    assert (status, report["reason"]) == (1, "not_yet_valid")
    assert any("600 s ahead" in hint for hint in report["hints"])
    assert report["times"]["issuer_ahead_seconds"] == 600
    status, report = inspect_json(cli, token(), "--installs", installs_file, "--now", str(NOW + 3600))
    assert (status, report["reason"]) == (1, "expired")
    status, report = inspect_json(cli, token(), "--installs", installs_file, "--now", str(NOW + 200),
                                  "--leeway", "60")
    assert (status, report["reason"]) == (0, None)
    ms = sign_hs256({"iss": CK, "iat": NOW * 1000, "exp": NOW * 1000 + 180_000, "qsh": "x"}, SECRET)
    status, report = inspect_json(cli, ms, "--installs", installs_file, "--now", str(NOW))
    assert report["reason"] == "lifetime_too_long"
    assert any("milliseconds" in hint for hint in report["hints"])


def test_context_endpoint(cli, installs_file):
    context = token(context=True)
    common = ("--installs", installs_file, "--method", "GET", "--url", URL, "--now", str(NOW))
    assert inspect_json(cli, context, *common, "--endpoint", "context")[0] == 0
    status, report = inspect_json(cli, context, *common)
    assert (status, report["reason"]) == (1, "context_qsh_not_allowed")
    assert report["context_token"] is True


def test_text_report(cli, installs_file):
    status, out, _ = cli("token", "inspect", token(), "--installs", installs_file, "--method", "GET",
                         "--url", "/connect/panel?pageId=2&spaceKey=DS", "--app-base-url", APP,
                         "--now", str(NOW))
    assert status == 1
    lines = dict(line.split(None, 1) for line in out.splitlines() if not line.startswith("token qsh"))
    assert lines["verdict"] == "rejected (qsh_mismatch)"
    assert lines["canonical"] == "GET&/panel&pageId=2&spaceKey=DS"
    assert "issued" in lines and "expires" in lines


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("--method", "GET"), "--method and --url go together"),
        (("--installs", "/no/such/file.json"), "cannot read --installs"),
        (("--endpoint", "lifecycle"), "needs --app-base-url"),
        (("--leeway", "-1"), "negative"),
    ],
)
def test_usage_errors_exit_2_with_one_sentence(cli, argv, message):
    status, out, err = cli("token", "inspect", token(), *argv)
    assert status == 2 and out == ""
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize("content", ["not json", "[1, 2]", '{"k": 5}'])
def test_bad_installs_file_is_a_usage_error(cli, tmp_path, content):
    path = tmp_path / "bad.json"
    path.write_text(content)
    status, _, err = cli("token", "inspect", token(), "--installs", str(path))
    assert status == 2 and "--installs" in err


def test_argparse_usage_errors_exit_2(cli):
    assert cli("token", "inspect", token(), "--endpoint", "webhook")[0] == 2
    assert cli("token", "inspect")[0] == 2


def test_lifecycle_callback(cli, tmp_path):
    private, public = rsa_key_pair()
    (tmp_path / "kid-9").write_text(public)
    callback = lifecycle_token(private_key_pem=private, kid="kid-9", client_key=CK, app_base_url=APP,
                               method="POST", url=f"{APP}/installed", now=NOW)
    common = ("--endpoint", "lifecycle", "--install-keys", str(tmp_path), "--app-base-url", APP,
              "--method", "POST", "--url", "/connect/installed", "--now", str(NOW))
    status, report = inspect_json(cli, callback, *common, "--body-client-key", CK)
    assert (status, report["verdict"]) == (0, "accepted")
    status, report = inspect_json(cli, callback, *common, "--body-client-key", "someone-else")
    assert (status, report["reason"]) == (1, "issuer_mismatch")
    status, report = inspect_json(cli, callback, *common)
    assert status == 0 and any("--body-client-key" in hint for hint in report["hints"])
    status, report = inspect_json(cli, token(), *common)
    assert (status, report["reason"]) == (1, "alg_not_allowed")


@pytest.mark.slow  # opens and migrates a real store
def test_installs_from_the_store(cli, database_url, tmp_path, monkeypatch):
    monkeypatch.setenv("CONNECT_AUDIT_DATA_DIR", str(tmp_path))  # key files of the store
    from collector.installs import InstallRegistry
    from collector.store import Store

    with Store.open(database_url) as store:
        registry = InstallRegistry(store)
        registry.apply_lifecycle("installed", {
            "clientKey": CK, "key": "com.example.app", "baseUrl": "https://x.atlassian.net/wiki",
            "sharedSecret": SECRET,
        })  # fmt: skip
    common = ("--database", database_url, "--now", str(NOW))
    status, report = inspect_json(cli, token(), *common)
    assert (status, report["verdict"]) == (0, "accepted")
    assert report["install"]["base_url"] == "https://x.atlassian.net/wiki"
    with Store.open(database_url) as store:
        InstallRegistry(store).apply_lifecycle("disabled", {"clientKey": CK})
    status, report = inspect_json(cli, token(), *common)
    assert (status, report["reason"]) == (1, "inactive_install")


def test_no_store_and_no_installs_file(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("CONNECT_AUDIT_DATA_DIR", str(tmp_path / "empty"))
    monkeypatch.delenv("CONNECT_AUDIT_DATABASE_URL", raising=False)
    status, report = inspect_json(cli, token(), "--now", str(NOW))
    assert (status, report["reason"]) == (1, "unknown_issuer")
    assert any("--installs" in hint for hint in report["hints"])
    assert not (tmp_path / "empty" / "audit.db").exists()  # inspecting never creates a store
    status, _, err = cli("token", "inspect", token(), "--database",
                         f"sqlite:///{tmp_path / 'missing.db'}")
    assert status == 2 and err.startswith("connect-audit: error:")


def test_console_entry_point_reads_stdin(installs_file):
    done = subprocess.run(
        [sys.executable, "-m", "collector.cli", "token", "inspect", "-", "--installs", installs_file,
         "--now", str(NOW), "--json"],
        input=token() + "\n", capture_output=True, text=True, timeout=60,
        cwd=Path(__file__).parent.parent,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["verdict"] == "accepted"
    assert SECRET not in done.stdout + done.stderr


# --------------------------------------------------------------------------- Forge


@pytest.fixture(scope="module")
def forge_tokens(tmp_path_factory):
    """A FIT, a system and an expired user token, and the JWKS file (and a key directory)
    that verify the FIT, all from the simulated Forge."""
    from collector.simulator import ConfluenceSimulator
    from collector.simulator.examples import load_example

    manifest = load_example("flask").FORGE_MANIFEST
    where = tmp_path_factory.mktemp("forge")
    with ConfluenceSimulator() as sim:
        sim.forge.deploy(manifest, "https://app.example.com")
        tenant = sim.tenant("acme")
        user = tenant.users()[1].account_id
        tokens = {
            "fit": sim.forge.invocation_token(tenant, "recent-pages-macro", account=user),
            "stale": sim.forge.invocation_token(tenant, "recent-pages-macro", misbehave="expired"),
            "system": sim.forge.product_token(tenant, None),
            "user_expired": sim.forge.product_token(tenant, user, ttl=-60),
            "app_id": manifest["app"]["id"], "installation": tenant.installation_id, "user": user,
        }
        (where / "jwks.json").write_text(json.dumps(sim.forge.jwks()))
        (where / "keys").mkdir()
        (where / "keys" / f"{sim.forge.kid}.pem").write_text(sim.forge._public_pem)
    tokens["jwks"], tokens["keys"] = str(where / "jwks.json"), str(where / "keys")
    return tokens


@pytest.mark.parametrize("source", ["jwks", "keys"])
def test_forge_invocation_token_is_verified_and_explained(cli, forge_tokens, source):
    t = forge_tokens
    status, report = inspect_json(cli, f"Bearer {t['fit']}", "--endpoint", "forge", "--app-id", t["app_id"],
                                  "--jwks", t[source])
    assert (status, report["verdict"], report["endpoint"]) == (0, "accepted", "forge")
    assert report["forge"]["installation_id"] == t["installation"]
    assert report["forge"]["principal"] == t["user"] and report["forge"]["module_key"] == "recent-pages-macro"
    assert report["forge"]["environment"] == "PRODUCTION"
    assert report["times"]["exp"]["relative"].startswith("in ")
    assert t["fit"].rsplit(".", 1)[1] not in json.dumps(report)


def test_forge_rejections_name_the_code(cli, forge_tokens):
    t = forge_tokens
    common = ("--endpoint", "forge", "--jwks", t["jwks"])
    status, report = inspect_json(cli, t["fit"], *common)
    assert (status, report["reason"]) == (1, "wrong_audience")
    assert any("--app-id" in hint for hint in report["hints"])
    status, report = inspect_json(cli, t["stale"], *common, "--app-id", t["app_id"])
    assert (status, report["reason"]) == (1, "expired")
    status, out, _ = cli("token", "inspect", t["fit"], *common, "--app-id", t["app_id"])
    assert status == 0 and "install    ari:cloud:ecosystem::installation/" in out


def test_forge_product_tokens_show_expiry_and_use(cli, forge_tokens):
    t = forge_tokens
    status, report = inspect_json(cli, f"x-forge-oauth-system: {t['system']}", "--endpoint", "forge",
                                  "--jwks", t["jwks"])
    assert (status, report["verdict"]) == (0, "usable")
    assert report["forge"]["kind"] == "system" and "asApp" in report["forge"]["usable_for"]
    status, report = inspect_json(cli, f"x-forge-oauth-user: {t['user_expired']}", "--endpoint", "forge",
                                  "--jwks", t["jwks"])
    assert (status, report["verdict"], report["reason"]) == (1, "rejected", "expired")
    assert report["forge"]["kind"] == "user" and "asUser" in report["forge"]["usable_for"]


@pytest.mark.parametrize(("argv", "message"), [
    (("--app-id", "com.example.app"), "is not an app ARI"),
    (("--jwks", "http://example.com/jwks.json"), "loopback only"),
    (("--jwks", "/no/such/jwks.json"), "does not exist"),
])
def test_forge_usage_errors_exit_2(cli, forge_tokens, argv, message):
    status, _, err = cli("token", "inspect", forge_tokens["fit"], "--endpoint", "forge", *argv)
    assert status == 2 and message in err and "Traceback" not in err
