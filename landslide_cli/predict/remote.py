"""Remote scenes: ``http(s)://`` rasters (COGs) and STAC Items, turned into what GDAL opens.

* A raster URL is read by GDAL's ``/vsicurl/`` handler with HTTP range requests (only the
  header, then the blocks of each window; a COG's internal tiling makes that efficient). It is
  named ``/vsicurl?list_dir=no&url=<percent-encoded URL>``: no directory listing is requested,
  and the name survives :class:`pathlib.Path` (which would fold ``https://`` to ``https:/``).
* A STAC Item (a ``.json`` file or URL) names its assets' bands: ``eo:bands`` / ``bands``
  with ``common_name`` (``red``, ``green``, ``blue``, ``nir``...), or asset keys like ``red``,
  ``B04`` (Sentinel-2), ``B4`` (Landsat, by the item's ``platform``) or ``visual``. The bands
  the model expects are looked up by name; one multi-band asset that holds them in order is
  read directly, anything else is stacked into a GDAL VRT kept in memory (``/vsimem/``), so
  the streaming pipeline reads it like any local multi-band file.

:func:`open_source` returns a local :class:`~pathlib.Path` unchanged and a
:class:`RemoteScene` (an ``os.PathLike`` whose ``fspath`` is the GDAL name) for the rest;
``str()`` of a RemoteScene is the URL or STAC file as given. Remote inputs are never outputs:
:func:`local_inputs` lists the local files a run reads, for the never-overwrite-an-input check.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
import warnings
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from landslide_cli.errors import DataError
from landslide_cli.safety import first_line, is_url

#: suffixes read as STAC Items
STAC_SUFFIXES = (".json", ".geojson")
#: URL suffixes read as rasters without asking the server (other URLs, e.g. a STAC API's
#: ``.../items/ID``, are STAC Items when the server answers JSON)
RASTER_URL_SUFFIXES = (".tif", ".tiff", ".vrt", ".jp2", ".img", ".ntf", ".png", ".jpg")
#: the largest STAC Item document read
MAX_ITEM_BYTES = 16 * 1024 * 1024
#: seconds before a STAC Item download gives up
HTTP_TIMEOUT_S = 60
#: asset roles that are never image data
_SKIP_ROLES = {"thumbnail", "metadata", "overview-thumbnail"}
#: suffixes of raster assets when an asset gives no media type
_RASTER_SUFFIXES = (".tif", ".tiff", ".jp2", ".vrt", ".img")
#: asset keys of true-colour (red, green, blue) assets
_VISUAL_KEYS = ("visual", "tci", "rgb", "true_color", "truecolor")
#: asset key -> common band name: Sentinel-2 band ids (unambiguous)
_SENTINEL2_KEYS = {"b02": "blue", "b03": "green", "b04": "red", "b08": "nir", "b8a": "nir08"}
#: asset key -> common band name for Landsat 8/9 and for Landsat 4-7 (chosen by ``platform``)
_LANDSAT89_KEYS = {"b2": "blue", "b3": "green", "b4": "red", "b5": "nir08"}
_LANDSAT47_KEYS = {"b1": "blue", "b2": "green", "b3": "red", "b4": "nir"}
#: a wanted name also matches these common names (Landsat's NIR is ``nir08``)
_SYNONYMS = {"nir": ("nir", "nir08")}
#: GDAL colour interpretation written for a band name in the stacking VRT
_COLOR_INTERP = {"red": "Red", "green": "Green", "blue": "Blue"}
#: GDAL data type names of numpy dtypes (for the VRT)
_GDAL_TYPES = {"uint8": "Byte", "int8": "Int8", "uint16": "UInt16", "int16": "Int16",
               "uint32": "UInt32", "int32": "Int32", "float32": "Float32",
               "float64": "Float64"}


@dataclass(eq=False)
class RemoteScene(os.PathLike):  # type: ignore[type-arg]
    """A scene GDAL reads from elsewhere: a raster URL or a STAC Item.

    ``os.fspath()`` gives what GDAL opens; ``str()`` the input as the user gave it; ``name``
    and ``stem`` label it in outputs (the URL's file name, or the STAC Item's id).
    """

    location: str
    gdal_path: str
    name: str
    stem: str
    #: local files this scene reads (a local STAC Item and its local assets)
    local_files: tuple[Path, ...] = ()
    #: ``(asset key, band)`` per band, for a STAC Item
    assets: tuple[tuple[str, int], ...] = ()
    _memfile: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        # the in-memory VRT lives as long as this object (SceneInfo.path holds it)
        self._release = None if self._memfile is None \
            else weakref.finalize(self, self._memfile.close)

    def __fspath__(self) -> str:
        return self.gdal_path

    def __str__(self) -> str:
        return self.location

    @property
    def is_remote(self) -> bool:
        return is_url(self.location)

    def close(self) -> None:
        """Release the in-memory VRT (if any); the scene cannot be read afterwards."""
        if self._release is not None:
            self._release()
            self._release = self._memfile = None


def vsicurl(url: str) -> str:
    """The GDAL name of a raster URL (see the module docstring)."""
    return "/vsicurl?list_dir=no&url=" + urllib.parse.quote(url, safe="")


def _url_name(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    name = urllib.parse.unquote(parts.path.rstrip("/").rsplit("/", 1)[-1])
    return name or parts.hostname or "scene"


def scene_arg(value: str | os.PathLike[str]) -> Path | str | RemoteScene:
    """A scene argument as given: URL strings stay strings, RemoteScenes stay themselves, the
    rest becomes a :class:`~pathlib.Path`."""
    if isinstance(value, RemoteScene) or (isinstance(value, str) and is_url(value)):
        return value
    return Path(value)


def is_stac(value: Path | str) -> bool:
    """Whether a scene argument names a STAC Item: by its suffix, or, for a URL without a
    raster suffix, by the server answering JSON to a request for its first bytes."""
    text = (urllib.parse.urlsplit(value).path if isinstance(value, str) else value.name).lower()
    if text.endswith(STAC_SUFFIXES):
        return True
    if not isinstance(value, str) or text.endswith(RASTER_URL_SUFFIXES):
        return False
    return _answers_json(value)


def _answers_json(url: str) -> bool:
    """Whether ``url`` serves JSON (its Content-Type, or a first byte ``{``); any error: no
    (GDAL then reports it when it opens the URL as a raster)."""
    request = urllib.request.Request(url, headers={"Range": "bytes=0-255",
                                                   "Accept": "application/json, */*"})
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as resp:
            ctype = str(resp.headers.get("Content-Type") or "").lower()
            head = resp.read(256)
    except (urllib.error.URLError, OSError, ValueError):
        return False
    return "json" in ctype or head.lstrip()[:1] == b"{"


def open_source(value: Path | str | RemoteScene, *, bands: list[str] | None = None,
                dtype: str | None = None) -> Path | RemoteScene:
    """What :func:`~landslide_cli.predict.raster.open_scene` reads for a scene argument.

    Args:
        value: a local path, a raster URL or a STAC Item (local ``.json`` or URL).
        bands: the band names the model expects (``InputSpec.bands``), for STAC Items;
            default red, green, blue.
        dtype: the model's data type (``InputSpec.dtype``): an 8-bit model prefers a STAC
            Item's true-colour ``visual`` asset over its per-band reflectance assets.

    Raises:
        DataError: the Item cannot be read or has no assets for the model's bands.
    """
    if isinstance(value, RemoteScene):
        return value
    if is_stac(value):
        return stac_scene(value, bands=bands or ["red", "green", "blue"], dtype=dtype)
    if isinstance(value, str):
        name = _url_name(value)
        return RemoteScene(location=value, gdal_path=vsicurl(value), name=name,
                           stem=Path(name).stem or name)
    return value


def local_inputs(sources: list[Path | RemoteScene]) -> list[Path]:
    """The local files that the scenes of a run read (URLs cannot be outputs)."""
    out: list[Path] = []
    for s in sources:
        out.extend(s.local_files if isinstance(s, RemoteScene) else [Path(s)])
    return out


def close_sources(sources: list[Any]) -> None:
    for s in sources:
        if isinstance(s, RemoteScene):
            s.close()


# ---------------------------------------------------------------------------- STAC


def _read_item(location: Path | str) -> dict[str, Any]:
    """The STAC Item's JSON, from a local file or a URL (one-line errors)."""
    try:
        if isinstance(location, str):
            request = urllib.request.Request(location, headers={"Accept": "application/json"})
            with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as resp:
                data = resp.read(MAX_ITEM_BYTES + 1)
        else:
            if not location.is_file():
                raise DataError(f"STAC item not found: {location}")
            data = location.read_bytes()[:MAX_ITEM_BYTES + 1]
    except urllib.error.HTTPError as exc:
        raise DataError(f"cannot read STAC item {location}: HTTP {exc.code} "
                        f"{exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise DataError(f"cannot read STAC item {location}: {reason}") from None
    if len(data) > MAX_ITEM_BYTES:
        raise DataError(f"{location}: larger than {MAX_ITEM_BYTES >> 20} MiB, not a STAC item")
    try:
        item = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{location}: not JSON ({first_line(exc)})") from None
    if not isinstance(item, dict) or item.get("type") != "Feature" \
            or not isinstance(item.get("assets"), dict):
        kind = item.get("type") if isinstance(item, dict) else type(item).__name__
        hint = "; pass one of its Items" if kind in ("Collection", "FeatureCollection",
                                                     "Catalog") else ""
        raise DataError(f"{location}: not a STAC Item (a GeoJSON Feature with assets; "
                        f"got type {kind!r}){hint}")
    return item


def _resolve_href(href: str, base: Path | str) -> Path | str:
    """An asset's href made absolute: a URL, or a local path (relative to a local Item)."""
    if is_url(href):
        return href
    parts = urllib.parse.urlsplit(href)
    if parts.scheme == "file":
        return Path(urllib.parse.unquote(parts.path))
    if parts.scheme and len(parts.scheme) > 1:
        raise DataError(f"asset {href}: only http(s) and local files are supported "
                        f"({parts.scheme}:// needs a signed https URL or a local copy)")
    if isinstance(base, str):
        return urllib.parse.urljoin(base, href)
    path = Path(urllib.parse.unquote(href)) if "%" in href else Path(href)
    return path if path.is_absolute() else (base.parent / path).resolve()


def _band_entries(asset: dict[str, Any], item: dict[str, Any]) -> list[dict[str, Any]]:
    """The band descriptions of an asset: STAC 1.1 ``bands``, the eo extension's
    ``eo:bands`` (entries or, STAC 0.x, indexes into the Item's ``eo:bands``)."""
    entries = asset.get("bands") or asset.get("eo:bands") or []
    item_bands = (item.get("properties") or {}).get("eo:bands") or []
    out = []
    for e in entries if isinstance(entries, list) else []:
        if isinstance(e, int) and 0 <= e < len(item_bands):
            e = item_bands[e]
        out.append(e if isinstance(e, dict) else {})
    return out


def _names(entry: dict[str, Any]) -> set[str]:
    return {str(entry[k]).lower() for k in ("common_name", "eo:common_name", "name")
            if entry.get(k)}


def _key_aliases(item: dict[str, Any]) -> dict[str, str]:
    props = item.get("properties") or {}
    platform = f"{props.get('platform', '')} {props.get('constellation', '')}".lower()
    aliases = dict(_SENTINEL2_KEYS)
    if "landsat" in platform:
        old = any(f"landsat-{n}" in platform or f"landsat_{n}" in platform
                  for n in ("4", "5", "7"))
        aliases.update(_LANDSAT47_KEYS if old else _LANDSAT89_KEYS)
    return aliases


def _is_raster(key: str, asset: dict[str, Any]) -> bool:
    roles = {str(r).lower() for r in asset.get("roles") or []}
    if roles & _SKIP_ROLES or not isinstance(asset.get("href"), str):
        return False
    media = str(asset.get("type") or "").lower()
    if media:
        return media.startswith("image/") and "png" not in media and "jpeg" not in media
    return urllib.parse.urlsplit(asset["href"]).path.lower().endswith(_RASTER_SUFFIXES)


@dataclass
class _Candidate:
    key: str
    band: int  # 1-based band of the asset
    declared_bands: int  # bands the asset declares (0: unknown)


def _find_band(name: str, assets: dict[str, dict[str, Any]], item: dict[str, Any],
               aliases: dict[str, str]) -> list[_Candidate]:
    """Assets holding band ``name``: declared single-band assets first, then asset keys,
    then multi-band assets declaring it."""
    wanted = set(_SYNONYMS.get(name, (name,)))
    single, keyed, multi = [], [], []
    for key, asset in assets.items():
        entries = _band_entries(asset, item)
        for i, e in enumerate(entries):
            if _names(e) & wanted:
                (single if len(entries) == 1 else multi).append(
                    _Candidate(key, i + 1, len(entries)))
                break
        else:
            k = key.lower()
            if (k in wanted or aliases.get(k) in wanted) and len(entries) <= 1:
                keyed.append(_Candidate(key, 1, len(entries)))
    return single + keyed + multi


def _visual(assets: dict[str, dict[str, Any]], item: dict[str, Any],
            names: list[str]) -> list[_Candidate] | None:
    """The bands ``names`` (a subset of red, green, blue) from a true-colour asset."""
    if not set(names) <= {"red", "green", "blue"}:
        return None
    for key, asset in assets.items():
        roles = {str(r).lower() for r in asset.get("roles") or []}
        if key.lower() not in _VISUAL_KEYS and "visual" not in roles:
            continue
        entries = _band_entries(asset, item)
        order = {n: i + 1 for i, e in enumerate(entries) for n in _names(e)}
        rgb = {"red": 1, "green": 2, "blue": 3}
        if entries and not all(n in order for n in names):
            continue
        return [_Candidate(key, order.get(n, rgb[n]) if entries else rgb[n], len(entries))
                for n in names]
    return None


def _choose(item: dict[str, Any], location: Path | str, bands: list[str],
            dtype: str | None) -> list[_Candidate]:
    assets = {k: a for k, a in item["assets"].items()
              if isinstance(a, dict) and _is_raster(k, a)}
    names = [b.lower() for b in bands]
    visual = _visual(assets, item, names)
    if visual and dtype in ("uint8", "int8"):
        return visual
    aliases = _key_aliases(item)
    found = {n: _find_band(n, assets, item, aliases) for n in names}
    if all(found.values()):
        return [found[n][0] for n in names]
    if visual:
        return visual
    missing = [n for n in names if not found[n]]
    listed = ", ".join(item["assets"]) or "none"
    raise DataError(
        f"STAC item {item.get('id') or location} has no usable asset for band "
        f"{', '.join(missing)} (the model expects {', '.join(names)}; assets: {listed}); "
        "band assets are found by eo:bands common_name or keys like red, B04, visual")


def _open_header(path: Path | str) -> dict[str, Any]:
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioError

    gdal = vsicurl(path) if isinstance(path, str) else str(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(gdal) as ds:
                return {"gdal": gdal, "width": ds.width, "height": ds.height, "count": ds.count,
                        "dtypes": ds.dtypes, "crs": ds.crs, "transform": ds.transform,
                        "nodata": ds.nodatavals, "blocks": ds.block_shapes}
    except RasterioError as exc:
        raise DataError(f"asset {path}: not a raster GDAL can read ({first_line(exc)})") \
            from None


def _vrt(headers: list[dict[str, Any]], picks: list[tuple[dict[str, Any], int]],
         names: list[str]) -> str:
    """A VRT stacking band ``b`` of each header in ``picks`` (same grid)."""
    first = headers[0]
    t = first["transform"]
    lines = [f'<VRTDataset rasterXSize="{first["width"]}" rasterYSize="{first["height"]}">']
    if first["crs"] is not None:
        lines.append(f"  <SRS dataAxisToSRSAxisMapping=\"1,2\">{escape(first['crs'].to_wkt())}"
                     "</SRS>")
    lines.append(f"  <GeoTransform>{t.c!r}, {t.a!r}, {t.b!r}, {t.f!r}, {t.d!r}, {t.e!r}"
                 "</GeoTransform>")
    for i, ((h, b), name) in enumerate(zip(picks, names, strict=True), start=1):
        dtype = _GDAL_TYPES[h["dtypes"][b - 1]]
        by, bx = h["blocks"][b - 1]
        lines.append(f'  <VRTRasterBand dataType="{dtype}" band="{i}">')
        lines.append(f"    <Description>{escape(name)}</Description>")
        nodata = h["nodata"][b - 1]
        if nodata is not None:
            lines.append(f"    <NoDataValue>{nodata!r}</NoDataValue>")
        lines.append(f"    <ColorInterp>{_COLOR_INTERP.get(name, 'Undefined')}</ColorInterp>")
        lines += [
            "    <SimpleSource>",
            f'      <SourceFilename relativeToVRT="0">{escape(h["gdal"])}</SourceFilename>',
            f"      <SourceBand>{b}</SourceBand>",
            f'      <SourceProperties RasterXSize="{h["width"]}" RasterYSize="{h["height"]}" '
            f'DataType="{dtype}" BlockXSize="{bx}" BlockYSize="{by}"/>',
            f'      <SrcRect xOff="0" yOff="0" xSize="{h["width"]}" ySize="{h["height"]}"/>',
            f'      <DstRect xOff="0" yOff="0" xSize="{h["width"]}" ySize="{h["height"]}"/>',
            "    </SimpleSource>",
            "  </VRTRasterBand>",
        ]
    lines.append("</VRTDataset>")
    return "\n".join(lines) + "\n"


def stac_scene(location: Path | str, *, bands: list[str], dtype: str | None = None
               ) -> RemoteScene:
    """A STAC Item as a scene with the model's ``bands``, in order (see the module
    docstring); one-line :class:`DataError` for an unreadable Item, unusable or mismatched
    assets."""
    item = _read_item(location)
    chosen = _choose(item, location, bands, dtype)
    hrefs = {c.key: _resolve_href(item["assets"][c.key]["href"], location) for c in chosen}
    headers = {k: _open_header(h) for k, h in hrefs.items()}
    first = headers[chosen[0].key]
    for c in chosen:
        h = headers[c.key]
        if c.band > h["count"]:
            raise DataError(f"STAC item {item.get('id')}: asset {c.key} has {h['count']} bands, "
                            f"not band {c.band}")
        if (h["width"], h["height"], h["transform"], h["crs"]) != (
                first["width"], first["height"], first["transform"], first["crs"]):
            raise DataError(
                f"STAC item {item.get('id')}: assets {chosen[0].key} and {c.key} are on "
                f"different grids ({first['width']}x{first['height']} vs "
                f"{h['width']}x{h['height']}); choose bands of one resolution")
    dtypes = {headers[c.key]["dtypes"][c.band - 1] for c in chosen}
    if len(dtypes) > 1:
        raise DataError(f"STAC item {item.get('id')}: the bands' assets have different data "
                        f"types ({', '.join(sorted(dtypes))})")
    item_id = str(item.get("id") or (_url_name(location) if isinstance(location, str)
                                     else location.stem))
    local = tuple(h for h in [location, *hrefs.values()] if isinstance(h, Path))
    assets = tuple((c.key, c.band) for c in chosen)
    keys = {c.key for c in chosen}
    if len(keys) == 1 and [c.band for c in chosen] == list(range(1, first["count"] + 1)):
        return RemoteScene(location=str(location), gdal_path=first["gdal"], name=item_id,
                           stem=item_id, local_files=local, assets=assets)
    from rasterio.io import MemoryFile

    names = [b.lower() for b in bands]
    xml = _vrt([headers[c.key] for c in chosen],
               [(headers[c.key], c.band) for c in chosen], names)
    mem = MemoryFile(xml.encode("utf-8"), ext=".vrt")
    return RemoteScene(location=str(location), gdal_path=mem.name, name=item_id, stem=item_id,
                       local_files=local, assets=assets, _memfile=mem)
