"""Ray Train + DeepSpeed mechanics shared by the three training stages."""
