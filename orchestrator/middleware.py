from django.http import HttpRequest, HttpResponse, JsonResponse


# The API's addresses, and the hooks' (whose senders are programs too).
JSON_PATHS = ("/orchestrate", "/schedules", "/hooks/")


class JsonApiErrors:
    """The API answers every error as JSON `{"detail": ...}`, including the ones Django produces
    before a view runs (a wrong method, an address no endpoint answers)."""

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if not request.path.startswith(JSON_PATHS) or response.status_code not in (404, 405) \
                or response.get("Content-Type", "").startswith("application/json"):
            return response
        if response.status_code == 404:  # an address no endpoint answers
            return JsonResponse({"detail": "not found"}, status=404)
        allowed = response.get("Allow", "")
        response = JsonResponse({"detail": f"method {request.method} not allowed; use {allowed}"}, status=405)
        response["Allow"] = allowed
        return response


class HtmxFormAnswers:
    """A swap that shows a form's errors (400) or a decision refused because the call is no longer as
    shown (409) is the page working as meant: to htmx it answers 200, marked `X-Cortex-Invalid` with
    the real status, so the browser does not log it as a failed request. A plain browser and the API
    still get the real status."""

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if response.status_code in (400, 409) and request.headers.get("HX-Request") == "true" \
                and response.get("Content-Type", "").startswith("text/html"):
            response["X-Cortex-Invalid"] = str(response.status_code)
            response.status_code = 200
        return response
