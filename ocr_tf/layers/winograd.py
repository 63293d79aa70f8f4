"""3x3 stride-1 convolutions as Winograd F(2x2, 3x3): 2.25x fewer multiplications, run as GEMMs.

On CPUs where TensorFlow runs convolutions with Eigen (oneDNN off: its default on x86 CPUs without
AVX512-VNNI / bf16 / AMX, e.g. the AMD AVX2 box of BENCHMARKS.md), Eigen's 3x3 forward conv runs
at 43-50 GFLOP/s and is 89-93% of HRNet-OCR's time; PyTorch's oneDNN runs the same convs at 66-75.
Winograd's minimal filtering (Lavin and Gray, "Fast Algorithms for Convolutional Neural
Networks", 2016) computes each 2x2 output tile from a 4x4 input tile with 16 multiplications per
channel pair instead of 36:

    Y = A^T [ (G g G^T) * (B^T d B) ] A       (* elementwise, summed over input channels)

which, over all tiles, is 16 independent matmuls (tiles x C_in) @ (C_in x C_out) between cheap
add/subtract transforms. With C_in and C_out >= 128 the matmuls dominate and the conv measured
0.47-0.79x Eigen's time (720 -> 512 at 64 x 128: 0.53x; 2048 -> 512 at 128 x 128: 0.61x); with
fewer channels the transforms dominate and it measured slower (48 -> 48: 1.4x), so `applies`
keeps Keras' conv there. The transforms' coefficients are 0, +-1 and 1/2 (exact in binary), and the
result measured as close to a float64 reference as Eigen's direct conv (4-6e-7 vs 3-5e-7 of the
largest output); float32 only (bfloat16 transforms would add rounding Eigen's conv does not have).

In training (`conv_grad.conv3x3`, >= 256 channels on large maps) the input gradient is the
same conv with the kernel rotated, and `kernel_gradient` is the adjoint of the tiles: 16 matmuls
V^T dM (0.54-0.69x the row matmuls' time at 256-2048 channels).

TensorFlow offers no Winograd kernel on CPU (cuDNN and oneDNN's AVX-512 builds have their own), so
it is written here with TensorFlow ops: slices of a free reshape instead of strided slices (those
measured 5x slower for the input transform), one matmul per tile position, depth_to_space to
interleave the output tiles. TensorFlow only; exports keep the standard conv op
(`conv_grad.keras_conv_ops`), since other runtimes have their own fast convs.
"""

# Set to False (a benchmark's A/B switch) to keep Keras' conv where Winograd would run.
ENABLED = [True]
# The smallest channel count (in and out) and output map (pixels per image) from which Winograd
# measured faster than Eigen's conv on the AVX2 box (BENCHMARKS.md, issue 13).
MIN_CHANNELS = 128
MIN_PIXELS = 256
# The input transform (~40 slices and adds, each a pass over memory) compiled by XLA, TensorFlow's
# compiler, into a few fused loops: bit-identical tiles, 0.5-0.9x the op-by-op time alone; whole
# Table 4 module (2048 channels in) 0.83x, W48 inference (<= 720) 0.99x and 1.16x under load, so
# from XLA_MIN_CHANNELS input channels only (BENCHMARKS.md). It compiles once per shape, so only for
# static sizes (images of any size, predict's graphs, run op by op). The matmuls stay TensorFlow's:
# XLA's CPU dot measured faster but 3-6x less accurate from 1024 input channels (its sums over K
# are not blocked like Eigen's). XLA[0] = False: the A/B.
XLA = [True]
XLA_MIN_CHANNELS = 1024
_COMPILED = {}
# Eigen's GEMM measured 0.65-0.75x slower with 256 or 512 output columns (rows 1 or 2 KiB apart:
# cache-set conflicts) than with 16 more; so those convs' matmuls get 16 zero columns, cropped after
# (0.7x the matmul time for the 512-output convs of Table 4 and W48's head, BENCHMARKS.md).
GEMM_PAD = 16

# B^T (input tiles), A^T (output tiles): F(2x2, 3x3), applied along rows and then columns.
_IN = ((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1))
_OUT = ((1, 1, 1, 0), (0, 1, -1, -1))
# G (kernel tiles): coefficients 0, 1 and 1/2, exact in binary.
_G = ((1, 0, 0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0, 0, 1))


