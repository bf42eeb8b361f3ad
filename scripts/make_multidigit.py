"""Build a multi-digit detection set from mnist.npz (issue 29; docs/vision.md).

    python scripts/make_multidigit.py ../shared/data/mnist/mnist.npz data/multidigit \
        --train 10000 --dev 1000 --test 1000

1 to 4 MNIST digits per 64 x 64 canvas, at random sides (16..36 px) and positions (boxes
overlapping by IoU <= 0.2), seeded; boxes are the digits' tight ink boxes, classes the digits.
Writes <split>/<n>.png, <split>.json (COCO: data.format coco) and <split>.jsonl (the same boxes
inline, plus the digit count as a label) for train, dev and test under the output folder. The
construction is in polytask.data.multidigit. Write the output outside the repository.
"""

from __future__ import annotations

import argparse

from polytask.data.multidigit import build


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mnist", help="mnist.npz (x_train, y_train, x_test, y_test)")
    parser.add_argument("out", help="folder for train/, dev/, test/ and their .json / .jsonl files")
    parser.add_argument("--train", type=int, default=10000)
    parser.add_argument("--dev", type=int, default=1000)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--canvas", type=int, default=64, help="canvas side in pixels")
    parser.add_argument("--sides", type=int, nargs=2, default=(16, 36), metavar=("MIN", "MAX"),
                        help="range of a digit's side in pixels (from 28)")
    args = parser.parse_args()
    if not args.sides[0] <= args.sides[1] <= args.canvas:
        parser.error(f"--sides {args.sides[0]} {args.sides[1]}: need MIN <= MAX <= --canvas ({args.canvas})")
    sizes = build(args.mnist, args.out, args.train, args.dev, args.test, args.seed, args.canvas, tuple(args.sides))
    print(f"wrote {', '.join(f'{k} ({v} images)' for k, v in sizes.items())} to {args.out}")


if __name__ == "__main__":
    main()
