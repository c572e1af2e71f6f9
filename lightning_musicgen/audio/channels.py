"""Channel conversion: mono <-> stereo and surround downmix with ITU-R BS.775 coefficients.

`to_channels(wav[..., C, T], channels, order)` returns `[..., channels, T]`:
- same count: unchanged; mono -> N: duplicated; stereo -> mono: the average of L and R;
- 3 to 8 channels -> stereo (BS.775 "Lo/Ro"): each side gets its front channel at 1, the centre at
  0.7071 (-3 dB), its surround channel(s) (side and back) at 0.7071; a back-centre channel goes at 0.5
  to both sides (its -3 dB surround weight split equally); LFE is dropped, as BS.775 does;
- 3 to 8 channels -> mono: that stereo downmix, then the average of its two sides. This is BS.775's
  mono equation (0.7071 L + 0.7071 R + C + 0.5 Ls + 0.5 Rs) scaled by 1/sqrt(2), the same -3 dB that
  the stereo -> mono average applies, so a surround file and its stereo fold-down give the same mono;
- more than 8 channels (no standard layout): every channel at equal weight into every output.
No output is normalised: sums above full scale are the caller's to handle (`prepare` scales the file
down and records the gain).

Channel order depends on the container: `"wav"` (WAV/WAVE_FORMAT_EXTENSIBLE defaults, also FLAC,
AIFF, CAF) or `"vorbis"` (Ogg Vorbis and Opus, Vorbis I specification section 4.3.9); see LAYOUTS.
`channel_order(format, subtype)` picks it from soundfile's format names.
"""
from __future__ import annotations

import math

import torch

from lightning_musicgen.errors import ConfigError

G = 1 / math.sqrt(2)  # -3 dB

# Default channel order per count. FL/FR front, FC centre, LFE, BL/BR back, SL/SR side, BC back centre.
LAYOUTS: dict[str, dict[int, tuple[str, ...]]] = {
    "wav": {
        3: ("FL", "FR", "FC"),
        4: ("FL", "FR", "BL", "BR"),
        5: ("FL", "FR", "FC", "BL", "BR"),
        6: ("FL", "FR", "FC", "LFE", "BL", "BR"),
        7: ("FL", "FR", "FC", "LFE", "BC", "SL", "SR"),
        8: ("FL", "FR", "FC", "LFE", "BL", "BR", "SL", "SR"),
    },
    "vorbis": {
        3: ("FL", "FC", "FR"),
        4: ("FL", "FR", "BL", "BR"),
        5: ("FL", "FC", "FR", "BL", "BR"),
        6: ("FL", "FC", "FR", "BL", "BR", "LFE"),
        7: ("FL", "FC", "FR", "SL", "SR", "BC", "LFE"),
        8: ("FL", "FC", "FR", "SL", "SR", "BL", "BR", "LFE"),
    },
}

# (weight into left, weight into right) of each channel in the BS.775 stereo downmix.
STEREO_WEIGHTS = {
    "FL": (1.0, 0.0), "FR": (0.0, 1.0), "FC": (G, G), "LFE": (0.0, 0.0),
    "BL": (G, 0.0), "BR": (0.0, G), "SL": (G, 0.0), "SR": (0.0, G), "BC": (0.5, 0.5),
}


def channel_order(format: str | None, subtype: str | None = None) -> str:
    """"vorbis" for Ogg Vorbis/Opus (soundfile format "OGG", subtype "VORBIS"/"OPUS"), else "wav"."""
    if (format or "").upper() == "OGG" and (subtype or "").upper() in ("VORBIS", "OPUS"):
        return "vorbis"
    return "wav"


def downmix_matrix(in_channels: int, out_channels: int, order: str = "wav") -> torch.Tensor:
    """The [out_channels, in_channels] matrix that `to_channels` applies (out_channels 1 or 2)."""
    if order not in LAYOUTS:
        raise ConfigError(f"channel order {order!r}: expected one of {sorted(LAYOUTS)}")
    if out_channels not in (1, 2) or in_channels < 1:
        raise ConfigError(f"cannot mix {in_channels} channels into {out_channels}: targets are 1 or 2 channels")
    if in_channels == out_channels:
        return torch.eye(in_channels)
    if in_channels == 1:
        return torch.ones(out_channels, 1)
    if in_channels == 2:
        stereo = torch.eye(2)
    elif in_channels in LAYOUTS[order]:
        stereo = torch.tensor([STEREO_WEIGHTS[name] for name in LAYOUTS[order][in_channels]]).T
    else:  # no standard layout: nothing is known of the positions, so nothing is preferred
        return torch.full((out_channels, in_channels), 1.0 / in_channels)
    return stereo if out_channels == 2 else stereo.mean(dim=0, keepdim=True)


def to_channels(wav: torch.Tensor, channels: int, order: str = "wav") -> torch.Tensor:
    """[..., C, T] -> [..., channels, T] (see the module docstring for the coefficients)."""
    have = wav.shape[-2]
    if have == channels:
        return wav
    if have == 1:
        return wav.expand(*wav.shape[:-2], channels, wav.shape[-1]).contiguous()
    matrix = downmix_matrix(have, channels, order).to(device=wav.device, dtype=wav.dtype)
    return torch.einsum("oc,...ct->...ot", matrix, wav)
