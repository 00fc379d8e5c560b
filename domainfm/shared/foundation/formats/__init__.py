"""One module per checkpoint layout; each registers itself (see ``foundation.layouts``)."""
