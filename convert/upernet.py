"""Converts a UPerNet segmenter (encoder + decoder `.pth`) into a jaxdissect model folder.

    python convert/upernet.py --variant upp --encoder encoder_epoch_40.pth \
        --decoder decoder_epoch_40.pth --labels labels.json --dst weights/upp
    python convert/upernet.py --variant ade20k --encoder encoder_epoch_30.pth \
        --decoder decoder_epoch_30.pth [--labels object150_info.csv] --dst weights/ade20k

upp needs its labels.json; ade20k labels are optional (a JSON list of names,
a JSON {"names", "categories"}, or a CSV with a `Name` column). Details in
`jaxdissect.segmentation.upernet_convert`. The result loads with
`--segmenter=DST`.
"""
import argparse
import sys

from jaxdissect.errors import UserError
from jaxdissect.segmentation.upernet import VARIANTS
from jaxdissect.segmentation.upernet_convert import convert


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", required=True, help="the encoder .pth state dict")
    parser.add_argument("--decoder", required=True, help="the decoder .pth state dict")
    parser.add_argument("--variant", required=True, choices=VARIANTS,
                        help="upp (unified perceptual parsing) or ade20k")
    parser.add_argument("--labels", help="labels.json (required for upp)")
    parser.add_argument("--dst", required=True, help="the model folder to create (must not exist)")
    args = parser.parse_args(argv)
    try:
        meta = convert(args.encoder, args.decoder, args.dst, args.variant, args.labels)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    config = meta["config"]
    heads = ("object {n_object}, material {n_material}, scene {n_scene}, parts {part_sizes}"
             if config["variant"] == "upp" else "{n_class} classes").format(**config)
    print(f"wrote {args.dst}: {config['variant']} UPerNet, ResNet depths {config['depths']}, "
          f"{heads}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
