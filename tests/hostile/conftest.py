"""The Hypothesis profile of the hostile-input tests: bounded and repeatable.

Tests take it with `@settings(settings.get_profile("hostile"))`, so loading it does
not change Hypothesis for the rest of the suite. Examples of one test share its
fixtures (service, engine, servers): they stand for many messages reaching one
running worker, which is what the properties are about.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings

settings.register_profile(
    "hostile",
    max_examples=60,
    deadline=None,  # each example talks to Postgres and Redis; timing is not the property
    derandomize=True,  # the same examples on every run: a failure reproduces, a pass is no luck
    database=None,  # nothing written into the working tree
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    print_blob=True,
)
