"""Commands of this domain's CLI group: verb -> "module:function" (imported only when run).

Keep this module free of heavy imports: ``domainfm --help`` reads it.
"""

_LIBRARY = "domainfm.domains.radiology.commands"
_STUDIES = "domainfm.studies.radiology.commands"  # phantom data and studies

COMMANDS: dict[str, str] = {
    "phantom": f"{_STUDIES}:phantom",
    "ingest": f"{_LIBRARY}:ingest",
    "pretrain": f"{_LIBRARY}:pretrain",
    "train": f"{_LIBRARY}:train",
    "eval": f"{_LIBRARY}:evaluate",
    "predict": "domainfm.domains.radiology.predict:predict",
    "study": f"{_STUDIES}:study",
}
