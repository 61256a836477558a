"""A small CNN trained here, in about a second, on scikit-learn's digits (1,797 labelled 8×8 images).

Trained with numpy (no deep-learning framework needed on the machine) and written as an ONNX graph:
Conv(8, 3×3) → ReLU → MaxPool(2×2) → Flatten → Gemm(10) → Softmax. Input `image`: batch×1×8×8 float32
in [0, 1]; output `probabilities`: batch×10.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import ZooModel

CHANNELS = 8
LABELS = [str(d) for d in range(10)]


def load_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """→ x_train, y_train, x_test, y_test; x as N×1×8×8 float32 in [0, 1]. The test split is always the same."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(1234).permutation(len(x))  # fixed: every version is tested on the same split
    n_test = 360
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


def _im2col(x: np.ndarray) -> np.ndarray:
    """N×1×8×8 → N×64×9 patches of a 3×3 convolution with padding 1."""
    pad = np.pad(x[:, 0], ((0, 0), (1, 1), (1, 1)))
    cols = np.empty((x.shape[0], 8, 8, 9), dtype=np.float32)
    for ky in range(3):
        for kx in range(3):
            cols[..., ky * 3 + kx] = pad[:, ky:ky + 8, kx:kx + 8]
    return cols.reshape(x.shape[0], 64, 9)


def train(epochs: int = 20, seed: int = 0, lr: float = 0.01, batch: int = 64) -> dict[str, np.ndarray]:
    x_train, y_train, _, _ = load_split()
    rng = np.random.default_rng(seed)
    params = {
        "conv_w": rng.normal(0, np.sqrt(2 / 9), (CHANNELS, 9)).astype(np.float32),
        "conv_b": np.zeros(CHANNELS, np.float32),
        "fc_w": rng.normal(0, np.sqrt(2 / (CHANNELS * 16)), (10, CHANNELS * 16)).astype(np.float32),
        "fc_b": np.zeros(10, np.float32),
    }
    moments = {k: (np.zeros_like(v), np.zeros_like(v)) for k, v in params.items()}
    cols_all = _im2col(x_train)
    step = 0
    for _ in range(epochs):
        order = rng.permutation(len(x_train))
        for start in range(0, len(order), batch):
            idx = order[start:start + batch]
            cols, y = cols_all[idx], y_train[idx]
            n = len(idx)
            # forward: conv as a matmul over patches, activations kept as N×H×W×C
            conv = (cols @ params["conv_w"].T + params["conv_b"]).reshape(n, 8, 8, CHANNELS)
            relu = np.maximum(conv, 0)
            blocks = relu.reshape(n, 4, 2, 4, 2, CHANNELS)
            pooled = blocks.max(axis=(2, 4))  # N×4×4×C
            flat = pooled.transpose(0, 3, 1, 2).reshape(n, -1)  # NCHW order, as ONNX Flatten sees it
            logits = flat @ params["fc_w"].T + params["fc_b"]
            logits -= logits.max(axis=1, keepdims=True)
            probs = np.exp(logits)
            probs /= probs.sum(axis=1, keepdims=True)
            # backward
            d_logits = probs
            d_logits[np.arange(n), y] -= 1
            d_logits /= n
            grads = {"fc_w": d_logits.T @ flat, "fc_b": d_logits.sum(0)}
            d_flat = d_logits @ params["fc_w"]
            d_pooled = d_flat.reshape(n, CHANNELS, 4, 4).transpose(0, 2, 3, 1)
            mask = blocks == pooled[:, :, None, :, None, :]
            d_relu = (mask * d_pooled[:, :, None, :, None, :]).reshape(n, 8, 8, CHANNELS)
            d_conv = (d_relu * (conv > 0)).reshape(n, 64, CHANNELS)
            grads["conv_w"] = np.einsum("npc,npk->ck", d_conv, cols)
            grads["conv_b"] = d_conv.sum(axis=(0, 1))
            step += 1
            for k, g in grads.items():  # Adam
                m, v = moments[k]
                m[:] = 0.9 * m + 0.1 * g
                v[:] = 0.999 * v + 0.001 * g * g
                m_hat = m / (1 - 0.9**step)
                v_hat = v / (1 - 0.999**step)
                params[k] -= (lr * m_hat / (np.sqrt(v_hat) + 1e-8)).astype(np.float32)
    return params


def to_onnx(params: dict[str, np.ndarray]) -> bytes:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inits = [
        numpy_helper.from_array(params["conv_w"].reshape(CHANNELS, 1, 3, 3).astype(np.float32), "conv_w"),
        numpy_helper.from_array(params["conv_b"].astype(np.float32), "conv_b"),
        numpy_helper.from_array(params["fc_w"].astype(np.float32), "fc_w"),
        numpy_helper.from_array(params["fc_b"].astype(np.float32), "fc_b"),
    ]
    nodes = [
        helper.make_node("Conv", ["image", "conv_w", "conv_b"], ["conv"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("MaxPool", ["relu"], ["pool"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["pool"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], transB=1),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "digits_cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="edgefleet")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def accuracy(model_bytes: bytes, x: np.ndarray, y: np.ndarray) -> float:
    from ..session import create as create_session

    session = create_session(model_bytes)
    probs = session.run(None, {"image": x})[0]
    return float((probs.argmax(1) == y).mean())


def build(dest: Path, *, name: str = "digits", epochs: int = 20, seed: int = 0) -> ZooModel:
    params = train(epochs=epochs, seed=seed)
    model_bytes = to_onnx(params)
    onnx_path = dest / "model.onnx"
    onnx_path.write_bytes(model_bytes)
    _, _, x_test, y_test = load_split()
    np.savez(dest / "golden.npz", image=x_test[:4])
    np.savez(dest / "test.npz", x=x_test, y=y_test)
    return ZooModel(
        name=name,
        onnx=onnx_path,
        golden_inputs=dest / "golden.npz",
        task="classification",
        preprocessing={"size": (8, 8), "layout": "NCHW", "color": "GRAY", "scale": 1 / 255},
        labels=LABELS,
        extra={"accuracy_top1": accuracy(model_bytes, x_test, y_test), "epochs": epochs, "seed": seed},
        data={"test": dest / "test.npz"},
    )
