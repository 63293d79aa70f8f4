"""Reading and running exported TFLite models with LiteRT (`ai_edge_litert`).

* `list_ops`: the operators a `.tflite` file uses, read from its flatbuffer with the schema that
  ships with LiteRT (no interpreter needed, so a model whose ops LiteRT lacks can still be listed).
* `check_builtin_only`: refuses Flex (SELECT_TF_OPS) and other custom ops, which need the TF
  runtime and would not run on a phone with plain LiteRT.
* `TFLiteSegmenter`: runs an exported segmenter (uint8 image in, labels and logits out).
"""

import os

import numpy as np
from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.interpreter import Interpreter

_BUILTIN_NAMES = {
    code: name for name, code in vars(schema.BuiltinOperator).items() if not name.startswith("_")
}


def _model_bytes(model):
    if isinstance(model, (bytes, bytearray)):
        return bytes(model)
    with open(model, "rb") as f:
        return f.read()


def list_ops(model):
    """Operator names used by a TFLite model (bytes or path), in the flatbuffer's operator-code
    order. Builtins by their schema name ("CONV_2D"); custom ops as "CUSTOM:<code>" (Flex ops are
    custom ops whose code starts with "Flex")."""
    data = _model_bytes(model)
    if len(data) < 8 or data[4:8] != b"TFL3":
        where = model if isinstance(model, (str, os.PathLike)) else "the given bytes"
        raise ValueError(f"{where} is not a TFLite flatbuffer (no 'TFL3' identifier).")
    parsed = schema.ModelT.InitFromPackedBuf(data, 0)
    names = []
    for code in parsed.operatorCodes:
        # Codes < 127 live in the deprecated int8 field; newer ones only in builtinCode.
        builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
        if builtin == schema.BuiltinOperator.CUSTOM:
            custom = code.customCode.decode() if isinstance(code.customCode, bytes) else code.customCode
            names.append(f"CUSTOM:{custom}")
        else:
            names.append(_BUILTIN_NAMES.get(builtin, f"UNKNOWN_BUILTIN_{builtin}"))
    return names


def check_builtin_only(model):
    """Raise ValueError naming the ops if the model uses Flex or other custom ops; return the op list."""
    ops = list_ops(model)
    custom = [op for op in ops if op.startswith("CUSTOM:")]
    if custom:
        raise ValueError(
            f"TFLite model uses non-builtin ops {custom}; it would need the TF runtime (Flex) "
            "and would not run with plain LiteRT. Rewrite the model with TFLite builtin ops."
        )
    return ops


def count_macs(model):
    """Multiply-accumulates per inference of a TFLite model (bytes or path), by op name, read from
    the flatbuffer's tensor shapes: CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED and BATCH_MATMUL
    (the ops that dominate a segmenter's cost; element-wise ops are left out)."""
    parsed = schema.ModelT.InitFromPackedBuf(_model_bytes(model), 0)
    names = list_ops(model)
    macs = {}
    for graph in parsed.subgraphs:
        def shape(index):
            return [int(d) for d in graph.tensors[index].shape]

        for op in graph.operators:
            name = names[op.opcodeIndex]
            out = int(np.prod(shape(op.outputs[0])))
            if name == "CONV_2D":  # filter (Cout, kh, kw, Cin)
                _, kh, kw, cin = shape(op.inputs[1])
                count = out * kh * kw * cin
            elif name == "DEPTHWISE_CONV_2D":  # filter (1, kh, kw, C)
                count = out * shape(op.inputs[1])[1] * shape(op.inputs[1])[2]
            elif name == "FULLY_CONNECTED":  # weights (Cout, Cin)
                count = out * shape(op.inputs[1])[1]
            elif name == "BATCH_MATMUL":  # contracted size: a's last axis, or a's second last if adj_x
                a = shape(op.inputs[0])
                options = op.builtinOptions
                count = out * (a[-2] if options is not None and options.adjX else a[-1])
            else:
                continue
            macs[name] = macs.get(name, 0) + int(count)
    return macs


class TFLiteSegmenter:
    """A segmenter exported by `ocr_tf.export.export_tflite`, run with LiteRT's interpreter.

    `__call__(image)`: uint8 RGB (H, W, 3) or (1, H, W, 3) at the model's input size ->
    {"labels": int32 (H, W), "logits": float32 (h, w, K)} (logits dequantized if the model
    outputs them quantized). `num_threads` is passed to the interpreter (XNNPACK is on by default).
    """

    def __init__(self, model_path, num_threads=None):
        self.model_path = str(model_path)
        self.interpreter = Interpreter(model_path=self.model_path, num_threads=num_threads)
        self.runner = self.interpreter.get_signature_runner("serving_default")
        (self.input_name, detail), = self.runner.get_input_details().items()
        self.input_shape = tuple(int(d) for d in detail["shape"])
        self.input_dtype = detail["dtype"]
        self.output_details = self.runner.get_output_details()

    @property
    def input_size(self):
        return self.input_shape[1:3]

    def __call__(self, image):
        image = np.asarray(image)
        if image.ndim == 3:
            image = image[None]
        if image.shape != self.input_shape or image.dtype != self.input_dtype:
            raise ValueError(
                f"{self.model_path}: expected an image of shape {self.input_shape[1:]} "
                f"(or {self.input_shape}) and dtype {np.dtype(self.input_dtype).name}, "
                f"got shape {image.shape} and dtype {image.dtype}."
            )
        outputs = self.runner(**{self.input_name: image})
        result = {}
        for name, value in outputs.items():
            scale, zero_point = self.output_details[name]["quantization"]
            if scale and value.dtype in (np.int8, np.uint8):
                value = (value.astype(np.float32) - zero_point) * scale
            result[name] = value[0]
        return result
