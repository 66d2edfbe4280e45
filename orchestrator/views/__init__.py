"""The htmx pages, one module per screen. Every view reads through `selectors`, writes through
`services`, and answers an htmx request with the template partial it swaps, any other request with
the whole page (or a redirect after a write), so every form works without JavaScript."""

from .common import login_required, next_url, page_or_fragment, post_only, redirect_after_write

__all__ = ["login_required", "next_url", "page_or_fragment", "post_only", "redirect_after_write"]
