"""Avatar images: what an upload must be, and the PNG keygate makes of it.

Values in, values out (no I/O); the caller runs :func:`reencode` off the event
loop. The rules are docs/admin-api.md#avatars:

- at most :data:`MAX_UPLOAD_BYTES` (the caller answers 413 beyond);
- PNG, JPEG, GIF or WebP by its signature, decoded by Pillow with only that
  format's decoder, at most :data:`MAX_PIXELS` pixels (a decompression bomb is
  refused before its pixels are decoded);
- no bytes after the image's own end, and no markup a browser or an
  interpreter would run anywhere in the file (polyglots);
- the result is a new :data:`SIZE` × :data:`SIZE` PNG with no metadata: the
  uploaded bytes are never stored or served.

Anything else raises :class:`~keygate.gateway.errors.Invalid` with
``details["file"]``.
"""

from __future__ import annotations

import hashlib
import io
import re
import struct
import warnings
import zlib
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from keygate.gateway.errors import Invalid

MAX_UPLOAD_BYTES = 1024 * 1024
SIZE = 256
# 4096 × 4096: a decoded RGBA frame of 64 MiB at most. Pillow refuses anything
# past twice its limit while reading the header; past the limit it only warns,
# so keygate checks the size itself too (below) and turns the warning into an
# error (Pillow's "Decompression bomb protection" documentation).
MAX_PIXELS = 4096 * 4096
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
warnings.filterwarnings("error", category=Image.DecompressionBombWarning)

FORMATS = ("PNG", "JPEG", "GIF", "WEBP")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Markup that makes a file also a page or a script (case-insensitive). Real
# images hold none (XMP metadata uses other tags), and compressed data matches
# one of these by chance less than once in 10^4 files of 1 MiB.
MARKUP = re.compile(
    rb"<(?:script|html|body|svg|iframe|object|embed|!doctype|\?php)[\s>/]|javascript:",
    re.IGNORECASE,
)


@dataclass(frozen=True, slots=True)
class Encoded:
    png: bytes
    etag: str  # hex SHA-256 of ``png``


def refuse(reason: str) -> Invalid:
    return Invalid({"file": reason})


def sniff(data: bytes) -> str:
    """The format the signature names, or 422."""
    if data.startswith(PNG_SIGNATURE):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    if len(data) >= 12 and data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return "WEBP"
    raise refuse("must be a PNG, JPEG, GIF or WebP image")


def _png_end(data: bytes) -> int:
    """Where the IEND chunk ends, walking the chunks; 422 when they do not parse."""
    pos = len(PNG_SIGNATURE)
    while pos + 12 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        end = pos + 12 + length
        if end > len(data):
            break
        if zlib.crc32(data[pos + 4 : end - 4]) != struct.unpack(">I", data[end - 4 : end])[0]:
            raise refuse("the PNG is damaged (a chunk's checksum is wrong)")
        if kind == b"IEND":
            return end
        pos = end
    raise refuse("the PNG is truncated")


def _webp_end(data: bytes) -> int:
    (size,) = struct.unpack("<I", data[4:8])
    return 8 + size + (size & 1)


def _end_of_image(fmt: str, data: bytes) -> int | None:
    """Where the image ends by its own framing (None: the decoder decides)."""
    if fmt == "PNG":
        return _png_end(data)
    if fmt == "WEBP":
        return _webp_end(data)
    # A JPEG may hold FFD9 inside (a thumbnail), so the file must end with its
    # EOI marker (GIF: its trailer) rather than stop at the first one; zero
    # padding after it, which some encoders write, is allowed.
    body = data.rstrip(b"\x00")
    if fmt == "JPEG":
        return len(data) if body.endswith(b"\xff\xd9") else -1
    if fmt == "GIF":
        return len(data) if body.endswith(b"\x3b") else -1
    return None


def check_bytes(data: bytes) -> str:
    """The upload's format, if its bytes may be decoded at all; else 422."""
    if not data:
        raise refuse("is empty")
    fmt = sniff(data)
    end = _end_of_image(fmt, data)
    if end is not None and end != len(data):
        raise refuse("has data after the end of the image, or is truncated")
    if MARKUP.search(data):
        raise refuse("holds markup or script: not a plain image")
    return fmt


def reencode(data: bytes) -> Encoded:
    """The upload as keygate's avatar PNG; 422 for anything but a plain image.

    Blocking and CPU-bound: call it in a thread.
    """
    fmt = check_bytes(data)
    try:
        with Image.open(io.BytesIO(data), formats=[fmt]) as img:
            if img.format != fmt:
                raise refuse("is not the image format its first bytes name")
            width, height = img.size
            if width < 1 or height < 1 or width * height > MAX_PIXELS:
                raise refuse(f"is larger than {MAX_PIXELS} pixels")
            if fmt == "JPEG":
                img.draft("RGB", (SIZE * 2, SIZE * 2))  # decode at a reduced scale
            img.seek(0)  # the first frame of an animation
            img.load()
            frame = ImageOps.exif_transpose(img) or img
            square = ImageOps.fit(frame.convert("RGBA"), (SIZE, SIZE), Image.Resampling.LANCZOS)
    except Invalid:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise refuse(f"is larger than {MAX_PIXELS} pixels") from None
    except UnidentifiedImageError:
        raise refuse("is not a decodable image") from None
    except Exception:
        # Pillow's decoders signal damaged or truncated data with OSError,
        # ValueError, SyntaxError, struct.error and others, varying by plugin:
        # whatever an upload makes them raise is the upload's fault, never a 500.
        raise refuse("is damaged or truncated") from None
    out = io.BytesIO()
    square.save(out, format="PNG", optimize=False)  # no info dict: no metadata
    png = out.getvalue()
    return Encoded(png, hashlib.sha256(png).hexdigest())
