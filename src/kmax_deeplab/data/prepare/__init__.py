"""Raw official dataset downloads -> the files this library (and its peers) read.

``kmax prepare cityscapes|ade20k|coco ROOT``: one library function per dataset; every
output written atomically, interrupted runs resumed (valid outputs are kept), progress
bars. See :mod:`.cityscapes`, :mod:`.ade20k`, :mod:`.coco`.
"""

from kmax_deeplab.data.prepare._common import PrepareError
from kmax_deeplab.data.prepare.ade20k import prepare_ade20k
from kmax_deeplab.data.prepare.cityscapes import prepare_cityscapes
from kmax_deeplab.data.prepare.coco import prepare_coco

__all__ = ["PrepareError", "prepare_ade20k", "prepare_cityscapes", "prepare_coco"]
