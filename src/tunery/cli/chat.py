"""``tunery chat ENTRY``: talk to a fine-tuned model through the server's
``/v1/chat/completions`` (ENTRY: a job's ``fine_tuned_model``, its run id or Hub entry id).

Answers stream as they are generated. With ``--message`` it answers once and exits;
otherwise it reads one line per turn until end of input, keeping the conversation. With
``--json`` every answer is a JSON object (``response_format: json_object``).
"""

from __future__ import annotations

import json
from typing import Any

import click
import httpx

from tunery.cli.client import Client, ClientError
from tunery.cli.render import fail, fail_with


@click.command("chat")
@click.argument("entry", metavar="ENTRY")
@click.option("-m", "--message", default=None, help="Ask once, print the answer and exit.")
@click.option("--system", default=None, help="A system message opening the conversation.")
@click.option("--max-tokens", default=256, show_default=True, type=click.IntRange(1, 1024))
@click.option("--temperature", default=0.7, show_default=True, type=click.FloatRange(0, 2))
@click.option("--json", "json_mode", is_flag=True, help="Answer with a JSON object (JSON mode).")
def chat(
    entry: str,
    message: str | None,
    system: str | None,
    max_tokens: int,
    temperature: float,
    json_mode: bool,
) -> None:
    """Chat with a fine-tuned model served by the server (uses TUNERY_URL, TUNERY_TOKEN)."""
    if message is not None and not message.strip():
        raise click.BadParameter("the message is empty", param_hint="'-m' / '--message'")
    try:
        client = Client.from_env()
    except ClientError as error:
        fail_with(error)
    history: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    settings: dict[str, Any] = {
        "model": entry,
        "max_tokens": max_tokens,
        "temperature": temperature,
    }
    if json_mode:
        settings["response_format"] = {"type": "json_object"}
    with client:
        while True:
            text = message if message is not None else _read_turn()
            if text is None:
                return
            history.append({"role": "user", "content": text})
            answer = _stream_answer(client, {**settings, "messages": history})
            history.append({"role": "assistant", "content": answer})
            if message is not None:
                return


def _read_turn() -> str | None:
    try:
        return click.prompt("you", prompt_suffix="> ", err=True)
    except (EOFError, click.Abort):
        click.echo("", err=True)
        return None


def _stream_answer(client: Client, body: dict[str, Any]) -> str:
    """Print the answer as it streams; returns its text."""
    pieces: list[str] = []
    headers = {"Authorization": f"Bearer {client.token}"} if client.token else {}
    try:
        with httpx.stream(
            "POST",
            f"{client.base_url}/v1/chat/completions",
            json={**body, "stream": True},
            headers=headers,
            timeout=httpx.Timeout(120, connect=5),
        ) as response:
            if response.status_code == 401:
                # Said as every other command says it: where the token came from, and the fix.
                try:
                    client.raise_for_status(response)
                except ClientError as error:
                    fail_with(error)
            if response.status_code != 200:
                response.read()
                fail(_error_message(response))
            for line in response.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line.removeprefix("data: "))
                if "error" in chunk:  # the model failed midway
                    click.echo()
                    fail(str(chunk["error"].get("message")))
                choices = chunk["choices"]
                piece = choices[0]["delta"].get("content") if choices else None
                if piece:
                    pieces.append(piece)
                    click.echo(piece, nl=False)
    except httpx.TransportError as error:
        fail(f"the connection to {client.base_url} failed: {error}")
    click.echo()
    return "".join(pieces)


def _error_message(response: httpx.Response) -> str:
    """The ``error.message`` of an OpenAI-shaped answer, or tunery's ``detail.message``."""
    try:
        body = response.json()
    except ValueError:
        return f"the server answered HTTP {response.status_code}"
    error = body.get("error") or body.get("detail") or {}
    return str(error.get("message") or f"the server answered HTTP {response.status_code}")
