"""Turn raw item content (text columns, image files) into ``<modality>_feat.npy`` rows aligned with a
dataset's items. See :mod:`training.encode.encoders` for the encoders and :mod:`training.encode.run`
for the batched, resumable pipeline."""

from training.encode.encoders import EncodeError, Encoder, make_encoder
from training.encode.run import encode_items, image_contents, text_contents

__all__ = ["EncodeError", "Encoder", "encode_items", "image_contents", "make_encoder", "text_contents"]
