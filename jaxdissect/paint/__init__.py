"""GAN Paint: paint concepts onto generated images by switching their units on or off in a region.

- `concepts`: which unit sets can be painted (from ACE results or a dissection);
- `masks`: the wire format of a brush mask;
- `painter`: renders a sample with a list of strokes, one compiled function for any strokes;
- `server`: the FastAPI app (JSON API + the page in `static/`).
"""
