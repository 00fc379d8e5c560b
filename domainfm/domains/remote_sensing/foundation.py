"""Remote-sensing foundation encoders users hold: SatVision-TOA, as ``domainfm models`` converts it.

SatVision-TOA (NASA GSFC, arXiv 2411.17000; code ``nasa-nccs-hpda/pytorch-caney``) is a SwinV2 (Liu et al.,
arXiv 2111.09883) pretrained with SimMIM on 128 x 128 chips of 14 MODIS L1B top-of-atmosphere bands. Its
preprocessing is a per-band linear scaling to [0, 1], not a standardisation with statistics: reflective
bands (reflectance in percent) are multiplied by 0.01, emissive bands (brightness temperature in K) are
min-max scaled with the dataset's global per-band minimum and maximum; nothing is clipped. As an
:class:`InputTransform` on physical values: ``mean`` = the band's minimum (0 for reflectance) and
``std`` = maximum - minimum (100 for reflectance), which reproduces the release's scaling exactly
(the table is :data:`~domainfm.domains.remote_sensing.bands.SATVISION_BANDS`, the same one ingest uses).
"""

from __future__ import annotations

from domainfm.domains.remote_sensing.bands import SATVISION_BANDS, Band
from domainfm.shared.foundation.catalogue import FoundationModel
from domainfm.shared.model.transform import InputTransform

VERBS = ("remote-sensing pretrain", "remote-sensing train")
ORDER_NOTE = (
    "Band order as pytorch-caney's docs/static/modis_toa_bands.png and transforms/modis_toa_scale.py "
    "(reflective indices 0-4 and 6, emissive 5 and 7-13). rs-embed lists 1,2,3,26,6,20,7,27,28,29,31,32,33,34 "
    "(bands 20 and 34 instead of 21 and 30); domainfm follows pytorch-caney's table."
)


def band_record(band: Band) -> dict[str, object]:
    """One band as the record (and a MODIS store's channel table) describes it."""
    return {
        "name": band.name,
        "band": band.number,
        "wavelength_um": band.wavelength_um,
        "quantity": band.quantity,
        "unit": "%" if band.quantity == "reflectance" else "K",
        "scaling": [band.low, band.high],
    }


def satvision_transform(size: int = 128) -> InputTransform:
    """SatVision-TOA's scaling of physical band values (reflectance %, brightness temperature K) to [0, 1]."""
    return InputTransform(
        channels=[band.name for band in SATVISION_BANDS],
        size=[size, size],
        geometry="exact",
        scale=1.0,
        mean=[band.low for band in SATVISION_BANDS],
        std=[band.high - band.low for band in SATVISION_BANDS],
        input_range=None,
        details={
            "bands": [band.name for band in SATVISION_BANDS],
            "wavelengths_um": [band.wavelength_um for band in SATVISION_BANDS],
            "quantity": [band.quantity for band in SATVISION_BANDS],
            "min": [band.low for band in SATVISION_BANDS],
            "max": [band.high for band in SATVISION_BANDS],
            "band_table": [band_record(band) for band in SATVISION_BANDS],
            "units": "MODIS L1B TOA: reflectance in percent, brightness temperature in K; (x - min) / (max - min), "
            "not clipped (SatVision-TOA's scaling)",
            "order_note": ORDER_NOTE,
        },
    )


FOUNDATION_MODELS: tuple[FoundationModel, ...] = (
    FoundationModel(
        name="satvision_toa_giant",
        title="SatVision-TOA giant (SwinV2, 14 MODIS TOA bands, NASA GSFC)",
        backbone="satvision_toa_giant",
        layout="satvision_deepspeed",
        transform=satvision_transform(),
        domain="remote_sensing",
        paper="SatVision-TOA: A Geospatial Foundation Model for Coarse-Resolution All-Sky Remote Sensing Imagery, "
        "NASA GSFC, arXiv 2411.17000 (2024)",
        licence="Apache-2.0",
        source="Hugging Face nasa-cisto-data-science-group/satvision-toa-giant-patch8-window8-128: "
        "mp_rank_00_model_states.pt (DeepSpeed, bf16) and its pytorch-caney YAML config (give it as --config)",
        verbs=VERBS,
        notes="'patch8' in the name is SimMIM's mask patch; the model's patch is 4. The converted file keeps "
        "the SimMIM mask token and decoder, so `remote-sensing pretrain --init FILE` continues pretraining; "
        "`remote-sensing train --checkpoint` takes what that writes (curtain, segment, multilabel).",
    ),
)
