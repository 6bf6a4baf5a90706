"""A channel to a Unix socket on the last hop (OpenSSH's ``direct-streamlocal@openssh.com``).

``ssh -L port:/path/to.sock`` asks for this kind of channel; paramiko's ``open_channel``
knows only TCP forwards, so the request is built here, with paramiko's own bookkeeping
(channel map, open event) done the same way.  sshd connects to the socket as the logged-in
user (``AllowStreamLocalForwarding``, on by default).  Used for the resume helper's socket.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import paramiko
from paramiko.common import cMSG_CHANNEL_OPEN
from paramiko.message import Message

__all__ = ["KIND", "open_streamlocal"]

KIND = "direct-streamlocal@openssh.com"


def open_streamlocal(transport: paramiko.Transport, path: str, timeout: float = 10.0
                     ) -> paramiko.Channel:
    """Open a channel to the Unix socket ``path`` on ``transport``'s host.

    Raises ``paramiko.ChannelException`` when the server refuses (no such socket, not
    allowed), ``paramiko.SSHException`` when the connection is down or the open times out.
    """
    if not path.startswith("/"):
        raise ValueError(f"a Unix socket path must be absolute: {path!r}")
    if not transport.active:
        raise paramiko.SSHException("SSH session not active")
    t: Any = transport  # paramiko's private bookkeeping, as open_channel does it
    with t.lock:
        window = t._sanitize_window_size(None)
        packet = t._sanitize_packet_size(None)
        chanid = t._next_channel()
        m = Message()
        m.add_byte(cMSG_CHANNEL_OPEN)
        m.add_string(KIND)
        m.add_int(chanid)
        m.add_int(window)
        m.add_int(packet)
        m.add_string(path)
        m.add_string("")  # reserved
        m.add_int(0)  # reserved
        chan = paramiko.Channel(chanid)
        t._channels.put(chanid, chan)
        t.channel_events[chanid] = event = threading.Event()
        t.channels_seen[chanid] = True
        chan._set_transport(transport)
        chan._set_window(window, packet)
    t._send_user_message(m)
    deadline = time.monotonic() + timeout
    while not event.wait(0.1):
        if not transport.active:
            raise transport.get_exception() or paramiko.SSHException("the SSH session ended")
        if time.monotonic() > deadline:
            t.channel_events.pop(chanid, None)
            raise paramiko.SSHException(f"opening a channel to {path} timed out")
    opened: paramiko.Channel | None = t._channels.get(chanid)
    if opened is not None:
        return opened
    # refused: paramiko recorded why (as open_channel reports it)
    raise transport.get_exception() or paramiko.ChannelException(2, f"{path}: refused")
