"""Suite-wide markers: ``gpu`` skips without CUDA.

``realdata`` marks tests on real files that registry packages ship (the ``dev`` extra: pydicom-data,
torchxrayvision, bigearthnet-common; scikit-image's bundled micrographs), read offline; they run wherever the
dev extra is installed, CI included, and are never skipped (select them with ``-m realdata``).
"""

import pytest
import torch


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    no_cuda = pytest.mark.skip(reason="needs a CUDA device; none is visible")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(no_cuda)


@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.manual_seed(0)
