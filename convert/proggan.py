"""Converts a GAN Dissection Progressive GAN `.pth` into a jaxdissect generator folder.

    python convert/proggan.py --src churchoutdoor_lsun.pth --dst weights/church

Accepts both torch file formats (zip and legacy), modern `layerN` or old
`features.N` key names, and a `{"state_dict": ...}` wrapper. The result
loads with `jaxdissect.models.load.load_generator` or `--generator=DST`.
"""
import argparse
import sys

from jaxdissect.errors import UserError
from jaxdissect.models.proggan_convert import convert


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", required=True, help="the ProGAN .pth file")
    parser.add_argument("--dst", required=True, help="the model folder to create (must not exist)")
    args = parser.parse_args(argv)
    try:
        meta = convert(args.src, args.dst)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.dst}: ProGAN sizes {meta['sizes']}, {meta['resolution']}x{meta['resolution']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
