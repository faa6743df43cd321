"""A synthetic story world in the StoryStream format that tiny models can learn and a program can judge."""
