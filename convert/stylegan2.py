"""Converts a StyleGAN2 generator (NVIDIA .pkl or rosinality .pt) into a jaxdissect generator folder.

    python convert/stylegan2.py --src network-snapshot-025000.pkl --dst weights/ffhq
    python convert/stylegan2.py --src 550000.pt --dst weights/church [--truncation_psi=0.7] [--noise=random]

NVIDIA stylegan2-ada-pytorch pickles are read without running the code they
embed, and only their G_ema network; rosinality checkpoints may be
convert_weight.py's {g_ema, latent_avg} or train.py's training checkpoints.
The folder records the truncation psi and noise mode the model runs with;
it loads with `jaxdissect.models.load.load_generator` or `--generator=DST`.
"""
import argparse
import sys

from jaxdissect.errors import UserError
from jaxdissect.models.stylegan2 import NOISE_MODES
from jaxdissect.models.stylegan2_convert import convert


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", required=True, help="the .pkl (NVIDIA) or .pt (rosinality) file")
    parser.add_argument("--dst", required=True, help="the model folder to create (must not exist)")
    parser.add_argument("--truncation_psi", type=float, default=1.0,
                        help="w = w_avg + psi (w - w_avg) with the stored w_avg; 1 = no truncation")
    parser.add_argument("--noise", choices=NOISE_MODES, default="random",
                        help="random: per-sample noise drawn from the latent's own key; "
                             "const: the noise maps stored with the weights; none: no noise")
    args = parser.parse_args(argv)
    try:
        meta = convert(args.src, args.dst, args.truncation_psi, args.noise)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    res = meta["resolution"]
    print(f"wrote {args.dst}: StyleGAN2 ({meta['source']['format']}) {res}x{res}, channels {meta['channels']}, "
          f"conv_clamp {meta['conv_clamp']}, w_avg {meta['source']['w_avg']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
