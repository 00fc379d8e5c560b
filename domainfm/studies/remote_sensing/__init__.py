"""Remote-sensing studies: phantom MODIS granules, the SatVision-TOA phantom study, quickstart section."""
