"""Mailing one-time PIN codes through the SMTP server named in the one-time PIN identity
provider's settings (`smtp_host`, `smtp_port`, `smtp_from`, optional `smtp_username`,
`smtp_password`, `smtp_starttls`).

stdlib `smtplib` in a worker thread: a code is a few hundred bytes once per login, so a
dependency for async SMTP buys nothing. Failures are logged without the code or the address.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

# smtplib and the email package are imported when a code is mailed, not by an edge that
# never sends one.

log = logging.getLogger("burrow.access.mail")
TIMEOUT = 15.0


def _send(config: dict[str, Any], to: str, code: str, app_name: str) -> None:
    import smtplib
    from email.message import EmailMessage

    msg = EmailMessage()
    msg["From"] = str(config.get("smtp_from") or "burrow-access@localhost")
    msg["To"] = to
    msg["Subject"] = f"Your login code for {app_name}"
    msg.set_content(
        f"Your one-time login code is {code}\n\nIt is valid for 10 minutes. "
        "If you did not ask for it, ignore this message.\n"
    )
    host = str(config.get("smtp_host") or "127.0.0.1")
    port = int(config.get("smtp_port") or 25)
    with smtplib.SMTP(host, port, timeout=TIMEOUT) as smtp:
        if config.get("smtp_starttls"):
            smtp.starttls()
        if config.get("smtp_username"):
            smtp.login(str(config["smtp_username"]), str(config.get("smtp_password") or ""))
        smtp.send_message(msg)


async def send_code(config: dict[str, Any], to: str, code: str, app_name: str) -> None:
    import smtplib

    try:
        await asyncio.to_thread(_send, config, to, code, app_name)
    except (OSError, smtplib.SMTPException) as exc:
        log.warning("could not mail a one-time PIN: %s", type(exc).__name__)
