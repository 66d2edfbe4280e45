from django.http import HttpRequest, HttpResponse, JsonResponse


class JsonApiErrors:
    """The API answers every error as JSON `{"detail": ...}`, including the ones Django produces
    before a view runs (a wrong method)."""

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if request.path.startswith("/orchestrate") and response.status_code == 405 \
                and not response.get("Content-Type", "").startswith("application/json"):
            allowed = response.get("Allow", "")
            response = JsonResponse({"detail": f"method {request.method} not allowed; use {allowed}"}, status=405)
            response["Allow"] = allowed
        return response
