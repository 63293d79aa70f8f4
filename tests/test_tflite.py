"""TFLite export of the phone model (MobileNetV2 + OCR): builtin ops only (read from the
flatbuffer), float32 parity with Keras, int8 agreement with float on demo images, labels file,
quantization modes and input checks; run with LiteRT's interpreter."""

import glob

import keras
import numpy as np
import pytest
import tensorflow as tf

from ocr_tf import export, models
from ocr_tf.data import records
from ocr_tf.data.datasets.demo import prepare_demo
from ocr_tf.layers import ConvBN, OCRHead, resize_bilinear
from ocr_tf.losses import SegmentationLoss
from ocr_tf.preprocessing import normalize_image
from ocr_tf.tflite_utils import TFLiteSegmenter, check_builtin_only, count_macs, list_ops

SIZE = (96, 128)  # the demo images' size
pytestmark = pytest.mark.slow  # the phone-model fixture trains for ~1-2 minutes


def demo_images(pattern, count, num_classes):
    images, labels = [], []
    for path in sorted(glob.glob(pattern)):
        for index, serialized in enumerate(tf.data.TFRecordDataset(path)):
            image, label, _ = records.decode_record(serialized, num_classes, file=path, index=index)
            images.append(image.numpy())
            labels.append(label.numpy())
            if len(images) == count:
                return np.stack(images), np.stack(labels)
    return np.stack(images), np.stack(labels)


def recalibrate_batchnorm(model, images):
    """Set every BatchNorm's moving statistics to those of `images` (one pass, momentum 0)."""
    layers = [layer for layer in model._flatten_layers() if isinstance(layer, keras.layers.BatchNormalization)]
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.momentum = 0.0
    model(normalize_image(images), training=True)
    for layer, momentum in zip(layers, momenta):
        layer.momentum = momentum


@pytest.fixture(scope="module")
def demo():
    info = prepare_demo()
    val_images, val_labels = demo_images(info["val"], 24, info["num_classes"])
    return info, val_images, val_labels


@pytest.fixture(scope="module")
def phone_model(demo):
    """MobileNetV2 (alpha 0.35, head narrowed to 64/32 channels) + OCR trained briefly on the demo
    set (100 steps of 8 images, ~1 min on 2 cores), then BatchNorm statistics re-estimated.
    Trained, because random weights do not make the int8 comparison meaningful: a random
    MobileNetV2 with its initial BatchNorm statistics outputs a constant (activations ~1e-11 by
    the last block), and with statistics re-estimated and linear classifiers fitted on its random
    features (72% pixel accuracy, majority class 57%) int8 agreed with float on only ~79% of
    pixels, random layers amplifying the rounding noise. This trained model (~84%) agrees on ~97%."""
    info = demo[0]
    num_classes = info["num_classes"]
    images, labels = demo_images(info["train"], 384, num_classes)
    keras.utils.set_random_seed(0)
    model = models.build_model("mobilenetv2_ocr", num_classes, alpha=0.35, dropout=0.0,
                               mid_channels=64, key_channels=32)
    loss_fn = SegmentationLoss(num_classes)
    optimizer = keras.optimizers.Adam(1e-3)

    @tf.function
    def train_step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(normalize_image(x), training=True))["loss"]
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))

    rng = np.random.default_rng(0)
    for _ in range(100):
        batch = rng.choice(len(images), 8, replace=False)
        train_step(tf.constant(images[batch]), tf.constant(labels[batch].astype(np.int32)))
    recalibrate_batchnorm(model, images[:96])  # 100 steps leave the moving averages unconverged
    return model


@pytest.fixture(scope="module")
def float_tflite(phone_model, demo, tmp_path_factory):
    path = tmp_path_factory.mktemp("tflite") / "phone_float.tflite"
    export.export_tflite(phone_model, str(path), input_size=SIZE, class_names=demo[0]["class_names"])
    return str(path)


def keras_reference(model, images):
    logits = model(normalize_image(images), training=False)["logits"]
    labels = tf.math.argmax(resize_bilinear(logits, images.shape[1:3], True), -1, output_type=tf.int32)
    return logits.numpy(), labels.numpy()


