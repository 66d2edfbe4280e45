from django.http import HttpRequest

from . import selectors


def navigation(request: HttpRequest) -> dict:
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}
    return {"pending_confirmations": selectors.pending_calls_for_user(user).count()}
