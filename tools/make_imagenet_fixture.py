"""Build a small ImageNet-layout tree of real photos (see sslpipe.fixtures.imagenet).

    python tools/make_imagenet_fixture.py ROOT [--layout classic|kaggle|sorted] [--classes N]
        [--train-per-class N] [--val-per-class N] [--seed S] [--no-quirks]
"""

import argparse
import os
import sys

# Run from a checkout without installing: make the repository's sslpipe importable.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sslpipe.errors import SslpipeError  # noqa: E402
from sslpipe.fixtures.imagenet import LAYOUTS, build_imagenet_fixture  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="new or empty folder to build the tree in")
    parser.add_argument("--layout", choices=LAYOUTS, default="classic")
    parser.add_argument("--classes", type=int, default=5, help="number of classes (default 5)")
    parser.add_argument("--train-per-class", type=int, default=8)
    parser.add_argument("--val-per-class", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-quirks", action="store_true", help="leave out the broken and odd files")
    args = parser.parse_args(argv)
    try:
        fixture = build_imagenet_fixture(
            args.root, layout=args.layout, num_classes=args.classes, train_per_class=args.train_per_class,
            val_per_class=args.val_per_class, seed=args.seed, quirks=not args.no_quirks, progress=True)
    except SslpipeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    files = fixture["files"]
    sizes = [os.path.getsize(os.path.join(args.root, f["path"])) for f in files]
    jpegs = [size for f, size in zip(files, sizes) if f["quirk"] is None]
    print(f"Wrote a {args.layout!r} ImageNet fixture to {args.root}: {len(fixture['classes'])} classes, "
          f"{sum(f['split'] == 'train' for f in files)} train and {sum(f['split'] == 'val' for f in files)} "
          f"val files ({sum(f['quirk'] is not None for f in files)} of them quirks), "
          f"{sum(sizes) / 1e6:.1f} MB in all, mean JPEG {sum(jpegs) / len(jpegs) / 1e3:.0f} KB.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
