"""The scheduler's choice and the queue standing estimate, as pure functions."""

from __future__ import annotations

import datetime as dt
import uuid
from collections import Counter, deque

from shared.scheduling import (
    Candidate,
    QueueSummary,
    TenantLoad,
    band_start,
    choose,
    decayed,
    order_key,
    standing,
)


def tenant(
    weight: float = 1.0, usage: float = 0.0, jobs: int = 100, priority: int = 0, **limits: object
) -> TenantLoad:
    load = TenantLoad(tenant_id=uuid.uuid4(), weight=weight, usage=usage, active=0, **limits)  # type: ignore[arg-type]
    load.candidates = deque(
        Candidate(uuid.uuid4(), load.tenant_id, "generate", priority, order_key(priority, seq))
        for seq in range(1, jobs + 1)
    )
    return load


def test_order_key_puts_priority_first_then_submission_order() -> None:
    keys = [order_key(9, 5), order_key(9, 6), order_key(5, 1), order_key(0, 1), order_key(0, 2)]
    assert keys == sorted(keys)
    assert band_start(4) <= order_key(4, 1) < band_start(3)


def test_weights_share_the_slots_and_a_newcomer_goes_first() -> None:
    heavy, light_a, light_b = tenant(weight=2, jobs=1000), tenant(jobs=1000), tenant(jobs=1000)
    picks = choose(400, [heavy, light_a, light_b], {"generate": 1.0})
    share = Counter(p.tenant_id for p in picks)
    assert (share[heavy.tenant_id], share[light_a.tenant_id], share[light_b.tenant_id]) == (200, 100, 100)

    busy = tenant(usage=500.0)  # has had the workers for a while
    newcomer = tenant(jobs=1)
    assert choose(1, [busy, newcomer], {})[0].tenant_id == newcomer.tenant_id


def test_priority_beats_fair_share_and_each_tenant_keeps_its_own_order() -> None:
    rich = tenant(usage=1_000.0, priority=9, jobs=3)
    poor = tenant(jobs=3)
    picks = choose(4, [rich, poor], {"generate": 1.0})
    assert [p.tenant_id for p in picks[:3]] == [rich.tenant_id] * 3
    assert [p.order_key for p in picks[:3]] == sorted(p.order_key for p in picks[:3])


def test_quotas_hold_a_tenant_back() -> None:
    capped = tenant(max_active=2)
    spent = tenant(seconds_left_today=0.0)
    other = tenant(jobs=1)
    picks = choose(10, [capped, spent, other], {})
    assert Counter(p.tenant_id for p in picks) == {capped.tenant_id: 2, other.tenant_id: 1}
    assert (capped.waiting_for, spent.waiting_for, other.waiting_for) == (
        "max_running_jobs",
        "gpu_seconds_per_day",
        None,
    )


def test_usage_decays_by_half_lives() -> None:
    now = dt.datetime(2026, 12, 2, tzinfo=dt.UTC)
    assert decayed(100.0, now - dt.timedelta(seconds=600), now, half_life=300) == 25.0
    assert decayed(100.0, None, now, half_life=300) == 100.0


def test_standing_interleaves_other_tenants_by_weight() -> None:
    me, heavy, small = uuid.uuid4(), str(uuid.uuid4()), str(uuid.uuid4())
    summary = QueueSummary(
        at=0.0,
        workers=2,
        window=2,
        dispatched=2,
        held={str(me): 10, heavy: 2000, small: 3},
        weights={str(me): 1.0, heavy: 2.0, small: 1.0},
        waiting_for={},
        expected_seconds={"generate": 0.5},
    )
    # 4 of mine ahead: while my 5 start, the heavy tenant starts 10 and the small one all 3 of its own.
    result = standing(summary, me, "generate", own_ahead=4, sent_ahead=None)
    assert result.position == 2 + 4 + 10 + 3
    assert result.eta_seconds == 10 * 0.5 and result.waiting_for == "worker"
    sent = standing(summary, me, "generate", own_ahead=0, sent_ahead=1)
    assert sent.position == 1
    held_back = QueueSummary(**{**summary.__dict__, "waiting_for": {str(me): "max_running_jobs"}})
    result = standing(held_back, me, "generate", 0, None)
    assert result.waiting_for == "max_running_jobs" and result.eta_seconds is None
    assert standing(None, me, "generate", 7, None).position == 7  # no scheduler yet: own order only
