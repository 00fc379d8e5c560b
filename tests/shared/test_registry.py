import pytest

from domainfm.shared.errors import DomainfmError
from domainfm.shared.registry import Registry, RegistryError


def test_duplicate_key_is_an_error():
    registry: Registry[int] = Registry("thing")
    registry.add("a", 1)
    with pytest.raises(RegistryError, match="'a' is already registered"):
        registry.add("a", 2)
    assert registry.get("a") == 1


def test_unknown_key_suggests_close_names():
    registry: Registry[int] = Registry("backbone")

    @registry.register("vit_small")
    def _unused() -> None: ...

    with pytest.raises(RegistryError, match="Did you mean 'vit_small'") as info:
        registry.get("vit_smal")
    assert isinstance(info.value, DomainfmError)
    assert "vit_small" in registry and len(registry) == 1 and list(registry) == ["vit_small"]
