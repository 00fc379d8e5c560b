"""Commands of this domain's CLI group: verb -> "module:function" (imported only when run).

Keep this module free of heavy imports: ``domainfm --help`` reads it.
"""

_LIBRARY = "domainfm.domains.remote_sensing.commands"
_STUDIES = "domainfm.studies.remote_sensing.commands"  # phantom data and studies

COMMANDS: dict[str, str] = {
    "phantom": f"{_STUDIES}:phantom",
    "ingest": f"{_LIBRARY}:ingest",
    "pretrain": f"{_LIBRARY}:pretrain",
    "eval": f"{_LIBRARY}:evaluate",
    "train": f"{_LIBRARY}:train",
    "predict": "domainfm.domains.remote_sensing.predict:predict",
    "study": f"{_STUDIES}:study",
}
