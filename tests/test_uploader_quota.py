"""The daily quota per user: conditional counters in the table, every way of adding an image,
admins exempt, uploads presigned but never sent given back, and two fronts sharing one count."""

from __future__ import annotations

import dataclasses
import io
from datetime import date, datetime, timedelta, timezone
from typing import Any

import pytest
import requests

from imagepipe.core.aws import make_clients
from imagepipe.core.provision import provision
from imagepipe.core.quota import (
    COUNT,
    DAILY_QUOTA,
    EXPIRES,
    DailyQuota,
    QuotaExceeded,
    quota_key,
    seconds_until_reset,
)
from imagepipe.core.records import ResultRecord, ResultStore
from imagepipe.core.services import Services
from imagepipe.core.settings import Settings
from imagepipe.core.timestamps import format_utc
from imagepipe.core.users import add_user
from imagepipe.local.stack import free_port, local_environ, start_front, start_moto, stop_processes
from tests.conftest import PASSWORD, Reply, count_results, signed_in
from uploader.uploads import (
    MAX_UNSENT_CHECKS,
    NEVER_UPLOADED,
    UNSENT_MARGIN,
    reclaim_unsent,
    reserve_image,
)

NOON = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
DAY = NOON.date()


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: datetime = NOON) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def _quota(clients, settings: Settings, limit: int, clock: Clock | None = None) -> DailyQuota:
    return DailyQuota(clients.dynamodb, settings.table, limit, clock or Clock())


def _item(clients, settings: Settings, owner: str, day: date) -> dict[str, Any]:
    return clients.dynamodb.get_item(TableName=settings.table, ConsistentRead=True,
                                     Key={"image_id": {"S": quota_key(owner, day)}})["Item"]


# ---------------------------------------------------------------- the counter
def test_the_counter_allows_exactly_the_limit(resources, clients, settings) -> None:
    quota = _quota(clients, settings, limit=3)

    taken = [quota.take("sub-a") for _ in range(5)]

    assert [r is not None for r in taken] == [True, True, True, False, False]
    assert quota.used("sub-a", DAY) == 3
    # Refused takes count nothing, and another user's count is their own.
    assert quota.take("sub-b") is not None
    assert quota.used("sub-b", DAY) == 1


def test_fronts_with_their_own_counter_objects_share_one_count(resources, clients,
                                                               settings) -> None:
    one, two = _quota(clients, settings, limit=4), _quota(clients, settings, limit=4)

    taken = [(one if i % 2 else two).take("sub-a") is not None for i in range(6)]

    assert taken == [True, True, True, True, False, False]


def test_the_count_item_is_keyed_by_user_and_day_and_expires(resources, clients, settings
                                                             ) -> None:
    _quota(clients, settings, limit=2).take("sub-a")

    item = _item(clients, settings, "sub-a", DAY)
    assert item["image_id"]["S"] == "quota#sub-a#2026-03-01"
    assert item[COUNT] == {"N": "1"}
    # The TTL clears it a day after its day ends.
    expires = datetime.fromtimestamp(int(item[EXPIRES]["N"]), timezone.utc)
    assert expires == datetime(2026, 3, 3, tzinfo=timezone.utc)
    # It is not a result: no listing and no count of results shows it.
    store = ResultStore(clients.dynamodb, settings.table)
    assert store.list_results().records == []
    assert count_results(clients.dynamodb, settings.table) == 0


def test_the_count_starts_again_at_utc_midnight(resources, clients, settings) -> None:
    clock = Clock(datetime(2026, 3, 1, 23, 59, 59, 500_000, tzinfo=timezone.utc))
    quota = _quota(clients, settings, limit=2, clock=clock)
    assert quota.take("sub-a") and quota.take("sub-a")
    assert quota.take("sub-a") is None
    assert seconds_until_reset(clock.now) == 1

    clock.now = datetime(2026, 3, 2, tzinfo=timezone.utc)

    assert quota.take("sub-a") is not None
    assert quota.used("sub-a", date(2026, 3, 1)) == 2
    assert quota.used("sub-a", date(2026, 3, 2)) == 1
    assert seconds_until_reset(clock.now) == 86_400


def test_giving_back_never_goes_below_zero(resources, clients, settings) -> None:
    quota = _quota(clients, settings, limit=2)
    reservation = quota.take("sub-a")
    assert reservation is not None

    reservation.give_back()
    reservation.give_back()

    assert quota.used("sub-a", DAY) == 0
    # A day with no counter at all stays without one.
    quota.give_back("sub-b", DAY)
    assert quota.used("sub-b", DAY) == 0


# ---------------------------------------------------------------- uploads that never came
def _services(settings: Settings, clients, store: ResultStore) -> Services:
    return Services(settings=settings, clients=clients, store=store)


