"""Who gets the console: nothing is served without a session, a sign-in link works once, clicks
need the page's CSRF token and origin, and no answer can be framed by another origin.

Plain HTTP against a real cluster (no browser): what an attacker's client would send.
"""

from __future__ import annotations

import http.client
import json
from typing import Any
from urllib.parse import urlsplit

import pytest

from cli.console import console_link
from node.console.sessions import login_link
from tests.cluster.helpers import LocalCluster

PREFIX = "/minigrid/console"
ROUTES = [("GET", PREFIX), ("GET", PREFIX + "/feed"), ("GET", PREFIX + "/static/console.js"),
          ("GET", PREFIX + "/static/console.css"), ("POST", PREFIX + "/action"),
          ("POST", PREFIX + "/logout")]  # fmt: skip


Answer = tuple[int, dict[str, str], bytes]


def request(url: str, method: str, path: str, *, cookie: str = "", body: bytes | None = None,
            headers: dict[str, str] | None = None) -> Answer:  # fmt: skip
    """One request; (status, headers (lower-case names), body: at most 64 KiB, for a feed)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    sent = dict(headers or {})
    if cookie:
        sent["Cookie"] = cookie
    if body is not None:
        sent.setdefault("Content-Type", "application/json")
    try:
        conn.request(method, path, body=body, headers=sent)
        response = conn.getresponse()
        got = {name.lower(): value for name, value in response.getheaders()}
        if got.get("content-type", "").startswith("text/event-stream"):
            data = response.readline() + response.readline()  # the first event's head
        else:
            data = response.read(1 << 16)
        return response.status, got, data
    finally:
        conn.close()


def link_for(cluster: LocalCluster, node: int = 0) -> str:
    config = cluster.config
    return console_link(cluster.urls[node], str(config["admin_access_key"]),
                        str(config["admin_secret_key"]), str(config.get("region", "us-east-1")))


def sign_in(cluster: LocalCluster, node: int = 0) -> tuple[str, str]:
    """(the session cookie, the page's CSRF token)."""
    parts = urlsplit(link_for(cluster, node))
    status, headers, _ = request(cluster.urls[node], "GET", f"{parts.path}?{parts.query}")
    assert status == 303 and headers["location"] == PREFIX
    cookie = headers["set-cookie"].split(";", 1)[0]
    assert "HttpOnly" in headers["set-cookie"] and "SameSite=Strict" in headers["set-cookie"]
    status, _, page = request(cluster.urls[node], "GET", PREFIX, cookie=cookie)
    assert status == 200
    csrf = page.decode().split('name="csrf" content="', 1)[1].split('"', 1)[0]
    return cookie, csrf


def assert_unframeable(headers: dict[str, str]) -> None:
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY"
    assert headers["cache-control"] == "no-store"


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_nothing_is_served_without_a_session(faulty_cluster: LocalCluster, method: str,
                                             path: str) -> None:  # fmt: skip
    url = faulty_cluster.urls[1]
    forged = f"minigrid_console_{urlsplit(url).port}={'A' * 43}"
    status, headers, body = request(url, method, path, cookie=forged,
                                    body=b'{"action": "clear"}' if method == "POST" else None)
    assert status == 401
    assert_unframeable(headers)
    text = body.decode()
    for other in faulty_cluster.urls:  # not a word about the rest of the cluster
        assert other == url or other.split("://")[1] not in text
    if path == PREFIX:
        assert "Open a sign-in link" in text  # the sign-in page, which says how to get one


def test_a_sign_in_link_works_once_and_only_as_signed(faulty_cluster: LocalCluster) -> None:
    cluster = faulty_cluster
    url = cluster.urls[0]
    parts = urlsplit(link_for(cluster))
    target = f"{parts.path}?{parts.query}"
    assert request(url, "GET", target)[0] == 303
    status, headers, body = request(url, "GET", target)  # replayed
    assert status == 403 and b"used already" in body and "set-cookie" not in headers
    assert_unframeable(headers)
    # A signed link with its nonce changed: the signature no longer matches.
    fresh = urlsplit(link_for(cluster))
    nonce = fresh.query.split("nonce=", 1)[1].split("&", 1)[0]
    tampered = fresh.query.replace(nonce, "0" * len(nonce))
    status, _, body = request(url, "GET", f"{fresh.path}?{tampered}")
    assert status == 403 and b"signature" in body
    # A link signed with the admin keys for another run of the node (its grid instance).
    config = cluster.config
    stale = urlsplit(login_link(url, "0" * 32, str(config["admin_access_key"]),
                                str(config["admin_secret_key"]), "us-east-1"))
    status, _, body = request(url, "GET", f"{stale.path}?{stale.query}")
    assert status == 403 and b"earlier run" in body
    # Signed with the S3 (not admin) keys.
    s3_link = urlsplit(login_link(url, "0" * 32, str(config["access_key"]),
                                  str(config["secret_key"]), "us-east-1"))
    assert request(url, "GET", f"{s3_link.path}?{s3_link.query}")[0] == 403
    # A link for node 0 does not sign in to node 1: its signature names node 0's host.
    status, _, _ = request(cluster.urls[1], "GET", f"{fresh.path}?{fresh.query}")
    assert status == 403


def test_a_session_sees_the_page_and_its_feed(faulty_cluster: LocalCluster) -> None:
    cookie, csrf = sign_in(faulty_cluster)
    url = faulty_cluster.urls[0]
    status, headers, page = request(url, "GET", PREFIX, cookie=cookie)
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert_unframeable(headers)
    assert "script-src 'self'" in headers["content-security-policy"]
    assert len(csrf) >= 32 and b"console.js" in page
    status, headers, head = request(url, "GET", PREFIX + "/feed", cookie=cookie)
    assert status == 200 and headers["content-type"] == "text/event-stream"
    assert head.startswith(b"event: state\ndata: {")
    frame = json.loads(head.split(b"data: ", 1)[1])
    assert frame["cluster"]["faults"] is True and frame["cluster"]["faults_off"] == ""
    assert len(frame["cluster"]["hosts"]) == 4 and len(frame["links"]) == 6
    # The session cookie belongs to node 0 only.
    assert request(faulty_cluster.urls[1], "GET", PREFIX, cookie=cookie)[0] == 401


def _act(url: str, cookie: str, params: dict[str, Any],
         headers: dict[str, str]) -> tuple[int, dict[str, Any]]:  # fmt: skip
    status, _, body = request(url, "POST", PREFIX + "/action", cookie=cookie,
                              body=json.dumps(params).encode(), headers=headers)  # fmt: skip
    answer: dict[str, Any] = json.loads(body)
    return status, answer


def test_a_click_needs_the_csrf_token_and_this_origin(faulty_cluster: LocalCluster) -> None:
    cookie, csrf = sign_in(faulty_cluster)
    url = faulty_cluster.urls[0]
    host = urlsplit(url).netloc
    params = {"action": "loop-block", "node": 1, "seconds": 0.2}
    assert _act(url, cookie, params, {})[0] == 403
    assert _act(url, cookie, params, {"X-Console-CSRF": "x" * len(csrf)})[0] == 403
    other_port = f"http://127.0.0.1:{urlsplit(faulty_cluster.urls[1]).port}"
    assert _act(url, cookie, params, {"X-Console-CSRF": csrf, "Origin": other_port})[0] == 403
    good = {"X-Console-CSRF": csrf, "Origin": f"http://{host}"}
    status, answer = _act(url, cookie, {"action": "wipe-drive", "node": 1, "drive": 7}, good)
    assert status == 400 and "drive must be" in answer["error"]
    status, answer = _act(url, cookie, {"action": "freeze", "node": 0}, good)
    assert status == 400 and "cannot thaw itself" in answer["error"]
    status, answer = _act(url, cookie, params, good)
    assert status == 200 and answer["ok"], answer
    assert answer["command"] == "minigrid fault loop-block 1 --seconds 0.2"
    [call] = answer["calls"]
    assert (call["node"], call["path"], call["status"]) == (
        1, "/minigrid/admin/v1/fault/loop-block", 200)
    assert call["answer"]["loop_block"] == {"seconds": 0.2, "every": 0.0}


def test_signing_out_ends_the_session(faulty_cluster: LocalCluster) -> None:
    cookie, csrf = sign_in(faulty_cluster, node=2)
    url = faulty_cluster.urls[2]
    assert request(url, "POST", PREFIX + "/logout", cookie=cookie)[0] == 401  # no CSRF token
    status, _, _ = request(url, "POST", PREFIX + "/logout", cookie=cookie,
                           headers={"X-Console-CSRF": csrf})  # fmt: skip
    assert status == 200
    assert request(url, "GET", PREFIX, cookie=cookie)[0] == 401


def test_the_feed_sends_each_event_once_the_serving_nodes_own_included(
    faulty_cluster: LocalCluster,
) -> None:
    cookie, _ = sign_in(faulty_cluster, node=3)
    parts = urlsplit(faulty_cluster.urls[3])
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=15)
    seen: list[tuple[int, int]] = []
    serving: list[str] = []
    try:
        conn.request("GET", PREFIX + "/feed", headers={"Cookie": cookie})
        response = conn.getresponse()
        frames = 0
        while frames < 4:  # the first frame holds the backlog; three more ticks after it
            line = response.readline()
            assert line, "the feed ended"
            if not line.startswith(b"data: "):
                continue
            frames += 1
            for event in json.loads(line[6:])["events"]:
                seen.append((event["node"], event["seq"]))
                if event["node"] == 3 and "serving" in event["text"]:
                    serving.append(event["text"])
    finally:
        conn.close()
    assert len(seen) == len(set(seen)), "an event was sent twice"
    assert len(serving) == 1  # the serving node's own start line, once
    assert {node for node, _ in seen} == {0, 1, 2, 3}  # every node's journal is read
