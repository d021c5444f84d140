"""Bad input at every endpoint: a 4xx JSON error naming the field, never a 500, nothing written."""

from __future__ import annotations

from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from tests.unit.api.bad_inputs import check_all
from tests.unit.api.conftest import RecordingWake, Tenant, add_model, count_rows


def test_every_endpoint_answers_bad_input_with_a_named_4xx(
    client: FlaskClient, tenant: Tenant, session: Session, wakes: RecordingWake
) -> None:
    model = add_model(session, tenant.id, "gan")
    assert check_all(client, tenant.headers, model.id) == []
    assert count_rows(session) == (0, 0)
    assert wakes.calls == []
