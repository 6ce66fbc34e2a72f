"""The export stage's one user-facing failure: its message says what to fix."""

from __future__ import annotations


class ExportError(Exception):
    """A failure the user can fix; its message says how."""
