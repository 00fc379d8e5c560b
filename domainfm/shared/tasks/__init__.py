"""One shared task layer for every domain: what each downstream task needs, written once.

* :mod:`.metrics`: macro AUROC (binary, multi-label, multi-class one-vs-rest) on torchmetrics, with one
  rule for degenerate labels: a label or class with only one value in the targets is left out of the mean,
  and the mean of nothing is NaN.
* :mod:`.subsets`: :func:`~.subsets.label_fraction`, the seeded choice of the labelled training examples
  (plain, or stratified per class with at least one example of each).
* :mod:`.schedule`: AdamW with linear warm-up then cosine decay, stepped per epoch (Lightning's
  ``configure_optimizers`` format).
* :mod:`.probes`: linear probes on frozen features (softmax for one label of many classes, logistic for
  several binary labels) sharing one training loop, and the cosine kNN probe.
* :mod:`.checkpoint`: the one safetensors checkpoint format: tensors plus JSON metadata entries, written atomically
  (a sibling ``FILE.partial-<pid>-<hex>`` unique to the run, renamed into place) and read back with errors that name
  the file.
* :mod:`.finetune`: the supervised fine-tuning loop of the domains' ``train`` commands (an encoder in any
  PEFT state plus a head, AdamW over a ``TileStream``) and prediction over chosen tiles.

Submodules are imported where used (``from domainfm.shared.tasks.metrics import ...``) so that importing
one does not pull in the others' dependencies.
"""
