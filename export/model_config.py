"""Triton model configs: the options they are generated with, and config.pbtxt text <-> message.

Every config fracscan writes is built as Triton's own protobuf (`model_config_pb2.ModelConfig`) by the
repository generator (`fracscan.export.repository`, and `fracscan.export.tensorrt.config` for the
tensorrt target) from `RepositoryOptions`, and printed by protobuf, so it parses by construction;
`parse_config` reads one back.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc


def config_text(cfg: mc.ModelConfig) -> str:
    return str(text_format.MessageToString(cfg))


def parse_config(text: str) -> mc.ModelConfig:
    """Parse config.pbtxt text with Triton's model-config protobuf (raises on any error)."""
    return text_format.Parse(text, mc.ModelConfig())


@dataclass(frozen=True)
class RepositoryOptions:
    max_batch_size: int = 8
    preferred_batch_sizes: tuple[int, ...] = (4, 8)
    max_queue_delay_us: int = 2000
    preprocess_instances: int = 2  # decoding, crop, resize: the CPU-heavy python step (preprocess_instances_for)
    member_instances: int = 1
    study_instances: int = 2  # each waits on the ensemble for its views: two let studies overlap
    gpu_instances: int = 1  # tensorrt / onnxruntime-on-GPU members
    # tensorrt target only (fracscan.export.tensorrt.config): one engine file per compute capability,
    # a model_warmup sample of `image` ("zero", "random" or "none"), optional CUDA graphs
    trt_compute_capabilities: tuple[str, ...] = ("7.5", "8.0", "8.6", "8.9", "9.0", "10.0", "12.0")
    warmup: str = "zero"
    cuda_graphs: bool = False
