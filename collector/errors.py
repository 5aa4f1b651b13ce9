"""The domain language of Connect Audit's failures.

Every way a token can be refused is one class with one stable reason ``code``. The
codes are a public contract: they are stored in the audit log, shown by the dashboard,
printed by ``connect-audit token inspect`` and matched by other tools, so a code is
never renamed. The ``detail`` sentence is for people and may change.

A detail never contains a secret, a token or a signature: callers build it from
claim names and values that are safe to log.
"""

from __future__ import annotations


class ConnectAuditError(Exception):
    """Base class for every error Connect Audit raises on purpose."""


# --------------------------------------------------------------------------- tokens


class TokenRejected(ConnectAuditError):
    """Raised when a token is refused; ``code`` names the exact reason."""

    code: str = "rejected"
    #: What a developer should do about it, shown next to the code in the UI and docs.
    fix: str = ""
    #: The tenant whose shared secret verified the signature, when the token was refused
    #: after that check (expired, qsh_mismatch, replayed, ...): the refusal is then truly
    #: that tenant's. None when nothing proves who signed the token.
    client_key: str | None = None
    #: The token as parsed (a :class:`collector.tokens.ParsedToken`, signature unchecked) when
    #: the refusal came after parsing: its claims may be recorded, marked unverified.
    parsed: object | None = None

    def __init__(self, detail: str = "") -> None:
        self.detail = detail or self.__doc__.strip().removeprefix("Raised when ").rstrip(".")
        super().__init__(self.detail)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, detail={self.detail!r})"


# The rejections fall in four groups, as pyjwt groups its errors: the token cannot be read
# (structural), nothing proves who signed it (trust), its claims are wrong (claims), or it was
# already used (replay). Catch a group to treat its members alike; the code names the member.


class StructuralRejection(TokenRejected):
    """Raised when the token cannot be read as a strict compact JWS with an acceptable header."""


class TrustRejection(TokenRejected):
    """Raised when nothing proves that the expected party signed the token (key, issuer, signature)."""


class ClaimRejection(TokenRejected):
    """Raised when the token is authentic but a claim is absent, malformed or not for this request."""


class ReplayRejection(TokenRejected):
    """Raised when an authentic token arrives again where it may be used only once."""


class MissingToken(StructuralRejection):
    """Raised when a request that needs a token carries none."""

    code = "missing_token"
    fix = "Send the JWT in the Authorization header ('JWT <token>') or the jwt query parameter."


class TokenTooLarge(StructuralRejection):
    """Raised when a token is longer than the size cap, before any decoding."""

    code = "too_large"
    fix = "Real Connect tokens are well under 8 KiB; look for a proxy or client appending data."


class MalformedToken(StructuralRejection):
    """Raised when a token is not a strict compact JWS with canonical base64url JSON parts."""

    code = "malformed"
    fix = "Check that the whole token was sent, unquoted, unpadded and not URL-encoded twice."


class UnsupportedHeader(StructuralRejection):
    """Raised when the header carries a parameter that is never honoured (crit, jku, x5u, ...)."""

    code = "unsupported_header"
    fix = "Sign with a plain header ({'alg', 'typ', 'kid'}); key-carrying or critical headers are refused."


class AlgorithmNotAllowed(StructuralRejection):
    """Raised when the header's alg is not the one pinned for this kind of endpoint."""

    code = "alg_not_allowed"
    fix = ("Request and context tokens are HS256; lifecycle callbacks and Forge invocation tokens are "
           "RS256. 'none' is never accepted.")


class MissingKid(StructuralRejection):
    """Raised when an RS256 token (lifecycle, Forge) has no kid, or one that is not strictly formatted."""

    code = "missing_kid"
    fix = ("Lifecycle callbacks must be signed install tokens (enable signed installs in the descriptor); "
           "a Forge invocation token without a well-formed kid was not minted by Forge.")


class UnknownKid(TrustRejection):
    """Raised when no public key can be obtained for the token's kid (install keys or Forge JWKS)."""

    code = "unknown_kid"
    fix = ("Check the install-keys source or the Forge JWKS (network reachability, the file or "
           "directory used in tests); the JWKS is re-read at most once a minute for a new kid.")


class UnknownIssuer(TrustRejection):
    """Raised when no install matches the token's iss exactly, or a Forge token's iss is not Forge's."""

    code = "unknown_issuer"
    fix = ("The tenant is not installed here: reinstall the app, or check which store this instance uses. "
           "A Forge invocation token's iss is always 'forge/invocation-token'.")


class InactiveInstall(TrustRejection):
    """Raised when the token's tenant (Connect install or Forge installation) is uninstalled or disabled."""

    code = "inactive_install"
    fix = ("The app is disabled or uninstalled on this site; it must be enabled (or reinstalled) before "
           "it is called.")