def run_tflite(path, images):
    segmenter = TFLiteSegmenter(path)
    outputs = [segmenter(image) for image in images]
    return np.stack([o["logits"] for o in outputs]), np.stack([o["labels"] for o in outputs])


def test_phone_model_has_learned_something(phone_model, demo):
    """Guards the int8 comparison: the float model segments the demo images better than predicting
    the majority class, with several classes present."""
    _, images, labels = demo
    _, predicted = keras_reference(phone_model, images)
    valid = labels != 255
    accuracy = (predicted[valid] == labels[valid]).mean()
    majority = np.bincount(labels[valid]).max() / valid.sum()
    assert accuracy > majority + 0.05
    assert (np.bincount(predicted.ravel()) > 0.01 * predicted.size).sum() >= 3


def test_float32_tflite_matches_keras(phone_model, demo, float_tflite):
    _, images, _ = demo
    ref_logits, ref_labels = keras_reference(phone_model, images)
    logits, labels = run_tflite(float_tflite, images)
    assert labels.shape == images.shape[:3] and labels.dtype == np.int32
    assert logits.shape == ref_logits.shape
    value_range = ref_logits.max() - ref_logits.min()
    assert np.abs(logits - ref_logits).max() <= 1e-3 * value_range
    assert (labels == ref_labels).mean() >= 0.999


def test_tflite_uses_builtin_ops_only_and_has_labels_file(float_tflite, demo):
    ops = check_builtin_only(float_tflite)
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "BATCH_MATMUL", "SOFTMAX", "RESIZE_BILINEAR", "ARG_MAX"} <= set(ops)
    with open(export.labels_path(float_tflite)) as f:
        assert f.read().splitlines() == list(demo[0]["class_names"])
    segmenter = TFLiteSegmenter(float_tflite)
    assert segmenter.input_shape == (1, *SIZE, 3) and segmenter.input_dtype == np.uint8
    with pytest.raises(ValueError, match=r"expected an image of shape \(96, 128, 3\)"):
        segmenter(np.zeros((64, 64, 3), np.uint8))


def test_int8_labels_agree_with_float(phone_model, demo, float_tflite, tmp_path):
    info, images, _ = demo
    path = str(tmp_path / "phone_int8.tflite")
    export.export_tflite(phone_model, path, input_size=SIZE, quantize="int8",
                         calibration_data=info["train"], num_calibration=32)
    check_builtin_only(path)
    _, float_labels = run_tflite(float_tflite, images)
    _, int8_labels = run_tflite(path, images)
    agreement = (int8_labels == float_labels).mean()
    print(f"int8 vs float32 label agreement on {len(images)} demo val images: {agreement:.4f}")
    assert agreement >= 0.95


def test_list_ops_reads_flex_ops_from_the_flatbuffer():
    @tf.function(input_signature=[tf.TensorSpec([2, 2], tf.float32)])
    def det(x):
        return tf.linalg.det(x) + 1.0

    converter = tf.lite.TFLiteConverter.from_concrete_functions([det.get_concrete_function()], det)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
    flatbuffer = converter.convert()
    ops = list_ops(flatbuffer)
    assert "CUSTOM:FlexMatrixDeterminant" in ops and "ADD" in ops
    with pytest.raises(ValueError, match="FlexMatrixDeterminant"):
        check_builtin_only(flatbuffer)
    with pytest.raises(ValueError, match="not a TFLite flatbuffer"):
        list_ops(b"\x00" * 64)


def tiny_segmenter(num_classes=4):
    keras.utils.set_random_seed(1)
    inputs = keras.Input((None, None, 3))
    x = ConvBN(16, 3, strides=2)(inputs)
    # conv3x3_ocr has 3*3*16*16 > 1024 weights: large enough for dynamic-range quantization
    return keras.Model(inputs, OCRHead(num_classes, mid_channels=16, key_channels=8)(x))


