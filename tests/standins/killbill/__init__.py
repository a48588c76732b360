"""Kill Bill stand-in (NOT Kill Bill): see killbill_standin.py and README.md."""

from .killbill_standin import (
    KillBillStandin,
    Notification,
    dumps,
    encode_notification,
    kb_datetime,
    post_notification,
)

__all__ = ["KillBillStandin", "Notification", "dumps", "encode_notification", "kb_datetime", "post_notification"]
