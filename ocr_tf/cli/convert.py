"""`python -m ocr_tf.convert`: an official checkpoint (HRNet-OCR, NVIDIA's multi-scale) -> a preset."""

import argparse
import sys

from ocr_tf.cli.common import command, fail


def build_parser():
    p = argparse.ArgumentParser(prog="python -m ocr_tf.convert", description="Convert an official checkpoint (HRNet-OCR .pth, NVIDIA multi-scale .pth, or an .npz of a "
                                "state_dict) into a preset folder that ocr_tf.Segmenter.from_preset loads.")
    p.add_argument("--checkpoint", required=True, help="official .pth (needs torch) or .npz of the state_dict")
    p.add_argument("--model", required=True, help="hrnet_w48_ocr, hrnet_w18_ocr, ..., or hrnet_*_fcn")
    p.add_argument("--num-classes", type=int, help="number of classes of the checkpoint (not with --backbone-only)")
    p.add_argument("--backbone-only", action="store_true",
                   help="convert only the HRNet backbone (e.g. the ImageNet-pretrained .pth) to "
                   "<backbone>_backbone.weights.h5, for build_model(..., weights=...)")
    p.add_argument("--out", required=True, help="the preset folder to write (Segmenter.from_preset reads it); "
                   "with --backbone-only, the folder for <backbone>_backbone.weights.h5")
    p.add_argument("--dataset", help="classes, palette and flip pairs of the preset: a dataset name or a class "
                   "list file (default: an official file's dataset, else class_0, class_1, ...)")
    p.add_argument("--extra", help="HRNet stage config for custom widths: JSON text or a JSON/YAML file "
                   "(the official experiment YAML works: MODEL.EXTRA is used)")
    p.add_argument("--inplace-abn", choices=("auto", "true", "false"), default="auto",
                   help="the file's BN weights are InPlaceABN scales (|w| + 1e-5), as the official code "
                   "writes under PyTorch 0.4; auto: true for the *_torch04* release files")
    p.add_argument("--mid-channels", type=int, help="OCR mid channels (official: 512)")
    p.add_argument("--key-channels", type=int, help="OCR key channels (official: 256)")
    p.add_argument("--attn-channels", type=int, help="*_mscale_ocr: attention head width (NVIDIA: 256)")
    p.add_argument("--align-corners", choices=("true", "false"),
                   help="bilinear resize mode of the checkpoint's training (official HRNet-OCR: true; "
                   "NVIDIA's *_mscale_ocr: false, the defaults)")
    p.add_argument("--verify", metavar="REF.npz",
                   help="reference inputs/outputs (input_N, aux_N, out_N; NCHW) to compare against")
    p.add_argument("--official-repo", metavar="DIR",
                   help="a checkout of HRNet/HRNet-Semantic-Segmentation (branch HRNet-OCR): run a random "
                   "image through its PyTorch model with the same checkpoint and compare (needs torch)")
    p.add_argument("--verify-size", default="128x192", metavar="HxW",
                   help="image size of the --official-repo comparison (default 128x192)")
    return p


@command(build_parser)
def main(args):
    from ocr_tf.convert import (BN_EPSILON, VERIFY_TOLERANCE, _is_mscale_name, _load_extra, convert, is_torch04_file,
                                verify, verify_official)

    if args.inplace_abn == "auto":
        args.inplace_abn = "true" if is_torch04_file(args.checkpoint) else "false"
    try:
        official = preset_defaults(args)
    except ValueError as e:
        fail(str(e))
    if args.num_classes is None and not args.backbone_only:
        fail("--num-classes is required unless --backbone-only, --dataset or an official checkpoint")
    if (args.verify or args.official_repo) and args.backbone_only:
        fail("--verify / --official-repo need a whole model's outputs, not --backbone-only")
    if args.official_repo and not (args.model.startswith("hrnet") and args.model.endswith("_ocr")):
        fail("--official-repo runs the official HRNet-OCR model: use it with an hrnet_*_ocr --model")

    if args.align_corners is None:
        args.align_corners = "false" if _is_mscale_name(args.model) else "true"
    overrides = {"align_corners": args.align_corners == "true"}
    if args.attn_channels:
        if not _is_mscale_name(args.model):
            fail("--attn-channels is for the *_mscale_ocr models")
        overrides["attn_channels"] = args.attn_channels
    if args.mid_channels:
        overrides["mid_channels"] = args.mid_channels
    if args.key_channels:
        overrides["key_channels"] = args.key_channels
    try:
        if args.backbone_only:
            overrides = {"align_corners": overrides["align_corners"]}
        extra = _load_extra(args.extra)
        model, paths = convert(
            args.checkpoint, args.model, args.num_classes, args.out if args.backbone_only else None,
            extra=extra, backbone_only=args.backbone_only, inplace_abn=args.inplace_abn == "true", **overrides,
        )
    except ImportError as e:  # torch missing: the message names the [convert] extra
        fail(str(e))
    for path in paths:
        print(f"wrote {path}")
    if args.inplace_abn == "true":
        print(f"BN weights read as InPlaceABN scales (|w| + {BN_EPSILON:g}), as the official code under PyTorch 0.4")
    errors = {}
    if args.verify and _is_mscale_name(args.model):
        from ocr_tf.convert_nvidia import verify_fixture

        errors.update(verify_fixture(model, args.verify))
    elif args.verify:
        errors.update(verify(model, args.verify))
    if args.official_repo:
        errors.update(verify_official(model, args))
    if errors:
        for key, err in errors.items():
            print(f"verify {key}: max|a-b|/max|b| = {err:.3g}")
        if max(errors.values()) >= VERIFY_TOLERANCE:
            print(f"error: verification above {VERIFY_TOLERANCE}; no preset written", file=sys.stderr)
            return 2
    if not args.backbone_only:
        from ocr_tf.presets import write_converted_preset

        if extra is not None:
            overrides["extra"] = extra
        try:
            path = write_converted_preset(model, args.model, args.checkpoint, args.out, args.dataset, overrides,
                                          official, parity=errors, inplace_abn=args.inplace_abn == "true")
            print(f"wrote preset {path}")
        except ValueError as e:
            fail(str(e))
    return 0




def preset_defaults(args):
    """An official checkpoint (known by its file name) gives --dataset and --num-classes defaults."""
    from ocr_tf.presets import dataset_info, preset_of_file

    official = preset_of_file(args.checkpoint)
    if args.dataset is None and official is not None:
        args.dataset = official.dataset
    if args.dataset is not None and args.num_classes is None and not args.backbone_only:
        args.num_classes = dataset_info(args.dataset, args.checkpoint).num_classes
    return official


