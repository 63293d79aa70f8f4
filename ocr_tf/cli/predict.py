"""`python -m ocr_tf.predict`: segment images, write label PNGs, colour masks and overlays."""

import argparse
import os

from ocr_tf.cli.common import add_inference_arguments, add_model_arguments, command, fail, inference_options, require_tensorflow_backend


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m ocr_tf.predict",
        description="Segment images with a .keras model, a preset or an exported SavedModel; write label "
        "PNGs, colour masks, overlays and (--regions) the soft object regions.",
    )
    parser.add_argument("inputs", nargs="+", help="image files, folders or globs")
    add_model_arguments(
        parser, weights_required=True,
        weights_help="a .keras model, a preset folder, a SavedModel folder, or a .weights.h5 with --model",
    )
    parser.add_argument("--output", default="predictions", help="output folder (default ./predictions)")
    parser.add_argument("--alpha", type=float, default=0.5, help="overlay opacity of the mask (default 0.5)")
    parser.add_argument("--regions", action="store_true", help="also draw the soft object regions (Keras models only)")
    parser.add_argument("--attention", action="store_true",
                        help="*_mscale_ocr models: also draw each scale's attention (needs --scales with 1.0 and another)")
    parser.add_argument("--max-regions", type=int, default=12, help="at most this many region maps per image (default 12)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_inference_arguments(parser)
    return parser


@command(build_parser)
def main(args):
    require_tensorflow_backend("predict")
    if not 0.0 <= args.alpha <= 1.0:
        fail(f"--alpha must be in [0, 1], got {args.alpha}.")
    options = inference_options(args)
    from ocr_tf.predict import SavedModelPredictor, SegmenterPredictor, is_saved_model, list_inputs, predict_files

    files = list_inputs(args.inputs)
    weights = args.weights
    saved_model = os.path.isdir(weights) and (is_saved_model(weights) or any(
        n.isdigit() for n in os.listdir(weights)))
    if saved_model:
        custom = args.mode != "whole" or args.scales != (1.0,) or args.flip
        if custom or args.regions or args.attention:
            fail("a SavedModel runs as exported: --mode/--scales/--flip/--regions/--attention need a .keras model "
                 "or preset.")
        if args.model or args.model_arg:
            fail("--model/--model-arg do not apply to a SavedModel.")
        predictor = SavedModelPredictor(weights)
        if args.dataset:
            from ocr_tf.loading import dataset_info

            info = dataset_info(args.dataset)
            if predictor.info is not None:
                print(f"using the class names and palette of --dataset {info.name} instead of the export's")
            predictor.info = info
        if predictor.info is None:
            fail(f"{predictor.path} carries no class names (exported before ocr_tf 0.2): give --dataset.")
    else:
        from ocr_tf.cli.common import load_segmenter_from_args

        segmenter = load_segmenter_from_args(args)
        if args.regions and "aux_logits" not in segmenter.network.output:
            fail("--regions needs a model with an 'aux_logits' output.")
        if args.attention:
            from ocr_tf.layers.mscale import is_mscale

            if not is_mscale(segmenter) or len(set(args.scales)) < 2 or 1.0 not in args.scales:
                fail("--attention needs a multi-scale attention model (*_mscale_ocr) and --scales with 1.0 and "
                     "another scale.")
        predictor = SegmenterPredictor(segmenter, options)
    written, skipped = predict_files(
        predictor, files, predictor.info, args.output, alpha=args.alpha, regions=args.regions,
        max_regions=args.max_regions, progress=not args.quiet, attention=args.attention,
    )
    extras = "".join(f", {k}" for k, on in (("regions", args.regions), ("attention", args.attention)) if on)
    print(f"wrote {len(written)} predictions to {args.output}/ (labels, color, overlay{extras})")
    if skipped:
        print(f"skipped {len(skipped)} files that are not images: " + ", ".join(p for p, _ in skipped))
    return 0 if written else 1
