"""Write JSONL rows for the Oxford-IIIT Pet layout (breed, species, head box, trimap) for
examples/pets_dense.yaml (issue 29; docs/vision.md).

    python scripts/make_pets.py ../shared/data/pets data/pets [--dev 50] [--seed 0]

Reads annotations/trainval.txt and test.txt (``Image CLASS-ID SPECIES BREED-ID``; images in no
list, such as Abyssinian_34 and _82 of the sample, are left out). Writes, under the output folder,
with image, trimap and XML paths relative to it (the files stay where they are):

- ``train.jsonl``, ``dev.jsonl`` (``--dev`` images drawn from trainval, seeded), ``test.jsonl``:
  ``{"image", "trimap", "breed", "species"}`` (breed: the file name's prefix; species: cat when
  it is capitalised, else dog, as the Pets README says);
- ``head_train.jsonl``, ``head_dev.jsonl``: ``{"image", "head"}`` for the images that have a head
  box file (annotations/xmls: trainval only; four trainval images have none and are left out;
  Bengal_105 has two boxes).
"""

from __future__ import annotations

import argparse
import json
import os
import random
from pathlib import Path


def rows(root: Path, out: Path, names: list[str]) -> tuple[list[dict], list[dict]]:
    rel = lambda p: os.path.relpath(p, out)  # noqa: E731
    shapes, heads = [], []
    for name in names:
        image = root / "images" / f"{name}.jpg"
        breed = name.rsplit("_", 1)[0]
        shapes.append({"image": rel(image), "trimap": rel(root / "annotations" / "trimaps" / f"{name}.png"),
                       "breed": breed, "species": "cat" if breed[0].isupper() else "dog"})
        xml = root / "annotations" / "xmls" / f"{name}.xml"
        if xml.is_file():
            heads.append({"image": rel(image), "head": rel(xml)})
    return shapes, heads


def listed(path: Path) -> list[str]:
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pets", help="the Oxford-IIIT Pet folder (images/, annotations/)")
    parser.add_argument("out", help="folder for the JSONL files (outside the repository)")
    parser.add_argument("--dev", type=int, default=50, help="trainval images held out for dev")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    root, out = Path(args.pets).resolve(), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    trainval = listed(root / "annotations" / "trainval.txt")
    random.Random(args.seed).shuffle(trainval)
    splits = {"train": sorted(trainval[args.dev:]), "dev": sorted(trainval[:args.dev]),
              "test": listed(root / "annotations" / "test.txt")}
    for split, names in splits.items():
        shapes, heads = rows(root, out.resolve(), names)
        (out / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in shapes))
        if heads:
            (out / f"head_{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in heads))
        print(f"{split}: {len(shapes)} images, {len(heads)} with head boxes")


if __name__ == "__main__":
    main()
