"""Create the first administrator account if there is no user yet, and say how to log in."""

import os
import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Create a first superuser when the database has no users, and print how to log in."

    def add_arguments(self, parser):
        parser.add_argument("--username", default=os.environ.get("CORTEX_ADMIN_USERNAME", "admin"))

    def handle(self, *args, username: str, **options):
        User = get_user_model()
        password_file = settings.VAR_DIR / "initial-admin-password"
        if User.objects.exists():
            if password_file.exists() and User.objects.filter(username=username).exists():
                self.stdout.write(f"Log in as {username!r} with the password in {password_file} "
                                  "(change it with: python manage.py changepassword " + username + ").")
            return
        password = os.environ.get("CORTEX_ADMIN_PASSWORD") or secrets.token_urlsafe(12)
        User.objects.create_superuser(username=username, email="", password=password)
        if not os.environ.get("CORTEX_ADMIN_PASSWORD"):
            fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(password + "\n")
        self.stdout.write(self.style.SUCCESS(
            f"Created the administrator {username!r} with password: {password}\n"
            f"(also saved in {password_file}; change it with: python manage.py changepassword {username})"))
