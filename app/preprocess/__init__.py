"""Steps that turn what clients send into what a model takes (raw text into token ids)."""

from app.preprocess.text import TextStage, TextTokenizer

__all__ = ["TextStage", "TextTokenizer"]
