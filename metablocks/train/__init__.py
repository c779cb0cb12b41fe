"""Training one model: AdamW + warmup/cosine, label smoothing, clipping, autocast, safetensors checkpoints, DDP.

    from metablocks.train import train, TrainConfig
    from metablocks.data import DataConfig
    result = train("recipe.yaml", data=DataConfig(source="digits"), config=TrainConfig(epochs=5), out_dir="runs/x")
"""
from metablocks.train.config import MeasureConfig, TrainConfig
from metablocks.train.loop import TrainingFailed, train
from metablocks.train.measure import measure_model

__all__ = ["MeasureConfig", "TrainConfig", "TrainingFailed", "measure_model", "train"]
