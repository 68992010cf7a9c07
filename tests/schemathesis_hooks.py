"""schemathesis hooks for the run in tests/test_schema.py (loaded through SCHEMATHESIS_HOOKS):
about half of the path ids it generates become ids of the user's own objects (given in
RELAY_FUZZ_OWNED), so the fuzzer reaches more than 404s."""

import json
import os

import schemathesis
from hypothesis import strategies as st

OWNED = json.loads(os.environ.get("RELAY_FUZZ_OWNED", "{}"))


@schemathesis.hook
def flatmap_path_parameters(context, path_parameters):
    ids = OWNED.get(context.operation.path.split("/")[2])  # /api/<kind>/...
    name = "run_id" if "run_id" in (path_parameters or {}) else "id"
    if not ids or name not in (path_parameters or {}):
        return st.just(path_parameters)
    return st.one_of(
        st.just(path_parameters), st.sampled_from(ids).map(lambda pk: {**path_parameters, name: pk})
    )
