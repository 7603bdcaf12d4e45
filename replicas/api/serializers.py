"""Input and output shapes of the blind-peer APIs (shape only; meaning lives in services)."""

from __future__ import annotations

from rest_framework import serializers


class BlindPeerError(serializers.Serializer):
    error = serializers.CharField()
    message = serializers.CharField()


class ReplicasQuery(serializers.Serializer):
    limit = serializers.IntegerField(min_value=1, max_value=1000, default=100)
    cores = serializers.BooleanField(default=False)


class GcRequest(serializers.Serializer):
    reason = serializers.CharField(max_length=200, required=False, allow_blank=True, default="manual")


class DropQuery(serializers.Serializer):
    reason = serializers.CharField(max_length=200, required=False, allow_blank=True, default="manual")


class ActionResponse(serializers.Serializer):
    id = serializers.IntegerField()
    action = serializers.CharField()
    coreKey = serializers.CharField(allow_null=True)
    status = serializers.CharField()
    requestedAt = serializers.DateTimeField()


class MirrorMetadataRequest(serializers.Serializer):
    payload = serializers.DictField(
        help_text="relayKey, publicIdentifier?, ownerPeerKey, issuedAt (ms), cores: [{coreKey, type, announce?, "
        "priority?, length?}] (or one core's fields inline)"
    )
    signature = serializers.CharField(help_text="hex HMAC-SHA256 of the canonical JSON of payload")


class MetadataResponse(serializers.Serializer):
    status = serializers.CharField()
    relayKey = serializers.CharField()
    cores = serializers.ListField(child=serializers.CharField())


class SummaryResponse(serializers.Serializer):
    enabled = serializers.BooleanField()
    publicKey = serializers.CharField(allow_null=True)
    encryptionKey = serializers.CharField(allow_null=True)
    maxBytes = serializers.IntegerField(allow_null=True)
    summary = serializers.DictField(help_text="the same public fields, plus config.maxBytes (hyperpipe workers)")
    mirrors = serializers.DictField(required=False, help_text="operators only")
    replicas = serializers.DictField(required=False, help_text="operators only")


class ReplicasResponse(serializers.Serializer):
    replicas = serializers.ListField(child=serializers.DictField())
