"""Form fields the admin shares with the API's rules."""

import json

from django import forms
from django.core.exceptions import ValidationError
from django.forms.fields import InvalidJSONInput

from . import parsers


class StorableJSONField(forms.JSONField):
    """A JSON field that refuses what PostgreSQL cannot store (NaN, NUL, lone surrogates,
    nesting beyond JSON_MAX_DEPTH) with a form error, as the API's parser does, where Django's
    own accepts NaN and meets deep nesting with a RecursionError."""

    def to_python(self, value):
        if problem := self._problem(value):
            raise ValidationError(str(problem), code="invalid")
        return super().to_python(value)

    def bound_data(self, data, initial):
        # The form shown again with its error shows such JSON as typed: decoded, a lone
        # surrogate could not be written into the page, nor deep nesting decoded at all.
        if self._problem(data):
            return InvalidJSONInput(data)
        return super().bound_data(data, initial)

    def _problem(self, text):
        if not isinstance(text, str) or self.disabled or text in self.empty_values:
            return None
        try:
            parsers.loads(text)
        except parsers.UnstorableJSON as problem:
            return problem
        except json.JSONDecodeError:
            return None  # not JSON at all: Django's own message
        return None


OVERRIDES = {"form_class": StorableJSONField}
