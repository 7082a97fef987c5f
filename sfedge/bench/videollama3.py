"""The VideoLLaMA3 reference timed stage by stage for `sfedge bench` (Family.bench_reference of
video_llama_3): transformers' processor and `generate` on the frames and question the engines get.

Stages (ms), as the engines report them: decode_video (every frame, PyAV: what the reference is
handed), preprocess (the processor: sampling, resize, normalise, mask, prompt), vision
(`get_video_features` alone, for the breakdown: `generate` runs it again inside its prefill),
prefill (from the call to `generate` to the first token's id on the host), ttft (from the start),
decode_ms_per_token (the rest / (N - 1)), e2e (decode_video + preprocess + generate: the vision
breakdown is not counted twice). `generate` is held to N new tokens (min_new_tokens = N, EOS ignored).
"""

from __future__ import annotations

import time

from .runner import SideResult, time_reference


def bench_reference(cfg, gen, manifest: dict, checkpoint: str, dtype: str, on_cuda: bool) -> SideResult:
    import torch
    from transformers import TextStreamer

    from ..models.tiny import resolve_model
    from ..parity_videollama3 import decoded
    from ..reference.videollama3 import VideoLlama3Reference, process

    device = "cuda" if on_cuda else "cpu"
    sync = torch.cuda.synchronize if on_cuda else (lambda: None)
    side = SideResult(info={"dtype": dtype, "checkpoint": checkpoint})
    overrides = {} if cfg.prune else {"use_token_compression": False}

    class FirstToken(TextStreamer):  # `put` sees the prompt first, then each new token
        def __init__(self):
            self.calls, self.first = 0, None

        def put(self, value):
            self.calls += 1
            if self.calls == 2 and self.first is None:
                self.first = time.perf_counter()

        def end(self):
            pass

    def one_run(ref) -> dict:
        t0 = time.perf_counter()
        frames, fps = decoded(cfg.video)
        t1 = time.perf_counter()
        inputs, _, _ = process(ref.processor, frames, fps, cfg.question, **overrides)
        inputs = inputs.to(device)
        t2 = time.perf_counter()
        ref.video_features(inputs["pixel_values_videos"], inputs["video_grid_thw"][0].tolist())
        sync()
        t3 = time.perf_counter()
        streamer = FirstToken()
        with torch.inference_mode():
            out = ref.model.generate(**inputs, max_new_tokens=gen.max_new_tokens, min_new_tokens=gen.max_new_tokens,
                                     do_sample=False, streamer=streamer)
        sync()
        t4 = time.perf_counter()
        new = out[0, inputs["input_ids"].shape[1]:].tolist()
        first = streamer.first or t4
        mask = inputs["video_compression_mask"]
        side.info.update(frames=int(inputs["video_grid_thw"][0, 0]), visual_tokens=int(mask.sum()),
                         visual_tokens_pruned=int(mask.numel() - mask.sum()),
                         prefill_tokens=int(inputs["input_ids"].shape[1]), tokens=[int(t) for t in new])
        return {"decode_video": (t1 - t0) * 1e3, "preprocess": (t2 - t1) * 1e3, "vision": (t3 - t2) * 1e3,
                "prefill": (first - t3) * 1e3, "ttft": (first - t0) * 1e3 - (t3 - t2) * 1e3,
                "decode_ms_per_token": (t4 - first) * 1e3 / max(1, len(new) - 1),
                "e2e": (t4 - t0) * 1e3 - (t3 - t2) * 1e3, "new_tokens": len(new)}

    def llm_weight_bytes(ref) -> int:
        lm = ref.model.model.language_model
        return (sum(p.numel() * p.element_size() for n, p in lm.named_parameters() if "embed_tokens" not in n)
                + ref.model.lm_head.weight.numel() * ref.model.lm_head.weight.element_size())

    return time_reference(side, cfg, on_cuda,
                          lambda: VideoLlama3Reference(resolve_model(checkpoint), getattr(torch, dtype), device),
                          one_run, llm_weight_bytes)
