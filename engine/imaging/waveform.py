"""Render DICOM ECG waveforms as a paper-style image so an EKG can be viewed like a film.

Layout: white background, a light millimetre grid (minor line every 1 mm, major every
5 mm, at :data:`PX_PER_MM` pixels per mm), one row per channel with its label on the
left and a black trace at the standard 25 mm/s and 10 mm/mV. The time axis is
stretched or compressed only to keep the trace area between
:data:`MIN_TRACE_WIDTH_PX` and :data:`MAX_TRACE_WIDTH_PX` wide; the scales actually
used are returned with the image.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from pydicom.dataset import Dataset

PX_PER_MM = 4
PAPER_SPEED_MM_PER_S = 25.0
GAIN_MM_PER_MV = 10.0
ROW_HEIGHT_MM = 20
LABEL_WIDTH_PX = 80
MARGIN_PX = 5 * PX_PER_MM
MIN_TRACE_WIDTH_PX = 1000
MAX_TRACE_WIDTH_PX = 4000
GRID_MINOR_GRAY = 235
GRID_MAJOR_GRAY = 200
TRACE_GRAY = 0
# UCUM codes of ChannelSensitivityUnitsSequence -> millivolts per unit.
UNIT_TO_MV = {"uV": 1e-3, "mV": 1.0, "V": 1e3}


def _channel_label(channel: Dataset, index: int) -> str:
    """Name a channel from ChannelLabel, else its source code meaning ("Lead II")."""
    label = channel.get("ChannelLabel")
    if not label and channel.get("ChannelSourceSequence"):
        label = channel.ChannelSourceSequence[0].get("CodeMeaning")
    return str(label or f"Channel {index + 1}")


def _short_label(label: str) -> str:
    """Shorten "Lead I (Einthoven)" to "I" so it fits the label column."""
    label = re.sub(r"\s*\(.*?\)", "", label)
    return re.sub(r"^Lead\s+", "", label).strip()[:10]


def _mv_per_unit(channel: Dataset) -> float | None:
    """Millivolts per value of ``waveform_array`` for this channel, None if unknown."""
    units = channel.get("ChannelSensitivityUnitsSequence")
    if not units:
        return None
    return UNIT_TO_MV.get(str(units[0].get("CodeValue", "")))


def render_ecg(ds: Dataset, group_index: int) -> tuple[np.ndarray, dict[str, Any]]:
    """Draw one multiplex group of an ECG dataset as a uint8 grayscale image.

    Parameters
    ----------
    ds:
        A dataset with a WaveformSequence.
    group_index:
        Which multiplex group (item of WaveformSequence) to draw.

    Returns
    -------
    tuple
        ``(image, info)``: the HxW uint8 image and a JSON-ready dict with channel
        labels, sampling frequency, sample count and the scales used. Channels in
        unknown units are scaled so their 99th percentile amplitude spans 1 cm.
    """
    group = ds.WaveformSequence[group_index]
    signals = np.nan_to_num(ds.waveform_array(group_index).astype(np.float64))
    sample_count, channel_count = signals.shape
    sampling_hz = float(group.SamplingFrequency)
    channels = list(group.get("ChannelDefinitionSequence") or [])
    labels = [_channel_label(channels[i], i) if i < len(channels) else f"Channel {i + 1}"
              for i in range(channel_count)]

    duration_s = sample_count / sampling_hz
    nominal_width = duration_s * PAPER_SPEED_MM_PER_S * PX_PER_MM
    trace_width = int(np.clip(round(nominal_width), MIN_TRACE_WIDTH_PX, MAX_TRACE_WIDTH_PX))
    px_per_s = trace_width / duration_s
    px_per_mv = GAIN_MM_PER_MV * PX_PER_MM
    row_height = ROW_HEIGHT_MM * PX_PER_MM
    width = LABEL_WIDTH_PX + trace_width + MARGIN_PX
    height = channel_count * row_height + 2 * MARGIN_PX

    canvas = np.full((height, width), 255, dtype=np.uint8)
    grid = canvas[:, LABEL_WIDTH_PX:]
    grid[::PX_PER_MM, :] = GRID_MINOR_GRAY
    grid[:, ::PX_PER_MM] = GRID_MINOR_GRAY
    grid[::5 * PX_PER_MM, :] = GRID_MAJOR_GRAY
    grid[:, ::5 * PX_PER_MM] = GRID_MAJOR_GRAY

    image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(image)
    x = LABEL_WIDTH_PX + np.arange(sample_count) * (px_per_s / sampling_hz)
    for index in range(channel_count):
        trace = signals[:, index] - np.median(signals[:, index])
        mv_per_unit = _mv_per_unit(channels[index]) if index < len(channels) else None
        if mv_per_unit is None:
            amplitude = float(np.percentile(np.abs(trace), 99)) or 1.0
            mv_per_unit = 1.0 / amplitude
        baseline_y = MARGIN_PX + (index + 0.5) * row_height
        y = np.clip(baseline_y - trace * mv_per_unit * px_per_mv, 0, height - 1)
        draw.line(np.column_stack([x, y]).ravel().tolist(), fill=TRACE_GRAY, width=1)
        draw.text((6, baseline_y - 6), _short_label(labels[index]), fill=TRACE_GRAY)

    info = {
        "multiplex_group": group_index,
        "group_label": str(group.get("MultiplexGroupLabel") or ""),
        "channel_labels": labels,
        "channel_count": channel_count,
        "sampling_frequency_hz": sampling_hz,
        "sample_count": sample_count,
        "duration_s": duration_s,
        "px_per_second": px_per_s,
        "px_per_mv": px_per_mv,
    }
    return np.asarray(image), info