def applies(kernel_shape, output_hw, dtype):
    """Whether a stride-1 undilated 3x3 conv with an HWIO `kernel_shape`, computing in `dtype`, on
    output size `output_hw` measured faster as Winograd (the caller checks the backend and the
    conv's other settings). An unknown size (None: a graph for images of any size) counts as large
    enough: feature maps of >= 128 channels that small come only from thumbnails."""
    h, w = output_hw
    if not ENABLED[0] or tuple(kernel_shape[:2]) != (3, 3) or str(dtype) != "float32":
        return False
    small = h is not None and w is not None and h * w < MIN_PIXELS
    return min(kernel_shape[2], kernel_shape[3]) >= MIN_CHANNELS and not small


def _combine(terms, rows):
    """[sum_k rows[a][k] * terms[k] for each row a]: adds and subtracts for coefficients +-1."""
    out = []
    for row in rows:
        acc = None
        for c, t in zip(row, terms):
            if c == 0:
                continue
            if acc is None:
                acc = t if c == 1 else (-t if c == -1 else c * t)
            elif c in (1, -1):
                acc = acc + t if c == 1 else acc - t
            else:
                acc = acc + c * t
        out.append(acc)
    return out


def _transpose(rows):
    return tuple(zip(*rows))


def transform_kernel(kernel):
    """G g G^T of an HWIO 3x3 `kernel`: a list of 16 (C_in, C_out) matrices, tile position
    (a, b) at index 4 * a + b."""

    rows = _combine([kernel[0], kernel[1], kernel[2]], _G)  # along the kernel's rows: 4 x (3, C_in, C_out)
    return [m for r in rows for m in _combine([r[0], r[1], r[2]], _G)]


def conv3x3(x, kernel, padding="VALID"):
    """`tf.nn.convolution(x, kernel, padding=padding)` for NHWC `x` (any batch and size; static
    channels) and an HWIO 3x3 float32 `kernel`, computed as Winograd F(2x2, 3x3). `padding`:
    "VALID" or "SAME" (one zero row and column on each side, as PyTorch's padding=1).

    Example:

    >>> import numpy as np, tensorflow as tf
    >>> x = tf.random.normal((2, 18, 20, 128)); k = tf.random.normal((3, 3, 128, 128))
    >>> ref = tf.nn.convolution(x, k, padding="VALID")
    >>> bool(np.allclose(conv3x3(x, k), ref, atol=1e-3))
    True
    """
    import tensorflow as tf  # TensorFlow only (see the module docstring)

    tiles, geometry = _input_tiles(x, padding)
    c_out, extra = kernel.shape[3], _gemm_padding(kernel.shape[2], kernel.shape[3])
    if extra:
        kernel = tf.pad(kernel, [[0, 0], [0, 0], [0, 0], [0, extra]])
    m = [tf.matmul(t, u_ab) for t, u_ab in zip(tiles, transform_kernel(kernel))]  # 16 x (T, C_out)
    # A^T M A: along the tile rows (a) for each column b, then along the columns.
    by_column = [_combine([m[4 * a + b] for a in range(4)], _OUT) for b in range(4)]  # [b][dy]
    outputs = [y for dy in range(2) for y in _combine([by_column[b][dy] for b in range(4)], _OUT)]
    h, w, hh, wh, padded = geometry
    y = tf.reshape(tf.concat(outputs, axis=-1), [-1, hh, wh, 4 * (c_out + extra)])
    y = tf.nn.depth_to_space(y, 2)  # channels ordered (dy, dx, C_out): the 2x2 tiles in place
    return y[:, :h, :w, :c_out] if padded or extra else y


def _gemm_padding(c_in, c_out):
    """Zero columns to add to the (C_in, C_out) matmuls (GEMM_PAD): where C_out is a multiple of
    256 and C_in >= 256 (at fewer input channels it measured no faster)."""
    return GEMM_PAD if c_out % 256 == 0 and c_in >= 256 else 0


