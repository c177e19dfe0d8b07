"""What is in a dataset and in a protocol's mask, as numbers and as a readable report."""

from __future__ import annotations

from dataclasses import dataclass, field

from mlrkit.data.dataset import POSITIVE, UNKNOWN, MultiLabelData
from mlrkit.data.files import DataFormatError
from mlrkit.data.protocols import ProtocolMask

#: A class with positives in at most this many images, or in fewer than RARE_CLASS_SHARE of them,
#: is flagged as a possible typo (``dgo`` in an ``image,labels`` file without a class list).
RARE_CLASS_IMAGES = 2
RARE_CLASS_SHARE = 0.001


@dataclass
class DatasetSummary:
    """Counts describing a :class:`MultiLabelData` and, optionally, a mask drawn on one split."""

    name: str
    images: int
    classes: int
    split_sizes: dict[str, int]
    positives_per_image: float
    unknown_entries: int
    positives_per_class: dict[str, int]
    images_without_positive: int
    rare_classes: dict[str, int] = field(default_factory=dict)
    near_duplicates: list[list[str]] = field(default_factory=list)
    mask_split: str | None = None
    mask_params: dict = field(default_factory=dict)
    mask_stats: dict = field(default_factory=dict)


def summarize(
    data: MultiLabelData, mask: ProtocolMask | None = None, mask_split: str | None = None
) -> DatasetSummary:
    """Summarise ``data``; ``mask`` must have been drawn on ``data.subset(mask_split)`` (or all)."""
    labels = data.labels
    pos = labels == POSITIVE
    canonical = {"train": 0, "trainval": 0, "val": 1, "test": 2}
    split_sizes = {
        name: int((data.splits == name).sum())
        for name in sorted(data.split_names(), key=lambda s: canonical.get(s, 3))
    }
    summary = DatasetSummary(
        name=data.name,
        images=data.num_images,
        classes=data.num_classes,
        split_sizes=split_sizes,
        positives_per_image=float(pos.sum(axis=1).mean()),
        unknown_entries=int((labels == UNKNOWN).sum()),
        positives_per_class=dict(zip(data.class_names, pos.sum(axis=0).tolist(), strict=True)),
        images_without_positive=int((~pos.any(axis=1)).sum()),
    )
    summary.rare_classes = rare_classes(summary.positives_per_class, data.num_images)
    summary.near_duplicates = near_duplicate_classes(list(data.class_names))
    if mask is not None:
        masked = data if mask_split is None else data.subset(mask_split)
        summary.mask_split = mask_split or "all"
        summary.mask_params = {"protocol": mask.protocol, "seed": mask.seed, **mask.params}
        summary.mask_stats = mask.stats(masked.labels)
    return summary


def _known_share(s: DatasetSummary) -> str:
    entries = s.images * s.classes
    known = entries - s.unknown_entries
    return f"{known:,} of {entries:,} ({known / max(entries, 1):.1%})"


def rare_classes(positives_per_class: dict[str, int], images: int) -> dict[str, int]:
    """The classes with positives in very few of ``images`` (see :data:`RARE_CLASS_IMAGES`), by
    count; usually typos of another class name, or classes too rare to learn or evaluate."""
    limit = max(RARE_CLASS_IMAGES, RARE_CLASS_SHARE * images)
    rare = {name: count for name, count in positives_per_class.items()
            if count <= RARE_CLASS_IMAGES or count < limit}
    return dict(sorted(rare.items(), key=lambda kv: kv[1]))


def near_duplicate_classes(class_names: list[str]) -> list[list[str]]:
    """Groups of class names that differ only in letter case or spacing (``cat``, ``Cat``,
    ``cat ``): almost always one class written two ways."""
    groups: dict[str, list[str]] = {}
    for name in class_names:
        groups.setdefault(" ".join(name.casefold().split()), []).append(name)
    return [names for names in groups.values() if len(names) > 1]


def refuse_misspelt_classes(data: MultiLabelData) -> None:
    """Refuse, before training, what :func:`format_summary` flags as possible typos: classes
    that differ only in letter case or spacing (:func:`near_duplicate_classes`), and classes that
    a label file without a class list names in very few images (:func:`rare_classes`)."""
    twins = near_duplicate_classes(list(data.class_names))
    if twins:
        listed = "; ".join(" and ".join(repr(n) for n in names) for names in twins)
        raise DataFormatError(
            f"dataset {data.name!r} at {data.root}: classes {listed} differ only in letter case "
            f"or spacing and are probably one class; write them one way in the label file, or "
            f"set data.allow_new_classes: true to train on them as separate classes")
    if not data.classes_from_labels:
        return
    positives = (data.labels == POSITIVE).sum(axis=0).tolist()
    rare = rare_classes(dict(zip(data.class_names, positives, strict=True)), data.num_images)
    if rare:
        listed = ", ".join(f"{name!r} ({count} image{'s' * (count != 1)})"
                           for name, count in rare.items())
        raise DataFormatError(
            f"dataset {data.name!r} at {data.root}: class(es) {listed} appear in very few images "
            f"and are probably misspelt names; fix them in the label file, list the classes in "
            f"classes.txt next to it, or set data.allow_new_classes: true to train on them")


def format_summary(s: DatasetSummary) -> str:
    """Plain-text report of a :class:`DatasetSummary`."""
    lines = [
        f"dataset           {s.name}",
        f"images            {s.images:,}",
        f"classes           {s.classes}",
    ]
    if s.split_sizes:
        lines.append(
            "splits            " + ", ".join(f"{k} {v:,}" for k, v in s.split_sizes.items())
        )
    lines += [
        f"labels per image  {s.positives_per_image:.2f} positives on average",
        f"no positive       {s.images_without_positive:,} images",
        f"unknown entries   {s.unknown_entries:,}",
        f"known entries     {_known_share(s)} (as given: what a recipe without a protocol uses)",
        "",
        "positives per class",
    ]
    width = max(len(n) for n in s.positives_per_class)
    top = max(s.positives_per_class.values()) or 1
    for name, count in sorted(s.positives_per_class.items(), key=lambda kv: -kv[1]):
        bar = "#" * round(30 * count / top)
        lines.append(f"  {name:<{width}}  {count:>7,}  {bar}")
    if s.rare_classes:
        listed = ", ".join(f"{name!r} ({count})" for name, count in s.rare_classes.items())
        lines += ["", (
            f"possible typos: {len(s.rare_classes)} class(es) in very few images: {listed}; "
            f"check these names in the label file, or list the classes (classes.txt) so that "
            f"unknown names are errors"
        )]
    for names in s.near_duplicates:
        lines += ["", (f"possible typos: classes {' and '.join(repr(n) for n in names)} differ only "
                       f"in letter case or spacing; write them one way in the label file")]
    if s.mask_stats:
        params = ", ".join(f"{k}={v}" for k, v in s.mask_params.items())
        st = s.mask_stats
        lines += [
            "",
            f"mask on split '{s.mask_split}' ({params})",
            (
                f"  known entries      {st['known_fraction']:.2%} of "
                f"{st['images']:,} x {st['classes']}"
            ),
            f"  known positives    {st['known_positives']:,}",
            f"  known negatives    {st['known_negatives']:,}",
            f"  unknown            {st['unknown']:,}",
            f"  known per image    {st['known_per_image_mean']:.2f}",
            f"  images with no known label  {st['images_without_known_label']:,}",
        ]
        if s.mask_params.get("protocol") == "single_positive":
            lines.append(
                f"  images with no positive to choose  {st['images_without_positive']:,}"
            )
    return "\n".join(lines)
