"""API conventions shared by every endpoint: page size, and service errors as responses.
(Kept apart from api.py because DRF imports these while loading its own views.)"""

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt
from rest_framework import pagination
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from .errors import ServiceError


class Pagination(pagination.PageNumberPagination):
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 200


def exception_handler(exc, context):
    if isinstance(exc, ServiceError):
        body = {"detail": exc.message, "code": exc.code, **exc.extra}
        return Response(body, status=exc.status, headers=exc.headers())
    if isinstance(exc, RequestDataTooBig):  # else Django's HTML 400
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        return Response(
            {"detail": f"The body is larger than {limit} bytes.", "code": "too_large"}, status=413
        )
    return drf_exception_handler(exc, context)


@csrf_exempt  # it changes nothing: a POST gets the 404 too, not CSRF's page
def not_found(request, path):
    """Any other URL under /api/: a 404 in JSON, as the API's own are, not Django's page."""
    return JsonResponse({"detail": "Not found."}, status=404)
