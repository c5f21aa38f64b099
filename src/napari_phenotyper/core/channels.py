"""Channel names of feature columns, and mapping a classifier's channels onto a table's.

Intensity and texture columns are named ``<feature>_<channel>`` (``mean_intensity_gfp``).
Channel names are short user-facing names (``image``, ``ch1``, ``gfp``), never a layer
or file name, so that a classifier trained on one image applies to the next one. When
the names differ anyway (a classifier from another lab, a renamed channel), a
*channel mapping* says which of the table's channels stands for each of the
classifier's: :func:`suggest_channel_mapping` proposes one and
:func:`rename_channels` applies it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

import pandas as pd

from .features import INTENSITY_FEATURES, TEXTURE_FEATURES

__all__ = [
    "ChannelMapping",
    "ChannelMismatch",
    "channel_of_column",
    "channels_of",
    "check_mapping",
    "clean_channel_name",
    "default_channel_names",
    "rename_channels",
    "rename_table_channels",
    "resolve_channel_mapping",
    "suggest_channel_mapping",
]

#: Per-channel feature prefixes, longest first (so that no prefix shadows a longer one).
_PER_CHANNEL = tuple(sorted((*INTENSITY_FEATURES, *TEXTURE_FEATURES), key=len, reverse=True))


def clean_channel_name(name: str, default: str = "image") -> str:
    """A column-safe channel name: spaces and punctuation become ``_`` (``default`` if none is left)."""
    cleaned = re.sub(r"[^0-9A-Za-z]+", "_", str(name)).strip("_")
    return cleaned or default


def _cellprofiler_patterns() -> tuple[re.Pattern[str], re.Pattern[str]]:
    from .cellprofiler import INTENSITY_FEATURES as CP_INTENSITY
    from .cellprofiler import LOCATION_FEATURES as CP_LOCATION
    from .cellprofiler import TEXTURE_FEATURES as CP_TEXTURE

    plain = "|".join(
        [f"Intensity_{f}" for f in sorted(CP_INTENSITY, key=len, reverse=True)]
        + [f"Location_{f}" for f in sorted(CP_LOCATION, key=len, reverse=True)]
    )
    texture = "|".join(sorted(CP_TEXTURE, key=len, reverse=True))
    return (
        re.compile(rf"^({plain})_(.+)$"),
        re.compile(rf"^(Texture_(?:{texture}))_(.+)(_\d+_\d\d_\d+)$"),
    )


_CP_PLAIN, _CP_TEXTURE = _cellprofiler_patterns()


def _split_channel(column: str) -> tuple[str, str, str] | None:
    """``(before, channel, after)`` of a per-channel column of either feature set, else None.

    ``mean_intensity_gfp`` -> ``("mean_intensity_", "gfp", "")``;
    ``Texture_Contrast_gfp_3_00_256`` -> ``("Texture_Contrast_", "gfp", "_3_00_256")``.
    """
    column = str(column)
    for prefix in _PER_CHANNEL:
        if column.startswith(prefix + "_") and len(column) > len(prefix) + 1:
            return prefix + "_", column[len(prefix) + 1 :], ""
    m = _CP_TEXTURE.match(column)
    if m:
        return m.group(1) + "_", m.group(2), m.group(3)
    m = _CP_PLAIN.match(column)
    if m:
        return m.group(1) + "_", m.group(2), ""
    return None


def channel_of_column(column: str) -> str | None:
    """The channel of a per-channel feature column, else ``None``.

    ``mean_intensity_gfp`` -> ``gfp``; CellProfiler-set columns too:
    ``Intensity_MeanIntensity_gfp``, ``Location_MaxIntensity_X_gfp`` and
    ``Texture_Contrast_gfp_3_00_256`` -> ``gfp``.
    """
    split = _split_channel(column)
    return None if split is None else split[1]


def channels_of(columns: Iterable[str]) -> list[str]:
    """The channels that per-channel feature ``columns`` name, in order of first appearance."""
    seen: dict[str, None] = {}
    for c in columns:
        ch = channel_of_column(c)
        if ch is not None:
            seen.setdefault(ch, None)
    return list(seen)


def default_channel_names(
    layer_names: Sequence[str],
    segmented: str | None = None,
    known: Mapping[str, str] | None = None,
) -> list[str]:
    """Short, stable channel names for the layers measured, in their order.

    A name in ``known`` (layer name -> channel name: names the user typed, or a
    channel name from the image's metadata) is kept; the segmented layer is
    ``image`` (the name a headless run gives the segmented channel); any other
    layer is ``ch<i>`` with ``i`` its position among the measured layers. The same
    layers measured in the same order give the same names on every image, whatever
    the layers are called. Duplicates get a ``_2``, ``_3``... suffix.
    """
    known = dict(known or {})
    names: list[str] = []
    for i, layer in enumerate(layer_names):
        if layer in known and str(known[layer]).strip():
            name = clean_channel_name(known[layer])
        elif segmented is not None and layer == segmented:
            name = "image"
        else:
            name = f"ch{i}"
        base, k = name, 2
        while name in names:
            name, k = f"{base}_{k}", k + 1
        names.append(name)
    return names


class ChannelMapping(dict):
    """Classifier channel -> table channel (a plain ``dict`` with a readable summary)."""

    def renamed(self) -> dict[str, str]:
        """Only the pairs whose names differ."""
        return {k: v for k, v in self.items() if k != v}

    def describe(self) -> str:
        """``"gfp <- ch1, dapi <- image"`` for the renamed pairs; empty when none is."""
        return ", ".join(f"{k} <- {v}" for k, v in self.renamed().items())


def suggest_channel_mapping(
    needed: Sequence[str], available: Sequence[str]
) -> tuple[ChannelMapping, list[str]]:
    """Propose which of ``available`` channels stands for each ``needed`` one.

    Same name first, then the same name ignoring case; then, if exactly as many
    needed channels as unused available ones remain and that number is one, those
    two are paired (a one-channel classifier applies to any one-channel table).
    More than one left on either side is not guessed.

    Returns
    -------
    mapping : ChannelMapping
        Needed channel -> available channel, for the channels it could pair.
    unresolved : list of str
        Needed channels left without a partner (ask the user).
    """
    mapping = ChannelMapping()
    free = list(dict.fromkeys(str(a) for a in available))
    rest: list[str] = []
    for n in needed:
        if n in free:
            mapping[n] = n
            free.remove(n)
        else:
            rest.append(n)
    unresolved: list[str] = []
    for n in rest:
        match = next((a for a in free if a.lower() == n.lower()), None)
        if match is not None:
            mapping[n] = match
            free.remove(match)
        else:
            unresolved.append(n)
    if len(unresolved) == 1 and len(free) == 1:
        mapping[unresolved.pop()] = free.pop()
    return mapping, unresolved


def check_mapping(mapping: Mapping[str, str], needed: Sequence[str], available: Sequence[str]) -> None:
    """Refuse a mapping that misses a needed channel, names an unknown one, or uses one twice."""
    missing = [n for n in needed if n not in mapping]
    if missing:
        raise ValueError(
            f"Say which channel of the cells stands for the classifier's {', '.join(map(repr, missing))} "
            f"(the cells have {', '.join(map(repr, available)) or 'no intensity channels'})."
        )
    unknown = [v for v in mapping.values() if v not in available]
    if unknown:
        raise ValueError(
            f"The cells have no channel {', '.join(map(repr, unknown))}; "
            f"they have {', '.join(map(repr, available)) or 'no intensity channels'}."
        )
    used = list(mapping.values())
    twice = sorted({v for v in used if used.count(v) > 1})
    if twice:
        raise ValueError(
            f"Channel {', '.join(map(repr, twice))} is mapped to two classifier channels; pick one each."
        )


def rename_channels(columns: Sequence[str], mapping: Mapping[str, str]) -> list[str]:
    """``columns`` with each per-channel column's channel renamed by ``mapping`` (others unchanged)."""
    out = []
    for c in columns:
        split = _split_channel(c)
        if split is None or split[1] not in mapping:
            out.append(c)
        else:
            out.append(f"{split[0]}{mapping[split[1]]}{split[2]}")
    return out


def rename_table_channels(table: pd.DataFrame, mapping: Mapping[str, str]) -> pd.DataFrame:
    """A copy of ``table`` whose per-channel columns are renamed by ``mapping``."""
    new = rename_channels([str(c) for c in table.columns], mapping)
    if len(set(new)) != len(new):
        raise ValueError("The channel mapping gives two columns the same name; map each channel once.")
    out = table.copy(deep=False)
    out.columns = new
    return out


class ChannelMismatch(ValueError):
    """A classifier's channels that the cells' channels do not pair by themselves.

    Attributes
    ----------
    needed : list of str
        The classifier's channels.
    available : list of str
        The cells' channels.
    suggested : ChannelMapping
        The pairs found (see :func:`suggest_channel_mapping`).
    unresolved : list of str
        The classifier's channels left without a partner.
    """

    def __init__(
        self,
        needed: Sequence[str],
        available: Sequence[str],
        suggested: ChannelMapping,
        unresolved: Sequence[str],
    ) -> None:
        self.needed = list(needed)
        self.available = list(available)
        self.suggested = suggested
        self.unresolved = list(unresolved)
        super().__init__(
            f"The classifier was trained on channels {', '.join(map(repr, self.needed))}, but these cells "
            f"were measured in {', '.join(map(repr, self.available)) or 'no intensity channels'}: "
            f"say which channel stands for {', '.join(map(repr, self.unresolved))} "
            "(Load classifier asks; in Python pass channel_map={classifier channel: cells' channel}), "
            "or measure the cells with the channel names the classifier uses."
        )


def resolve_channel_mapping(
    feature_names: Sequence[str],
    columns: Sequence[str],
    channel_map: Mapping[str, str] | None = None,
) -> ChannelMapping:
    """The mapping of a classifier's channels (from ``feature_names``) onto a table's ``columns``.

    ``channel_map`` (classifier channel -> table channel) is checked and completed by
    :func:`suggest_channel_mapping`; with none, the suggestion alone is used.

    Raises
    ------
    ChannelMismatch
        When some classifier channel has no partner (carries the suggestion, for a dialog).
    ValueError
        When ``channel_map`` names a channel the table lacks, or one channel twice.
    """
    needed = channels_of(feature_names)
    available = channels_of(columns)
    if not available:  # cells measured without intensities: the missing columns say it best
        return ChannelMapping({n: n for n in needed})
    given = {str(k): str(v) for k, v in (channel_map or {}).items() if str(k) in needed}
    mapping, unresolved = suggest_channel_mapping(
        [n for n in needed if n not in given], [a for a in available if a not in given.values()]
    )
    mapping = ChannelMapping({**given, **mapping})
    if unresolved:
        raise ChannelMismatch(needed, available, mapping, unresolved)
    check_mapping(mapping, needed, available)
    return ChannelMapping({n: mapping[n] for n in needed})
