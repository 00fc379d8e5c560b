"""Suite-wide markers: ``gpu`` skips without CUDA.

``realdata`` marks tests on real files that packages from the registry ship (e.g. scikit-image's bundled
micrographs), read offline: they always run, in CI too, and are selected with ``-m realdata``.
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
