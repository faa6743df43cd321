"""Generation: the multimodal attention-sink KV cache, the story loop, and stories from trained models."""
