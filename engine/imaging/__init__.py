"""Image decoding for MedVision: DICOM/PNG/JPEG to pixels, display window, spacing, type.

Public API: :func:`decode_image` returns a :class:`DecodedImage`;
:func:`detect_image_type` guesses CXR/KUB/CT/MRI/US/EKG/Other.
"""

from engine.imaging.decode import DecodedImage, decode_image, window_to_uint8
from engine.imaging.image_type import ImageTypeGuess, detect_image_type
from engine.vocabulary import IMAGE_TYPES

__all__ = [
    "IMAGE_TYPES",
    "DecodedImage",
    "ImageTypeGuess",
    "decode_image",
    "detect_image_type",
    "window_to_uint8",
]
