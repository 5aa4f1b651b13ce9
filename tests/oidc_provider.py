"""A real OpenID Connect provider for the single sign-on tests, built with Authlib's server side.

It speaks the authorization code flow with PKCE and nonce, signs RS256 ID tokens published in
its JWKS, and serves discovery, so the dashboard's ``st.login`` (Authlib's client) talks to it
exactly as to Okta or Entra. People are fixed: the sign-in page is a form with one field, the
user name, so that a browser test signs in as whom it chooses.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from html import escape
from typing import Any

from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import ClientMixin, grants
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oidc.core import UserInfo
from authlib.oidc.core.grants import OpenIDCode
from authlib.oidc.core.models import AuthorizationCodeMixin
from flask import Flask, jsonify, request
from joserfc.jwk import RSAKey

CLIENT_ID = "connect-audit-dashboard"
CLIENT_SECRET = "sso-test-client-secret-0123456789"
#: The people this provider knows, with the groups claim the dashboard maps to roles.
PEOPLE = {
    "alice": {"email": "alice@example.com", "name": "Alice Admin", "groups": ["connect-audit-admins"]},
    "bob": {"email": "bob@example.com", "name": "Bob Auditor", "groups": ["connect-audit-auditors"]},
    "mallory": {"email": "mallory@example.com", "name": "Mallory Nobody", "groups": ["staff"]},
}


@dataclass
class Client(ClientMixin):
    redirect_uri: str

    def get_client_id(self) -> str:
        return CLIENT_ID

    def get_default_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_allowed_scope(self, scope: str) -> str:
        return " ".join(s for s in scope.split() if s in ("openid", "email", "profile"))

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri == self.redirect_uri

    def check_client_secret(self, client_secret: str) -> bool:
        return secrets.compare_digest(client_secret, CLIENT_SECRET)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method in ("client_secret_basic", "client_secret_post")

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == "authorization_code"


@dataclass
class Code(AuthorizationCodeMixin):
    code: str
    user: str
    redirect_uri: str
    scope: str
    nonce: str | None
    code_challenge: str | None
    code_challenge_method: str | None
    auth_time: int = field(default_factory=lambda: int(time.time()))

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope

    def get_nonce(self) -> str | None:
        return self.nonce

    def get_auth_time(self) -> int:
        return self.auth_time

    def get_acr(self) -> str:
        return "0"

    def get_amr(self) -> list[str]:
        return ["pwd"]


def create_provider(issuer: str, redirect_uri: str) -> Flask:
    """The provider at ``issuer`` (its own base URL), with one client redirecting to ``redirect_uri``."""
    key = RSAKey.generate_key(2048, parameters={"kid": "sso-test-1", "use": "sig", "alg": "RS256"})
    client = Client(redirect_uri)
    codes: dict[str, Code] = {}
    nonces: set[str] = set()

    class CodeGrant(grants.AuthorizationCodeGrant):
        TOKEN_ENDPOINT_AUTH_METHODS = ("client_secret_basic", "client_secret_post")

        def save_authorization_code(self, code: str, req: Any) -> None:
            nonce = req.payload.data.get("nonce")
            codes[code] = Code(code, req.user, req.payload.redirect_uri, req.payload.scope, nonce,
                               req.payload.data.get("code_challenge"),
                               req.payload.data.get("code_challenge_method"))
            if nonce:
                nonces.add(nonce)

        def query_authorization_code(self, code: str, _client: Any) -> Code | None:
            return codes.get(code)

        def delete_authorization_code(self, authorization_code: Code) -> None:
            codes.pop(authorization_code.code, None)

        def authenticate_user(self, authorization_code: Code) -> str:
            return authorization_code.user

    class OpenID(OpenIDCode):
        def exists_nonce(self, nonce: str, _req: Any) -> bool:
            return nonce in nonces

        def resolve_client_private_key(self, _client: Any) -> RSAKey:
            return key

        def get_client_algorithm(self, _client: Any) -> str:
            return "RS256"

        def get_encode_header(self, _client: Any) -> dict[str, str]:
            return {"alg": "RS256", "kid": "sso-test-1"}

        def get_client_claims(self, _client: Any) -> dict[str, Any]:
            return {"iss": issuer, "aud": [CLIENT_ID], "exp": int(time.time()) + 600}

        def generate_user_info(self, user: str, scope: str) -> UserInfo:
            person = PEOPLE[user]
            return UserInfo(sub=f"user-{user}", email=person["email"], email_verified=True,
                            name=person["name"], groups=person["groups"])

    app = Flask("oidc-provider")
    app.config["OAUTH2_TOKEN_EXPIRES_IN"] = {"authorization_code": 600}
    server = AuthorizationServer(app, query_client=lambda cid: client if cid == CLIENT_ID else None,
                                 save_token=lambda token, req: None)
    server.register_grant(CodeGrant, [OpenID(require_nonce=True), CodeChallenge(required=True)])

    @app.get("/.well-known/openid-configuration")
    def discovery():
        return jsonify({
            "issuer": issuer, "authorization_endpoint": f"{issuer}/authorize",
            "token_endpoint": f"{issuer}/token", "jwks_uri": f"{issuer}/jwks",
            "response_types_supported": ["code"], "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "scopes_supported": ["openid", "email", "profile"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "code_challenge_methods_supported": ["S256"],
            "claims_supported": ["sub", "email", "name", "groups"],
        })

    @app.get("/jwks")
    def jwks():
        return jsonify({"keys": [key.as_dict(private=False)]})

    @app.route("/authorize", methods=["GET", "POST"])
    def authorize():
        if request.method == "GET":  # the provider's own sign-in page: who are you?
            hidden = "".join(f'<input type="hidden" name="{escape(k)}" value="{escape(v)}">'
                             for k, v in request.args.items())
            return ('<html><body><h1>Test identity provider</h1>'
                    f'<form method="post" action="/authorize">{hidden}'
                    '<label>User <input name="username" id="username"></label>'
                    '<button type="submit" id="continue">Continue</button></form></body></html>')
        user = request.form.get("username", "")
        if user not in PEOPLE:
            return "unknown user", 403
        grant = server.get_consent_grant(end_user=user)  # validates the request first
        return server.create_authorization_response(grant=grant, grant_user=user)

    @app.post("/token")
    def token():
        return server.create_token_response()

    return app