def test_quantization_modes(tmp_path):
    """Each mode's defining property, read from the flatbuffer's tensor types and the interpreter."""
    from ai_edge_litert import schema_py_generated as schema

    model = tiny_segmenter()
    images = [np.random.default_rng(i).integers(0, 256, (20, 28, 3), dtype=np.uint8) for i in range(4)]

    def conv_weight_types(path):
        with open(path, "rb") as f:
            parsed = schema.ModelT.InitFromPackedBuf(f.read(), 0)
        graph = parsed.subgraphs[0]
        names = list_ops(path)
        conv = [op for op in graph.operators if names[op.opcodeIndex] == "CONV_2D"]
        return {graph.tensors[op.inputs[1]].type for op in conv}, {graph.tensors[op.inputs[0]].type for op in conv}

    types = {}
    for mode in export.QUANTIZE_MODES:
        path = str(tmp_path / f"{mode}.tflite")
        export.export_tflite(model, path, input_size=(16, 24), quantize=mode, calibration_data=images)
        types[mode] = conv_weight_types(path)
        out = TFLiteSegmenter(path)(images[0][:16, :24])
        assert out["labels"].shape == (16, 24) and out["logits"].shape == (8, 12, 4)
        assert out["logits"].dtype == np.float32  # dequantized for int8_full
    t = schema.TensorType
    assert types["none"] == ({t.FLOAT32}, {t.FLOAT32})
    assert t.INT8 in types["dynamic"][0] and types["dynamic"][1] == {t.FLOAT32}  # int8 weights, float inputs
    assert types["int8"] == ({t.INT8}, {t.INT8}) and types["int8_full"] == ({t.INT8}, {t.INT8})
    assert TFLiteSegmenter(str(tmp_path / "int8_full.tflite")).output_details["logits"]["dtype"] == np.int8
    # fp16 stores float16 weights, dequantized once to float32 for the float conv
    assert "DEQUANTIZE" in list_ops(str(tmp_path / "fp16.tflite"))


def test_int8_keeps_the_matmuls_in_float(tmp_path):
    """quantize="int8" keeps INT8_FLOAT_OPS (BATCH_MATMUL: XNNPACK runs int8 ones only when the
    second operand's zero point is 0, never true after a ReLU) in float; float_ops=() does not."""
    from ai_edge_litert import schema_py_generated as schema

    model = tiny_segmenter()
    images = [np.random.default_rng(i).integers(0, 256, (20, 28, 3), dtype=np.uint8) for i in range(4)]

    def operand_types(path):
        with open(path, "rb") as f:
            graph = schema.ModelT.InitFromPackedBuf(f.read(), 0).subgraphs[0]
        names = list_ops(path)
        types = {}
        for op in graph.operators:
            types.setdefault(names[op.opcodeIndex], set()).update(graph.tensors[i].type for i in op.inputs[:2])
        return types

    t = schema.TensorType
    assert export.INT8_FLOAT_OPS == ("BATCH_MATMUL",)
    default, all_int8 = str(tmp_path / "int8.tflite"), str(tmp_path / "all_int8.tflite")
    export.export_tflite(model, default, input_size=(16, 24), quantize="int8", calibration_data=images)
    export.export_tflite(model, all_int8, input_size=(16, 24), quantize="int8", calibration_data=images, float_ops=())
    types = operand_types(default)
    assert types["BATCH_MATMUL"] == {t.FLOAT32} and types["CONV_2D"] == {t.INT8}
    assert {"QUANTIZE", "DEQUANTIZE"} <= set(types)
    assert operand_types(all_int8)["BATCH_MATMUL"] == {t.INT8}
    assert count_macs(default) == count_macs(all_int8)
    for path in (default, all_int8):
        out = TFLiteSegmenter(path)(images[0][:16, :24])
        assert out["labels"].shape == (16, 24) and np.isfinite(out["logits"]).all()


