from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from orchestrator import services


class Command(BaseCommand):
    help = "Create an API token for USERNAME and print it (on the last line). It is shown only once."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--name", default="", help="a label to recognise the token by")

    def handle(self, *args, username: str, name: str, **options):
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"no user named {username!r}")
        token, raw = services.token_create(user=user, name=name or "command line")
        self.stderr.write(f"Token {token.prefix}… created for {username}; store it now, it is not shown again.")
        self.stdout.write(raw)
