"""Bearer-token authentication and namespace authorization of gateway requests.

:class:`Verifier` is built once by :func:`agentrun_gateway.app.create_app` from the gateway
settings; every ``/v1`` handler calls :meth:`Verifier.authenticate` and then
:meth:`Principal.require`. Tokens are JWTs checked for signature, expiry and audience:
HS256 with a shared secret (Supabase's project JWT secret) and/or RS256/ES256 with the keys
of a JWKS (URL or file). The accepted algorithms are fixed per key type, so ``alg: none`` and
algorithm-confusion tokens (an RS256 public key used as an HS256 secret) are refused.

A token travels only in the ``Authorization`` header: a request carrying a token-like query
parameter is refused, because URLs end up in proxy and access logs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import pathlib
from collections.abc import Collection, Mapping
from typing import Any

import jwt
import structlog

logger = structlog.get_logger(__name__)

ALL = "*"
HMAC_ALGORITHMS = ("HS256",)
ASYMMETRIC_ALGORITHMS = ("RS256", "ES256")
MIN_SECRET_BYTES = 32
"""Shortest HS256 secret accepted: RFC 7518 (3.2) asks for a key of at least the hash's size."""
URL_TOKEN_PARAMS = frozenset({"access_token", "token", "jwt", "id_token", "auth", "authorization"})


