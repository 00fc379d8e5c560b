"""Radiology: chest X-ray + report contrastive pretraining (ConVIRT).

Zhang et al., "Contrastive Learning of Medical Visual Representations from Paired Images and Text",
MLHC 2022 (arXiv 2010.00747). Readers, ConVIRT, retrieval and probes arrive with the radiology issue.
"""
