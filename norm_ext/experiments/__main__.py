import argparse
import sys

from . import normalization


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m norm_ext.experiments", description=__doc__)
    sub = parser.add_subparsers(dest="experiment", required=True)
    normalization.add_arguments(sub.add_parser("normalization", help=normalization.__doc__.splitlines()[0]))
    args = parser.parse_args(argv)
    return normalization.main(args)


if __name__ == "__main__":
    sys.exit(main())
