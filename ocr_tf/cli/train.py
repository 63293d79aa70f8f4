"""`python -m ocr_tf.train`: train, evaluate and export a segmenter as a config says."""

import argparse
import os
import sys

from ocr_tf.cli.common import command, fail

from ocr_tf.train import DEFAULT_CONFIG  # noqa: E402  (the library module imports no TensorFlow at the top)


def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m ocr_tf.train",
        description="Train an OCR segmenter with model.fit. Without arguments: the demo "
        "(configs/demo/default.yaml, a few minutes on a laptop CPU). Rerun the same command to "
        "resume after an interruption.",
    )
    p.add_argument("--config", help=f"YAML config (default: {os.path.relpath(DEFAULT_CONFIG)})")
    p.add_argument("--set", dest="overrides", action="append", nargs="+", default=[], metavar="KEY=VALUE",
                   help="override config values, e.g. --set train.lr=0.02 data.crop_size=[256,512] "
                   "(YAML values; repeatable)")
    p.add_argument("--strategy", choices=("auto", "default", "mirrored", "multi_worker", "tpu"),
                   help="tf.distribute strategy (same as --set train.strategy=...)")
    p.add_argument("--mixed-precision", choices=("float16", "bfloat16"),
                   help="mixed precision compute; logits and loss stay float32")
    p.add_argument("--output-dir", help="run folder for checkpoints, backup and logs (output.dir)")
    p.add_argument("--new-run", action="store_true",
                   help="start over: move an existing run in the run folder (finished or not) to "
                   "<folder>.previous-<time> first. Without it an unfinished run resumes and a finished "
                   "one is reported, not retrained")
    return p


def print_summary(summary, log=print):
    log("")
    log("=" * 72)
    minutes = summary.get("total_seconds", summary["train_seconds"]) / 60
    log(f"Done: {summary['steps']} steps in {minutes:.1f} min.")
    if "eval" in summary:
        ev = summary["eval"]
        log(f"Validation mIoU {100 * ev['miou']:.2f}%  (pixel accuracy {100 * ev['pixel_accuracy']:.2f}%)")
        for name, iou in zip(ev.get("class_names", []), ev["per_class_iou"]):
            log(f"  {name:<20s} IoU {'  n/a' if iou != iou else f'{100 * iou:5.1f}'}")
    if "best" in summary:
        b = summary["best"]
        log(f"Best checkpoint:    {os.path.abspath(summary['checkpoint'])}  (val mIoU {100 * b['val_miou']:.2f}% at step {b['step']})")
    else:
        log(f"Checkpoint:         {os.path.abspath(summary.get('checkpoint'))}")
    if "keras_model" in summary:
        log(f"Model (.keras):     {os.path.abspath(summary['keras_model'])}  (for evaluate / predict / export --weights)")
    log(f"Run folder:         {os.path.abspath(summary['run_dir'])}  (config.yaml, training_log.csv)")
    log(f"TensorBoard:        tensorboard --logdir {os.path.abspath(summary['logs']['tensorboard'])}")
    exports = summary.get("exports", {})
    if not exports:
        log(f"{'Export:':<20s}skipped (output.export_dir is null)")
    for kind, path in exports.items():
        log(f"{'Export ' + kind + ':':<20s}{os.path.abspath(path) if os.path.exists(path) else path}")
    if "keras_model" in summary and summary.get("demo_images"):
        log("Try it on a few validation images:")
        log(f"  python -m ocr_tf.predict {summary['demo_images']} --weights {os.path.abspath(summary['keras_model'])} --output predictions")
    log("=" * 72)


@command(build_parser)
def main(args):
    from ocr_tf.config import load_config
    from ocr_tf.train import run

    overrides = [item for group in args.overrides for item in group]
    if args.strategy:
        overrides.append(f"train.strategy={args.strategy}")
    if args.mixed_precision:
        overrides.append(f"train.mixed_precision={args.mixed_precision}")
    if args.output_dir:
        overrides.append(f"output.dir={args.output_dir}")
    config = args.config or DEFAULT_CONFIG
    if not os.path.isfile(config):
        fail(f"--config {config} not found.")
    cfg = load_config(config, overrides)
    try:
        summary = run(cfg, new_run=args.new_run)
    except FloatingPointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    if "already_finished" in summary:
        print(summary["already_finished"])
        return 0
    if "eval" in summary or "exports" in summary:
        print_summary(summary)
    return 0
