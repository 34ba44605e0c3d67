"""The one registry behind methods, datasets and detectors."""

from __future__ import annotations

import pytest

from dva.data.registry import list_datasets
from dva.errors import ConfigError, DataError
from dva.models.methods import list_methods
from dva.opa.detectors import list_detectors
from dva.registry import Registry


def test_unknown_names_list_the_choices_and_duplicates_are_refused():
    registry: Registry[int] = Registry("widget", ConfigError)
    registry.add("a", 1)
    registry.add("b", 2)
    assert registry.get("b") == 2 and registry.names() == ["a", "b"] and "a" in registry
    with pytest.raises(ConfigError, match=r"unknown widget 'c'; choose from a, b"):
        registry.get("c")
    with pytest.raises(ValueError, match="widget 'a' registered twice"):
        registry.add("a", 3)


def test_builtins_are_imported_once_on_first_use():
    loads = []
    registry: Registry[str] = Registry("reader", DataError, builtins=lambda: loads.append(registry.add("x", "X")))
    assert loads == []  # nothing imported until asked
    assert registry.get("x") == "X" and registry.names() == ["x"] and list(registry) == ["x"]
    assert len(loads) == 1
    with pytest.raises(DataError, match="unknown reader 'y'; choose from x"):
        registry.get("y")


def test_the_three_registries_hold_the_built_in_entries():
    assert {"cub", "cub100", "nabirds", "cars", "folder"} <= set(list_datasets())
    assert {"dataset", "saliency", "groundingdino", "owlv2", "boxes"} <= set(list_detectors())
    assert {"frozen", "ica", "dva", "full", "lora", "vpt-deep", "vptsp-g"} <= set(list_methods())
