"""Per-class IoU and mIoU of the toy segmenter on held-out toy-world renders.

    python bench/toy_metrics.py --segmenter=runs/toy_seg/segmenter [--n=2000]
    python bench/toy_metrics.py --workdir=runs/toy_seg   # latest checkpoint of a train_segmenter run

The renders come from the evaluation key stream (`jaxdissect.toyworld.evaluate`),
never used in training. `--workdir` assumes the run used train_segmenter's
default architecture (SegmenterTrainConfig's defaults). The issue's bar is
mIoU >= 0.90 over the classes 1..10 on 2,000 renders.
"""
import argparse
import time

from jaxdissect.segmentation.segmenter import Segmenter
from jaxdissect.toyworld import evaluate, world
from jaxdissect.training import segmenter as seg_train

BAR = 0.90


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--segmenter", help="exported segmenter model folder")
    source.add_argument("--workdir", help="train_segmenter workdir: evaluate its latest checkpoint")
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=evaluate.EVAL_SEED)
    parser.add_argument("--batch_size", type=int, default=100)
    args = parser.parse_args()

    if args.segmenter:
        segmenter, params = Segmenter.from_model_folder(args.segmenter)
        what = args.segmenter
    else:
        segmenter, state = seg_train.restore_latest(seg_train.SegmenterTrainConfig(), args.workdir,
                                                    world.label_meta())
        params = state["variables"]
        what = f"{args.workdir} checkpoint at step {int(state['step'])}"
    started = time.time()
    result = evaluate.segmenter_miou(segmenter, params, args.seed, args.n, args.batch_size)
    print(f"{what}: {args.n} renders (eval seed {args.seed}), {time.time() - started:.0f} s")
    for name, iou in result["iou"].items():
        print(f"  {name:10s} IoU {iou:.4f}")
    verdict = "meets" if result["miou"] >= BAR else "below"
    print(f"mIoU {result['miou']:.4f} ({verdict} the {BAR:.2f} bar)")


if __name__ == "__main__":
    main()
