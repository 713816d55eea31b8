"""Who may run the page's destructive actions (clear the prompt cache, delete a library voice).

    gate = AdminGate(api_key="...", loopback_only=False)
    gate.check(admin_key_typed, request, "clear the prompt cache")      # AccessError when refused

Hiding an event from the API docs does not stop anyone from calling it (any visitor can post to
``/gradio_api/...`` with its name or index), so the check runs inside the handler, on the server.
The rule is the REST API's (api/routes.py ``require_admin``): on a server that only this machine can
reach, one click is enough; on a server open to the network, the admin key (``--api-key``) is
needed, and without a key only a visitor on this machine itself may do it.
"""

from __future__ import annotations

import hmac
import ipaddress

import gradio as gr

from errors import AccessError

# what the page sends as the admin key when a person answers "No" to "Clear?" or "Delete?"
CANCELLED = "(cancelled)"


class AdminGate:
    """The admin check of one served page (from settings: ``--api-key`` and where it listens)."""

    def __init__(self, api_key: str | None = None, loopback_only: bool = True):
        self.api_key = api_key or None
        self.loopback_only = loopback_only

    @property
    def asks_for_key(self) -> bool:
        """True when the page should show an admin-key field (the server is open to the network)."""
        return not self.loopback_only

    def check(self, key: str | None, request: gr.Request | None, action: str) -> None:
        """Return when ``action`` is allowed for this caller; else raise ``AccessError`` saying what to do."""
        if self.loopback_only:
            return
        if self.api_key:
            if key and hmac.compare_digest(key.strip().encode(), self.api_key.encode()):
                return
            raise AccessError(
                f"to {action} on a server open to the network, type the admin key (the "
                "--api-key the server was started with) in the admin key field",
                status=403,
            )
        if _from_loopback(request):
            return
        raise AccessError(
            f"to {action} on a server open to the network, start it with --api-key and type "
            "that key in the admin key field (or do it on the server machine itself)",
            status=403,
        )


def _from_loopback(request: gr.Request | None) -> bool:
    host = getattr(getattr(request, "client", None), "host", None)
    try:
        return bool(host) and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
