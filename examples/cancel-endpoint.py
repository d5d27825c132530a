"""Cancel an upload from the application: one INSERT in its own transaction.

The right to cancel is a grant: the operator runs examples/cancel-requests.sql,
which creates the table resclean_cancel_requests and grants the application's
role INSERT on (resource_ids, reason, request_id) and USAGE on its sequence,
and nothing more. A role without that grant cannot cancel anything; a NOTIFY
on the channel is only a wake-up (anyone who can connect may send one) and
its payload is ignored.

A trigger stamps each request with the role that wrote it (requested_by, so
it cannot be forged) and, at commit, wakes the long-running sweepers
(`resclean run sweep`, no --once) listening on `resclean_cancel` (policy
cancel_channel). A rolled-back request cancels nothing. A sweeper takes the
request within about a second and removes the pending row and its
half-written object through the same path as `resclean run cancel ID` (a
confirmed resource is refused, never deleted); its log lines name the role,
the reason and the request id (requested_by, request_reason, request_id,
via: request). Requests written while no sweeper listens stay in the table:
every sweep takes the pending ones at the start of its next cycle.

The application needs no S3 credentials and no DELETE on the resource table.

A sketch for a FastAPI + SQLAlchemy service such as CipherSwarm:
"""
import uuid

from fastapi import APIRouter, HTTPException, Request
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

router = APIRouter()

# Up to 1,000 ids per request row; the other columns are set by the trigger.
CANCEL = text(
    "INSERT INTO resclean_cancel_requests (resource_ids, reason, request_id) "
    "VALUES (CAST(:ids AS uuid[]), :reason, :request_id)"
)


async def cancel_pending_uploads(
    db: AsyncSession, resource_ids: list[uuid.UUID], reason: str, request_id: str | None
) -> None:
    """Ask the sweepers to remove pending uploads once this transaction commits."""
    await db.execute(
        CANCEL,
        {
            "ids": [str(i) for i in resource_ids],
            "reason": reason[:200],
            "request_id": request_id[:100] if request_id else None,
        },
    )


@router.delete("/resources/{resource_id}/upload")
async def cancel_upload(resource_id: uuid.UUID, request: Request, db: AsyncSession) -> dict:
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
        await cancel_pending_uploads(
            db, [resource_id], reason="user cancelled the upload",
            request_id=request.headers.get("x-request-id"),
        )
    # Committed: the sweepers act on it now, or at the start of their next
    # cycle if none was listening. The request id finds it in their log.
    return {"status": "cancelling"}
