"""``python -m norm_ext explain --shape 8,1024,768 --norm layer [--layers 12] [--plot cube.png]``."""

import argparse
import sys

from .explain import EXPLAIN_NORMS, explain, plot_cube


def _shape(text: str):
    try:
        return tuple(int(s) for s in text.replace("x", ",").split(",") if s.strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"--shape must be comma-separated integers, got {text!r}") from e


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m norm_ext")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("explain", help="what a norm reduces, computes and depends on, for a given shape")
    p.add_argument("--shape", type=_shape, required=True, help="input shape, e.g. 8,1024,768 or 32,64,56,56")
    p.add_argument("--norm", choices=EXPLAIN_NORMS, required=True)
    p.add_argument("--groups", type=int, help="group norm: number of groups (default gcd(32, C))")
    p.add_argument("--layers", type=int, help="number of layers, to count statistics per sequence in a model")
    p.add_argument("--norms-per-layer", type=int, default=2, help="norms per layer (default 2, a transformer block)")
    p.add_argument("--layout", choices=("auto", "channels_first", "channels_last"), default="auto")
    p.add_argument("--plot", nargs="?", const="norm_cube.png", help="write the N x C x (H*W) cube to this PNG")
    args = parser.parse_args(argv)
    try:
        e = explain(args.shape, args.norm, args.groups, args.layers, args.norms_per_layer, args.layout)
    except ValueError as err:
        parser.error(str(err))
    print(e.render())
    if args.plot:
        try:
            print(f"  cube drawn to {plot_cube(e, args.plot)}")
        except ImportError:
            print("  --plot needs matplotlib, which is not installed", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
