"""Key avatars (docs/admin-api.md#avatars): the same permissions as the key itself.

Reading an avatar is reading the key (another owner's key is 404); setting or
removing one is changing it (a revoked key is 409 ``key_revoked`` for a new
image; removing one is allowed, as deleting the key is). Uploads are decoded
and re-encoded by :mod:`gateway.service.images` in a worker thread, a few at a
time, so a large image neither blocks the event loop nor multiplies memory.
"""

from __future__ import annotations

import asyncio

from keygate.gateway.errors import NotFound, TooLarge
from keygate.gateway.service import conflicts, images
from keygate.gateway.service.actor import Actor
from keygate.gateway.service.context import ServiceContext
from keygate.gateway.service.keys import KeyService
from keygate.gateway.store.records import AvatarRecord, KeyRecord

# Decodes at once per process: each may hold a 64 MiB frame (images.MAX_PIXELS).
MAX_CONCURRENT_DECODES = 2


class AvatarService:
    def __init__(self, ctx: ServiceContext, keys: KeyService) -> None:
        self.ctx = ctx
        self.keys = keys
        self._decoding = asyncio.Semaphore(MAX_CONCURRENT_DECODES)

    async def get(self, actor: Actor, key_id: str) -> AvatarRecord:
        await self.keys.get(actor, key_id)
        avatar = await self.ctx.store.get_avatar(key_id)
        if avatar is None:
            raise NotFound("This key has no avatar.")
        return avatar

    async def put(self, actor: Actor, key_id: str, upload: bytes) -> KeyRecord:
        """Set the key's avatar from an uploaded image (its bytes are then dropped)."""
        key = await self.keys.get(actor, key_id)
        if len(upload) > images.MAX_UPLOAD_BYTES:
            raise TooLarge(f"The image is over {images.MAX_UPLOAD_BYTES // 1024} KiB.")
        if key.status == "revoked":
            raise conflicts.key_revoked()
        async with self._decoding:
            encoded = await asyncio.to_thread(images.reencode, upload)
        audit = actor.audit("key.avatar_set", "key", key_id, {"etag": encoded.etag})
        with conflicts.store_refusals():
            updated = await self.ctx.store.put_avatar(
                key_id, encoded.png, encoded.etag, audit=audit
            )
        await self.ctx.notify("key", key_id)
        return updated

    async def delete(self, actor: Actor, key_id: str) -> None:
        await self.keys.get(actor, key_id)
        audit = actor.audit("key.avatar_delete", "key", key_id)
        if await self.ctx.store.delete_avatar(key_id, audit=audit):
            await self.ctx.notify("key", key_id)
