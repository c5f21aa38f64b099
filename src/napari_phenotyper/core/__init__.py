"""Headless core: numpy, pandas, scikit-image and scikit-learn only; never napari or Qt."""
