"""Reading images and writing results; never imports napari or Qt."""