class BadSignature(TrustRejection):
    """Raised when the signature does not verify with the install's secret or the kid's key."""

    code = "bad_signature"
    fix = "The shared secret differs: a stale install, a reinstall not yet received, or the wrong tenant."


class MissingClaim(ClaimRejection):
    """Raised when a required claim (iss, iat, exp, qsh, aud, app.installationId, ...) is absent."""

    code = "missing_claim"
    fix = ("Include iss, iat, exp and qsh; lifecycle tokens also need aud. A Forge token needs app.id, "
           "app.installationId, app.apiBaseUrl, app.environment, app.module, and principal on UI routes.")


class InvalidClaim(ClaimRejection):
    """Raised when a claim has the wrong type or an impossible value."""

    code = "invalid_claim"
    fix = ("iat, exp and nbf are integer seconds since the epoch (not milliseconds); iss and qsh are "
           "strings. In a Forge token app.installationId is an installation ARI and app.apiBaseUrl an "
           "https URL.")


class LifetimeTooLong(ClaimRejection):
    """Raised when exp - iat exceeds the allowed token lifetime."""

    code = "lifetime_too_long"
    fix = "Issue short-lived tokens (Atlassian uses 3 minutes); the default cap is one hour."


class TokenExpired(ClaimRejection):
    """Raised when exp is in the past, beyond the leeway."""

    code = "expired"
    fix = "The token is stale: a cached page, a slow queue or a clock skew. Check the server clock (NTP)."


class TokenNotYetValid(ClaimRejection):
    """Raised when nbf or iat lies in the future, beyond the leeway."""

    code = "not_yet_valid"
    fix = "The issuer's clock is ahead of this server's; synchronise clocks (NTP)."


class QshMismatch(ClaimRejection):
    """Raised when the token's qsh differs from the hash of the request actually received."""

    code = "qsh_mismatch"
    fix = "Hash the method, the path without the context path and the sorted query; see the diagnosis."
    #: The :class:`collector.qsh.Diagnosis` of the mismatch (set by the verifier), for callers that show it.
    diagnosis: object | None = None


class ContextQshNotAllowed(ClaimRejection):
    """Raised when a context token (qsh = context-qsh) reaches an endpoint not declared for it."""

    code = "context_qsh_not_allowed"
    fix = "Declare the route as taking context tokens, or have the host sign the real request."


class WrongAudience(ClaimRejection):
    """Raised when a lifecycle token's aud lacks the app's baseUrl, or a Forge token's aud is not our app."""

    code = "wrong_audience"
    fix = ("The app's configured baseUrl must equal the descriptor's baseUrl exactly; for Forge, configure "
           "the app ARI (ari:cloud:ecosystem::app/<id> from manifest.yml) in forge_app_ids.")


class IssuerMismatch(ClaimRejection):
    """Raised when a lifecycle token's iss differs from the clientKey in the callback body."""

    code = "issuer_mismatch"
    fix = "The body and the token describe different tenants: treat the callback as forged."


class Replayed(ReplayRejection):
    """Raised when a token already used on a state-changing request or callback comes again."""

    code = "replayed"
    fix = "Mint a fresh token per state-changing request; a retry must not reuse the old one."


class ContextMismatch(ClaimRejection):
    """Raised when a Forge token's module, environment or site differs from the route's or installation's."""

    code = "context_mismatch"
    fix = ("Check the route's declared module key and environment against manifest.yml, and that the "
           "installation was not moved to another site (a reinstall gets a new installation id).")


#: Every rejection class, in the order the verifier checks them.
REJECTIONS: tuple[type[TokenRejected], ...] = (
    MissingToken,
    TokenTooLarge,
    MalformedToken,
    UnsupportedHeader,
    AlgorithmNotAllowed,
    MissingKid,
    UnknownKid,
    UnknownIssuer,
    InactiveInstall,
    BadSignature,
    MissingClaim,
    InvalidClaim,
    LifetimeTooLong,
    TokenExpired,
    TokenNotYetValid,
    QshMismatch,
    ContextQshNotAllowed,
    WrongAudience,
    IssuerMismatch,
    ContextMismatch,
    Replayed,
)

#: The public reason codes, exactly as stored and printed.
REJECTION_CODES: tuple[str, ...] = tuple(cls.code for cls in REJECTIONS)

_BY_CODE = {cls.code: cls for cls in REJECTIONS}


def rejection_for(code: str) -> type[TokenRejected]:
    """Return the rejection class for a stored reason code (KeyError if unknown)."""
    return _BY_CODE[code]


# --------------------------------------------------------------------------- lifecycle


