"""Remote sensing: 14-band MODIS top-of-atmosphere chips and SimMIM on SwinV2 (SatVision-TOA).

SatVision-TOA (NASA GSFC, 2024; arXiv 2411.17000). Readers, chipping, SimMIM and cloud heads arrive
with the remote-sensing issue.
"""
