"""Key avatars (docs/admin-api.md#avatars): real images in, keygate's own PNG out.

Every image is made here with Pillow; the hostile ones (SVG, HTML, a PNG
signature on garbage, truncated files, polyglots, a 20000×20000 bomb) must be
422 and leave nothing stored.
"""

from __future__ import annotations

import io
import time
from typing import Any

import aiohttp
import pytest
from PIL import Image, PngImagePlugin

from keygate.gateway.service.images import MAX_UPLOAD_BYTES
from tests.support.admin import AdminApi, Member, create_key
from tests.support.gateway import Keygate

MARKER = b"keygate-private-marker"  # metadata that must not survive re-encoding


def image(fmt: str, size: tuple[int, int] = (40, 30), **save: Any) -> bytes:
    """A real image in ``fmt``: a red/blue split, so re-encoding has something to keep."""
    img = Image.new("RGB", size, (220, 30, 30))
    img.paste((30, 30, 220), (size[0] // 2, 0, size[0], size[1]))
    out = io.BytesIO()
    img.save(out, format=fmt, **save)
    return out.getvalue()


def png_with_text(text: bytes) -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", text.decode())
    return image("PNG", pnginfo=info)


def jpeg_with_comment(comment: bytes) -> bytes:
    return image("JPEG", comment=comment)


def gif_animated() -> bytes:
    frames = [Image.new("P", (20, 20), i) for i in (1, 2, 3)]
    out = io.BytesIO()
    frames[0].save(out, format="GIF", save_all=True, append_images=frames[1:], duration=50)
    return out.getvalue()


def bomb_png() -> bytes:
    """20000×20000 pixels in a few dozen KiB: one bit each, all zero."""
    out = io.BytesIO()
    Image.new("1", (20000, 20000)).save(out, format="PNG")
    return out.getvalue()


GOOD = {
    "png": lambda: image("PNG"),
    "png-rgba": lambda: image("PNG", (300, 100)),
    "png-text-chunk": lambda: png_with_text(MARKER),
    "jpeg": lambda: image("JPEG", quality=90),
    "jpeg-comment": lambda: jpeg_with_comment(MARKER),
    "jpeg-progressive": lambda: image("JPEG", progressive=True),
    "gif": lambda: image("GIF"),
    "gif-animated": gif_animated,
    "webp": lambda: image("WEBP"),
    "webp-lossless": lambda: image("WEBP", lossless=True),
    "tiny-1x1": lambda: image("PNG", (1, 1)),
}


def truncated(data: bytes) -> bytes:
    return data[: len(data) * 2 // 3]


def png_idat_cut() -> bytes:
    """Well-formed chunks (checksums right, IEND last) around pixel data cut short:
    only the decoder can tell."""
    import struct
    import zlib

    data = image("PNG", (200, 200))
    pos, chunks = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IDAT":
            body = body[: len(body) // 2]
        chunks.append(
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )
        pos += 12 + length
    return data[:8] + b"".join(chunks)


BAD = {
    "svg": lambda: b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>',
    "svg-xml-prolog": lambda: b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>',
    "html": lambda: b"<!doctype html><html><body><script>alert(1)</script></body></html>",
    "text": lambda: b"just some text",
    "empty": lambda: b"",
    "png-signature-on-garbage": lambda: b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8,
    "jpeg-signature-on-garbage": lambda: b"\xff\xd8\xff\xe0" + b"\x00garbage" * 100 + b"\xff\xd9",
    "gif-signature-only": lambda: b"GIF89a",
    "webp-signature-on-garbage": lambda: b"RIFF\x10\x00\x00\x00WEBPVP8 garbage!",
    "png-truncated": lambda: truncated(image("PNG", (200, 200))),
    "png-pixel-data-cut": png_idat_cut,
    "jpeg-truncated": lambda: truncated(image("JPEG", (200, 200))),
    "gif-truncated": lambda: truncated(image("GIF", (200, 200))),
    "webp-truncated": lambda: truncated(image("WEBP", (200, 200))),
    "bmp": lambda: image("BMP"),
    "tiff": lambda: image("TIFF"),
    "ico": lambda: image("ICO"),
    # Polyglots: a valid image that is also a page or a script.
    "png-then-html": lambda: image("PNG") + b"<html><script>alert(1)</script></html>",
    "png-html-in-text-chunk": lambda: png_with_text(b"<script>alert(1)</script>"),
    "jpeg-html-in-comment": lambda: jpeg_with_comment(b"<script>alert(1)</script>"),
    "jpeg-then-html": lambda: image("JPEG") + b"<!doctype html><p>hi",
    "gif-js": lambda: b"GIF89a/*\x00\x00\x00\x00*/=1;alert(1);//" + image("GIF")[6:],
    "gif-then-php": lambda: image("GIF") + b"<?php system($_GET[c]); ?>",
    "webp-then-js": lambda: image("WEBP") + b"javascript:alert(1)",
    "png-bomb-20000x20000": bomb_png,
}


async def put(
    api: AdminApi, token: str, key_id: str, data: bytes, content_type: str = "image/png"
) -> Any:
    return await api.call(
        "PUT",
        f"/keys/{key_id}/avatar",
        token,
        data=io.BytesIO(data),  # aiohttp warns about large raw bytes
        headers={"Content-Type": content_type},
    )


async def put_multipart(api: AdminApi, token: str, key_id: str, data: bytes, field="file") -> Any:
    form = aiohttp.FormData()
    form.add_field(field, io.BytesIO(data), filename="a.png", content_type="image/png")
    return await api.call("PUT", f"/keys/{key_id}/avatar", token, data=form)


@pytest.fixture
async def key_id(api: AdminApi) -> str:
    return str((await create_key(api, api.admin, name="with-avatar"))["key"]["id"])


# --- accepted ----------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(GOOD))
async def test_avatar_real_image_becomes_a_256_png(api: AdminApi, key_id: str, name: str) -> None:
    upload = GOOD[name]()
    reply = await put(api, api.admin, key_id, upload, "application/octet-stream")
    assert reply.status == 200, reply.raw
    url = reply.json["avatar_url"]
    assert url.startswith(f"/_keygate/api/v1/keys/{key_id}/avatar?v=")
    got = await api.call("GET", url, api.admin)
    assert got.status == 200
    assert got.headers["Content-Type"] == "image/png"
    assert got.headers["X-Content-Type-Options"] == "nosniff"
    assert got.headers["ETag"].startswith('"')
    assert got.raw != upload  # never the uploaded bytes
    assert MARKER not in got.raw  # metadata dropped
    with Image.open(io.BytesIO(got.raw)) as img:
        assert (img.format, img.size) == ("PNG", (256, 256))
        assert not set(img.info) - {"dpi"}  # no text chunks, no EXIF, no ICC profile


async def test_avatar_multipart_file_field_is_accepted(api: AdminApi, key_id: str) -> None:
    reply = await put_multipart(api, api.admin, key_id, image("JPEG"))
    assert reply.status == 200, reply.raw
    assert reply.json["avatar_url"] is not None


async def test_avatar_multipart_other_field_or_none_is_422(api: AdminApi, key_id: str) -> None:
    reply = await put_multipart(api, api.admin, key_id, image("PNG"), field="image")
    assert (reply.status, reply.code) == (422, "invalid")
    assert "image" in reply.details
    form = aiohttp.FormData()
    form.add_field("other", "x")
    form.add_field("file", image("PNG"), filename="a.png")
    reply = await api.call("PUT", f"/keys/{key_id}/avatar", api.admin, data=form)
    assert reply.status == 422


async def test_avatar_key_record_carries_url_and_changes_with_image(
    api: AdminApi, key_id: str
) -> None:
    assert (await api.get(f"/keys/{key_id}", api.admin)).json["avatar_url"] is None
    first = (await put(api, api.admin, key_id, image("PNG"))).json["avatar_url"]
    assert (await api.get(f"/keys/{key_id}", api.admin)).json["avatar_url"] == first
    listed = (await api.get("/keys", api.admin, params={"search": "with-avatar"})).json
    assert listed["items"][0]["avatar_url"] == first
    second = (await put(api, api.admin, key_id, image("PNG", (90, 10)))).json["avatar_url"]
    assert second != first


async def test_avatar_etag_answers_304(api: AdminApi, key_id: str) -> None:
    await put(api, api.admin, key_id, image("PNG"))
    got = await api.get(f"/keys/{key_id}/avatar", api.admin)
    etag = got.headers["ETag"]
    for header in (etag, f"W/{etag}", f'"nope", {etag}', "*"):
        path = f"/keys/{key_id}/avatar"
        again = await api.get(path, api.admin, headers={"If-None-Match": header})
        assert again.status == 304, header
        assert again.raw == b"" and again.headers["ETag"] == etag
    other = await api.get(f"/keys/{key_id}/avatar", api.admin, headers={"If-None-Match": '"x"'})
    assert other.status == 200 and other.raw == got.raw


async def test_avatar_version_parameter_must_be_hex(api: AdminApi, key_id: str) -> None:
    await put(api, api.admin, key_id, image("PNG"))
    reply = await api.get(f"/keys/{key_id}/avatar", api.admin, params={"v": "<x>"})
    assert (reply.status, reply.code) == (422, "invalid")


async def test_avatar_none_is_404_and_delete_is_idempotent(api: AdminApi, key_id: str) -> None:
    reply = await api.get(f"/keys/{key_id}/avatar", api.admin)
    assert (reply.status, reply.code) == (404, "not_found")
    await put(api, api.admin, key_id, image("GIF"))
    assert (await api.delete(f"/keys/{key_id}/avatar", api.admin)).status == 204
    assert (await api.get(f"/keys/{key_id}/avatar", api.admin)).status == 404
    assert (await api.get(f"/keys/{key_id}", api.admin)).json["avatar_url"] is None
    assert (await api.delete(f"/keys/{key_id}/avatar", api.admin)).status == 204


async def test_avatar_changes_are_audited(api: AdminApi, key_id: str) -> None:
    await put(api, api.admin, key_id, image("PNG"))
    await api.delete(f"/keys/{key_id}/avatar", api.admin)
    await api.delete(f"/keys/{key_id}/avatar", api.admin)  # nothing to remove: no record
    items = (await api.get("/audit", api.admin, params={"limit": "3"})).json["items"]
    assert [i["action"] for i in items[:2]] == ["key.avatar_delete", "key.avatar_set"]
    assert all(i["target"] == {"type": "key", "id": key_id} for i in items[:2])
    assert items[2]["action"] == "key.create"


async def test_avatar_deleting_the_key_removes_it(
    api: AdminApi, keygate: Keygate, key_id: str
) -> None:
    await put(api, api.admin, key_id, image("PNG"))
    assert await keygate.gw.store.get_avatar(key_id) is not None
    assert (await api.delete(f"/keys/{key_id}", api.admin)).status == 204
    assert await keygate.gw.store.get_avatar(key_id) is None


async def test_avatar_of_revoked_key_cannot_be_set_but_can_be_removed(
    api: AdminApi, key_id: str
) -> None:
    await put(api, api.admin, key_id, image("PNG"))
    await api.post(f"/keys/{key_id}/revoke", api.admin)
    reply = await put(api, api.admin, key_id, image("PNG"))
    assert (reply.status, reply.code) == (409, "key_revoked")
    assert (await api.get(f"/keys/{key_id}/avatar", api.admin)).status == 200
    assert (await api.delete(f"/keys/{key_id}/avatar", api.admin)).status == 204


# --- permissions: those of the key itself ----------------------------------------------
async def test_avatar_owner_may_manage_own_key(api: AdminApi, alice: Member) -> None:
    reply = await put(api, alice.token, alice.key_id, image("WEBP"))
    assert reply.status == 200, reply.raw
    assert (await api.get(f"/keys/{alice.key_id}/avatar", alice.token)).status == 200
    assert (await api.delete(f"/keys/{alice.key_id}/avatar", alice.token)).status == 204


async def test_avatar_of_another_owners_key_is_404(
    api: AdminApi, alice: Member, bob: Member
) -> None:
    await put(api, api.admin, bob.key_id, image("PNG"))
    path = f"/keys/{bob.key_id}/avatar"
    assert (await put(api, alice.token, bob.key_id, image("PNG"))).status == 404
    assert (await api.get(path, alice.token)).status == 404
    assert (await api.delete(path, alice.token)).status == 404
    assert (await api.get(path, bob.token)).status == 200  # untouched


async def test_avatar_without_a_role_is_403_and_without_a_key_401(
    api: AdminApi, key_id: str, plain_token: str
) -> None:
    assert (await put(api, plain_token, key_id, image("PNG"))).status == 403
    assert (await api.call("GET", f"/keys/{key_id}/avatar")).status == 401


async def test_avatar_unknown_key_is_404(api: AdminApi) -> None:
    assert (await put(api, api.admin, "000000000000", image("PNG"))).status == 404


# --- refused ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(BAD))
async def test_avatar_not_a_plain_image_is_422(api: AdminApi, key_id: str, name: str) -> None:
    started = time.monotonic()
    reply = await put(api, api.admin, key_id, BAD[name](), "image/png")
    assert (reply.status, reply.code) == (422, "invalid"), reply.raw
    assert "file" in reply.details
    assert time.monotonic() - started < 10  # a bomb is refused before its pixels are decoded
    assert (await api.get(f"/keys/{key_id}/avatar", api.admin)).status == 404


@pytest.mark.parametrize("name", ["svg", "png-then-html", "png-bomb-20000x20000"])
async def test_avatar_hostile_file_in_multipart_is_422(
    api: AdminApi, key_id: str, name: str
) -> None:
    reply = await put_multipart(api, api.admin, key_id, BAD[name]())
    assert (reply.status, reply.code) == (422, "invalid")


def over_limit() -> bytes:
    """A real PNG just over 1 MiB (incompressible pixels)."""
    noise = Image.frombytes("RGB", (700, 700), bytes(range(256)) * 5742 + b"\x00" * 48)
    out = io.BytesIO()
    noise.save(out, format="PNG", compress_level=0)
    data = out.getvalue()
    assert len(data) > MAX_UPLOAD_BYTES
    return data


async def test_avatar_over_1_mib_is_413(api: AdminApi, key_id: str) -> None:
    data = over_limit()
    reply = await put(api, api.admin, key_id, data)
    assert (reply.status, reply.code) == (413, "too_large")
    reply = await put_multipart(api, api.admin, key_id, data)
    assert (reply.status, reply.code) == (413, "too_large")

    async def chunks() -> Any:  # no Content-Length: the running count decides
        for start in range(0, len(data), 65536):
            yield data[start : start + 65536]

    reply = await api.call(
        "PUT", f"/keys/{key_id}/avatar", api.admin, data=chunks(),
        headers={"Content-Type": "image/png"},
    )  # fmt: skip
    assert (reply.status, reply.code) == (413, "too_large")


async def test_avatar_exactly_1_mib_is_not_too_large(api: AdminApi, key_id: str) -> None:
    data = image("PNG")
    padded = data + bytes(MAX_UPLOAD_BYTES - len(data))  # trailing data: 422, not 413
    reply = await put(api, api.admin, key_id, padded)
    assert (reply.status, reply.code) == (422, "invalid")


async def test_avatar_compressed_upload_is_415(api: AdminApi, key_id: str) -> None:
    reply = await api.call(
        "PUT", f"/keys/{key_id}/avatar", api.admin, data=image("PNG"),
        headers={"Content-Type": "image/png", "Content-Encoding": "gzip"},
    )  # fmt: skip
    assert (reply.status, reply.code) == (415, "unsupported_media_type")


async def test_avatar_broken_multipart_is_400(api: AdminApi, key_id: str) -> None:
    reply = await api.call(
        "PUT", f"/keys/{key_id}/avatar", api.admin, data=b"--x\r\nnonsense",
        headers={"Content-Type": "multipart/form-data; boundary=x"},
    )  # fmt: skip
    assert reply.status in (400, 422), reply.raw
    assert reply.code in ("bad_request", "invalid")
