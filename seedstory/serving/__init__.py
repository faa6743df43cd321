"""The story service on Ray Serve: an HTTP ingress, the writer (MLLM) and the painter (de-tokenizer)."""
