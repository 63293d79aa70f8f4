"""Make tests/fixtures/nvidia_mscale_tiny.npz from NVIDIA's own code (NVIDIA/semantic-segmentation,
arch `ocrnet.HRNet_Mscale`, checked at commit 7726b14).

    python tools/make_nvidia_fixture.py --nvidia-repo /path/to/semantic-segmentation \
        [--out tests/fixtures/nvidia_mscale_tiny.npz]

Needs torch (==2.13.0, CPU) and a checkout of NVIDIA's repository; its code is imported from there
at run time by ocr_tf/official_nvidia.py (with stand-ins for apex/runx), never copied into ours.

NVIDIA's `MscaleOCR` is built at a tiny width so that every code path is present (bottleneck
stage 1, transitions, fuse layers up and down, aux head, OCR, the attention head), given random
weights and random BatchNorm statistics, put in eval mode, and run through its own
`nscale_forward` for two input sizes (even 64x96 and odd 70x90) and two scale lists.

Keys of the .npz:
- `config`: JSON text: `extra` (HRNet stage config, official form), `num_classes` 5,
  `ocr_mid_channels` 32, `ocr_key_channels` 16, `attn_channels` 16 (NVIDIA's SEGATTN_BOT_CH),
  `align_corners` false, `bn_eps` 1e-5, `scale_lists` {tag: scales}, `source`, `commit`.
- `state/<name>`: every tensor of NVIDIA's `state_dict()` (no `num_batches_tracked`), under its name
  without the `module.` prefix of released checkpoints, float32, PyTorch layout (OIHW kernels).
- `input_N` (N = 0: 1x3x64x96, 1: 1x3x70x90): the network's input, NCHW float32, already normalised.
- `pred_N_<tag>` (tag `s05_10` for scales [0.5, 1.0], `s05_10_20` for [0.5, 1.0, 2.0]): the merged
  logits of `nscale_forward`, NCHW at the input size.
- `attn_N`: the attention of NVIDIA's `_fwd` at scale 1.0 (resized to the input size), to tell an
  attention-head error from a merge error.
- `loss_logits` (1x5x32x40, NCHW), `loss_labels` (1x32x40 uint8, 255 = ignore): NVIDIA's criterion
  (`loss/rmi.py` RMILoss, K=5) on them: `loss_bce` (do_rmi=False: the BCE of the aux and per-scale
  terms) and `loss_bce_rmi` (do_rmi=True: 0.5 BCE + 0.5 RMI, the merged-prediction term).
Expected: our converted model reproduces every `pred_*` with max |a - b| / max |b| < 1e-4.
"""

import argparse
import json
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from ocr_tf.official_nvidia import build_nvidia_mscale, nvidia_rmi_loss, run_nvidia  # noqa: E402


def _stage(modules, block, blocks, channels):
    return {"NUM_MODULES": modules, "NUM_BRANCHES": len(blocks), "BLOCK": block,
            "NUM_BLOCKS": list(blocks), "NUM_CHANNELS": list(channels), "FUSE_METHOD": "SUM"}


# The widths of the [HR] fixture (hrnet_ocr_tiny_official.npz), so both fixtures share a trunk.
TINY_EXTRA = {
    "STAGE1": _stage(1, "BOTTLENECK", [1], [16]),
    "STAGE2": _stage(1, "BASIC", [1, 1], [8, 16]),
    "STAGE3": _stage(1, "BASIC", [1, 1, 1], [8, 16, 32]),
    "STAGE4": _stage(1, "BASIC", [1, 1, 1, 1], [8, 16, 32, 64]),
}
TINY = {"num_classes": 5, "mid_channels": 32, "key_channels": 16, "attn_channels": 16}
SCALE_LISTS = {"s05_10": [0.5, 1.0], "s05_10_20": [0.5, 1.0, 2.0]}
INPUT_SIZES = [(64, 96), (70, 90)]


