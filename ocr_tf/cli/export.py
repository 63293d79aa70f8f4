"""`python -m ocr_tf.export`: a Segmenter as a TF Serving SavedModel or a TFLite file."""

import argparse
import os
import sys

from ocr_tf.cli.common import add_model_arguments, command, fail, positive_int, size, require_tensorflow_backend

FORMATS = ("saved_model", "tflite", "onnx")
QUANTIZE_MODES = ("none", "fp16", "dynamic", "int8", "int8_full")  # ocr_tf.export.QUANTIZE_MODES


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m ocr_tf.export",
        description="Export a segmenter as a TF Serving SavedModel, a TFLite model or an ONNX model (normalisation, "
        "resize to the input size and argmax inside; class names and palette from the model); --verify checks "
        "the export against the Keras model.",
    )
    add_model_arguments(parser, weights_help="a .keras model or a preset folder; or a .weights.h5 with --model "
                        "(omitted: --model with random weights)")
    parser.add_argument("--format", choices=FORMATS, required=True)
    parser.add_argument("--output", help="SavedModel: base dir (default saved_models/<model name>); TFLite/ONNX: file path")
    parser.add_argument("--version", type=int, help="SavedModel version (default: next integer)")
    parser.add_argument("--with-probabilities", action="store_true", help="SavedModel: also output softmax probabilities")
    parser.add_argument("--input-size", type=size,
                        help="TFLite: fixed HEIGHTxWIDTH (default 512x1024); ONNX: fix it (default: any size)")
    parser.add_argument("--quantize", choices=QUANTIZE_MODES, default="none", help="TFLite quantization")
    parser.add_argument("--calibration", help="TFLite int8: glob of TFRecords (default: the demo training set for demo models)")
    parser.add_argument("--num-calibration", type=positive_int, default=100, help="int8 calibration images (default 100)")
    parser.add_argument(
        "--align-corners", action=argparse.BooleanOptionalAction, default=None,
        help="resize the logits with align_corners (default: as the model was trained)",
    )
    parser.add_argument("--with-logits", action="store_true", help="ONNX: also output the logits (feature resolution)")
    parser.add_argument(
        "--verify", action="store_true",
        help="run the export and the Keras model on --data images, write a report (<export>.verify.json + "
        ".model_card.md; SavedModel: assets.extra/) and exit 1 if labels agree below --min-agreement",
    )
    parser.add_argument("--data", help="--verify: glob of TFRecords (default: demo validation set, or demo scenes in memory)")
    parser.add_argument("--num-images", type=positive_int, default=16, help="--verify: number of images (default 16)")
    parser.add_argument(
        "--min-agreement", type=agreement,
        help="--verify: required label agreement, a fraction (0.999) or percent (99.9%%); "
        "default 0.999, 0.98 for int8 TFLite",
    )
    return parser


def agreement(text):
    """'0.999' -> 0.999, '99.9%' -> 0.999; anything outside (0, 1] is refused (argparse type)."""
    try:
        value = float(text[:-1]) / 100 if str(text).endswith("%") else float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1] or a percent like 99.9%, got {text!r}")
    return value


def verify(segmenter, path, args):
    """--verify: the fidelity report; returns 1 (and prints one line) if the export fails it."""
    from ocr_tf.export_verify import VerificationFailed, verify_export

    try:
        report = verify_export(
            segmenter, path, data=args.data, num_images=args.num_images, min_agreement=args.min_agreement,
            quantize=args.quantize if args.format == "tflite" else None, class_names=segmenter.class_names,
            align_corners=segmenter.align_corners if args.align_corners is None else args.align_corners,
        )
    except VerificationFailed as err:
        print(f"error: verification FAILED: {err}", file=sys.stderr)
        return err.exit_code
    print(f"verification PASSED: labels agree on {100 * report['agreement']:.3f}% of pixels "
          f"({report['data']['num_images']} images); report: {report['report_paths'][0]}", file=sys.stderr)
    return 0


def model_stem(segmenter):
    """The name exports are called by: the registry name, else the network's name."""
    return segmenter.model_name or segmenter.network.name


@command(build_parser)
def main(args):
    require_tensorflow_backend("export")
    if args.version is not None and args.format != "saved_model":
        fail("--version applies to --format saved_model only.")
    if args.weights is None:
        if not args.model:
            fail("give --weights (a .keras model or preset) or --model (random weights).")
        print("warning: no --weights given, exporting randomly initialised weights", file=sys.stderr)
    from ocr_tf.cli.common import load_segmenter_from_args
    from ocr_tf.export import export_saved_model, export_tflite

    if args.weights is None and not args.dataset:
        args.dataset = "demo"
    segmenter = load_segmenter_from_args(args)
    name = model_stem(segmenter)
    if args.format == "saved_model":
        target = args.output or os.path.join("saved_models", name)
        try:
            path = export_saved_model(
                segmenter, target, version=args.version, with_probabilities=args.with_probabilities,
                align_corners=args.align_corners,
            )
        except OSError as e:
            fail(f"cannot write the SavedModel into {target}: {e.strerror or e}.")
    elif args.format == "onnx":
        from ocr_tf.onnx_export import export_onnx

        target = args.output or os.path.join("saved_models", "onnx", f"{name}.onnx")
        try:
            path = export_onnx(segmenter, target, with_logits=args.with_logits, align_corners=args.align_corners,
                               class_names=segmenter.class_names, input_size=args.input_size)
        except OSError as e:
            fail(f"cannot write {target}: {e.strerror or e}.")
    else:
        calibration = args.calibration
        if calibration is None and args.quantize.startswith("int8"):
            if segmenter.dataset != "demo":
                fail(f"--quantize {args.quantize} needs --calibration GLOB (TFRecords of the model's dataset).")
            from ocr_tf.data.datasets.demo import prepare_demo

            calibration = prepare_demo()["train"]
        h, w = args.input_size or (512, 1024)
        target = args.output or os.path.join("saved_models", "tflite", f"{name}_{h}x{w}_{args.quantize}.tflite")
        try:
            path = export_tflite(
                segmenter, target, input_size=(h, w), quantize=args.quantize, calibration_data=calibration,
                num_calibration=args.num_calibration, align_corners=args.align_corners,
            )
        except OSError as e:
            fail(f"cannot write {target}: {e.strerror or e}.")
    print(path)
    if args.verify:
        return verify(segmenter, path, args)  # the export stays; its report says FAILED
    return 0