def kernel_gradient(x, dy, padding="VALID"):
    """dL/dkernel of `conv3x3(x, kernel, padding)` for the upstream gradient `dy`, through the same tiles:
    the adjoint of each step, dU_ab = V_ab^T (A dY A^T)_ab (16 matmuls over all tiles, 2.25x fewer
    multiplications than the direct sums) and dkernel = G^T dU G."""
    import tensorflow as tf

    tiles, (h, w, hh, wh, padded) = _input_tiles(x, padding)
    c_out, extra = dy.shape[-1], _gemm_padding(x.shape[-1], dy.shape[-1])
    if padded or extra:  # the cropped output rows / columns had no gradient; zero GEMM columns
        dy = tf.pad(dy, [[0, 0], [0, 2 * hh - h], [0, 2 * wh - w], [0, extra]])
    width = c_out + extra
    # dY per output position (p, q) of the 2x2 tiles: channel blocks of space_to_depth.
    s2d = tf.reshape(tf.nn.space_to_depth(dy, 2), [-1, 4 * width])
    d_out = [s2d[:, k * width : (k + 1) * width] for k in range(4)]  # (p, q) = (0,0), (0,1), (1,0), (1,1)
    a_matrix = _transpose(_OUT)  # A (4 x 2)
    by_row = [_combine([d_out[2 * p + q] for q in range(2)], a_matrix) for p in range(2)]  # [p][b]
    d_m = [[_combine([by_row[p][b] for p in range(2)], a_matrix)[a] for b in range(4)] for a in range(4)]
    d_u = [tf.matmul(tiles[4 * a + b], d_m[a][b], transpose_a=True) for a in range(4) for b in range(4)]
    g_t = _transpose(_G)  # G^T (3 x 4)
    rows = [_combine([d_u[4 * a + b] for a in range(4)], g_t) for b in range(4)]  # [b][i]
    dkernel = tf.stack([tf.stack(_combine([rows[b][i] for b in range(4)], g_t)) for i in range(3)])
    return dkernel[..., :c_out] if extra else dkernel


def compiles(x_shape):
    """Whether the input transform of an NHWC input of `x_shape` runs compiled by XLA: static
    height and width (one compile per shape) and >= XLA_MIN_CHANNELS channels."""
    static = x_shape[1] is not None and x_shape[2] is not None
    return XLA[0] and static and x_shape[3] >= XLA_MIN_CHANNELS


def _input_tiles(x, padding="VALID"):
    """B^T d B of every 4x4 input tile (stride 2) of NHWC `x` (zero-padded by one on each side
    first if `padding` is "SAME"): 16 (tiles, C_in) matrices, position (a, b) at 4 * a + b, and
    (h, w, hh, wh, padded): the output size, the tile grid, whether the output has a row or column
    more than (h, w), to crop (an odd or unknown size)."""
    if not compiles(x.shape):
        return _input_tiles_ops(x, padding)
    if padding not in _COMPILED:
        import tensorflow as tf

        _COMPILED[padding] = tf.function(lambda x: _input_tiles_ops(x, padding)[0], jit_compile=True, autograph=False)
    return _COMPILED[padding](x), _tile_grid(x, padding)


def _tile_grid(x, padding="VALID"):
    """(h, w, hh, wh, padded) of `_input_tiles` for NHWC `x`."""
    import tensorflow as tf

    crop = 2 if padding == "VALID" else 0
    # Static sizes where known (a plain graph), else tensors (images of any size, e.g. predict).
    h, w = (x.shape[i] - crop if x.shape[i] is not None else tf.shape(x)[i] - crop for i in (1, 2))
    padded = not (isinstance(h, int) and isinstance(w, int)) or bool(h % 2 or w % 2)
    return h, w, (h + h % 2) // 2, (w + w % 2) // 2, padded


def _input_tiles_ops(x, padding="VALID"):
    """`_input_tiles` as TensorFlow ops, one by one unless the caller compiles them."""
    import tensorflow as tf

    if padding not in ("VALID", "SAME"):
        raise ValueError(f"padding must be 'VALID' or 'SAME', got {padding!r}.")
    c_in = x.shape[-1]
    h, w, hh, wh, padded = _tile_grid(x, padding)
    # SAME: one zero row / column on each side. Odd sizes: one more at the bottom / right for whole
    # 2x2 output tiles (that output row / column is cropped by the caller). One pad for both.
    side = 1 if padding == "SAME" else 0
    if side or padded:
        x = tf.pad(x, [[0, 0], [side, side + 2 * hh - h], [side, side + 2 * wh - w], [0, 0]])
    # Tile (i, j) reads rows 2i..2i+3 and columns 2j..2j+3. With rows and columns split by parity
    # (a reshape, no copy), its row k is [i + k // 2, parity k % 2]: plain slices of whole rows.
    xr = tf.reshape(x, [-1, hh + 1, 2, wh + 1, 2, c_in])
    rows = [xr[:, i : i + hh, p] for i, p in ((0, 0), (0, 1), (1, 0), (1, 1))]  # (N, hh, wh+1, 2, C)
    tiles = []
    for r in _combine(rows, _IN):
        cols = [r[:, :, j : j + wh, p] for j, p in ((0, 0), (0, 1), (1, 0), (1, 1))]  # (N, hh, wh, C)
        tiles += [tf.reshape(t, [-1, c_in]) for t in _combine(cols, _IN)]
    return tiles, (h, w, hh, wh, padded)
