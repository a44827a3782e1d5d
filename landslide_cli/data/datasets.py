"""Data-set layouts (registry :data:`DATASETS`) and :func:`open_dataset`.

Every layout is a function ``list_<name>(root, *, bands) -> Listing`` that finds image/mask pairs
(by file stem, never by listing order) and says which reader, default split mode and input-spec
hint fit. Its entry's ``parse_bands`` turns the user's band selection into the 1-based indices
it receives (default: raster indices or ``rgb``; Landslide4Sense also takes band names).
:func:`open_dataset` adds splitting, region selection and ``skip_bad`` on top.
"""

from __future__ import annotations

import logging
import os
import re
import unicodedata
from collections.abc import Callable, Sequence
from pathlib import Path

from landslide_cli.data.base import (
    RASTER_SUFFIXES,
    Listing,
    RasterReader,
    Sample,
    SplitInfo,
    TileSet,
    nfc,
)
from landslide_cli.data.l4s import H5Reader, l4s_spec_hint, parse_l4s_bands
from landslide_cli.data.splits import (
    SPLIT_MODES,
    SPLITS,
    SplitAssignment,
    check_ratios,
    load_split_file,
    make_split,
    save_split_file,
)
from landslide_cli.errors import DataError, LandslideError
from landslide_cli.registry import Registry

log = logging.getLogger("landslide.data")

#: name -> ``list_fn(root: Path, *, bands: list[int] | None) -> Listing``; optional info
#: ``parse_bands(selection) -> list[int] | None`` (default :func:`parse_bands`)
DATASETS: Registry = Registry("dataset")

IMG_DIRS = ("img", "image", "images")
MASK_DIRS = ("mask", "masks")


# ------------------------------------------------------------------------------ file pairing


def _index(folder: Path, suffixes: frozenset[str], problems: list[tuple[str, str]],
           region: str) -> dict[str, Path]:
    """``stem -> path`` for files in ``folder`` with a known suffix (ambiguous stems reported)."""
    found: dict[str, Path] = {}
    if not folder.is_dir():
        return found
    with os.scandir(folder) as it:
        entries = sorted(e.name for e in it if e.is_file() and not e.name.startswith("."))
    for name in entries:
        path = folder / name
        if path.suffix.lower() not in suffixes:
            continue
        stem = nfc(path.stem)
        if stem in found:
            problems.append((region, f"{path}: two files with stem {stem!r} "
                                        f"({found[stem].name}, {name})"))
            continue
        found[stem] = path
    return found


def pair_by_stem(img_dir: Path, mask_dir: Path | None, region: str, *,
                 suffixes: frozenset[str] = RASTER_SUFFIXES,
                 mask_stem: Callable[[str], str] = lambda s: s,
                 problems: list[tuple[str, str]]) -> list[Sample]:
    """Pair ``img_dir/<stem>.*`` with ``mask_dir/<mask_stem(stem)>.*``.

    ``mask_dir=None`` means the images have no masks (all background). Unpaired images and
    masks are appended to ``problems`` as ``(region, message)``.
    """
    images = _index(img_dir, suffixes, problems, region)
    if mask_dir is None:
        return [Sample(p, None, region, stem) for stem, p in sorted(images.items())]
    masks = _index(mask_dir, suffixes, problems, region)
    samples, used = [], set()
    for stem, path in sorted(images.items()):
        mstem = mask_stem(stem)
        if mstem in masks:
            samples.append(Sample(path, masks[mstem], region, stem))
            used.add(mstem)
        else:
            problems.append((region, f"no mask for image {path} "
                                        f"(looked for {mask_dir / mstem}.*)"))
    for mstem in sorted(set(masks) - used):
        problems.append((region, f"mask {masks[mstem]} has no image in {img_dir}"))
    return samples


def _first_dir(parent: Path, names: Sequence[str]) -> Path | None:
    for name in names:
        if (parent / name).is_dir():
            return parent / name
    return None


