"""Engine: inference (:class:`Predictor`, prediction writers); training lands beside it."""

from kmax_deeplab.engine.predictor import Predictor, load_image, preprocess
from kmax_deeplab.engine.writers import PredictionWriter, id_to_rgb, rgb_to_id, write_panoptic_png

__all__ = ["Predictor", "PredictionWriter", "id_to_rgb", "load_image", "preprocess", "rgb_to_id",
           "write_panoptic_png"]