def _presigned(store: ResultStore, settings: Settings, quota: DailyQuota, owner: str,
               created: datetime, n: int, source: str = "upload") -> list[ResultRecord]:
    """n pending uploads of `owner` presigned at `created`, each counted on that day."""
    records = []
    for i in range(n):
        record = ResultRecord(image_id=f"{owner}-{created:%H%M}-{i}".ljust(22, "x"),
                              bucket=settings.bucket, key=f"uploads/{owner}/{created:%H%M}-{i}.jpg",
                              source=source, owner=owner, created_at=format_utc(created))
        assert store.create_pending(record)
        assert quota.take(owner) is not None
        records.append(record)
    return records


def _long_ago_to(moment: datetime, settings: Settings) -> datetime:
    """The first whole second after `moment` at which a POST presigned then cannot arrive."""
    return moment + timedelta(seconds=settings.presign_expires_seconds + 1) + UNSENT_MARGIN


def _long_ago(settings: Settings) -> datetime:
    """When a POST presigned then has certainly expired, seen from NOON."""
    return NOON - (_long_ago_to(NOON, settings) - NOON)


def test_presigned_uploads_never_sent_are_given_back_and_sent_ones_are_not(
        resources, clients, settings, store) -> None:
    # Given a user at their quota of 3: two uploads presigned long ago, one of them sent
    quota = _quota(clients, settings, limit=3)
    old = _presigned(store, settings, quota, "sub-a", _long_ago(settings), 2)
    clients.s3.put_object(Bucket=settings.bucket, Key=old[0].key, Body=b"sent")
    recent = _presigned(store, settings, quota, "sub-a", NOON - timedelta(minutes=1), 1)
    services = _services(settings, clients, store)

    # When they add one more image
    reservation = reserve_image(services, quota, "sub-a")

    # Then the unsent one failed and its unit paid for the new image; the rest still count
    assert reservation.day == DAY
    never = store.get(old[1].image_id)
    assert never is not None and never.status == "failed"
    assert never.error_code == NEVER_UPLOADED
    assert never.created_at == old[1].created_at and never.owner == "sub-a"
    assert store.get(old[0].image_id).status == "pending"  # sent, waiting for the processor
    assert store.get(recent[0].image_id).status == "pending"  # its POST may still come
    assert quota.used("sub-a", DAY) == 3
    with pytest.raises(QuotaExceeded) as refused:
        reserve_image(services, quota, "sub-a")
    assert refused.value.retry_after == 12 * 3600


def test_uploads_still_in_time_are_not_given_back(resources, clients, settings, store) -> None:
    quota = _quota(clients, settings, limit=2)
    edge = NOON - timedelta(seconds=settings.presign_expires_seconds) - UNSENT_MARGIN
    _presigned(store, settings, quota, "sub-a", edge, 2)

    assert reclaim_unsent(_services(settings, clients, store), quota, "sub-a") == 0
    assert quota.used("sub-a", DAY) == 2


def test_only_todays_presigned_uploads_are_given_back(resources, clients, settings,
                                                      store) -> None:
    # Given yesterday's unsent uploads (counted yesterday) and objects dropped in the bucket
    yesterday = Clock(NOON - timedelta(days=1))
    _presigned(store, settings, _quota(clients, settings, 5, yesterday), "sub-a",
               yesterday.now, 2)
    quota = _quota(clients, settings, limit=1)
    _presigned(store, settings, quota, "sub-a", _long_ago(settings), 1, source="bucket")

    # Then nothing of them pays for today
    assert reclaim_unsent(_services(settings, clients, store), quota, "sub-a") == 0
    assert quota.used("sub-a", DAY) == 1
    assert quota.used("sub-a", DAY - timedelta(days=1)) == 2
    assert [r.status for r in store.list_results(owner="sub-a").records] == ["pending"] * 3


def test_two_fronts_cannot_both_refund_one_upload(resources, clients, settings, store) -> None:
    # Given one unsent upload, which two fronts both read while it was pending
    quota = _quota(clients, settings, limit=3)
    [record] = _presigned(store, settings, quota, "sub-a", _long_ago(settings), 1)
    failed = record.failed(NEVER_UPLOADED, "never came")
    one, two = quota, _quota(clients, settings, limit=3)

    # When both give it back
    refunds = [one.refund_unsent(failed, DAY), two.refund_unsent(failed, DAY)]

    # Then only the first does
    assert refunds == [True, False]
    assert quota.used("sub-a", DAY) == 0
    # And a reclaim afterwards finds nothing left to give
    assert reclaim_unsent(_services(settings, clients, store), two, "sub-a") == 0