class AuthError(Exception):
    """A request that may not proceed: ``status`` 401 (who are you?) or 403 (not yours)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        """Short label for the ``agentrun_gateway_auth_failures_total`` metric."""
        self.message = message


@dataclasses.dataclass(frozen=True)
class Principal:
    """Who made a request and which namespaces they may use."""

    subject: str
    namespaces: frozenset[str]

    def may_use(self, namespace: str) -> bool:
        return ALL in self.namespaces or namespace in self.namespaces

    def require(self, namespace: str) -> None:
        if not self.may_use(namespace):
            raise AuthError(403, "namespace", f'this token may not use namespace "{namespace}"')


ANONYMOUS = Principal(subject="anonymous", namespaces=frozenset({ALL}))


class Verifier:
    """Checks bearer tokens against an HS256 secret and/or JWKS keys."""

    def __init__(
        self,
        *,
        secret: str | None = None,
        jwks_url: str | None = None,
        jwks_file: str | None = None,
        audience: Collection[str] = ("agentrun",),
        issuer: str | None = None,
        namespaces_claim: str = "namespaces",
        leeway_seconds: float = 30.0,
        allow_anonymous: bool = False,
        jwks_cache_seconds: float = 300.0,
        jwks_refresh_cooldown_seconds: float = 30.0,
    ) -> None:
        if not (secret or jwks_url or jwks_file or allow_anonymous):
            raise ValueError(
                "the gateway needs a way to verify tokens: set AGENTRUN_GATEWAY_JWT_SECRET, "
                "AGENTRUN_GATEWAY_JWKS_URL or AGENTRUN_GATEWAY_JWKS_FILE"
            )
        if not audience:
            raise ValueError("AGENTRUN_GATEWAY_JWT_AUDIENCE must name at least one audience")
        if secret and len(secret.encode()) < MIN_SECRET_BYTES:
            raise ValueError(
                f"AGENTRUN_GATEWAY_JWT_SECRET must be at least {MIN_SECRET_BYTES} bytes (it has "
                f"{len(secret.encode())}): a short HS256 secret can be guessed offline from any token it signed"
            )
        self._secret = secret
        # No per-kid key cache (PyJWKClient's cache_keys): it never expires, so a key removed
        # from the JWKS (revoked, rotated out) would stay trusted until the gateway restarts.
        # The JWKS itself is cached for jwks_cache_seconds; an unknown kid (a new key) forces a
        # refetch, at most once per cooldown so made-up kids cannot hammer the key server.
        self._jwks_client = jwt.PyJWKClient(
            jwks_url, cache_keys=False, lifespan=jwks_cache_seconds, cooldown_duration=jwks_refresh_cooldown_seconds,
        ) if jwks_url else None
        self._jwks_file = jwt.PyJWKSet.from_json(pathlib.Path(jwks_file).read_text()) if jwks_file else None
        self._audience = list(audience)
        self._issuer = issuer
        self._claim = namespaces_claim
        self._leeway = leeway_seconds
        self.allow_anonymous = allow_anonymous
        self._verifies = bool(secret or jwks_url or jwks_file)
        self._told_ignoring = False

    async def authenticate(self, headers: Mapping[str, str], query: Collection[str]) -> Principal:
        """The principal of a request from its headers; :class:`AuthError` 401 when not proven."""
        if any(name.lower() in URL_TOKEN_PARAMS for name in query):
            raise AuthError(401, "token_in_url", "tokens are accepted only in the Authorization header, never in URLs")
        header = headers.get("authorization")
        if self.allow_anonymous and not self._verifies:
            # No auth at all (agentrun dev): a token someone exported for another gateway
            # proves nothing here and refusing it would only get in the way.
            if header and not self._told_ignoring:
                self._told_ignoring = True
                logger.info("gateway.token_ignored", why="authentication is off: every request is anonymous")
            return ANONYMOUS
        if not header:
            if self.allow_anonymous:
                return ANONYMOUS
            raise AuthError(401, "missing", "an Authorization: Bearer token is required")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthError(401, "malformed", "the Authorization header must be 'Bearer <token>'")
        claims = await self._verify(token)
        return Principal(subject=str(claims.get("sub") or ""), namespaces=_namespaces(claims.get(self._claim)))

    async def _verify(self, token: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise AuthError(401, "malformed", "the token is not a JWT") from exc
        alg = header.get("alg")
        key: Any
        if alg in HMAC_ALGORITHMS and self._secret:
            key, algorithms = self._secret, list(HMAC_ALGORITHMS)
        elif alg in ASYMMETRIC_ALGORITHMS and (self._jwks_client or self._jwks_file):
            key, algorithms = await self._jwk(token, header), list(ASYMMETRIC_ALGORITHMS)
        else:
            raise AuthError(401, "algorithm", f"tokens signed with {alg!r} are not accepted")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=algorithms,
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": ["exp", "aud"], "verify_signature": True},
            )
        except jwt.ExpiredSignatureError as exc:
            raise AuthError(401, "expired", "the token has expired") from exc
        except (jwt.InvalidAudienceError, jwt.InvalidIssuerError) as exc:
            raise AuthError(401, "audience", "the token was not issued for this gateway") from exc
        except jwt.InvalidSignatureError as exc:
            raise AuthError(401, "signature", "the token's signature does not verify") from exc
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError(401, "claims", f"the token lacks the {exc.claim!r} claim") from exc
        except jwt.PyJWTError as exc:
            raise AuthError(401, "invalid", "the token is not valid") from exc
        return claims

    async def _jwk(self, token: str, header: Mapping[str, Any]) -> Any:
        kid = header.get("kid")
        try:
            if self._jwks_file is not None:
                keys = [k for k in self._jwks_file.keys if kid is None or k.key_id == kid]
                if not keys:
                    raise AuthError(401, "signature", "no key of the JWKS matches the token's kid")
                return keys[0].key
            assert self._jwks_client is not None
            # PyJWKClient fetches with urllib (blocking); it caches, so this rarely leaves memory.
            signing = await asyncio.to_thread(self._jwks_client.get_signing_key_from_jwt, token)
            return signing.key
        except jwt.PyJWKClientError as exc:
            raise AuthError(401, "signature", "no key of the JWKS matches the token") from exc


def _namespaces(value: Any) -> frozenset[str]:
    """The ``namespaces`` claim as a set; a string is one namespace; anything else is none."""
    if isinstance(value, str):
        return frozenset({value})
    if isinstance(value, list):
        return frozenset(str(v) for v in value if isinstance(v, str))
    return frozenset()
