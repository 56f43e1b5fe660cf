"""Training of the toy world's generator and segmenter (resumable, logged)."""
