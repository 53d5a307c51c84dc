"""Scale-out: the SDK spreads requests over several servers and fails over when one stops mid-run."""

from __future__ import annotations

from fracscan.client import FracScanClient
from fracscan.server import EmbeddedServer

from conftest import synthetic_png


def test_failover_when_one_of_two_servers_stops_mid_run(server, repository, reference, tmp_path):
    second = EmbeddedServer(repository, log_path=tmp_path / "second.log").start()
    images = [synthetic_png(200 + i) for i in range(24)]
    results, stopped = [], False
    try:
        with FracScanClient([second.http_url, server.http_url], retries=3) as client:
            for i, result in enumerate(client.predict_many(images, concurrency=2)):
                results.append(result)
                if i == 5:  # half-way through the stream, one server goes away
                    second.stop()
                    stopped = True
    finally:
        second.stop()
    assert stopped and len(results) == len(images)
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    for data, result in zip(images, results):
        assert abs(result.score - reference.predict(data).score) < 1e-5
