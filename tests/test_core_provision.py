"""Provisioning: the bucket's CORS rule for the page."""

from __future__ import annotations

from dataclasses import replace

from imagepipe.core.provision import provision
from imagepipe.core.settings import Settings


def test_the_bucket_allows_exactly_the_page_origins_to_post(resources, clients,
                                                             settings: Settings) -> None:
    rules = clients.s3.get_bucket_cors(Bucket=settings.bucket)["CORSRules"]

    assert len(rules) == 1
    rule = rules[0]
    assert rule["AllowedOrigins"] == ["http://127.0.0.1:8000", "http://localhost:8000"]
    assert rule["AllowedMethods"] == ["POST"]
    assert "AllowedHeaders" not in rule


def test_a_changed_origin_setting_replaces_the_rule(resources, clients,
                                                    settings: Settings) -> None:
    changed = replace(settings, web_origins="https://photos.example.com")

    provision(changed, clients)

    rules = clients.s3.get_bucket_cors(Bucket=settings.bucket)["CORSRules"]
    assert [rule["AllowedOrigins"] for rule in rules] == [["https://photos.example.com"]]