def test_an_upload_that_turned_done_is_left_alone(resources, clients, settings, store) -> None:
    quota = _quota(clients, settings, limit=3)
    [record] = _presigned(store, settings, quota, "sub-a", _long_ago(settings), 1)
    stale = record.failed(NEVER_UPLOADED, "never came")
    assert store.save_result(record.done([], "m", "1"))

    assert quota.refund_unsent(stale, DAY) is False

    assert store.get(record.image_id).status == "done"
    assert quota.used("sub-a", DAY) == 1


def test_an_unsent_upload_without_a_count_fails_without_a_refund(resources, clients, settings,
                                                                 store) -> None:
    # A pending record from before quotas existed: nothing was counted for it.
    quota = _quota(clients, settings, limit=3)
    record = ResultRecord(image_id="a" * 22, bucket=settings.bucket, key="uploads/sub-a/a.jpg",
                          source="upload", owner="sub-a",
                          created_at=format_utc(_long_ago(settings)))
    store.create_pending(record)

    assert quota.refund_unsent(record.failed(NEVER_UPLOADED, "never came"), DAY) is False

    assert store.get(record.image_id).error_code == NEVER_UPLOADED
    assert quota.used("sub-a", DAY) == 0


def test_one_request_looks_at_a_bounded_number_of_uploads(resources, clients, settings, store,
                                                          monkeypatch) -> None:
    quota = _quota(clients, settings, limit=MAX_UNSENT_CHECKS + 20)
    _presigned(store, settings, quota, "sub-a", _long_ago(settings), MAX_UNSENT_CHECKS + 20)
    heads: list[str] = []
    head_object = clients.s3.head_object

    def counting_head(**kwargs: Any) -> Any:
        heads.append(kwargs["Key"])
        return head_object(**kwargs)
    monkeypatch.setattr(clients.s3, "head_object", counting_head)

    assert reclaim_unsent(_services(settings, clients, store), quota, "sub-a") == \
        MAX_UNSENT_CHECKS
    assert len(heads) == MAX_UNSENT_CHECKS


# ---------------------------------------------------------------- the routes
def _upload(client: Any) -> Any:
    return client.post("/api/uploads",
                       json={"filename": "a.jpg", "content_type": "image/jpeg", "size": 10})


def _assert_over_quota(response: Any, limit: int, clock: Clock) -> None:
    assert response.status_code == 429
    error = response.get_json()["error"]
    assert error["code"] == "quota_exceeded"
    assert error["quota"] == limit and str(limit) in error["message"]
    assert response.headers["Retry-After"] == str(seconds_until_reset(clock.now))


@dataclasses.dataclass(frozen=True)
class Counting:
    """A front with a daily quota of 3, its counter, and the clock that counter reads."""

    app: Any
    quota: DailyQuota
    clock: Clock


@pytest.fixture
def counting(settings, clients, store, web_server, photos) -> Counting:
    from imagepipe.app import create_app

    limited = dataclasses.replace(settings, daily_quota=3, sync_wait_seconds=0,
                                  import_allow_hosts=f"127.0.0.1:{web_server.port}")
    app = create_app(limited, clients, store)
    app.config["TESTING"] = True
    clock = Clock(NOON)
    quota = app.extensions[DAILY_QUOTA] = DailyQuota(clients.dynamodb, settings.table, 3, clock)
    web_server.routes["/cat.jpg"] = Reply(body=photos.cat_jpeg,
                                          headers={"Content-Type": "image/jpeg"})
    return Counting(app, quota, clock)


def test_every_way_of_adding_an_image_counts(counting, users, web_server, photos) -> None:
    alice = signed_in(counting.app, users.token("alice"))
    adders = {
        "presign": lambda: _upload(alice),
        "import": lambda: alice.post("/api/imports", json={"url": web_server.url("/cat.jpg")}),
        "sync": lambda: alice.post("/api/image_recognition",
                                   data={"file": (io.BytesIO(photos.cat_jpeg), "cat.jpg")}),
    }

    statuses = {name: add().status_code for name, add in adders.items()}

    assert statuses == {"presign": 201, "import": 201, "sync": 202}
    for add in adders.values():
        _assert_over_quota(add(), 3, counting.clock)
    # Someone else's day is their own.
    assert _upload(signed_in(counting.app, users.token("bob"))).status_code == 201


def test_admins_are_exempt(counting, users) -> None:
    tester = signed_in(counting.app, users.token("tester"))

    assert [_upload(tester).status_code for _ in range(5)] == [201] * 5
    assert counting.quota.used(users.subs["tester"], DAY) == 0


def test_with_sign_in_off_there_is_no_quota(settings, client_for) -> None:
    open_front = client_for(dataclasses.replace(settings, auth=False, daily_quota=1), user=None)

    assert [_upload(open_front).status_code for _ in range(3)] == [201] * 3


