"""Commands of this domain's CLI group: verb -> "module:function" (imported only when run).

Keep this module free of heavy imports: ``domainfm --help`` reads it.
"""

_LIBRARY = "domainfm.domains.pathology.commands"
_STUDIES = "domainfm.studies.pathology.commands"  # phantom data and studies

COMMANDS: dict[str, str] = {
    "phantom": f"{_STUDIES}:phantom",
    "tile": f"{_LIBRARY}:tile",
    "pretrain": f"{_LIBRARY}:pretrain",
    "embed": f"{_LIBRARY}:embed",
    "probe": f"{_LIBRARY}:probe",
    "train": f"{_LIBRARY}:train",
    "mil": f"{_LIBRARY}:mil",
    "predict": "domainfm.domains.pathology.predict:predict",
    "study": f"{_STUDIES}:study",
}
