"""Radiology studies: phantom radiographs with reports, the ConVIRT phantom study, quickstart section."""
