"""One S3 client recipe for both sides of a checkpoint: the operator's resolver (HeadObject) and the
`fetch` init container (GetObject) must reach the same store the same way. No torch import here: the
operator image imports this module too."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def make_s3_client(endpoint: str | None, creds: Mapping[str, str], timeout_s: float) -> Any:
    """A boto3 S3 client from AWS_* credential keys (missing keys fall back to boto3's default chain)."""
    import boto3  # deferred: only s3:// users pay for importing boto3
    from botocore.config import Config

    session = boto3.session.Session(
        aws_access_key_id=creds.get("AWS_ACCESS_KEY_ID") or None,
        aws_secret_access_key=creds.get("AWS_SECRET_ACCESS_KEY") or None,
        aws_session_token=creds.get("AWS_SESSION_TOKEN") or None,
        region_name=creds.get("AWS_REGION") or creds.get("AWS_DEFAULT_REGION") or None,
    )
    config = Config(
        connect_timeout=timeout_s,
        read_timeout=timeout_s,
        retries={"max_attempts": 3, "mode": "standard"},
        # MinIO-style stores rarely have wildcard DNS for virtual-host buckets.
        s3={"addressing_style": "path"} if endpoint else None,
    )
    return session.client("s3", endpoint_url=endpoint or None, config=config)