class LifecycleRefused(ConnectAuditError):
    """Raised when the app's install policy refuses a verified lifecycle callback; ``code`` names why."""

    code: str = "lifecycle_refused"
    fix: str = ""
    #: The HTTP status the host is answered with.
    status: int = 403

    def __init__(self, detail: str = "") -> None:
        self.detail = detail or self.__doc__.strip().removeprefix("Raised when ").rstrip(".")
        super().__init__(self.detail)


class HostNotAllowed(LifecycleRefused):
    """Raised when an installed callback's baseUrl is not https on a host the allowed-hosts policy names."""

    code = "host_not_allowed"
    fix = ("Atlassian's sites are https on *.atlassian.net, *.jira.com, *.jira-dev.com and "
           "*.atlassian-us-gov-mod.net; add other hosts with allowed_hosts or CONNECT_AUDIT_ALLOWED_HOSTS.")


class HostMoved(LifecycleRefused):
    """Raised when a reinstall would move a known install to another host and host moves are not allowed."""

    code = "host_moved"
    fix = ("A site rename moves its host: allow it with allow_host_moves=True or "
           "CONNECT_AUDIT_ALLOW_HOST_MOVES=1, then have the site re-send installed (the move is recorded).")


class UnknownInstall(LifecycleRefused):
    """Raised when an uninstalled, enabled or disabled callback names a clientKey that was never installed."""

    code = "unknown_install"
    fix = ("Nothing is created: the host is answered 204 as it expects. Look for a store that lost its "
           "installs, or an install that was never received.")
    status = 204


#: Every lifecycle refusal class.
LIFECYCLE_REFUSALS: tuple[type[LifecycleRefused], ...] = (HostNotAllowed, HostMoved, UnknownInstall)

#: The lifecycle refusal codes, exactly as stored (an event's ``reason``).
LIFECYCLE_REFUSAL_CODES: tuple[str, ...] = tuple(cls.code for cls in LIFECYCLE_REFUSALS)


# --------------------------------------------------------------------------- store & config


class ConfigurationError(ConnectAuditError):
    """Raised when a setting (database URL, key file, option) is missing or invalid."""


class StoreUnavailable(ConnectAuditError):
    """Raised when the audit store cannot be opened or reached."""


class IntegrityError(ConnectAuditError):
    """Raised when the audit log's hash chain or checkpoints do not verify."""


class FilterError(ConfigurationError):
    """Raised when a filter value cannot be understood (a bad date, status or vocabulary word)."""


class QueryTimeout(ConnectAuditError):
    """Raised when a read takes longer than its time limit."""


class RecorderClosed(ConnectAuditError):
    """Raised when an event is recorded after the recorder was closed."""


class QueueFull(ConnectAuditError):
    """Raised when the recorder's queue is full and its policy is to refuse, not to wait."""


class UnknownTenant(ConnectAuditError):
    """Raised when an outgoing call names a clientKey that has no active install."""


class TokenExchangeFailed(ConnectAuditError):
    """Raised when the authorization server will not exchange an assertion for an access token
    (acting as a user needs ACT_AS_USER granted on the site and a user the site knows)."""

    #: Stored as the reason of the outgoing call that could not be made.
    code = "token_exchange_refused"
    fix = ("Declare ACT_AS_USER in the descriptor (the site must approve the upgrade), check the "
           "install's oauthClientId and that the accountId exists on the site.")


class ForgeTokenUnavailable(ConnectAuditError):
    """Raised when an outgoing Forge call has no usable product token (system or user); ``code``
    is stored as the reason of the call that was not made."""

    code = "forge_token_missing"
    fix = ("Enable endpoint.auth.appSystemToken (asApp) or appUserToken (asUser) for the remote "
           "endpoint in manifest.yml; a user token exists only when a user invoked the app.")


class ForgeTokenExpired(ForgeTokenUnavailable):
    """Raised when the Forge system or user token's exp has passed before an outgoing call."""

    code = "expired"
    fix = ("Forge sends a fresh token with each invocation (valid 2 to 4 hours); cache it no longer "
           "than its exp, or take the token of the current invocation.")


# --------------------------------------------------------------------------- imports (collector.imports)


class ImportFailed(ConnectAuditError):
    """Raised when one of Atlassian's audit APIs cannot be read; what was imported stays, and
    the next run resumes from the last complete page. ``status`` is the HTTP status, if any."""

    code = "import_failed"

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class SourceUnauthorized(ImportFailed):
    """Raised when an audit API refuses the source's credential (401): wrong, revoked or expired."""

    code = "unauthorized"


class SourceForbidden(ImportFailed):
    """Raised when an audit API accepts the credential but refuses it the log (403)."""

    code = "forbidden"


class SourceRateLimited(ImportFailed):
    """Raised when an audit API kept answering 429 for longer than the importer waits."""

    code = "rate_limited"


class UnknownSource(ConfigurationError):
    """Raised when no import source has the given name."""
