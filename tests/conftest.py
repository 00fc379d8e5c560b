"""Suite-wide markers: ``gpu`` skips without CUDA, ``realdata`` without DOMAINFM_REALDATA pointing at data."""

import os

import pytest
import torch


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    no_cuda = pytest.mark.skip(reason="needs a CUDA device; none is visible")
    no_data = pytest.mark.skip(reason="needs real data: set DOMAINFM_REALDATA to its folder")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(no_cuda)
        if "realdata" in item.keywords and not os.environ.get("DOMAINFM_REALDATA"):
            item.add_marker(no_data)


@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.manual_seed(0)
