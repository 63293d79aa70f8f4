"""Choosing a tf.distribute strategy for training.

  default       one device (CPU or one GPU): `tf.distribute.get_strategy()`
  mirrored      one machine, all its GPUs (or all logical CPU devices when there is no GPU)
  multi_worker  many machines: `MultiWorkerMirroredStrategy`, cluster from TF_CONFIG
  tpu           `TPUStrategy` on a TPU found by `TPUClusterResolver`
  auto          multi_worker if TF_CONFIG names more than one task, else mirrored if there are
                several GPUs, else default

BatchNorm is synchronized whenever there is more than one replica (`sync_batch_norm`): with
the small per-replica batches of segmentation (1-4 crops per GPU) per-replica statistics are
too noisy, which is why the references use SyncBN / InPlaceABNSync.

Mirrored on CPU devices uses `ReductionToOneDevice`: with the default collective all-reduce the
synchronized BatchNorm reductions and the gradient all-reduce of one step can meet out of
order on CPU ("Shape mismatch in the collective instance", ../shared/ANCHORS.md). On GPUs the
default (NCCL) is kept.
"""

import json
import os

import tensorflow as tf

STRATEGIES = ("auto", "default", "mirrored", "multi_worker", "tpu")


def cluster_size_from_env():
    """Number of tasks (chief + workers) in TF_CONFIG; 0 when unset."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return 0
    try:
        cluster = json.loads(raw).get("cluster", {})
    except json.JSONDecodeError as e:
        raise ValueError(f"TF_CONFIG is not valid JSON: {e}") from None
    return sum(len(cluster.get(t, [])) for t in ("chief", "worker"))


def get_strategy(name="auto", tpu=None):
    """A `tf.distribute.Strategy` by name (see the module docstring)."""
    if name not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {name!r}.")
    if name == "auto":
        if cluster_size_from_env() > 1:
            name = "multi_worker"
        elif tpu:
            name = "tpu"
        elif len(tf.config.list_logical_devices("GPU")) > 1:
            name = "mirrored"
        else:
            name = "default"
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        if gpus:
            return tf.distribute.MirroredStrategy()
        cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(cpus, cross_device_ops=tf.distribute.ReductionToOneDevice())
    if name == "multi_worker":
        if cluster_size_from_env() < 1:
            raise ValueError("strategy 'multi_worker' needs TF_CONFIG with the cluster and this task.")
        return tf.distribute.MultiWorkerMirroredStrategy()
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or "")
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def sync_batch_norm(strategy):
    """True when BatchNorm statistics must be reduced over replicas (more than one replica)."""
    return strategy.num_replicas_in_sync > 1


def is_multi_worker(strategy):
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and (
        strategy.extended._in_multi_worker_mode()  # noqa: SLF001 (no public equivalent)
    )


def task_info(strategy):
    """(task_type, task_id) of this process; (None, 0) outside a cluster."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not is_multi_worker(strategy):
        return None, 0
    return resolver.task_type, resolver.task_id or 0


def is_chief(strategy):
    """The process that writes checkpoints, logs and exports: the chief, else worker 0."""
    task_type, task_id = task_info(strategy)
    if task_type is None or task_type == "chief":
        return True
    has_chief = "chief" in strategy.cluster_resolver.cluster_spec().as_dict()
    return task_type == "worker" and task_id == 0 and not has_chief
