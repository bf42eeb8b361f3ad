"""Without timm (the project's torch 2.13.0 CPU venv, where torchvision does not import), a
``timm:`` or ``timm/`` backbone is still claimed by the timm family and loading it raises a
ConfigError that says what to install. Skipped where timm imports (tests/test_timm_backbone.py
runs there)."""

from __future__ import annotations

import pytest

from polytask.backbones.vision import check_reachable, family_of, load_vision, processor_for
from polytask.config import ImageConfig, ModelConfig
from polytask.errors import ConfigError


def timm_imports() -> bool:
    try:
        import timm  # noqa: F401
    except Exception:  # noqa: BLE001 - any failure (no timm, or its torchvision import) means it does not
        return False
    return True


pytestmark = pytest.mark.skipif(timm_imports(), reason="timm imports here: tests/test_timm_backbone.py runs instead")


@pytest.mark.parametrize("name", ["timm:resnet18", "timm/resnet18.a1_in1k", "timm:local-dir:/nowhere"])
def test_a_timm_backbone_without_timm_says_what_to_install(name):
    assert family_of(name)[0] == "timm"  # not passed on to the Hugging Face fallback
    model_cfg = ModelConfig(kind="vision", backbone=name, image=ImageConfig(size=32))
    for load in (load_vision, processor_for, check_reachable):
        with pytest.raises(ConfigError) as err:
            load(model_cfg)
        text = str(err.value)
        assert "timm needs torchvision" in text and "torch 2.13.0" in text, text
        assert "pip install torch==2.14.1 torchvision==0.29.1 timm" in text and "docs/vision.md" in text, text
