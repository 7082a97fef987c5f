"""Lean runtime: video -> frames -> engines -> text. Never imports torch or transformers."""
