"""Token debugger: paste a Connect JWT or a Forge token and see exactly why it is accepted or
refused (a Forge product token: when it expires and what it may be used for).

Nothing pasted is stored or logged. Hostile content in a token (HTML, scripts, formula
characters) is shown as text. Only admins verify against the stored shared secrets.
"""

import streamlit as st

from dashboard import queries, ui

METHOD = "Method"
URL = "URL the token came with (path and query, or full URL)"
BODY_KEY = "Lifecycle body clientKey (optional)"
#: The hints name this form's fields (the CLI's hints name its flags).
INPUTS = {
    "method": f'"{METHOD}"',
    "url": '"URL the token came with"',
    "body_client_key": '"Lifecycle body clientKey"',
    "app_id": f"{queries.FORGE_APP_IDS_ENV}=ari:cloud:ecosystem::app/<id> in the dashboard's environment",
}

st.title("Token debugger")
user = ui.current_user()
may_verify = user is not None and user.is_admin
st.caption(
    "Decodes header and claims, shows times, age, expiry and clock skew, checks the qsh "
    "against the request you give and names the exact reason for a rejection. "
    "Nothing you paste is stored."
)
if not may_verify:
    st.info("Your role decodes and explains tokens but does not verify them against the "
            "stored shared secrets (admins do).")

with st.form("token_form"):
    token = st.text_area("Token", height=120, key="token_input",
                         placeholder="eyJhbGciOiJIUzI1NiIs...  ('JWT ', 'Bearer ' and quotes are fine)")
    cols = st.columns([1, 3, 2])
    method = cols[0].selectbox(METHOD, ["", "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"],
                               key="token_method", format_func=lambda m: m or "(none)")
    url = cols[1].text_input(URL, key="token_url")
    endpoint = cols[2].selectbox("Endpoint kind", ["request", "context", "lifecycle", "forge"],
                                 key="token_endpoint",
                                 help="forge: a Forge invocation token, or an x-forge-oauth-system/-user "
                                      "token (paste it with its header name)")
    more = st.columns(2)
    app_base_url = more[0].text_input("App base URL (its path is the context path)",
                                      key="token_app_base")
    body_key = more[1].text_input(BODY_KEY, key="token_body_key")
    submitted = st.form_submit_button("Inspect", type="primary")

if not submitted or not token.strip():
    st.stop()

with ui.guard():
    report = queries.inspect_token(
        token, method=method or None, url=url.strip() or None, endpoint=endpoint,
        verify_with_store=may_verify, app_base_url=app_base_url.strip() or None,
        body_client_key=body_key.strip() or None, inputs=INPUTS,
    )

if not may_verify and endpoint != "forge":  # Forge tokens verify with public keys: any role
    st.warning("Not verified against a stored secret (your role). The checks below concern "
               "the token's form, times and qsh only.")
    if report.get("reason") not in (None, "unknown_issuer"):
        st.text(f"Problem found: {report['reason']}")
        st.text(report.get("detail") or "")
elif report["verdict"] == "accepted":
    st.success("Accepted")
    st.text(report.get("detail") or "")
elif report["verdict"] == "usable":
    st.success("Usable (a Forge product token: only its expiry can be checked here)")
    st.text(report.get("detail") or "")
else:
    st.error("Rejected")
    st.text(f"Reason: {report['reason']}")
    st.text(report.get("detail") or "")
if report.get("fix") and (may_verify or report.get("reason") != "unknown_issuer"):
    st.caption("What to do")
    st.text(report["fix"])

for hint in report.get("hints") or []:
    st.text(f"Hint: {hint}")

left, right = st.columns(2)
with left:
    st.subheader("Header")
    st.json(report.get("header") or {}, expanded=True)
with right:
    st.subheader("Claims")
    st.json(report.get("claims") or {}, expanded=True)

times = report.get("times") or {}
rows = []
for name in ("iat", "nbf", "exp"):
    t = times.get(name)
    if t:
        row = {"claim": name, "epoch": str(t["epoch"]), "UTC": t["utc"] or "out of range"}
        if ui.zone_name() != "UTC":  # the token's own clock is UTC; the chosen zone beside it
            row[ui.zone_name()] = ui.fmt_epoch(t["epoch"]) if t["utc"] else "out of range"
        rows.append({**row, "relative": t["relative"]})
st.subheader("Times")
ui.table(rows, key="token_times")
facts = []
for label, key in (("age (s)", "age_seconds"), ("expires in (s)", "expires_in_seconds"),
                   ("lifetime (s)", "lifetime_seconds")):
    if times.get(key) is not None:
        facts.append({"what": label, "value": str(times[key])})
if report.get("now"):
    facts.append({"what": "checked at (UTC)", "value": str(report["now"].get("utc"))})
    if ui.zone_name() != "UTC":
        facts.append({"what": f"checked at ({ui.zone_name()})",
                      "value": ui.fmt_epoch(report["now"].get("epoch"))})
if report.get("fingerprint"):
    facts.append({"what": "fingerprint", "value": report["fingerprint"]})
ui.table(facts, key="token_facts")

forge = report.get("forge") or {}
if len(forge) > 1:
    st.subheader("Forge")
    ui.table([{"what": k.replace("_", " "), "value": str(v)} for k, v in forge.items() if v is not None],
             key="token_forge")

if may_verify and report.get("install"):
    inst = report["install"]
    st.subheader("Matching install")
    st.text(f"{inst['base_url']}  ({inst['client_key']}), "
            f"{'active' if inst['active'] else 'inactive'}")

if report.get("qsh_checked"):
    st.subheader("Query string hash")
    st.caption("Canonical request")
    st.code(report.get("canonical") or "", language=None)
    ui.table([
        {"": "expected (from the request)", "qsh": report.get("expected_qsh")},
        {"": "in the token", "qsh": report.get("token_qsh")},
    ], key="token_qsh")
    if report.get("diagnosis"):
        st.caption("Diagnosis")
        st.json(report["diagnosis"], expanded=True)
