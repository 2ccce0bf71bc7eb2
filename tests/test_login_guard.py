"""FailedLogins: an address is held back after the limit, and free again once its failures age out."""

from __future__ import annotations

from app.server.login_guard import FailedLogins


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def fail(logins: FailedLogins, address: str, times: int) -> None:
    for _ in range(times):
        logins.begin(address)
        logins.end(address, failed=True)


def test_the_limit_holds_an_address_back_until_its_oldest_failure_leaves_the_window():
    clock = Clock()
    logins = FailedLogins(limit=3, window_s=60, clock=clock)
    fail(logins, "10.0.0.1", 2)
    clock.now += 20
    fail(logins, "10.0.0.1", 1)
    assert logins.retry_after_s("10.0.0.1") == 40  # the first two failures leave the window in 40 s
    assert logins.retry_after_s("10.0.0.2") == 0  # another address
    clock.now += 40
    assert logins.retry_after_s("10.0.0.1") == 0


def test_a_successful_login_is_not_counted():
    logins = FailedLogins(limit=2, window_s=60, clock=Clock())
    fail(logins, "10.0.0.1", 1)
    logins.begin("10.0.0.1")
    assert logins.end("10.0.0.1", failed=False) == 1
    assert logins.retry_after_s("10.0.0.1") == 0


def test_attempts_still_being_answered_count_against_the_limit():
    logins = FailedLogins(limit=2, window_s=60, clock=Clock())
    logins.begin("10.0.0.1")
    logins.begin("10.0.0.1")  # two parallel guesses, neither answered yet
    assert logins.retry_after_s("10.0.0.1") == 1
    logins.end("10.0.0.1", failed=False)
    assert logins.retry_after_s("10.0.0.1") == 0
