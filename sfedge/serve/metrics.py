"""Prometheus metrics (prometheus-client), in the server's own registry, served at GET /metrics."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 60)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
        r = self.registry = CollectorRegistry()
        self.requests = Counter("sfedge_requests", "HTTP requests by endpoint and status (499: the client left, "
                                "streams that ended with an error event count under their reason)",
                                ["endpoint", "status"], registry=r)
        self.queue_depth = Gauge("sfedge_queue_depth", "requests waiting for the engines", registry=r)
        self.running = Gauge("sfedge_running_requests", "requests being answered (0 or 1)", registry=r)
        self.latency = Histogram("sfedge_request_latency_seconds", "chat completion latency, arrival to last byte",
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.queue_wait = Histogram("sfedge_queue_wait_seconds", "time a request waited for the engines",
                                    buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("sfedge_time_to_first_token_seconds", "arrival to the first generated token",
                              buckets=TTFT_BUCKETS, registry=r)
        self.tokens = Counter("sfedge_generated_tokens", "tokens generated (cancelled requests included)",
                              registry=r)
        self.prompt_tokens = Counter("sfedge_prompt_tokens", "prompt positions, visual tokens included", registry=r)
        self.frames = Counter("sfedge_frames_decoded", "video frames decoded", registry=r)
        self.prefix_hits = Counter("sfedge_prefix_cache_hits", "prompts that reused a cached prefix", registry=r)
        self.reused_tokens = Counter("sfedge_prefix_reused_tokens", "prompt positions taken from the prefix cache",
                                     registry=r)
        self.cancelled = Counter("sfedge_cancelled_generations", "generations stopped early",
                                 ["reason"], registry=r)
        self.ready = Gauge("sfedge_ready", "1 once the engines are loaded and warmed up", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def observe_result(self, result) -> None:
        self.tokens.inc(len(result.token_ids))
        self.prompt_tokens.inc(result.prompt_tokens)
        self.frames.inc(len(result.frame_indices))
        if result.reused_prompt_tokens:
            self.prefix_hits.inc()
            self.reused_tokens.inc(result.reused_prompt_tokens)
