"""Resumable forwarded connections: they survive an outage with nothing lost.

Eternal Terminal's BackedReader/BackedWriter design carried over SSH channels: a helper
on the last hop holds each connection's far end, the laptop its near end; between them
every connection is a stream of numbered bytes, kept by the sender until acknowledged
and replayed after a reconnect.

- ``frames``: the wire format (handshake, DATA, ACK, EOF, RESET) and its decoder; stdlib
  only, embedded verbatim in the remote helper.
- ``replay``: per-stream state (send buffer, receive side, EOFs, outage timing) and the
  per-tunnel buffer budget; pure logic.
- ``remote``: the helper program run on the last hop (built from ``frames``, ``replay``,
  ``helper_start``, ``helper_loop`` and ``helper_main``: its start and private files, its
  event loop and channels, its streams) and how the laptop starts it.
- ``launch``: finding the remote Jupyter's Python and starting the helper over SSH.
- ``near`` (with ``near_loop``, ``near_streams``): the laptop side, ``NearEnd``: adopted
  connections become streams over links to the helper, held through an outage and
  resumed, reset when they cannot be.
- ``tunnel_side``: what one tunnel holds of it (``Resumer``), used with ``--resume``.
- ``orphans`` (with ``orphan_remote``, run on the target): ending the helper of a tunnel
  whose process died (``cleanup``), proven by pid, start time and command line there.
"""
