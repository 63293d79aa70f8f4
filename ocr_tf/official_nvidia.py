"""NVIDIA's hierarchical multi-scale HRNet-OCR (NVIDIA/semantic-segmentation, arch
`ocrnet.HRNet_Mscale`) run from the user's own checkout, to verify a conversion and to make the
test fixture (tools/make_nvidia_fixture.py).

The NVIDIA code is not bundled: point `python -m ocr_tf.convert --model hrnet_w48_mscale_ocr
--official-repo DIR` at a clone of it. Its modules are imported as they are; what they import but
a CPU machine does not need (apex, runx, and OpenCV/torchvision through `utils.misc`) is lent as
small stand-ins while importing, and every module we added to `sys.modules` is removed again.
The network is built through its own `MscaleOCR` and run through its own `nscale_forward`.
Needs torch (`pip install -e ".[convert]"`).
"""

import contextlib
import importlib
import os
import sys
import types

import numpy as np

# Top-level names the NVIDIA checkout (or our stand-ins) put into sys.modules while importing.
_NVIDIA_ROOTS = ("config", "network", "utils", "loss", "datasets", "transforms", "apex", "runx")


def _stand_ins():
    """Modules NVIDIA's network code imports but does not need on a CPU: apex (mixed precision and
    sync BN, both unused in eval), runx (logging), utils.misc (OpenCV/torchvision for its
    image dumps; the network only uses `fmt_scale` to name its output keys)."""
    import torch

    apex = types.ModuleType("apex")
    apex.amp = types.ModuleType("apex.amp")
    apex.amp.float_function = lambda f: f  # upcasts under fp16 only
    apex.parallel = types.ModuleType("apex.parallel")
    apex.parallel.SyncBatchNorm = torch.nn.BatchNorm2d
    apex.parallel.DistributedDataParallel = None
    runx = types.ModuleType("runx")
    runx.logx = types.ModuleType("runx.logx")
    runx.logx.logx = types.SimpleNamespace(msg=lambda *a, **k: None)
    misc = types.ModuleType("utils.misc")
    misc.fmt_scale = lambda prefix, scale: f"{prefix}_{float(scale)}x"
    return {
        "apex": apex, "apex.amp": apex.amp, "apex.parallel": apex.parallel,
        "runx": runx, "runx.logx": runx.logx, "utils.misc": misc,
    }


def _is_nvidia_module(name):
    return name.split(".")[0] in _NVIDIA_ROOTS


@contextlib.contextmanager
def _nvidia_imports(repo):
    """Import from the checkout `repo` with the stand-ins; yields its `config.cfg`. Afterwards every
    module of the checkout (and every stand-in) leaves sys.modules again."""
    import torch

    saved = {n: m for n, m in sys.modules.items() if _is_nvidia_module(n)}
    for name in saved:
        del sys.modules[name]
    sys.modules.update(_stand_ins())
    sys.path.insert(0, repo)
    try:
        cfg = importlib.import_module("config").cfg
        cfg.MODEL.BNFUNC = torch.nn.BatchNorm2d
        cfg.OPTIONS.TORCH_VERSION = float(".".join(torch.__version__.split(".")[:2]))
        yield cfg
    finally:
        sys.path.remove(repo)
        for name in [n for n in sys.modules if _is_nvidia_module(n)]:
            del sys.modules[name]
        sys.modules.update(saved)


def _check_repo(repo):
    repo = os.path.abspath(repo)
    if not os.path.isfile(os.path.join(repo, "network", "ocrnet.py")) or not os.path.isfile(
        os.path.join(repo, "config.py")
    ):
        raise FileNotFoundError(
            f"{repo} has no network/ocrnet.py and config.py: --official-repo must be a checkout of "
            "NVIDIA/semantic-segmentation (git clone https://github.com/NVIDIA/semantic-segmentation)."
        )
    return repo


