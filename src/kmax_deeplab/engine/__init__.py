"""Engine: inference (:class:`Predictor`, prediction writers) and training (:mod:`.trainer`,
:mod:`.build`: ``train_from_config``); every model family is reached through
``kmax_deeplab.modeling.families``."""

from kmax_deeplab.engine.predictor import Predictor, load_image, preprocess
from kmax_deeplab.engine.writers import PredictionWriter, id_to_rgb, rgb_to_id, write_panoptic_png

__all__ = ["Predictor", "PredictionWriter", "id_to_rgb", "load_image", "preprocess", "rgb_to_id",
           "write_panoptic_png"]
