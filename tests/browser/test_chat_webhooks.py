"""The Run panel's chat box and the Webhooks tab, in Chromium against a real server.

What a user sees: a completed run's model answers in the page (Enter sends, Shift+Enter
starts a new line, temperature and max tokens are the user's) and keeps the conversation,
in this browser, across a reload; an empty or over-long message says what is wrong and costs
nothing; a run that has not completed offers no chat. A refused webhook URL gets the
server's reason under the field; a good one is listed with its signing secret shown once
with a copy button; a test event is delivered and logged; Delete asks first.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from control_harness import Client, payload
from playwright.sync_api import Page, Request, expect

from tunery.openai_api.chat import MAX_PROMPT_CHARS

pytestmark = pytest.mark.browser

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
URL_PROBLEM = "give an http:// or https:// URL with a host"


def chat_requests(page: Page) -> list[dict[str, Any]]:
    """The bodies the page posts to /v1/chat/completions, recorded as they are sent."""
    bodies: list[dict[str, Any]] = []

    def record(request: Request) -> None:
        if request.method == "POST" and request.url.endswith("/v1/chat/completions"):
            bodies.append(json.loads(request.post_data or "{}"))

    page.on("request", record)
    return bodies


def test_chat_with_a_completed_run_and_the_errors_a_user_can_meet(
    studio_server, open_studio
) -> None:
    client = Client(studio_server)
    dataset_id = client.dataset(EXAMPLES / "demo-dataset.jsonl")
    chatty = client.submit_ok(payload(dataset_id, "chatty", export={"gguf": True}))
    # Queued behind it on the only node: still training while the user chats.
    busy = client.submit_ok(payload(dataset_id, "busy", training={"max_steps": 5000}))
    finished = client.wait_terminal(chatty["id"], timeout=400)
    assert finished["status"] == "completed", finished
    client.wait_status(busy["id"], "training", timeout=120)

    page = open_studio(studio_server)
    sent = chat_requests(page)
    page.goto(f"{studio_server.url}/#/runs/{chatty['id']}")
    chat = page.locator(f"#panel-{chatty['id']} .chat")
    expect(chat.get_by_role("heading", name="Try the model")).to_be_visible()
    model_id = finished["openai_model"]
    assert model_id.startswith("ft:tunery/demo-tiny:") and model_id.endswith(chatty["id"])
    expect(chat.locator(".model-id code")).to_have_text(model_id)
    box = chat.get_by_label("Message to the model")
    send = chat.get_by_role("button", name="Send")
    status = chat.get_by_role("status")
    turns = chat.locator("article")

    # An empty box is stopped by the browser, spaces by the page; neither reaches the server.
    send.click()
    assert box.evaluate("element => element.validity.valueMissing")
    box.fill("   ")
    send.click()
    expect(status).to_have_text("Type a message first: this one is empty.")
    expect(turns).to_have_count(0)
    assert sent == []

    # A question gets an answer, streamed into the page; Enter sends it.
    question = "How do I reset my password?"
    chat.get_by_label("Temperature").fill("0")
    chat.get_by_label("Max tokens").fill("24")
    box.fill(question)
    box.press("Enter")
    expect(turns.nth(0).locator(".sample-prompt")).to_have_text(f"You: {question}")
    first_answer = turns.nth(0).locator(".sample-response")
    expect(first_answer).not_to_be_empty()
    expect(status).to_have_text("")
    expect(send).to_be_enabled()
    expect(box).to_have_value("")
    assert sent[0]["model"] == model_id and sent[0]["stream"] is True
    assert (sent[0]["temperature"], sent[0]["max_tokens"]) == (0, 24)
    assert sent[0]["messages"] == [{"role": "user", "content": question}]

    # Shift+Enter starts a new line instead of sending; the next turn carries the
    # conversation: the answer exactly as the page showed it.
    box.fill("And if I forgot")
    box.press("Shift+Enter")
    box.press_sequentially("my email?")
    expect(box).to_have_value("And if I forgot\nmy email?")
    assert len(sent) == 1
    send.click()
    expect(turns).to_have_count(2)
    expect(turns.nth(1).locator(".sample-response")).not_to_be_empty()
    expect(status).to_have_text("")
    assert sent[1]["messages"] == [
        {"role": "user", "content": question},
        {"role": "assistant", "content": first_answer.text_content()},
        {"role": "user", "content": "And if I forgot\nmy email?"},
    ]

    # Too long for the model's context: the server's reason, the turn dropped, the text kept.
    too_long = "x" * (MAX_PROMPT_CHARS + 1)
    box.fill(too_long)
    send.click()
    expect(status).to_contain_text(
        f"The model could not answer: the messages are longer than {MAX_PROMPT_CHARS} characters"
    )
    expect(turns).to_have_count(2)
    expect(box).to_have_value(too_long)
    expect(send).to_be_enabled()

    # The conversation goes on without the refused turn.
    box.fill("Thanks!")
    send.click()
    expect(turns).to_have_count(3)
    expect(turns.nth(2).locator(".sample-response")).not_to_be_empty()
    expect(status).to_have_text("")
    assert len(sent) == 4
    assert [m["content"] for m in sent[3]["messages"] if m["role"] == "user"] == [
        question,
        "And if I forgot\nmy email?",
        "Thanks!",
    ]
    assert all("response_format" not in body for body in sent)

    # JSON mode: the request asks for a JSON object, and the answer opens one.
    chat.get_by_label("JSON mode").check()
    box.fill("Describe a password reset as JSON.")
    send.click()
    expect(turns).to_have_count(4)
    expect(turns.nth(3).locator(".sample-response")).to_have_text(re.compile(r"^\s*\{"))
    expect(status).to_have_text("")
    assert sent[4]["response_format"] == {"type": "json_object"}

    # The conversation is kept in this browser: a reload shows it, and it goes on from it.
    answers = [turn.text_content() for turn in turns.locator(".sample-response").all()]
    page.reload()
    chat = page.locator(f"#panel-{chatty['id']} .chat")
    turns = chat.locator("article")
    expect(turns).to_have_count(4)
    assert [turn.text_content() for turn in turns.locator(".sample-response").all()] == answers
    chat.get_by_role("button", name="Clear conversation").click()
    expect(turns).to_have_count(0)

    # Its Hub entry deleted elsewhere (another tab, the CLI): the open page hears it from the
    # stream; the downloads say so and the chat box gives the reason instead of failing.
    panel = page.locator(f"#panel-{chatty['id']}")
    expect(panel.get_by_role("button", name="Download GGUF")).to_be_enabled()
    assert client.http.delete(f"/hub/{finished['hub_entry_id']}").status_code == 204
    gone = panel.get_by_role("button", name=re.compile("deleted from the Hub"))
    expect(gone.first).to_be_disabled()
    expect(panel.locator('[data-chat="gone"]')).to_have_text(
        "Chat is off: this run's Hub entry was deleted, and its GGUF with it."
    )
    expect(panel.get_by_label("Message to the model")).to_have_count(0)

    # A run that has not completed has no model to chat with: its panel offers no chat.
    page.goto(f"{studio_server.url}/#/runs/{busy['id']}")
    busy_panel = page.locator(f"#panel-{busy['id']}")
    expect(busy_panel.locator('[data-stat="step"]')).to_have_text(re.compile(r"^\d+/5000$"))
    expect(page.locator(f"#run-{busy['id']} .pill")).to_have_attribute("data-status", "training")
    expect(busy_panel.locator(".chat")).to_have_count(0)
    expect(busy_panel.get_by_label("Message to the model")).to_have_count(0)
    client.cancel_ok(busy["id"])
    assert page.errors == []  # type: ignore[attr-defined]


def test_webhooks_refused_listed_shown_once_and_deleted(studio_server, open_studio) -> None:
    client = Client(studio_server)
    page = open_studio(studio_server)
    expect(page.locator("#connection")).to_have_text(re.compile("Live"))
    page.get_by_role("link", name="Webhooks").click()
    section = page.locator("#webhooks")
    expect(page.get_by_role("heading", name="Webhooks", exact=True)).to_be_visible()
    endpoints = section.locator(".endpoint-list li")
    expect(endpoints).to_have_count(0)
    expect(section.locator("#webhooks-empty")).to_have_text("No endpoints yet: add one below.")
    assert "null" not in section.inner_text()
    field = section.get_by_label("Webhook URL")
    add = section.get_by_role("button", name="Add webhook")
    problem = section.locator("#webhook-url-error")

    def add_webhook(url: str) -> Any:
        field.fill(url)
        with page.expect_response(
            lambda r: r.url.endswith("/api/v1/webhooks") and r.request.method == "POST"
        ) as answer:
            add.click()
        return answer.value

    # No host at all: the browser's own URL check stops it before the server.
    field.fill("http://")
    add.click()
    assert field.evaluate("element => element.validity.typeMismatch")
    assert field.evaluate("element => element.validationMessage")

    # The browser takes these as URLs; the server refuses them and says why, under the field.
    for bad in ("ftp://hooks.example.com/tunery", "http:/hooks"):
        answer = add_webhook(bad)
        assert answer.status == 422
        assert answer.json()["detail"]["problems"] == [{"field": "url", "message": URL_PROBLEM}]
        expect(problem).to_be_visible()
        expect(problem).to_have_text(URL_PROBLEM)
        expect(field).to_have_attribute("aria-invalid", "true")
        expect(field).to_have_attribute("aria-describedby", "webhook-url-error")
        assert field.evaluate("element => element.nextElementSibling.id") == "webhook-url-error"
        expect(page.locator("#banner")).to_be_hidden()
        expect(endpoints).to_have_count(0)
    # The server's own network is off limits to an account's webhooks.
    assert add_webhook("http://169.254.169.254/latest/meta-data").status == 422
    expect(problem).to_contain_text("loopback, private or link-local address")
    expect(problem).to_contain_text("webhooks_to_private_addresses")
    assert client.http.get("/webhooks").json() == []

    # A good one is listed, and its secret is shown, once.
    first, second = "https://hooks.example.com/tunery", "http://hooks.example.org/second"
    answer = add_webhook(first)
    assert answer.status == 201
    secret = answer.json()["secret"]
    assert re.fullmatch(r"whsec_[A-Za-z0-9+/]{43}=", secret)
    expect(endpoints).to_have_count(1)
    expect(endpoints.first.locator("code")).to_have_text(first)
    shown = page.locator("#webhook-secret")
    expect(shown).to_contain_text(f"Signing secret for {first}")
    expect(shown.locator(".secret-value")).to_have_text(secret)
    expect(shown.get_by_role("button", name="Copy the signing secret")).to_have_attribute(
        "data-copy", secret
    )
    expect(problem).to_be_hidden()
    expect(field).to_have_value("")
    assert add_webhook(second).status == 201
    expect(endpoints).to_have_count(2)
    listed = client.http.get("/webhooks").json()
    assert [(e["url"], e["secret"]) for e in listed] == [(first, None), (second, None)]

    page.reload()
    expect(endpoints).to_have_count(2)
    expect(page.locator("#webhook-secret")).to_have_text("")
    assert "whsec_" not in page.content()

    # Delete asks first; keeping it keeps it. Confirmed, it removes that endpoint only, on
    # the page and on the server.
    endpoints.filter(has_text=first).get_by_role("button", name="Delete").click()
    dialog = page.locator("#confirm-dialog")
    expect(dialog).to_contain_text(f"Delete the webhook {first}?")
    dialog.get_by_role("button", name="Keep").click()
    expect(endpoints).to_have_count(2)
    endpoints.filter(has_text=first).get_by_role("button", name="Delete").click()
    dialog.get_by_role("button", name="Delete webhook").click()
    expect(endpoints).to_have_count(1)
    expect(endpoints.first.locator("code")).to_have_text(second)
    assert [e["url"] for e in client.http.get("/webhooks").json()] == [second]
    assert page.errors == []  # type: ignore[attr-defined]
