"""Commands of this domain's CLI group: verb -> "module:function" (imported only when run).

Keep this module free of heavy imports: ``domainfm --help`` reads it.
"""

_LIBRARY = "domainfm.domains.segmentation.commands"
_STUDIES = "domainfm.studies.segmentation.commands"  # phantom data and studies

COMMANDS: dict[str, str] = {
    "phantom": f"{_STUDIES}:phantom",
    "ingest": f"{_LIBRARY}:ingest",
    "train-vae": f"{_LIBRARY}:train_vae",
    "train": f"{_LIBRARY}:train",
    "eval": f"{_LIBRARY}:evaluate",
    "predict": "domainfm.domains.segmentation.predict:predict",
    "compare": f"{_STUDIES}:compare",
}
