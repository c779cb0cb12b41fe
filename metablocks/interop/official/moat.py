"""Official MOAT weights (google-research/deeplab2, TensorFlow) for ``metablocks convert``: the checkpoint's
variables as a ``.npz`` (names -> arrays) or, where TensorFlow is installed, a TF checkpoint prefix; the mapping
itself is ``metablocks.interop.moat_tf`` (EMA copies are taken where the checkpoint has them: the evaluated weights).

    # once, beside TensorFlow:  r = tf.train.load_checkpoint(prefix)
    #   np.savez("moat0.npz", **{n: r.get_tensor(n) for n in r.get_variable_to_shape_map()})
    metablocks convert moat0.npz --recipe moat_0 -o moat_0.safetensors
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor, nn

from metablocks.interop import moat_tf
from metablocks.interop.official import OfficialWeightsError, official


def read_tf_variables(path: Path) -> dict[str, np.ndarray]:
    """TF variables from a ``.npz`` of arrays, or from a TF checkpoint (``prefix`` of ``prefix.index``)."""
    if path.suffix == ".npz":
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
        with np.load(path, allow_pickle=False) as arrays:
            return {name: arrays[name] for name in arrays.files}
    if not Path(f"{path}.index").is_file():
        raise OfficialWeightsError(f"{path} is neither a .npz of MOAT's TF variables nor a TF checkpoint prefix "
                                   f"(no {path}.index)")
    try:
        import tensorflow as tf
    except ImportError:
        raise OfficialWeightsError(f"{path} is a TensorFlow checkpoint and TensorFlow is not installed: save its "
                                   "variables as a .npz where it is (see metablocks/interop/official/moat.py)") from None
    reader = tf.train.load_checkpoint(str(path))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}


@official("moat", source="google-research/deeplab2 model/pixel_encoder/moat.py (TensorFlow)", reader=read_tf_variables,
          drops=(r"(^|/)(global_step|save_counter)", r"/(Momentum|Adam|RMSProp)(_\d+)?(:0)?$", r"^_CHECKPOINTABLE"))
def convert_moat(variables: Mapping[str, Any], model: nn.Module | None = None) -> dict[str, Tensor]:
    """deeplab2 MOAT variables -> ours (NHWC kernels transposed, per-head q/k/v joined into one qkv)."""
    return moat_tf.convert(variables, ema=True)
