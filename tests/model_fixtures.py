"""Session fixtures that build tiny reader models (random weights, real WordPiece tokenizer)."""