def nvidia_rmi_loss(repo, logits, labels, num_classes, do_rmi=True):
    """NVIDIA's `RMILoss` (loss/rmi.py, the Cityscapes recipe's criterion) on NCHW float32
    `logits` and (B, H, W) int `labels`: BCE alone (do_rmi=False) or 0.5 BCE + 0.5 RMI."""
    import torch

    repo = _check_repo(repo)
    with _nvidia_imports(repo):
        rmi = importlib.import_module("loss.rmi")
        criterion = rmi.RMILoss(num_classes=int(num_classes), ignore_index=255)
        # It moves its 9-vectors to `torch.cuda.DoubleTensor`; float64 on the CPU is the same math.
        cuda_double = torch.cuda.DoubleTensor
        torch.cuda.DoubleTensor = torch.DoubleTensor
        try:
            with torch.no_grad():
                value = criterion(torch.from_numpy(np.asarray(logits, np.float32)),
                                  torch.from_numpy(np.asarray(labels, np.int64)), do_rmi=do_rmi)
        finally:
            torch.cuda.DoubleTensor = cuda_double
    return float(value)


def build_nvidia_mscale(repo, extra, num_classes, mid_channels=512, key_channels=256, attn_channels=256):
    """NVIDIA's `MscaleOCR` (HRNetV2 trunk, `extra` = stage config in the official form), freshly
    initialised by its own code, in eval mode. Returns the torch module."""
    try:
        import torch
    except ImportError as e:
        raise ImportError('Running NVIDIA\'s model needs torch: pip install -e ".[convert]"') from e
    repo = _check_repo(repo)
    with _nvidia_imports(repo) as cfg:
        # What `assert_and_infer_cfg` would set, plus the widths; before the network modules are
        # imported, since they read some fields at import (align_corners, the checkpoint default).
        cfg.MODEL.HRNET_CHECKPOINT = ""  # no ImageNet weights: random init
        cfg.MODEL.OCR_EXTRA = {k: dict(v) for k, v in extra.items() if k.startswith("STAGE")}
        cfg.MODEL.OCR.MID_CHANNELS = int(mid_channels)
        cfg.MODEL.OCR.KEY_CHANNELS = int(key_channels)
        cfg.MODEL.SEGATTN_BOT_CH = int(attn_channels)
        cfg.DATASET.NUM_CLASSES = int(num_classes)
        ocrnet = importlib.import_module("network.ocrnet")
        # Its HRNet calls `np.int`, an alias NumPy 1.24 removed; lend it while building.
        lend = not hasattr(np, "int")
        if lend:
            np.int = int
        try:
            model = ocrnet.MscaleOCR(int(num_classes), trunk="hrnetv2", criterion=None)
        finally:
            if lend:
                del np.int
    return model.eval()


def nvidia_model(repo, state, extra, num_classes, mid_channels=512, key_channels=256, attn_channels=256):
    """NVIDIA's network in eval mode with `state` (name -> array, NVIDIA names without `module.`)
    loaded strictly (NVIDIA's own loader would skip mismatches silently)."""
    import torch

    model = build_nvidia_mscale(repo, extra, num_classes, mid_channels, key_channels, attn_channels)
    model.load_state_dict({k: torch.as_tensor(np.asarray(v)) for k, v in state.items()}, strict=True)
    return model.eval()


def run_nvidia(model, images, scales):
    """`nscale_forward` of NVIDIA's model on NCHW float32 `images` -> its output dict as NumPy
    (`pred` merged logits at input size, `pred_<s>x`, `attn_<s>x`)."""
    import torch

    with torch.no_grad():
        out = model.nscale_forward({"images": torch.from_numpy(np.asarray(images, np.float32))}, list(scales))
    return {k: v.numpy() for k, v in out.items()}


def compare_with_nvidia(keras_model, torch_model, image_size=(128, 192), scales=(0.5, 1.0, 2.0), seed=0):
    """One random normalised image through both at `scales`; returns {"pred": rel err} with
    rel err = max |keras - nvidia| / max |nvidia| of the merged logits at input size."""
    from ocr_tf.layers.mscale import mscale_predict

    x = np.random.default_rng(seed).normal(size=(1, 3, *image_size)).astype(np.float32)
    want = np.transpose(run_nvidia(torch_model, x, scales)["pred"], (0, 2, 3, 1))
    got = np.asarray(mscale_predict(keras_model, np.transpose(x, (0, 2, 3, 1)), scales))
    if got.shape != want.shape:
        raise ValueError(f"pred: the converted model gives {got.shape}, NVIDIA's {want.shape}.")
    return {"pred": float(np.max(np.abs(got - want)) / np.max(np.abs(want)))}
