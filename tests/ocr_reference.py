"""An independent NumPy float64 implementation of the paper's equations 3-6 and of PyTorch's
bilinear resize, used as the reference the Keras layers are tested against.

Written from the paper and ANCHORS.md, not from the layers: weights are read out of the Keras
layers by name, everything else is plain NumPy.
"""

import numpy as np

EPS = 1e-5


def softmax(x, axis):
    x = x - x.max(axis=axis, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


def conv(x, kernel, bias=None, stride=1, pad=0):
    """NHWC convolution, kernel (kh, kw, cin, cout), symmetric zero padding (PyTorch)."""
    kh, kw = kernel.shape[:2]
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    h = (x.shape[1] - kh) // stride + 1
    w = (x.shape[2] - kw) // stride + 1
    out = np.zeros((x.shape[0], h, w, kernel.shape[3]))
    for i in range(kh):
        for j in range(kw):
            patch = x[:, i : i + stride * h : stride, j : j + stride * w : stride, :]
            out += patch @ kernel[i, j]
    if bias is not None:
        out += bias
    return out


def batchnorm(x, gamma, beta, mean, var):
    return (x - mean) / np.sqrt(var + EPS) * gamma + beta


def conv_bn_relu(x, w, pad=0, relu=True):
    """`w` is a dict of float64 arrays: kernel, [bias], gamma, beta, moving_mean, moving_variance."""
    y = conv(x, w["kernel"], w.get("bias"), pad=pad)
    y = batchnorm(y, w["gamma"], w["beta"], w["moving_mean"], w["moving_variance"])
    return np.maximum(y, 0) if relu else y


def region_representations(pixels, regions):
    """Eq. 4: f_k = sum_i softmax over pixels i of m_ki, times x_i. (B,h,w,C), (B,h,w,K) -> (B,K,C)."""
    b, h, w, c = pixels.shape
    m = softmax(regions.reshape(b, h * w, -1), axis=1)
    return np.einsum("bnk,bnc->bkc", m, pixels.reshape(b, h * w, c))


def object_contextual(pixels, regions, w, key_channels):
    """Eq. 5 (relation) and eq. 3 (context): pixels (B,h,w,C), regions (B,K,C) -> (B,h,w,C_out)."""
    b, h, wd, _ = pixels.shape
    f = regions[:, :, None, :]
    q = conv_bn_relu(conv_bn_relu(pixels, w["f_pixel_0"]), w["f_pixel_1"]).reshape(b, h * wd, -1)
    k = conv_bn_relu(conv_bn_relu(f, w["f_object_0"]), w["f_object_1"])[:, :, 0, :]
    v = conv_bn_relu(f, w["f_down"])[:, :, 0, :]
    rel = softmax(np.einsum("bnc,bkc->bnk", q, k) * key_channels**-0.5, axis=-1)
    y = np.einsum("bnk,bkc->bnc", rel, v).reshape(b, h, wd, -1)
    return conv_bn_relu(y, w["f_up"])


def augmented(pixels, regions, w, key_channels):
    """Eq. 6: g([y_i, x_i]) with the context first (inference: dropout is the identity)."""
    y = object_contextual(pixels, regions, w, key_channels)
    return conv_bn_relu(np.concatenate([y, pixels], axis=-1), w["conv_bn"])


def ocr_head(features, w, key_channels, aux_features=None, aux_pad=0, shared_stem=False):
    """The whole head as ANCHORS.md describes it. Returns (logits, aux_logits).
    shared_stem: the aux head's conv-BN-ReLU output is also the OCR branch's pixel representation."""
    aux_in = features if aux_features is None else aux_features
    aux = conv_bn_relu(aux_in, w["aux_head"], pad=aux_pad)
    aux_logits = conv(aux, w["aux_cls"]["kernel"], w["aux_cls"]["bias"])
    feats = aux if shared_stem else conv_bn_relu(features, w["conv3x3_ocr"], pad=1)
    regions = region_representations(feats, aux_logits)
    z = augmented(feats, regions, w, key_channels)
    logits = conv(z, w["cls_head"]["kernel"], w["cls_head"]["bias"])
    return logits, aux_logits


def resize_bilinear(x, size, align_corners):
    """PyTorch's F.interpolate(mode='bilinear') on NHWC float64, without antialiasing."""
    out_h, out_w = size
    in_h, in_w = x.shape[1:3]

    def coords(n_out, n_in):
        if align_corners:
            if n_out == 1:
                return np.zeros(1)
            return np.arange(n_out) * (n_in - 1) / (n_out - 1)
        src = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
        return np.clip(src, 0, None)  # PyTorch clamps negative source coordinates to 0

    ys, xs = coords(out_h, in_h), coords(out_w, in_w)
    y0 = np.minimum(np.floor(ys).astype(int), in_h - 1)
    x0 = np.minimum(np.floor(xs).astype(int), in_w - 1)
    y1, x1 = np.minimum(y0 + 1, in_h - 1), np.minimum(x0 + 1, in_w - 1)
    wy = (ys - y0)[None, :, None, None]
    wx = (xs - x0)[None, None, :, None]
    top = x[:, y0][:, :, x0] * (1 - wx) + x[:, y0][:, :, x1] * wx
    bottom = x[:, y1][:, :, x0] * (1 - wx) + x[:, y1][:, :, x1] * wx
    return top * (1 - wy) + bottom * wy
