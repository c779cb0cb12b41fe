"""How tests/data/moat_official_keys.json and moat_official_micro.npz were made from the official MOAT code (not run by
the tests: it needs TensorFlow and google-research/deeplab2, neither of which the project depends on).

    python -m venv /tmp/venv_tf && /tmp/venv_tf/bin/pip install tensorflow-cpu tf_keras numpy pyyaml absl-py
    # deeplab2 checked out as a package: /tmp/ref_pkg/deeplab2 -> the repository (google-research/deeplab2)
    TF_USE_LEGACY_KERAS=1 /tmp/venv_tf/bin/python tests/data/moat_fixtures_from_deeplab2.py /tmp/ref_pkg tests/data

deeplab2's Attention reindexes its position table once, in ``build``; in eager mode that is an EagerTensor, so weights
assigned afterwards (also by deeplab2's own ``_load_moat_pretrained_checkpoint``) do not reach the bias. The script
re-runs ``build`` on the assigned table (``refresh_position_bias``) before it computes the reference logits.
"""
import json
import os
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
sys.path.insert(0, sys.argv[1])
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from deeplab2.model.layers import moat_attention  # noqa: E402
from deeplab2.model.pixel_encoder import moat  # noqa: E402

_build = moat_attention.Attention.build


def _recording_build(self, input_shape):
    self._built_shape = input_shape
    return _build(self, input_shape)


moat_attention.Attention.build = _recording_build


def refresh_position_bias(model):
    for layer in model.submodules:
        if isinstance(layer, moat_attention.Attention) and getattr(layer, "relative_position_embedding", None) is not None:
            table = layer.relative_position_embedding
            layer.add_weight = lambda *a, **k: table
            _build(layer, layer._built_shape)
            del layer.add_weight


def randomize(model, rng):
    """Non-default values everywhere (He-scaled kernels, BN statistics and affines, biases, tables), on the float16
    grid so that the fixture stores them as float16 exactly."""
    for v in model.variables:
        name, shape = v.name, v.shape.as_list()
        if name.endswith(("kernel:0", "weight:0")) and "relative" not in name:
            if "depthwise" in name or name.endswith("/o/weight:0"):
                fan = shape[0] * shape[1]
            elif name.endswith("weight:0"):
                fan = shape[0]
            else:
                fan = int(np.prod(shape[:-1]))
            value = rng.normal(0, 1 / np.sqrt(fan), shape)
        elif name.endswith("gamma:0"):
            value = 1 + 0.2 * rng.normal(size=shape)
        elif name.endswith("moving_variance:0"):
            value = rng.uniform(0.5, 1.5, shape)
        elif "relative_position_embedding" in name:
            value = rng.normal(0, 0.5, shape)
        else:  # bias, beta, moving_mean
            value = 0.1 * rng.normal(size=shape)
        v.assign(value.astype(np.float16).astype(np.float32))
    refresh_position_bias(model)


def manifest(out_dir):
    out = {}
    for key, name, size in [("moat_0", "moat0_pretrain_224_1k", 224), ("moat_1", "moat1_pretrain_224_1k", 224),
                            ("tiny_moat_0", "tiny_moat0_pretrain_256_1k", 256)]:
        m = moat.get_model(name, input_shape=[size, size, 3], pool_size=2,
                           override_config=dict(build_classification_head_with_class_num=1000))
        trainable = {v.name for v in m.trainable_variables}
        out[key] = {"official_name": name, "input_size": size,
                    "trainable_params": sum(int(np.prod(v.shape)) for v in m.trainable_variables),
                    "variables": {v.name.removesuffix(":0"): [v.shape.as_list(), v.name in trainable] for v in m.variables}}
    lines = ["{"]  # one line per variable
    for i, (key, entry) in enumerate(out.items()):
        lines.append(f' "{key}": {{"official_name": "{entry["official_name"]}", "input_size": {entry["input_size"]}, '
                     f'"trainable_params": {entry["trainable_params"]}, "variables": {{')
        items = list(entry["variables"].items())
        lines += [f'  "{n}": [{json.dumps(s)}, {json.dumps(t)}]' + ("," if j < len(items) - 1 else "")
                  for j, (n, (s, t)) in enumerate(items)]
        lines.append(" }}" + ("," if i < len(out) - 1 else ""))
    with open(os.path.join(out_dir, "moat_official_keys.json"), "w") as f:
        f.write("\n".join(lines + ["}"]) + "\n")


def micro(out_dir):
    cfg = dict(stem_size=[8, 8], block_type=["mbconv", "mbconv", "moat", "moat"], num_blocks=[2, 1, 2, 1],
               hidden_size=[8, 16, 16, 32], head_size=8, position_embedding_size=[None, None, 2, 2],
               build_classification_head_with_class_num=10, pool_size=2, window_size=None)
    m = moat.MOAT(**cfg)
    m(tf.keras.Input(shape=[48, 48, 3]))
    rng = np.random.default_rng(0)
    randomize(m, rng)
    x = rng.normal(size=(1, 48, 48, 3)).astype(np.float16).astype(np.float32)
    logits = m(x, training=False).numpy()
    weights = {v.name.removesuffix(":0"): v.numpy() for v in m.variables}
    np.savez_compressed(os.path.join(out_dir, "moat_official_micro.npz"), input=x.astype(np.float16), logits=logits,
                        **{"tf:" + k: w.astype(np.float16) for k, w in weights.items()})


if __name__ == "__main__":
    manifest(sys.argv[2])
    micro(sys.argv[2])