def _units(root: Path, *, depth: int = 2) -> list[tuple[str, Path]]:
    """``(region, folder)`` for ``root`` itself (if it has img/) or sub-folders that have one.

    Sub-folders are searched ``depth`` levels deep (a CAS zip may unpack to ``A/A/img``); the
    region is named after the top-level folder.
    """
    if _first_dir(root, IMG_DIRS):
        return [(nfc(root.resolve().name), root)]
    units: list[tuple[str, Path]] = []
    for child in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if _first_dir(child, IMG_DIRS):
            units.append((nfc(child.name), child))
        elif depth > 1:
            inner = [p for p in child.iterdir() if p.is_dir() and _first_dir(p, IMG_DIRS)]
            if len(inner) == 1:
                units.append((nfc(child.name), inner[0]))
    return units


def _list_units(root: Path, units: list[tuple[str, Path]], layout: str, *,
                suffixes: frozenset[str] = RASTER_SUFFIXES,
                mask_stem: Callable[[str], str] = lambda s: s,
                ) -> tuple[list[Sample], list[tuple[str, str]]]:
    if not units:
        raise DataError(f"{root}: no tiles found; expected {layout}")
    problems: list[tuple[str, str]] = []
    samples: list[Sample] = []
    for region, folder in units:
        img_dir = _first_dir(folder, IMG_DIRS)
        assert img_dir is not None
        mask_dir = _first_dir(folder, MASK_DIRS) or folder / "mask"
        samples += pair_by_stem(img_dir, mask_dir, region, suffixes=suffixes,
                                mask_stem=mask_stem, problems=problems)
    return samples, problems


# ----------------------------------------------------------------------------------- layouts


@DATASETS.register("folder", description="ROOT/{img,mask} or ROOT/<region>/{img,mask}, "
                   "any GDAL raster, masks 0/1 or 0/255")
def list_folder(root: Path, *, bands: list[int] | None = None) -> Listing:
    layout = "ROOT/img + ROOT/mask, or ROOT/<region>/img + ROOT/<region>/mask"
    samples, problems = _list_units(root, _units(root, depth=1), layout)
    return Listing(samples, RasterReader(bands, "strict"), problems, default_split_mode="random")


@DATASETS.register("cas", aliases=("cas_landslide",),
                   description="CAS Landslide: ROOT/<sub-dataset>/{img,label,mask}/<name>.tif")
def list_cas(root: Path, *, bands: list[int] | None = None) -> Listing:
    layout = "ROOT/<sub-dataset>/img/*.tif and ROOT/<sub-dataset>/mask/*.tif (CAS layout)"
    samples, problems = _list_units(root, _units(root, depth=2), layout)
    return Listing(samples, RasterReader(bands, "strict"), problems,
                   default_split_mode="blocked")


@DATASETS.register("bijie", description="Bijie: landslide/{image,mask} + non-landslide/image "
                   "(all-background masks)")
def list_bijie(root: Path, *, bands: list[int] | None = None) -> Listing:
    base = root
    if not (base / "landslide").is_dir():
        inner = [p for p in root.iterdir() if p.is_dir() and (p / "landslide").is_dir()]
        if len(inner) != 1:
            raise DataError(f"{root}: no Bijie layout found; expected landslide/image, "
                            "landslide/mask and non-landslide/image")
        base = inner[0]
    problems: list[tuple[str, str]] = []
    samples: list[Sample] = []
    pos = base / "landslide"
    img_dir = _first_dir(pos, IMG_DIRS)
    if img_dir is None:
        raise DataError(f"{pos}: missing image/ folder (Bijie layout)")
    samples += pair_by_stem(img_dir, _first_dir(pos, MASK_DIRS) or pos / "mask", "landslide",
                            problems=problems)
    neg = base / "non-landslide"
    neg_img = _first_dir(neg, IMG_DIRS) if neg.is_dir() else None
    if neg_img is not None:
        samples += pair_by_stem(neg_img, None, "non-landslide", problems=problems)
    return Listing(samples, RasterReader(bands, "nonzero"), problems, default_split_mode="random")


def _l4s_mask_stem(stem: str) -> str:
    return re.sub(r"^(image|img)", "mask", stem, flags=re.IGNORECASE)


_OFFICIAL_WORDS = (("valid", "val"), ("val", "val"), ("test", "test"), ("train", "train"))


def _official_split_of(region: str) -> str | None:
    low = region.lower()
    for word, split in _OFFICIAL_WORDS:
        if word in low:
            return split
    return None


