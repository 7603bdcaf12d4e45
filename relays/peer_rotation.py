"""The worker peers one :class:`~relays.session.GatewaySession` may use, in rotation (plain data, no I/O)."""

from __future__ import annotations


class PeerRotation:
    """The relay's peers as the registry last listed them, those that failed this session, and the current one.

    A peer that failed is skipped until it is reported back up or the registry lists it anew."""

    def __init__(self, peers: list[str]) -> None:
        self.peers = list(peers)
        self.failed: set[str] = set()
        self.current: str | None = self.peers[0] if self.peers else None

    def pick(self, exclude: set[str]) -> str | None:
        """The first usable peer not in ``exclude``, starting from the current one."""
        ordered = self.peers
        if self.current in ordered:
            i = ordered.index(self.current)
            ordered = ordered[i:] + ordered[:i]
        return next((peer for peer in ordered if peer not in exclude and peer not in self.failed), None)

    def stuck(self) -> bool:
        """No current peer, or the current one failed: the session must fail over before polling."""
        return self.current is None or self.current in self.failed

    def mark(self, peer: str, *, up: bool) -> bool:
        """Record that ``peer`` went down or came back; False when it is not one of this session's peers."""
        if peer not in self.peers:
            return False
        (self.failed.discard if up else self.failed.add)(peer)
        return True

    def refresh(self, fresh: list[str]) -> None:
        """Take the registry's healthy peers; one it lists anew gets a new chance."""
        self.failed &= set(self.peers) - (set(fresh) - set(self.peers))
        self.peers = list(fresh)
