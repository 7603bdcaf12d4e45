"""Request and response shapes of the escrow APIs (shape only; signatures and meaning live in services).

Signed bodies are verified field by field from the exact values the worker signed (``escrow.wire``), so the
escrow views hand ``request.data`` to the service; these serializers document the API and validate the
gateway-side operator inputs.
"""

from __future__ import annotations

from rest_framework import serializers


class EscrowErrorResponse(serializers.Serializer):
    error = serializers.CharField()
    message = serializers.CharField()


class EscrowRefusalResponse(EscrowErrorResponse):
    reasons = serializers.ListField(child=serializers.CharField(), help_text="every failed policy rule")
    policyVersion = serializers.IntegerField()


class EscrowPolicyResponse(serializers.Serializer):
    policy = serializers.DictField(help_text="rules, escrowPublicKey, escrowKeyId, verifyKey")
    signature = serializers.CharField(help_text="base64 Ed25519 over the canonical policy (escrow/WIRE.md)")


class EscrowDepositRequest(serializers.Serializer):
    version = serializers.IntegerField(required=False)
    relayKey = serializers.CharField()
    workerKey = serializers.CharField(help_text="worker Ed25519 public key, 64 hex")
    ownerIdentity = serializers.CharField(allow_blank=True)
    writerPublicKey = serializers.CharField(help_text="gateway-writer Ed25519 public key, 64 hex")
    sealedSecret = serializers.CharField(help_text="base64 crypto_box_seal of the writer package")
    escrowKeyId = serializers.CharField()
    policyVersion = serializers.IntegerField()
    allowGatewayWrites = serializers.BooleanField()
    expiresAt = serializers.IntegerField(help_text="Unix seconds")
    issuedAt = serializers.IntegerField(help_text="Unix milliseconds, strictly increasing per relay")
    idempotencyKey = serializers.CharField()
    signature = serializers.CharField()


class EscrowDepositResponse(serializers.Serializer):
    depositId = serializers.CharField()
    relayKey = serializers.CharField()
    writerPublicKey = serializers.CharField()
    expiresAt = serializers.IntegerField()
    policyVersion = serializers.IntegerField()
    escrowKeyId = serializers.CharField()
    supersedes = serializers.CharField(allow_null=True)
    replayed = serializers.BooleanField(required=False)


class EscrowStatementRequest(serializers.Serializer):
    version = serializers.IntegerField(required=False)
    relayKey = serializers.CharField()
    workerKey = serializers.CharField()
    issuedAt = serializers.IntegerField()
    reason = serializers.CharField(required=False, help_text="revoke only")
    signature = serializers.CharField()


class EscrowHeartbeatResponse(serializers.Serializer):
    relayKey = serializers.CharField()
    rotationRequired = serializers.BooleanField()
    leaseRevoked = serializers.CharField(allow_null=True)
    serverTime = serializers.IntegerField()


class EscrowRevokeResponse(serializers.Serializer):
    relayKey = serializers.CharField()
    leaseRevoked = serializers.CharField(allow_null=True)
    depositRevoked = serializers.CharField(allow_null=True)


class MirrorEvidence(serializers.Serializer):
    announcedAt = serializers.IntegerField(min_value=0, help_text="Unix seconds: the worker's last observed contact")
    announcedLength = serializers.IntegerField(min_value=0, help_text="view length the worker announced then")
    mirroredLength = serializers.IntegerField(min_value=0, help_text="view length the gateway's mirror holds")


class EscrowEvidence(serializers.Serializer):
    healthyPeers = serializers.IntegerField(min_value=0)
    mirror = MirrorEvidence(required=False)
    mirrorFreshAt = serializers.IntegerField(
        required=False, help_text="Deprecated: Unix seconds, read as mirror.announcedAt with complete lengths"
    )


class EscrowUnlockRequest(serializers.Serializer):
    relayKey = serializers.CharField()
    sessionPublicKey = serializers.CharField(help_text="base64 one-time X25519 public key")
    evidence = EscrowEvidence()
    ttl = serializers.IntegerField(required=False)


class EscrowUnlockResponse(serializers.Serializer):
    leaseId = serializers.CharField()
    relayKey = serializers.CharField()
    fence = serializers.IntegerField()
    issuedAt = serializers.IntegerField()
    expiresAt = serializers.IntegerField()
    maxExpiresAt = serializers.IntegerField()
    writerPublicKey = serializers.CharField()
    sealedSecret = serializers.CharField()
    signature = serializers.CharField()
    escrowVerifyKey = serializers.CharField()


class EscrowRenewRequest(serializers.Serializer):
    leaseId = serializers.CharField()
    ttl = serializers.IntegerField(required=False, min_value=1)


class EscrowRenewResponse(serializers.Serializer):
    leaseId = serializers.CharField()
    expiresAt = serializers.IntegerField()
    maxExpiresAt = serializers.IntegerField()


# --- Gateway operator APIs ----------------------------------------------------------------------------


class EscrowLeaseRequestInput(serializers.Serializer):
    healthyPeers = serializers.IntegerField(min_value=0, required=False, default=0)


class EscrowLeaseHandle(serializers.Serializer):
    relay_key = serializers.CharField()
    lease_id = serializers.CharField()
    fence = serializers.IntegerField()
    expires_at = serializers.IntegerField()
    writer_public_key = serializers.CharField()


class EscrowLeaseResult(serializers.Serializer):
    status = serializers.ChoiceField(choices=["granted", "refused", "conflict", "unavailable", "disabled", "error"])
    lease = EscrowLeaseHandle(allow_null=True)
    reasons = serializers.ListField(child=serializers.CharField())
    detail = serializers.CharField(allow_blank=True)


class EscrowLeaseQueryResponse(serializers.Serializer):
    escrowConfigured = serializers.BooleanField()
    leases = serializers.ListField(child=serializers.DictField())
    leaseHealth = serializers.ListField(child=serializers.DictField())


class EscrowLeaseReleaseResponse(serializers.Serializer):
    relayKey = serializers.CharField()
    released = serializers.BooleanField()
