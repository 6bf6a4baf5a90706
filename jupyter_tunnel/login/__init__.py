"""Logins that ask: questions an SSH server puts during a login, and who answers them.

- ``questions``: :class:`Question` (what a hop asks: its own text, echo or not) and the
  ``Ask`` callback type that backends call; pure, no SSH library.
"""
