"""OpenAI-compatible HTTP front (completions, chat, models, health) and the playground page."""
