"""Input and output shapes of the worker APIs (validation of shape only; meaning lives in services)."""

from __future__ import annotations

from rest_framework import serializers


class RegistrationRequest(serializers.Serializer):
    registration = serializers.DictField(help_text="relayKey, nonce, issuedAt (ms), peers, metadata, escrow")
    signature = serializers.CharField(help_text="hex HMAC-SHA256 of the canonical JSON of registration")


class RegistrationResponse(serializers.Serializer):
    status = serializers.CharField()
    hyperbee = serializers.JSONField(allow_null=True)
    relayKey = serializers.CharField()
    expiresAt = serializers.IntegerField(help_text="ms; re-register before then")


class StatusResponse(serializers.Serializer):
    status = serializers.CharField()


class SignedPayloadRequest(serializers.Serializer):
    payload = serializers.DictField()
    signature = serializers.CharField()


class TokenResponse(serializers.Serializer):
    token = serializers.CharField()
    expiresAt = serializers.IntegerField()
    refreshAfter = serializers.IntegerField()
    sequence = serializers.IntegerField()


class RevokeResponse(serializers.Serializer):
    status = serializers.CharField()
    disconnected = serializers.IntegerField()
    revoked = serializers.IntegerField()
    sequence = serializers.IntegerField()


class ErrorResponse(serializers.Serializer):
    error = serializers.CharField()
    message = serializers.CharField()
