"""Distributed training: synchronized BatchNorm under MirroredStrategy on 2 logical CPU devices
equals one replica on the whole batch; Keras `fit` under MultiWorkerMirroredStrategy with two
worker processes on localhost ends with identical weights; strategy selection.

The distributed runs happen in subprocesses (this file run as a script) so that logical-device
and cluster setups never leak into the other tests.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

K = 4
HERE = os.path.abspath(__file__)
ROOT = os.path.dirname(os.path.dirname(HERE))


def _stage(n, ch, block="BASIC"):
    return {"NUM_MODULES": n, "NUM_BRANCHES": len(ch), "BLOCK": block, "NUM_BLOCKS": [1] * len(ch),
            "NUM_CHANNELS": ch, "FUSE_METHOD": "SUM"}


# A tiny HRNet (official stage-config form) so a step takes milliseconds on CPU.
TINY_HRNET = {"STAGE1": _stage(1, [8], "BOTTLENECK"), "STAGE2": _stage(1, [8, 16]),
              "STAGE3": _stage(1, [8, 16, 32]), "STAGE4": _stage(1, [8, 16, 32, 64])}


def _env():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("TF_CONFIG", None)
    return env


def _data(n=4, size=32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, size, size, 3)).astype(np.float32)
    y = rng.integers(0, K, (n, size, size)).astype(np.int32)
    return x, y


def _network(synchronized, tiny_hrnet):
    """The tiny HRNet-OCR of the registry, or a smaller conv-BN + OCR head (same layers, far
    fewer of them: the sync-BN comparison traces three models in one process)."""
    import keras

    from ocr_tf.layers import ConvBN, OCRHead
    from ocr_tf.models import build_model

    if tiny_hrnet:
        return build_model("hrnet_w48_ocr", K, extra=TINY_HRNET, mid_channels=16, key_channels=8,
                           dropout=0.0, synchronized=synchronized)
    x = keras.Input((None, None, 3))
    f = ConvBN(8, 3, strides=2, synchronized=synchronized, name="stem1")(x)
    f = ConvBN(16, 3, strides=2, synchronized=synchronized, name="stem2")(f)
    out = OCRHead(K, mid_channels=16, key_channels=8, dropout=0.0, synchronized=synchronized, name="head")(f)
    return keras.Model(x, out)


def _trainer(strategy, synchronized, init=None, lr=0.01, tiny_hrnet=False):
    import keras

    from ocr_tf.losses import SegmentationLoss
    from ocr_tf.optim import SGD
    from ocr_tf.training_model import SegmentationTrainer

    with strategy.scope():
        net = _network(synchronized, tiny_hrnet)
        if init is not None:
            net.set_weights(init)
        trainer = SegmentationTrainer(net, SegmentationLoss(K), K)
        trainer.compile(optimizer=SGD(lr, momentum=0.9, weight_decay=5e-4))
    keras.utils.set_random_seed(0)
    return net, trainer


# ---------------------------------------------------------------- subprocess entry points


def child_sync_bn(out):
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from ocr_tf.distribute import get_strategy, sync_batch_norm

    x, y = _data()
    mirrored = get_strategy("mirrored")
    assert mirrored.num_replicas_in_sync == 2 and sync_batch_norm(mirrored)
    ref_net, ref = _trainer(tf.distribute.get_strategy(), False)
    names = [v.path for v in ref_net.weights]
    # Perturb every trainable weight away from its initializer (beta = 0, gamma = 1, bias = 0):
    # relative to a zero-initialised weight, float32 summation-order noise in its first
    # gradient would be all there is to compare.
    rng = np.random.default_rng(1)
    init = [w if "moving" in n else w + rng.normal(0, 0.1, w.shape).astype(w.dtype)
            for n, w in zip(names, ref_net.get_weights())]
    results = {}
    for key, strategy, sync in (("single", tf.distribute.get_strategy(), False),
                                ("sync", mirrored, True), ("nosync", mirrored, False)):
        net, trainer = _trainer(strategy, sync, init)
        ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)  # global batch 4 -> 2 per replica
        hist = trainer.fit(ds, epochs=1, verbose=0)
        results[key] = [w for w in net.get_weights()]
        results[key + "_loss"] = hist.history["loss"][0]
    np.savez(out, names=np.array(names), init=np.array(init, dtype=object),
             **{k: np.array(v, dtype=object) for k, v in results.items()})


def child_multi_worker(index, ports, out):
    os.environ["TF_CONFIG"] = json.dumps(
        {"cluster": {"worker": [f"localhost:{p}" for p in ports]}, "task": {"type": "worker", "index": index}}
    )
    import tensorflow as tf

    from ocr_tf.distribute import get_strategy, is_chief, sync_batch_norm

    strategy = get_strategy("auto")  # TF_CONFIG with two tasks -> multi_worker
    assert isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
    assert strategy.num_replicas_in_sync == 2 and sync_batch_norm(strategy)
    x, y = _data(8, seed=index)  # each worker its own data: only all-reduce keeps them equal
    net, trainer = _trainer(strategy, True, lr=0.05)
    init = [w.copy() for w in net.get_weights()]
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(2).repeat()
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    ds = ds.with_options(options)
    val = tf.data.Dataset.from_tensor_slices((x[:4], y[:4])).batch(2).with_options(options)
    hist = trainer.fit(ds, epochs=2, steps_per_epoch=3, validation_data=val, verbose=0)
    np.savez(out, weights=np.array(net.get_weights(), dtype=object), init=np.array(init, dtype=object),
             history=json.dumps(hist.history), chief=is_chief(strategy),
             iterations=int(trainer.optimizer.iterations.numpy()))


# ---------------------------------------------------------------- tests


def _rel_err(a, b):
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def test_sync_batch_norm_equals_one_replica_on_the_global_batch(tmp_path):
    out = tmp_path / "syncbn.npz"
    proc = subprocess.run([sys.executable, HERE, "sync_bn", str(out)], env=_env(), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = np.load(out, allow_pickle=True)
    names = list(r["names"])
    init, single, sync, nosync = r["init"], r["single"], r["sync"], r["nosync"]
    checked = 0
    for name, w0, a, b in zip(names, init, sync, single):
        assert a.shape == b.shape, name
        assert np.abs(b - w0).max() > 0, f"{name} did not change"
        assert _rel_err(a, b) < 1e-5, f"{name}: rel err {_rel_err(a, b):.2e}"
        checked += 1
    assert checked == len(names) >= 40  # every kernel, bias, BN gamma/beta and moving statistic
    np.testing.assert_allclose(float(r["sync_loss"]), float(r["single_loss"]), rtol=1e-5)
    # Without synchronization the BN statistics (and so the step) differ.
    # (compared on the step's change of the moving statistics, which one step moves by 10%)
    worst = max(_rel_err(a - w0, b - w0) for name, w0, a, b in zip(names, init, nosync, single) if "moving" in name)
    assert worst > 1e-2


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def test_multi_worker_fit_two_processes_end_with_identical_weights(tmp_path):
    ports = _free_ports(2)
    outs = [tmp_path / f"worker{i}.npz" for i in range(2)]
    procs = [subprocess.Popen([sys.executable, HERE, "multi_worker", str(i), ",".join(map(str, ports)), str(outs[i])],
                              env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    try:
        logs = [p.communicate(timeout=600) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip(procs, logs):
        assert p.returncode == 0, err[-3000:]
    r = [np.load(o, allow_pickle=True) for o in outs]
    assert bool(r[0]["chief"]) and not bool(r[1]["chief"])
    assert int(r[0]["iterations"]) == int(r[1]["iterations"]) == 6
    for a, b, w0 in zip(r[0]["weights"], r[1]["weights"], r[0]["init"]):
        np.testing.assert_array_equal(a, b)
        assert np.abs(a - w0).max() > 0  # every weight and BN statistic was trained
    h0, h1 = json.loads(str(r[0]["history"])), json.loads(str(r[1]["history"]))
    assert set(h0) >= {"loss", "main_loss", "aux_loss", "miou", "val_loss", "val_miou"}
    for key in ("loss", "val_loss", "val_miou"):  # logs reduced over both workers: the same number
        np.testing.assert_allclose(h0[key], h1[key], rtol=1e-6)
        assert all(np.isfinite(h0[key]))


def test_build_model_synchronizes_every_batch_norm():
    import keras

    net = _network(True, tiny_hrnet=True)
    bns = [layer for layer in net._flatten_layers() if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(bns) > 50 and all(bn.synchronized for bn in bns)


def test_strategy_selection(monkeypatch):
    import tensorflow as tf

    from ocr_tf.distribute import cluster_size_from_env, get_strategy, is_chief, sync_batch_norm

    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert cluster_size_from_env() == 0
    default = get_strategy("auto")  # no TF_CONFIG, no GPU
    assert default is tf.distribute.get_strategy() and not sync_batch_norm(default) and is_chief(default)
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"chief": ["a:1"], "worker": ["b:1", "c:1"]},
                                                "task": {"type": "worker", "index": 0}}))
    assert cluster_size_from_env() == 3
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ValueError, match="TF_CONFIG is not valid JSON"):
        cluster_size_from_env()
    monkeypatch.delenv("TF_CONFIG")
    with pytest.raises(ValueError, match="strategy must be one of"):
        get_strategy("mirror")
    with pytest.raises(ValueError, match="needs TF_CONFIG"):
        get_strategy("multi_worker")


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    if sys.argv[1] == "sync_bn":
        child_sync_bn(sys.argv[2])
    else:
        child_multi_worker(int(sys.argv[2]), [int(p) for p in sys.argv[3].split(",")], sys.argv[4])
