"""Measurements and segmentation over CT volumes (``hu`` as ``(z, y, x)``, ``spacing_zyx`` or an LPS affine).

- :mod:`~engine.analysis.volume.roi`: statistics of a slice shape, box, sphere or mask; distances in mm.
- :mod:`~engine.analysis.volume.grow`: seeded 3D region growing in an HU window (click-to-segment).
- :mod:`~engine.analysis.volume.anatomy`: body, lungs, airways and bone without training.
- :mod:`~engine.analysis.volume.annotation`: the stored form of a 3D result (type ``volume_roi``).
"""
