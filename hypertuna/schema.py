"""OpenAPI description of the project's own authentication schemes (loaded by ``HypertunaConfig.ready``)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension

from hypertuna import reqsign


class SignedRequestScheme(OpenApiAuthenticationExtension):
    target_class = "hypertuna.operator_auth.SignedRequestAuthentication"
    name = "signedRequest"

    def get_security_definition(self, auto_schema: Any) -> dict[str, Any]:
        return {
            "type": "apiKey",
            "in": "header",
            "name": reqsign.HEADER,
            "description": (
                "kid=<key id>,t=<unix seconds>,n=<nonce>,v1=<hex HMAC-SHA256> over "
                '"hypertuna-req-v1\\nMETHOD\\npath\\ncanonical query\\nsha256(body)\\nt\\nn\\nkid" '
                "with a key from HYPERTUNA_OPERATOR_KEYS; each nonce is accepted once."
            ),
        }
