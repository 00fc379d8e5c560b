"""Commands of this domain's CLI group: verb -> "module:function" (imported only when run).

Keep this module free of heavy imports: ``domainfm --help`` reads it.
"""

COMMANDS: dict[str, str] = {
    verb: f"domainfm.domains.pathology.commands:{function}"
    for verb, function in {
        "phantom": "phantom",
        "tile": "tile",
        "pretrain": "pretrain",
        "embed": "embed",
        "probe": "probe",
        "train": "train",
        "mil": "mil",
        "study": "study",
    }.items()
}
