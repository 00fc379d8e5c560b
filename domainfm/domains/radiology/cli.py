"""Commands of this domain's CLI group: verb -> "module:function" (imported only when run).

Keep this module free of heavy imports: ``domainfm --help`` reads it.
"""

COMMANDS: dict[str, str] = {
    verb: f"domainfm.domains.radiology.commands:{function}"
    for verb, function in {
        "phantom": "phantom",
        "ingest": "ingest",
        "pretrain": "pretrain",
        "train": "train",
        "eval": "evaluate",
        "study": "study",
    }.items()
}
