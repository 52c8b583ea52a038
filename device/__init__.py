"""cardcam on the Pi: camera, preprocessing, model bundle, runtimes, decision, outputs, daemon."""

__version__ = "0.1.0"
