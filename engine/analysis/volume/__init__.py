"""Measurements and segmentation over CT volumes (``hu`` as ``(z, y, x)``, ``spacing_zyx`` or an LPS affine).

- :mod:`~engine.analysis.volume.roi`: statistics of a slice shape, box, sphere or mask; distances in mm.
- :mod:`~engine.analysis.volume.grow`: seeded 3D region growing in an HU window (click-to-segment).
- :mod:`~engine.analysis.volume.anatomy`: body, lungs, airways and bone without training.
- :mod:`~engine.analysis.volume.annotation`: the stored form of a 3D result (type ``volume_roi``).
- :mod:`~engine.analysis.volume.unet`: whole-body CT segmentation with the pack's 3D U-Net (nnU-Net v2 inference, ONNX Runtime).
"""
