"""Domain packages. Each imports ``domainfm.shared`` and never another domain."""
