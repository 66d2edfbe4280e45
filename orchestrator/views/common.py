"""What every page shares: sign-in for htmx, POST-only addresses that show their page on a GET,
the answer after a write, and the choice between an htmx fragment and the whole page."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.contrib.auth import REDIRECT_FIELD_NAME
from django.contrib.auth.decorators import login_required as django_login_required
from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseNotAllowed,
    HttpResponseRedirect,
)
from django.shortcuts import redirect, render, resolve_url
from django.templatetags.static import static
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme, urlencode
from django.views.decorators.http import require_GET
from django_htmx.http import HttpResponseClientRedirect


def login_required(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Django's, except for an htmx request from someone signed out (their session ended, in another
    tab or by expiring): the whole page goes to the sign-in page, and from there back to the page
    they were on. Django's redirect would be followed inside the swap, putting the sign-in page in
    place of a card, and would come back to the address htmx posted to, which takes no GET."""
    checked = django_login_required(view)

    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if request.htmx and not request.user.is_authenticated:
            page = request.htmx.current_url_abs_path or reverse("jobs")  # only a page of ours
            return HttpResponseClientRedirect(f"{resolve_url(settings.LOGIN_URL)}?"
                                              f"{urlencode({REDIRECT_FIELD_NAME: page})}")
        return checked(request, *args, **kwargs)

    return wrapper


def post_only(page: str, *url_kwargs: str) -> Callable[[Callable[..., HttpResponse]], Callable[..., HttpResponse]]:
    """Like `require_POST`, except for a GET: the address a form posts to is reloaded, bookmarked or
    opened again after a page showed a validation error, and the person gets the page the form
    belongs to (`page`, with the named arguments of this address) instead of a bare 405."""
    def decorate(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        @functools.wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if request.method in ("GET", "HEAD"):
                url = reverse(page, kwargs={name: kwargs[name] for name in url_kwargs})
                return HttpResponseRedirect(url, status=303)
            if request.method != "POST":
                return HttpResponseNotAllowed(["POST"])
            return view(request, *args, **kwargs)

        return wrapper

    return decorate


def redirect_after_write(request: HttpRequest, url: str) -> HttpResponse:
    """After a write: htmx loads the next page itself, a plain form follows a 302."""
    return HttpResponseClientRedirect(url) if request.htmx else redirect(url)


def page_or_fragment(request: HttpRequest, template: str, context: dict[str, Any], *,
                     fragment: str | None = None, when: bool = True, status: int = 200) -> HttpResponse:
    """The answer to a page's request: for htmx (and `when`), only the template's partial `fragment`,
    the part the request swaps; for any other request, the whole page."""
    return render(request, f"{template}#{fragment}" if fragment and request.htmx and when else template, context,
                  status=status)


def next_url(request: HttpRequest, default: str) -> str:
    candidate = request.POST.get("next", "")
    if candidate and url_has_allowed_host_and_scheme(candidate, allowed_hosts={request.get_host()},
                                                     require_https=request.is_secure()):
        return candidate
    return default


@login_required
@require_GET
def home(request: HttpRequest) -> HttpResponse:
    return redirect("jobs")


@require_GET
def favicon(request: HttpRequest) -> HttpResponse:
    """Browsers ask for /favicon.ico whatever the page's `<link rel=icon>` says."""
    return HttpResponseRedirect(static("favicon.svg"), status=301)


