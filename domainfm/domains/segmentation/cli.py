"""Commands of this domain's CLI group: verb -> "module:function" (imported only when run).

Keep this module free of heavy imports: ``domainfm --help`` reads it.
"""

COMMANDS: dict[str, str] = {
    verb: f"domainfm.domains.segmentation.commands:{function}"
    for verb, function in {
        "phantom": "phantom",
        "ingest": "ingest",
        "train-vae": "train_vae",
        "train": "train",
        "eval": "evaluate",
        "compare": "compare",
    }.items()
}
