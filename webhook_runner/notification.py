"""Kill Bill's push notification body (killbill/killbill jaxrs/.../json/NotificationJson.java): five fields of
compact JSON, `metaData` being JSON inside a string. No event id, no signature: the body is a trigger, never the
truth."""

from __future__ import annotations

import json
from dataclasses import dataclass

FIELDS = ("eventType", "accountId", "objectType", "objectId", "metaData")

# ExtBusEventType (killbill-plugin-api). Anything else is stored and acknowledged, and skipped visibly.
KNOWN_EVENT_TYPES = frozenset(
    {
        "ACCOUNT_CREATION", "ACCOUNT_CHANGE",
        "SUBSCRIPTION_CREATION", "SUBSCRIPTION_PHASE", "SUBSCRIPTION_CHANGE", "SUBSCRIPTION_CANCEL",
        "SUBSCRIPTION_UNCANCEL", "SUBSCRIPTION_BCD_CHANGE", "SUBSCRIPTION_QUANTITY", "SUBSCRIPTION_EXPIRED",
        "ENTITLEMENT_CREATION", "ENTITLEMENT_CANCEL",
        "BUNDLE_PAUSE", "BUNDLE_RESUME",
        "BLOCKING_STATE", "OVERDUE_CHANGE",
        "INVOICE_CREATION", "INVOICE_ADJUSTMENT", "INVOICE_NOTIFICATION",
        "INVOICE_PAYMENT_SUCCESS", "INVOICE_PAYMENT_FAILED",
        "PAYMENT_SUCCESS", "PAYMENT_FAILED",
        "TAG_CREATION", "TAG_DELETION", "CUSTOM_FIELD_CREATION", "CUSTOM_FIELD_DELETION",
        "TENANT_CONFIG_CHANGE", "TENANT_CONFIG_DELETION", "BROADCAST_SERVICE",
    }
)  # fmt: skip
# Known, and never a reason to look at an account's tenants, but for a tag that writes an invoice off or takes that
# back (written_off_tag).
IGNORED_EVENT_TYPES = frozenset(
    {
        "TAG_CREATION", "TAG_DELETION", "CUSTOM_FIELD_CREATION", "CUSTOM_FIELD_DELETION",
        "TENANT_CONFIG_CHANGE", "TENANT_CONFIG_DELETION", "BROADCAST_SERVICE",
    }
)  # fmt: skip


def written_off_tag(event: dict) -> bool:
    """A stored TAG_CREATION or TAG_DELETION of the WRITTEN_OFF control tag (TagMetadata, killbill-plugin-api): an
    invoice of the account written off, or no longer."""
    return (
        event["event_type"] in ("TAG_CREATION", "TAG_DELETION")
        and isinstance(event.get("meta_data"), dict)
        and (event["meta_data"].get("tagDefinitionName") == "WRITTEN_OFF")
    )


_MAX_ID_LENGTH = 64  # Kill Bill ids are UUIDs (36 characters)
# Kill Bill's metaData objects are flat (a few scalars); deeper nesting is not Kill Bill's, and Python's
# parser would recurse once per level.
_MAX_META_DATA_DEPTH = 3


class InvalidNotification(ValueError):
    """The body is not a Kill Bill notification; the message says why (it goes back in the 400)."""


@dataclass(frozen=True)
class Notification:
    event_type: str
    account_id: str | None
    object_type: str
    object_id: str | None
    meta_data: dict | None  # metaData decoded a second time

    @property
    def action_type(self) -> str | None:
        """REQUESTED or EFFECTIVE for subscription events, else None."""
        return (self.meta_data or {}).get("actionType")


def _depth(text: str) -> int:
    """How deep `text`'s JSON nests objects and arrays (brackets inside strings do not count)."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            escaped, in_string = (False, True) if escaped else (char == "\\", char != '"')
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def parse_notification(body: bytes) -> Notification:
    # Kill Bill sends UTF-8 (json.loads would also take UTF-16 and UTF-32, which the inbox cannot store).
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InvalidNotification(f"the body is not UTF-8: {error}") from None
    if _depth(text) > 1:
        raise InvalidNotification("the body must be one flat JSON object (metaData is a string holding JSON)")
    try:
        document = json.loads(text)
    except ValueError as error:
        raise InvalidNotification(f"the body is not JSON: {error}") from None
    if not isinstance(document, dict):
        raise InvalidNotification("the body must be a JSON object with the fields " + ", ".join(FIELDS))
    missing = [name for name in FIELDS if name not in document]
    if missing:
        raise InvalidNotification("the body lacks " + ", ".join(missing))
    for name in ("eventType", "objectType"):
        value = document[name]
        if not isinstance(value, str) or not value or len(value) > _MAX_ID_LENGTH:
            raise InvalidNotification(f"{name} must be a non-empty string")
    for name in ("accountId", "objectId"):
        value = document[name]
        if value is not None and (not isinstance(value, str) or not value or len(value) > _MAX_ID_LENGTH):
            raise InvalidNotification(f"{name} must be null or an id of at most {_MAX_ID_LENGTH} characters")
    meta_data = document["metaData"]
    if meta_data is not None:
        if not isinstance(meta_data, str):
            raise InvalidNotification("metaData must be null or a string holding JSON")
        if _depth(meta_data) > _MAX_META_DATA_DEPTH:
            raise InvalidNotification(f"metaData nests deeper than Kill Bill's ({_MAX_META_DATA_DEPTH} levels)")
        try:
            meta_data = json.loads(meta_data)
        except ValueError as error:
            raise InvalidNotification(f"metaData is not JSON: {error}") from None
        if not isinstance(meta_data, dict):
            raise InvalidNotification("metaData must hold a JSON object")
    return Notification(
        event_type=document["eventType"],
        account_id=document["accountId"],
        object_type=document["objectType"],
        object_id=document["objectId"],
        meta_data=meta_data,
    )
