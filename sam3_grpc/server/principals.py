"""Who is calling: the principal that owns the sessions it creates.

With bearer tokens (--auth-token-file) the principal is the token, kept only as a hash; with
mutual TLS (--tls-client-ca) it is the client certificate's subject; with both, the pair. Without
authentication every caller is the same anonymous principal, and sessions are one namespace
shared by everyone who can reach the server (documented in the README).
"""

from __future__ import annotations

import hashlib

import grpc

from sam3_grpc.config import Settings

ANONYMOUS = ""


def bearer_token(metadata) -> bytes:
    """The token of an `authorization: Bearer <token>` header, or b""."""
    for key, value in metadata or ():
        if key == "authorization":
            text = value if isinstance(value, str) else value.decode("latin-1")
            if text[:7].lower() == "bearer ":
                return text[7:].strip().encode()
            break
    return b""


def principal_of(context: grpc.aio.ServicerContext, settings: Settings) -> str:
    parts = []
    if settings.auth_token_file:
        token = bearer_token(context.invocation_metadata())
        parts.append("token:" + hashlib.sha256(token).hexdigest()[:32])
    if settings.tls_client_ca:
        auth = context.auth_context() or {}
        subject = b"".join(auth.get("x509_subject_name") or auth.get("x509_common_name") or ())
        parts.append("cert:" + subject.decode("utf-8", "replace"))
    return "|".join(parts) if parts else ANONYMOUS
