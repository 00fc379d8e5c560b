"""Tile-stream benchmark and quickstart section."""