def randomise(model, seed=0):
    """Random weights (fan-in scaled, so activations stay O(1)) and random BN statistics."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
            elif name.endswith("running_mean"):
                t.copy_(0.1 * torch.randn(t.shape, generator=gen))
            elif t.ndim == 4:
                fan_in = t.shape[1] * t.shape[2] * t.shape[3]
                t.copy_(torch.randn(t.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
            elif name.endswith("weight"):  # BN gamma
                t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
            else:  # biases, BN beta
                t.copy_(0.1 * torch.randn(t.shape, generator=gen))


def calibrate_attention(model, x, target_std=1.5):
    """Rescale the attention's last conv so its logits have std `target_std` on `x`: random weights
    otherwise saturate the sigmoid at 0 and 1, and a saturated attention would hide merge errors."""
    import torch

    seen = []
    hook = model.scale_attn.conv2.register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.no_grad():
        model._fwd(torch.from_numpy(x))
        hook.remove()
        model.scale_attn.conv2.weight.mul_(target_std / float(seen[0].std()))


def make(repo, seed=0):
    """Build, randomise and run NVIDIA's tiny model; returns the fixture's arrays."""
    import torch

    torch.manual_seed(seed)
    model = build_nvidia_mscale(repo, TINY_EXTRA, **TINY)
    randomise(model, seed)
    model.eval()
    rng = np.random.default_rng(seed)
    inputs = [rng.normal(size=(1, 3, h, w)).astype(np.float32) for h, w in INPUT_SIZES]
    calibrate_attention(model, inputs[0])
    arrays = {
        f"state/{k}": v.detach().numpy().astype(np.float32)
        for k, v in model.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
    for n, x in enumerate(inputs):
        arrays[f"input_{n}"] = x
        for tag, scales in SCALE_LISTS.items():
            arrays[f"pred_{n}_{tag}"] = run_nvidia(model, x, scales)["pred"].astype(np.float32)
        with torch.no_grad():
            fwd = model._fwd(torch.from_numpy(x))
        arrays[f"attn_{n}"] = fwd["logit_attn"].numpy()
    # NVIDIA's criterion (loss/rmi.py RMILoss) on random logits and blocky labels with ignored pixels.
    k = TINY["num_classes"]
    logits = (3 * rng.normal(size=(1, k, 32, 40))).astype(np.float32)
    labels = np.repeat(np.repeat(rng.integers(0, k, size=(1, 8, 10)), 4, axis=1), 4, axis=2)
    labels[0, :5, :7] = 255
    arrays["loss_logits"], arrays["loss_labels"] = logits, labels.astype(np.uint8)
    arrays["loss_bce"] = np.float64(nvidia_rmi_loss(repo, logits, labels, k, do_rmi=False))
    arrays["loss_bce_rmi"] = np.float64(nvidia_rmi_loss(repo, logits, labels, k, do_rmi=True))
    config = {
        "extra": TINY_EXTRA,
        "num_classes": TINY["num_classes"],
        "ocr_mid_channels": TINY["mid_channels"],
        "ocr_key_channels": TINY["key_channels"],
        "attn_channels": TINY["attn_channels"],
        "align_corners": False,
        "bn_eps": 1e-5,
        "scale_lists": SCALE_LISTS,
        "layout": "NCHW; conv kernels OIHW",
        "inputs": len(INPUT_SIZES),
        "source": "NVIDIA/semantic-segmentation network/ocrnet.py MscaleOCR (ocrnet.HRNet_Mscale), "
        "nscale_forward, eval mode, random weights and BN statistics",
        "commit": "7726b14",
        "seed": seed,
    }
    arrays["config"] = np.array(json.dumps(config))
    return arrays


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nvidia-repo", required=True, help="a checkout of NVIDIA/semantic-segmentation")
    p.add_argument("--out", default=os.path.join("tests", "fixtures", "nvidia_mscale_tiny.npz"))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    arrays = make(args.nvidia_repo, args.seed)
    out_dir = os.path.dirname(os.path.abspath(args.out))
    fd, tmp = tempfile.mkstemp(suffix=".npz", dir=out_dir)  # atomic: temp file, then rename
    os.close(fd)
    try:
        np.savez_compressed(tmp, **arrays)
        os.replace(tmp, args.out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 1e6:.2f} MB, {len(arrays)} arrays)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
