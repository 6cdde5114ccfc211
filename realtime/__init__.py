"""endofuse.realtime: the frame-synchronised WLI/NBI pipeline with overlay and latency tracing.

    from endofuse.realtime import segment_pair, build_pipeline
    result = segment_pair(engine, wli_bgr, nbi_bgr)          # one pair
    for result in build_pipeline("wli.mp4", "nbi.mp4", engine):  # a stream
        ...
"""
from endofuse.realtime.output.overlay import OverlayStyle
from endofuse.realtime.pipeline import FrameResult, Pipeline, PipelineConfig, build_pipeline
from endofuse.realtime.segment import FUSED, WLI_ONLY, PairResult, segment_pair

__all__ = ["FUSED", "WLI_ONLY", "FrameResult", "OverlayStyle", "PairResult", "Pipeline", "PipelineConfig",
           "build_pipeline", "segment_pair"]
