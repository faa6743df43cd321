"""Generation: the multimodal attention-sink KV cache and the interleaved story loop."""
