"""examples/pets_dense.yaml on the real Oxford-IIIT Pet sample (skipped without ../shared/data):
scripts/make_pets.py's rows pass check with the sample's quirks (an RGBA PNG named .jpg, converted;
four trainval images without a head box file, left out of the head task; Bengal_105's two heads),
and the VOC corners are read as continuous pixel corners."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from polytask.config import from_dict
from polytask.dataset import prepare

REPO = Path(__file__).resolve().parents[1]
PETS = REPO.parent / "shared" / "data" / "pets"

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"),
              pytest.mark.skipif(not PETS.is_dir(), reason="../shared/data/pets is absent")]


def test_the_pets_example_passes_check_with_its_quirks(tmp_path):
    subprocess.run([sys.executable, str(REPO / "scripts" / "make_pets.py"), str(PETS), str(tmp_path / "pets")],
                   check=True, capture_output=True)
    cfg = yaml.safe_load((REPO / "examples" / "pets_dense.yaml").read_text())
    cfg["data_dir"] = str(tmp_path / "pets")
    data = prepare(from_dict(cfg))
    head = data["head"].examples
    assert len(head["train"]) + len(head["dev"]) == 296 and "test" not in head
    by_name = {Path(e.fields["image"]).stem: e.fields["boxes"] for split in ("train", "dev") for e in head[split]}
    assert len(by_name["Bengal_105"]) == 2 and "Abyssinian_104" not in by_name
    # its VOC file: xmin 333 ymin 72 xmax 425 ymax 158 (1-based pixels)
    assert by_name["Abyssinian_1"] == [{"box": [332.0, 71.0, 425.0, 158.0], "label": "cat"}]
    trimap = data["trimap"]
    assert trimap.task.labels == ["pet", "background"] and len(trimap.examples["test"]) == 298
    assert any(Path(e.fields["image"]).name == "Abyssinian_5.jpg" for e in trimap.examples["test"])  # RGBA PNG
    assert data["head"].task.labels == ["cat", "dog"]
