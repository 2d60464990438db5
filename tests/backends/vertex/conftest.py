"""Fixtures of the Vertex backend's tests; they live in vx_support.py (a unique module name for the whole suite)."""

from __future__ import annotations

from vx_support import fake_vertex, gcs, gs_url

__all__ = ["fake_vertex", "gcs", "gs_url"]
