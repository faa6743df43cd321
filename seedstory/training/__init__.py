"""Ray Train + DeepSpeed mechanics shared by the training stages, whose recipes live in their jobs
(``jobs/<stage>.py``)."""