@DATASETS.register("landslide4sense", aliases=("l4s",), parse_bands=parse_l4s_bands,
                   description="Landslide4Sense: img/image_N.h5 (128x128x14) + mask/mask_N.h5")
def list_landslide4sense(root: Path, *, bands: list[int] | None = None) -> Listing:
    layout = "ROOT/img/image_N.h5 + ROOT/mask/mask_N.h5, or ROOT/<part>/{img,mask}"
    samples, problems = _list_units(root, _units(root, depth=1), layout,
                                    suffixes=frozenset({".h5", ".hdf5"}),
                                    mask_stem=_l4s_mask_stem)
    official = {s.key: _official_split_of(s.region) for s in samples}
    has_official = any(v is not None for v in official.values())
    return Listing(samples, H5Reader(bands), problems,
                   default_split_mode="official" if has_official else "random",
                   spec_hint=l4s_spec_hint(bands),
                   official={k: v for k, v in official.items() if v} if has_official else None)


# ---------------------------------------------------------------------------- region names


def canonical_region(name: str) -> str:
    """Case-, width-, bracket- and space-insensitive form: ``Longxi River（UAV）`` ->
    ``longxiriveruav``."""
    text = unicodedata.normalize("NFKC", name).casefold()
    return re.sub(r"[\s()\[\]{}_\-]+", "", text)


def match_regions(wanted: Sequence[str] | str | None, available: Sequence[str]) -> list[str]:
    """Resolve user-typed region names against ``available``.

    Matching ignores case, full-width vs ASCII brackets, brackets, spaces, ``-`` and ``_``; a
    unique prefix also matches (``hokkaido`` -> ``Hokkaido Iburi-Tobu``).
    """
    if wanted is None:
        return sorted(available)
    if isinstance(wanted, str):
        wanted = [wanted]
    names = [w.strip() for item in wanted for w in str(item).split(",") if w.strip()]
    if not names:
        return sorted(available)
    table = {canonical_region(a): a for a in available}
    chosen: list[str] = []
    for name in names:
        key = canonical_region(name)
        if key in table:
            hit = table[key]
        else:
            hits = [a for k, a in table.items() if key and k.startswith(key)]
            if len(hits) != 1:
                choices = "; ".join(sorted(available)) or "none"
                what = "is ambiguous" if hits else "not found"
                raise LandslideError(f"region {name!r} {what}; available regions: {choices}")
            hit = hits[0]
        if hit not in chosen:
            chosen.append(hit)
    return sorted(chosen)


# ------------------------------------------------------------------------------ open_dataset


def parse_bands(bands: Sequence[int | str] | str | None) -> list[int] | None:
    """A raster band selection (``"1,2,3"``, ``[4, 3, 2]``, ``rgb``) -> 1-based indices."""
    if bands is None:
        return None
    items = bands.split(",") if isinstance(bands, str) else list(bands)
    out: list[int] = []
    for b in items:
        text = str(b).strip().lower()
        if text == "rgb":
            out += [1, 2, 3]
            continue
        try:
            value = int(text)
        except ValueError:
            raise LandslideError(f"band {b!r}: raster bands are 1-based indices (or 'rgb')") \
                from None
        if value < 1:
            raise LandslideError(f"band {b!r}: raster bands are 1-based indices")
        out.append(value)
    return out or None


def _report_problems(problems: list[tuple[str, str]], skip_bad: bool, where: str) -> None:
    if not problems:
        return
    if not skip_bad:
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise DataError(problems[0][1] + more + "; pass --skip-bad to skip bad tiles")
    log.warning("skipped %d bad sample(s) in %s; first: %s", len(problems), where,
                problems[0][1])
    for _, msg in problems[1:]:
        log.info("skipped: %s", msg)


