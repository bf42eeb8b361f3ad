"""Build MultiMNIST (Sener & Koltun 2018) from mnist.npz for examples/multimnist.yaml.

    python scripts/make_multimnist.py ../shared/data/mnist/mnist.npz data/multimnist \
        --train 10000 --dev 2000 --test 2000

The construction is in polytask.data.multimnist (two digits overlaid on a 36 x 36 canvas, one
top-left and one bottom-right, each shifted by up to 4 pixels; tasks: the left and the right
digit). Defaults: the full 60,000 / 10,000 / 10,000; the demo uses fewer to train in minutes.
"""

from __future__ import annotations

import argparse

from polytask.data.multimnist import build


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mnist", help="mnist.npz (x_train, y_train, x_test, y_test)")
    parser.add_argument("out", help="folder for train.npz, dev.npz, test.npz")
    parser.add_argument("--train", type=int, default=60000)
    parser.add_argument("--dev", type=int, default=10000)
    parser.add_argument("--test", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sizes = build(args.mnist, args.out, args.train, args.dev, args.test, args.seed)
    print(f"wrote {', '.join(f'{k}.npz ({v})' for k, v in sizes.items())} to {args.out}")


if __name__ == "__main__":
    main()
