"""Cancel an upload from the application: one statement in its own transaction.

The long-running sweeper (`resclean run sweep`, no --once) LISTENs on the
channel `resclean_cancel` (policy field cancel_channel). PostgreSQL delivers
the notification only when the application's transaction commits, so a
rolled-back request cancels nothing. The sweeper then removes the pending row
and its half-written object within about a second, through the same path as
`resclean run cancel ID` (a confirmed resource is refused, never deleted).

The application role needs no grant for this: pg_notify() is executable by
PUBLIC. It needs no S3 credentials either.

A sketch for a FastAPI + SQLAlchemy service such as CipherSwarm:
"""
import uuid

from fastapi import APIRouter, HTTPException
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

router = APIRouter()

CANCEL = text("SELECT pg_notify('resclean_cancel', :id)")


async def cancel_pending_upload(db: AsyncSession, resource_id: uuid.UUID) -> None:
    """Ask the sweeper to remove a pending upload once this transaction commits."""
    # One id per call; several ids may share one payload, separated by commas
    # (at most 8,000 bytes per notification).
    await db.execute(CANCEL, {"id": str(resource_id)})


@router.delete("/resources/{resource_id}/upload")
async def cancel_upload(resource_id: uuid.UUID, db: AsyncSession) -> dict:
    async with db.begin():
        row = await db.execute(
            text("SELECT is_uploaded FROM attack_resource_files WHERE id = :id"),
            {"id": str(resource_id)},
        )
        found = row.first()
        if found is None:
            raise HTTPException(status_code=404)
        if found.is_uploaded:
            raise HTTPException(status_code=409, detail="already confirmed")
        await cancel_pending_upload(db, resource_id)
    # Committed: the sweeper acts on it now. If no sweeper was listening, the
    # hourly sweep removes the row once it is older than max_age (24 h).
    return {"status": "cancelling"}
