"""Backbone benchmark and quickstart section."""
