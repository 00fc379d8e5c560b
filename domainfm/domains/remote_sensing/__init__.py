"""Remote sensing: SatVision-TOA, 14-band MODIS L1B chips, SimMIM on SwinV2, cloud retrieval.

SatVision-TOA, NASA GSFC 2024 (arXiv 2411.17000); SimMIM, Xie et al., CVPR 2022 (arXiv 2111.09886).
``bands`` (band table, calibration constants), ``modis`` (L1B HDF4 reader), ``rasters`` (GDAL rasters),
``data`` (chipping into the tile store), ``simmim``, ``pretrain`` (training, band remapping), ``downstream``
(cloud curtain, masks, scene labels), ``curtain`` (the curtain target) and ``commands`` (the CLI verbs); the
phantom and its study are in :mod:`domainfm.studies.remote_sensing`. Walkthrough:
``docs/remote_sensing.md``.
"""
