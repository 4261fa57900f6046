"""Telling people a release happened: e-mail (SMTP) and an optional webhook.

The message says what was released (release, version, cells), where to find
it (links to the version directory and each file) and each file's SHA-512,
and what each platform made of it (an AMI, an image).

SMTP: release.notify.smtp_host/smtp_port in matrix.yaml; a login, when the
server wants one, from IMAGES_SMTP_USER and IMAGES_SMTP_PASSWORD. STARTTLS
is used when the server offers it. The webhook (IMAGES_WEBHOOK_URL, or
release.notify.webhook when its URL holds no secret) gets the same facts as
JSON.
"""

from __future__ import annotations

import os
import smtplib
from email.message import EmailMessage

from tasks.errors import StageFailed
from tasks.model.settings import NotifySettings


class NotifyFailed(StageFailed):
    pass


def summary(release: dict) -> str:
    lines = [
        f"Debian {release['release']} cloud images, version {release['version']}, were released.",
        "",
        f"Directory: {release['url']}",
        "",
    ]
    for cell in release["cells"]:
        lines.append(f"{cell['cell']}:")
        for name, digest in cell["files"].items():
            lines += [f"  {release['url']}/{name}", f"    SHA-512 {digest}"]
        for platform in cell.get("platforms", []):
            lines.append("  " + ", ".join(f"{k}: {v}" for k, v in platform.items()))
        lines.append("")
    return "\n".join(lines)


def send_mail(release: dict, settings: NotifySettings) -> None:
    message = EmailMessage()
    message["Subject"] = f"Debian {release['release']} cloud images {release['version']} released"
    message["From"] = settings.sender
    message["To"] = ", ".join(settings.to)
    message.set_content(summary(release))
    host, port = settings.smtp_host, settings.smtp_port
    server = f"{host}:{port}"
    try:
        with smtplib.SMTP(host, port, timeout=30) as smtp:
            smtp.ehlo()
            if smtp.has_extn("starttls"):
                smtp.starttls()
                smtp.ehlo()
            if os.environ.get("IMAGES_SMTP_USER"):
                smtp.login(os.environ["IMAGES_SMTP_USER"], os.environ.get("IMAGES_SMTP_PASSWORD", ""))
            smtp.send_message(message)
    except (OSError, smtplib.SMTPException) as error:
        raise NotifyFailed(f"sending the release mail through {server}: {error}") from None


def call_webhook(release: dict, url: str) -> None:
    import requests  # here: every doit run loads this module, only a release needs requests

    try:
        answer = requests.post(url, json={"event": "release", **release, "text": summary(release)}, timeout=30)
    except requests.RequestException as error:
        raise NotifyFailed(f"calling the release webhook: {type(error).__name__}") from None
    if answer.status_code >= 400:
        raise NotifyFailed(f"the release webhook answered HTTP {answer.status_code}")


def notify(release: dict, settings: NotifySettings) -> list[str]:
    """Send what settings ask for; return what was done, for the release record."""
    done = []
    if settings.to:
        send_mail(release, settings)
        done.append(f"mail to {', '.join(settings.to)}")
    webhook = os.environ.get("IMAGES_WEBHOOK_URL") or settings.webhook
    if webhook:
        call_webhook(release, webhook)
        done.append("webhook")
    return done