def test_refused_requests_and_failed_imports_cost_nothing(counting, users, web_server) -> None:
    alice = signed_in(counting.app, users.token("alice"))
    web_server.routes["/gone.jpg"] = Reply(404, b"not found")
    quota = counting.quota

    assert alice.post("/api/uploads", json={"filename": "a.jpg"}).status_code == 400
    assert alice.post("/api/image_recognition", data={}).status_code == 400
    assert alice.post("/api/imports", json={"url": web_server.url("/gone.jpg")}
                      ).status_code == 502

    assert quota.used(users.subs["alice"], DAY) == 0


def test_over_quota_the_route_gives_back_unsent_uploads(counting, users, store, clients,
                                                        settings) -> None:
    # Given alice's three uploads presigned at noon, and none sent
    alice = signed_in(counting.app, users.token("alice"))
    ids = [_upload(alice).get_json()["image_id"] for _ in range(3)]
    clock = counting.clock
    _assert_over_quota(_upload(alice), 3, clock)

    # When their POSTs have expired: moto does not enforce expiry, so the front's clock moves
    # on (the records, made at the real time, are put at noon where that clock stands)
    for image_id in ids:
        clients.dynamodb.update_item(
            TableName=store.table, Key={"image_id": {"S": image_id}},
            UpdateExpression="SET created_at = :t",
            ExpressionAttributeValues={":t": {"S": format_utc(NOON)}})
    clock.now = _long_ago_to(NOON, settings)

    # Then the next upload is accepted, paid by those that never came
    assert _upload(alice).status_code == 201
    assert {store.get(i).error_code for i in ids} == {NEVER_UPLOADED}
    assert counting.quota.used(users.subs["alice"], DAY) == 1


# ---------------------------------------------------------------- the test
@pytest.mark.slow
def test_the_next_upload_over_quota_is_refused_by_two_fronts_sharing_the_table(tmp_path) -> None:
    # Given one AWS endpoint, provisioned, with a user and an admin
    host = "127.0.0.1"
    endpoint = f"http://{host}:{free_port()}"
    env = local_environ(endpoint)
    moto = start_moto(host, int(endpoint.rsplit(":", 1)[1]), env)
    fronts: list[Any] = []
    try:
        settings = Settings(endpoint_url=endpoint, bucket="quota-images", queue="quota-events",
                            dead_letter_queue="quota-events-dlq", table="quota-results",
                            daily_quota=5, log_level="WARNING")
        clients = make_clients(settings)
        resources = provision(settings, clients)
        add_user(clients.cognito, resources.user_pool_id, "carol", password=PASSWORD)
        add_user(clients.cognito, resources.user_pool_id, "root", admin=True, password=PASSWORD)

        def token(name: str) -> str:
            return clients.cognito.initiate_auth(
                ClientId=resources.user_pool_client_id, AuthFlow="USER_PASSWORD_AUTH",
                AuthParameters={"USERNAME": name, "PASSWORD": PASSWORD},
            )["AuthenticationResult"]["AccessToken"]

        # And two fronts on that table, each with its own process and memory
        env.update(settings.environ())
        env["IMAGEPIPE_USER_POOL_ID"] = resources.user_pool_id
        env["IMAGEPIPE_USER_POOL_CLIENT_ID"] = resources.user_pool_client_id
        urls = []
        for _ in range(2):
            port = free_port()
            fronts.append(start_front(env, host, port, workers=1))
            urls.append(f"http://{host}:{port}")

        def upload(front: str, who: str) -> requests.Response:
            return requests.post(f"{front}/api/uploads", timeout=30,
                                 headers={"Authorization": f"Bearer {token(who)}"},
                                 json={"filename": "a.jpg", "content_type": "image/jpeg",
                                       "size": 10})

        # When carol uploads six times on one day, alternating between the fronts
        answers = [upload(urls[i % 2], "carol") for i in range(6)]

        # Then exactly five are accepted, and the sixth is refused until midnight UTC
        assert [a.status_code for a in answers] == [201] * 5 + [429]
        refused = answers[-1]
        assert refused.headers["Content-Type"].startswith("application/json")
        assert refused.json()["error"]["code"] == "quota_exceeded"
        now = datetime.now(timezone.utc)
        assert abs(int(refused.headers["Retry-After"]) - seconds_until_reset(now)) <= 60
        # The other front refuses too: they share the count
        assert upload(urls[0], "carol").status_code == 429
        # And an admin is not counted
        assert [upload(url, "root").status_code for url in urls] == [201, 201]
    finally:
        stop_processes(*fronts)
        stop_processes(moto)
