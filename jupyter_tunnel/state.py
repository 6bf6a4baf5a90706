"""A tunnel's states and the engine's settings: what the tunnel and its supervisor share."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class State(str, enum.Enum):
    """Where a tunnel is in its life."""

    CONNECTING = "connecting"
    DETECTING = "detecting"
    READY = "ready"
    DEGRADED = "degraded"
    RECONNECTING = "reconnecting"
    FAILED = "failed"
    CLOSED = "closed"


@dataclass(frozen=True)
class Settings:
    """Engine settings (the manager fills them from its traits)."""

    connect_timeout: float = 10.0
    keepalive_interval: int = 15
    keepalive_count_max: int = 3
    ready_timeout: float = 15.0
    launch_timeout: float = 60.0
    backend: str = "sshtunnel"
    #: seconds between api/status checks of the remote Jupyter (0: none)
    health_interval: float = 10.0
    #: longest wait between reconnect attempts
    reconnect_max_delay: float = 30.0
    #: give up reconnecting after this many seconds (0: never)
    reconnect_give_up: float = 0.0
    #: how long a new connection waits for a lost SSH connection to come back
    hold_timeout: float = 20.0
    #: carry forwarded connections as resumable streams (a helper on the last hop)
    resume: bool = True
    #: seconds a resumable connection is held through an outage before it is reset
    resume_outage: float = 900.0
    #: bytes held (sent, not yet acknowledged) per resumable connection, and per tunnel
    resume_connection_buffer: int = 16 * 2**20
    resume_tunnel_buffer: int = 256 * 2**20
    #: seconds a hop's question (a one-time code, a password) waits for its answer
    answer_timeout: float = 120.0


#: states a tunnel never leaves
TERMINAL = frozenset({State.FAILED, State.CLOSED})
