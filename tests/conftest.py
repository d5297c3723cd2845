"""For every test: no code path may ask the real "what is my IP" endpoint (the machines running
the tests have no internet, and such traffic is flagged). A test that wants detection starts its
own endpoint on 127.0.0.1 and sets RAVEL_CHECKIP_URL; anything else that forgot --ssh-from gets
ravel's clear error from this unreachable loopback URL instead of a request leaving the machine."""

import os


def pytest_configure(config):
    os.environ.setdefault("RAVEL_CHECKIP_URL", "http://127.0.0.1:9/ravel-tests-set-no-checkip-url")