def open_dataset(
    name: str,
    root: str | os.PathLike[str],
    split: str = "train",
    split_file: str | os.PathLike[str] | None = None,
    seed: int = 0,
    ratios: Sequence[float] = (0.8, 0.1, 0.1),
    split_mode: str | None = None,
    regions: Sequence[str] | str | None = None,
    skip_bad: bool = False,
    bands: Sequence[int | str] | str | None = None,
    *,
    allow_empty: bool = False,
    block_size: int | None = None,
    gap: int = 1,
) -> TileSet:
    """Open data set ``name`` at ``root`` and select ``split`` (train/val/test/all).

    Args:
        split_file: JSON split file; read if it exists, else computed and written atomically.
            Without one the split is recomputed (deterministic given ``seed``/``ratios``/mode).
        split_mode: ``random``, ``blocked`` or ``official``; default per data set (``blocked``
            for cas, ``official`` for landslide4sense when its TrainData/... folders exist).
        regions: region (sub-dataset) names to keep, matched case- and bracket-insensitively.
        skip_bad: skip unpaired or malformed tiles with a warning instead of raising; with it,
            every selected tile is validated up front (mask values, sizes).
        bands: band selection (1-based raster indices; for landslide4sense also names such as
            ``B4,B3,B2`` or ``rgb``).
        allow_empty: return an empty set instead of raising when nothing is selected.
        block_size, gap: options of the ``blocked`` split mode.
    """
    entry = DATASETS.entry(name)
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(f"data set root not found: {root}")
    if not root.is_dir():
        raise DataError(f"data set root is not a folder: {root}")
    if split not in (*SPLITS, "all"):
        raise LandslideError(f"unknown split {split!r}; choose one of: train, val, test, all")
    ratios = check_ratios(ratios)
    band_list = entry.info.get("parse_bands", parse_bands)(bands)
    listing = entry.builder(root, bands=band_list)
    all_regions = sorted({s.region for s in listing.samples} | {r for r, _ in listing.problems})
    keep = set(match_regions(regions, all_regions))
    # problems of regions that are not evaluated do not matter
    problems = [(r, msg) for r, msg in listing.problems if r in keep]
    _report_problems(problems, skip_bad, str(root))
    skipped = list(problems) if skip_bad else []
    if not listing.samples:
        raise DataError(f"no {entry.name} tiles found under {root}")
    mode = SPLIT_MODES.resolve(split_mode or listing.default_split_mode)
    options = {"block_size": block_size, "gap": gap, "official": listing.official}

    assignment: SplitAssignment | None = None
    split_path = Path(split_file).expanduser() if split_file else None
    if split_path is not None and split_path.exists():
        assignment = load_split_file(split_path)
        log.info("using split file %s (mode %s, seed %s)", split_path, assignment.mode,
                 assignment.seed)
    elif split_path is not None or split != "all":
        assignment = make_split(listing.samples, mode=mode, seed=seed, ratios=ratios, **options)
        if split_path is not None:
            save_split_file(split_path, assignment, dataset=entry.name)
            log.info("wrote split file %s", split_path)

    by_key = {s.key: s for s in listing.samples}
    if split == "all":
        chosen = sorted(listing.samples, key=lambda s: s.key)
    else:
        assert assignment is not None
        keys = assignment.keys(split)
        missing = [k for k in keys if k not in by_key]
        if missing:
            msg = (f"split file {split_path}: {len(missing)} {split} key(s) are not in {root} "
                   f"(e.g. {missing[0]!r})")
            if not skip_bad:
                raise DataError(msg)
            log.warning("%s; skipping them", msg)
            skipped += [(k, "listed in the split file but not found") for k in missing]
        chosen = sorted((by_key[k] for k in keys if k in by_key), key=lambda s: s.key)

    chosen = [s for s in chosen if s.region in keep]

    info = SplitInfo(split=split, mode=assignment.mode if assignment else mode,
                     seed=assignment.seed if assignment else seed,
                     ratios=assignment.ratios if assignment else ratios, file=split_path)
    tiles = TileSet(chosen, listing.reader, dataset=entry.name, root=root, split=info,
                    bands=band_list, skipped=skipped, spec_hint=listing.spec_hint)
    if skip_bad:
        bad = tiles.validate(skip_bad=True)
        if bad:
            log.warning("skipped %d tile(s) with bad masks or sizes; first: %s", len(bad),
                        bad[0][1])
    if not tiles and not allow_empty:
        which = f" for regions {', '.join(sorted(keep))}" if regions else ""
        raise DataError(f"split {split!r} of {entry.name} data at {root} is empty{which}")
    return tiles
