"""StoryStream data: the released format, bad-record accounting, stage samples, Ray Data pipelines."""
