"""What the tests of the pages share."""

from django.http import HttpResponse


def answered(response: HttpResponse) -> int:
    """The status a page answered with. An htmx swap of a form's errors (or of a refused decision)
    arrives as 200 marked `X-Cortex-Invalid` with the real status, so the browser does not log it."""
    return int(response.get("X-Cortex-Invalid", response.status_code))