def test_export_tflite_refuses_bad_arguments(tmp_path):
    model = tiny_segmenter()
    out = str(tmp_path / "m.tflite")
    with pytest.raises(ValueError, match="quantize must be one of"):
        export.export_tflite(model, out, input_size=(16, 16), quantize="int4")
    with pytest.raises(ValueError, match="needs calibration_data"):
        export.export_tflite(model, out, input_size=(16, 16), quantize="int8")
    with pytest.raises(ValueError, match="HEIGHTxWIDTH"):
        export.export_tflite(model, out, input_size="16by16")
    with pytest.raises(ValueError, match="2 names but the model has 4 classes"):
        export.export_tflite(model, out, input_size=(16, 16), class_names=["a", "b"])
    with pytest.raises(FileNotFoundError, match="no_such_dir"):
        list(export.calibration_images(str(tmp_path / "no_such_dir" / "*.tfrecord"), (16, 16), 4, 4))
    assert not list(tmp_path.iterdir())  # nothing written by a refused export


def test_calibration_reads_tfrecords_round_robin_and_names_bad_records(tmp_path):
    from ocr_tf.data.records import make_example

    for shard in range(2):
        with tf.io.TFRecordWriter(str(tmp_path / f"train-{shard}.tfrecord")) as writer:
            for i in range(3):
                image = np.full((10 + i, 12, 3), 10 * shard + i, np.uint8)  # value encodes (shard, index)
                writer.write(make_example(image, source_id=f"{shard}-{i}").SerializeToString())
    images = list(export.calibration_images(str(tmp_path / "train-*.tfrecord"), (8, 6), 5, num_classes=4))
    assert [int(image[0, 0, 0]) for image in images] == [0, 10, 1, 11, 2]
    assert all(image.shape == (8, 6, 3) and image.dtype == np.uint8 for image in images)
    assert all((image == image[0, 0, 0]).all() for image in images)  # resized, values kept

    with tf.io.TFRecordWriter(str(tmp_path / "bad-0.tfrecord")) as writer:
        example = tf.train.Example()
        example.features.feature["image/encoded"].bytes_list.value.append(b"not an image")
        writer.write(example.SerializeToString())
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"record 0 of .*bad-0.tfrecord"):
        list(export.calibration_images(str(tmp_path / "bad-*.tfrecord"), (8, 6), 5, num_classes=4))


def test_count_macs_matches_the_architecture(tmp_path):
    path = str(tmp_path / "tiny.tflite")
    export.export_tflite(tiny_segmenter(), path, input_size=(16, 24))
    p, k, c, kc = 8 * 12, 4, 16, 8  # feature positions, classes, channels, key channels
    convs = (
        p * c * 3 * 3 * 3  # stem conv 3x3 stride 2
        + p * c * c + p * k * c  # soft object regions: aux_head 1x1, aux_cls
        + p * c * 9 * c  # conv3x3_ocr
        + p * kc * c + p * kc * kc  # f_pixel (phi)
        + k * kc * c + k * kc * kc + k * kc * c  # f_object (psi) and f_down (delta) on the K regions
        + p * c * kc  # f_up (rho)
        + p * c * 2 * c  # conv_bn on [context, pixels]
        + p * k * c  # cls_head
    )
    matmuls = k * c * p + p * k * kc + p * kc * k  # gather (eq. 4), relation (eq. 5), context (eq. 3)
    assert count_macs(path) == {"CONV_2D": convs, "BATCH_MATMUL": matmuls}


def test_subclassed_model_exports(tmp_path):
    """A subclassed model has no symbolic output; the class count comes from one call."""

    class Wrapper(keras.Model):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def call(self, x, training=None):
            return self.inner(x, training=training)

    model = Wrapper(tiny_segmenter())
    path = str(tmp_path / "sub.tflite")
    export.export_tflite(model, path, input_size=(16, 24), class_names=["a", "b", "c", "d"])
    image = np.random.default_rng(3).integers(0, 256, (1, 16, 24, 3), dtype=np.uint8)
    ref_logits, ref_labels = keras_reference(model, image)
    out = TFLiteSegmenter(path)(image)
    np.testing.assert_allclose(out["logits"], ref_logits[0], atol=1e-4 * np.ptp(ref_logits))
    assert (out["labels"] == ref_labels[0]).mean() >= 0.999
