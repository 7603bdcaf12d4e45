from __future__ import annotations

from django.urls import path

from replicas.api import views

urlpatterns = [
    path("api/blind-peer", views.BlindPeerSummaryView.as_view(), name="blind-peer"),
    path("api/blind-peer/replicas", views.BlindPeerReplicasView.as_view(), name="blind-peer-replicas"),
    path("api/blind-peer/gc", views.BlindPeerGcView.as_view(), name="blind-peer-gc"),
    path("api/blind-peer/mirrors/<str:core_key>", views.BlindPeerMirrorView.as_view(), name="blind-peer-mirror"),
    path("api/blind-peer/metadata", views.MirrorMetadataView.as_view(), name="blind-peer-metadata"),
]
