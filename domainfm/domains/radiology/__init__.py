"""Radiology: contrastive image-text pretraining on radiographs and their reports (ConVIRT).

Zhang, Jiang, Miura, Manning, Langlotz, "Contrastive Learning of Medical Visual Representations from Paired
Images and Text", MLHC 2022 (arXiv 2010.00747). ``images`` (DICOM display transform), ``reports``
(CSV/JSONL/Open-i XML), ``data`` (pairing and ingest into the tile store), ``text`` (offline tokenizer, BERT
tower), ``convirt`` (model, loss, augmentation), ``pretrain``, ``evaluate`` (retrieval, probes), and
``commands`` (the CLI verbs); the phantom and its study are in :mod:`domainfm.studies.radiology`.
Walkthrough: ``docs/radiology.md``.
"""
