"""What every command shares: the error policy, a quiet TensorFlow start-up, argument types.

The error policy (`command`): a user's mistake (`ocr_tf.errors.UserError` and the config and
data errors built on it) and running out of memory print one line `error: <what>` and exit 2;
Ctrl-C exits 130 with one line; anything else is a bug of ours and keeps its traceback.
`--debug` (or OCR_TF_DEBUG=1) shows the traceback always.

Nothing here imports TensorFlow at module level: arguments are parsed (and `--help` answered)
before the command imports the library.
"""

import argparse
import functools
import glob
import os
import re
import sys

from ocr_tf.errors import UserError

GLOB_CHARS = "*?["


def _has_gpu_driver():
    """An NVIDIA (or ROCm) device node: then TensorFlow's start-up messages matter and stay."""
    return bool(glob.glob("/dev/nvidia[0-9]*") or os.path.exists("/dev/kfd"))


class _QuietTensorFlowImport:
    """A `sys.meta_path` finder that wraps TensorFlow's import (whenever a command first needs it)
    with file descriptor 2 pointed at /dev/null. Commands that never need TensorFlow (--help, a
    rerun of a finished run) never load it."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        import importlib.util

        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def quiet_exec(module):
            with _stderr_to_devnull():
                exec_module(module)
                module.config.list_physical_devices("GPU")  # cuInit's "UNKNOWN ERROR (303)" comes here

        spec.loader.exec_module = quiet_exec
        return spec


class _stderr_to_devnull:
    def __enter__(self):
        sys.stderr.flush()
        self.saved = os.dup(2)
        self.devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(self.devnull, 2)

    def __exit__(self, *exc):
        os.dup2(self.saved, 2)
        os.close(self.saved)
        os.close(self.devnull)


def quiet_tensorflow():
    """Load TensorFlow, when a command first imports it, without its start-up noise on machines
    with no GPU.

    TF 2.21 writes its CUDA-stub and CPU-feature lines (and cuInit's "UNKNOWN ERROR (303)")
    from C++ before absl logging is set up, so TF_CPP_MIN_LOG_LEVEL cannot hide them; on a machine
    with no GPU driver we send file descriptor 2 to /dev/null while TensorFlow loads and looks
    for devices, then restore it. Python exceptions still surface (they propagate after the
    restore). With a GPU nothing is hidden.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" in sys.modules or _has_gpu_driver():
        return
    if not any(isinstance(f, _QuietTensorFlowImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlowImport())


def _error_line(e):
    """The message as is: one line, or a first line followed by a list (e.g. every mismatch)."""
    return str(e).strip() or e.__class__.__name__


def command(build_parser):
    """Decorator: `main(args)` becomes `main(argv=None) -> exit code` with the error policy.

    `build_parser()` makes the argparse parser; `--debug` is added to it here."""

    def wrap(run):
        @functools.wraps(run)
        def main(argv=None):
            parser = build_parser()
            parser.add_argument("--debug", action="store_true", help="show the full traceback of any error")
            args = parser.parse_args(argv)
            debug = args.debug or os.environ.get("OCR_TF_DEBUG") == "1"
            try:
                quiet_tensorflow()
                code = run(args)
            except KeyboardInterrupt:
                print("interrupted", file=sys.stderr)
                return 130
            except UserError as e:
                if debug:
                    raise
                print(f"error: {_error_line(e)}", file=sys.stderr)
                return 2
            except Exception as e:
                oom = out_of_memory_line(e)
                if oom is None or debug:
                    raise
                print(f"error: {oom}", file=sys.stderr)
                return 2
            return 0 if code is None else code

        main.parser = build_parser
        return main

    return wrap


def out_of_memory_line(e):
    """One line for a framework's out-of-memory error (TensorFlow's ResourceExhaustedError, from the
    GPU or from the CPU's BFC allocator at TF_CPU_BFC_MEM_LIMIT_IN_MB; JAX's RESOURCE_EXHAUSTED;
    PyTorch's OutOfMemoryError; Python's MemoryError, e.g. NumPy's "Unable to allocate"), or None
    for any other error. Running out of memory is not a bug: the batch or the images are too large
    for this machine."""
    name = type(e).__name__
    text = str(e)
    known = isinstance(e, MemoryError) or name in ("ResourceExhaustedError", "OutOfMemoryError")
    if not known and "RESOURCE_EXHAUSTED" not in text:
        return None
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    what = next((ln for ln in lines if "OOM when allocating" in ln or "RESOURCE_EXHAUSTED" in ln or "out of memory" in ln.lower()),
                lines[-1] if lines else name)
    what = re.sub(r"/job:\w+/replica:\d+/task:\d+/device:", "", what)  # TensorFlow's device path
    what = re.sub(r"\{\{[^}]*\}\}\s*|\s*\[Op:[^\]]*\].*$", "", what)  # eager ops' {{function_node}} and [Op:]
    line = (f"out of memory: {what.rstrip('.')}. Use a smaller batch or smaller images (train.batch_size, "
            "data.crop_size, the input size, fewer --scales) or a machine with more memory")
    limit = os.environ.get("TF_CPU_BFC_MEM_LIMIT_IN_MB")
    if "bfc_cpu_allocator" in text and limit:
        line += f"; TensorFlow's CPU allocator stops at TF_CPU_BFC_MEM_LIMIT_IN_MB={limit} (MiB)"
    return line + "."


def require_tensorflow_backend(verb):
    """evaluate, predict and export run TensorFlow graphs (tf.function, tf.data, SavedModel,
    TFLite): on another Keras backend, stop with one line saying how to run them."""
    import keras

    backend = keras.backend.backend()
    if backend != "tensorflow":
        fail(
            f"python -m ocr_tf.{verb} needs the TensorFlow backend (KERAS_BACKEND is {backend}): run it with "
            f"KERAS_BACKEND=tensorflow; a .keras model trained on {backend} loads there unchanged"
        )


def fail(message):
    """Stop the command with a user error (exit 2, one line)."""
    raise UserError(message)


# ------------------------------------------------------------------------------ argument types


def size(text):
    """"N" or "HxW" -> (h, w) positive ints (argparse type)."""
    parts = str(text).lower().replace(",", "x").split("x")
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or HxW, got {text!r}") from None
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected N or HxW with positive sizes, got {text!r}")
    return values


def scales(text):
    """"0.5,1,1.5" -> (0.5, 1.0, 1.5), all positive (argparse type)."""
    try:
        values = tuple(float(s) for s in str(text).split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"scales must be positive, got {text!r}")
    return values


def fraction(text):
    """A number in [0, 1] (argparse type)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return value


def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def parse_overrides(items, flag="--model-arg"):
    """["alpha=0.35", "extra=w18"] -> {"alpha": 0.35, "extra": "w18"} (YAML scalars)."""
    import yaml

    overrides = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"{flag} expects KEY=VALUE, got {item!r}.")
        try:
            overrides[key] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise UserError(f"{flag} {item!r}: the value is not a YAML scalar or list.") from None
    return overrides


def add_model_arguments(parser, weights_required=False, weights_help=None):
    """--weights / --model / --model-arg / --dataset: which Segmenter a command runs."""
    parser.add_argument(
        "--weights", required=weights_required,
        help=weights_help or "a .keras model or a preset folder (everything in one file); or a .weights.h5 with --model",
    )
    parser.add_argument("--model", help="registered model name, only for a .weights.h5 file (python -c 'import ocr_tf; print(ocr_tf.list_models())')")
    parser.add_argument("--model-arg", action="append", metavar="KEY=VALUE", help="build_model override for --model, e.g. mid_channels=64")
    parser.add_argument(
        "--dataset",
        help="class names and palette: a dataset name (cityscapes, ade20k, lip, pascal_context, coco_stuff, demo) "
        "or a class file; default: the model's own",
    )


def add_inference_arguments(parser):
    """Test-time inference flags shared by evaluate and predict."""
    group = parser.add_argument_group("test-time inference")
    group.add_argument("--mode", choices=("whole", "slide"), default="whole", help="whole image (default) or sliding windows")
    group.add_argument("--crop-size", type=size, help="sliding window size, N or HxW")
    group.add_argument("--stride", type=size, help="sliding window stride (default 2/3 of the crop)")
    group.add_argument("--scales", type=scales, default=(1.0,), help="comma-separated image scales, e.g. 0.5,0.75,1,1.25,1.5,1.75")
    group.add_argument("--flip", action="store_true", help="also score the mirrored image (swaps the dataset's left/right classes)")
    return group


def inference_options(args):
    """The inference flags as keyword arguments of `ocr_tf.inference.predict_logits`."""
    if args.mode == "slide" and not args.crop_size:
        fail("--mode slide needs --crop-size (e.g. --crop-size 512x1024).")
    return {"mode": args.mode, "crop_size": args.crop_size, "stride": args.stride, "scales": args.scales, "flip": args.flip}


def load_segmenter_from_args(args, say=print):
    """The Segmenter a command runs, from --weights / --model / --model-arg / --dataset."""
    from ocr_tf.loading import load_segmenter

    return load_segmenter(
        args.weights, model=args.model, overrides=parse_overrides(args.model_arg), dataset=args.dataset, say=say,
    )
