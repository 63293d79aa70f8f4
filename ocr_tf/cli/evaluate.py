"""`python -m ocr_tf.evaluate`: mIoU of a model on TFRecords, or of folders of label PNGs."""

import argparse

from ocr_tf.cli.common import add_inference_arguments, add_model_arguments, command, fail, inference_options, positive_int, require_tensorflow_backend

LABEL_FORMATS = ("raw", "trainids")  # ocr_tf.evaluate.LABEL_FORMATS


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m ocr_tf.evaluate",
        description="mIoU, per-class IoU, pixel accuracy and the confusion matrix of a model on TFRecords, "
        "or of folders of label PNGs. Absent classes (no ground truth, no prediction) are NaN and "
        "left out of the mean, as cityscapesscripts does.",
    )
    parser.add_argument("--config", help="training config YAML: model name/overrides, dataset, validation data")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, e.g. data.val=...")
    add_model_arguments(parser)
    parser.add_argument("--data", help="glob of validation TFRecords")
    parser.add_argument("--limit", type=positive_int, help="evaluate only the first N images")
    parser.add_argument("--predictions", help="folder of predicted label PNGs to score (with --ground-truth and --dataset)")
    parser.add_argument("--ground-truth", help="folder of ground-truth label PNGs (the dataset's own format)")
    parser.add_argument(
        "--label-format", choices=LABEL_FORMATS, default="raw",
        help="format of --predictions read and --write-predictions written: the dataset's own ids "
        "(raw, default; Cityscapes labelIds) or train ids",
    )
    parser.add_argument("--write-predictions", metavar="DIR", help="also write the model's predictions as label PNGs")
    parser.add_argument("--output", default="eval", help="folder for metrics.json, metrics.md, confusion_matrix.npy (default ./eval)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_inference_arguments(parser)
    return parser


def _from_config(args):
    """Model name/overrides and validation data from --config where the command line left them out."""
    from ocr_tf.config import load_config

    config = load_config(args.config, args.set)
    args.data = args.data or config.data.val
    args.dataset = args.dataset or config.data.dataset  # the model's own classes when they agree
    if args.weights and (args.weights.endswith(".keras") or not args.weights.endswith(".h5")):
        return  # a .keras file or preset carries its own architecture
    args.model = args.model or config.model.name
    if not args.model_arg:
        args.model_arg = [f"{k}={v}" for k, v in config.model.overrides.items() if k != "weights"]


@command(build_parser)
def main(args):
    require_tensorflow_backend("evaluate")
    from ocr_tf.evaluate import evaluate_model, markdown_table, score_folders, write_report

    if args.predictions or args.ground_truth:
        if not (args.predictions and args.ground_truth):
            fail("--predictions and --ground-truth go together.")
        if not args.dataset:
            fail("scoring folders needs --dataset (how to read the ground truth's label ids).")
        from ocr_tf.loading import dataset_info

        info = dataset_info(args.dataset)
        cm = score_folders(args.predictions, args.ground_truth, args.dataset, info.num_classes, args.label_format,
                           not args.quiet)
        extra = {"predictions": args.predictions, "ground_truth": args.ground_truth}
    else:
        if args.config:
            _from_config(args)
        if not args.weights:
            fail("--weights is required to evaluate a model (a .keras file, a preset, or .weights.h5 with --model).")
        if not args.data:
            fail("--data GLOB (validation TFRecords) or --config with data.val is required to evaluate a model.")
        options = inference_options(args)
        from ocr_tf.cli.common import load_segmenter_from_args

        segmenter = load_segmenter_from_args(args)
        info = segmenter.dataset_info()
        options["flip_pairs"] = info.flip_pairs
        cm = evaluate_model(
            segmenter, args.data, dataset=segmenter.dataset or info.name, num_classes=info.num_classes,
            ignore_label=info.ignore_label, inference=options, write_predictions=args.write_predictions,
            label_format=args.label_format, limit=args.limit, progress=not args.quiet,
        )
        extra = {"weights": args.weights, "data": args.data,
                 "inference": {**options, "flip_pairs": [list(p) for p in options["flip_pairs"]],
                               "align_corners": segmenter.align_corners}}
    scores = write_report(cm, info.class_names, args.output, {"dataset": info.name, **extra})
    print(markdown_table(scores, info.class_names))
    print(f"mIoU {100 * scores['miou']:.2f}% over {scores['valid_classes']} classes; report in {args.output}/")
    return 0
