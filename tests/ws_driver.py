"""Streamlit sessions over the websocket protocol the browser speaks, without a browser: for load runs of many
sessions on a small machine (``scripts/load.py``'s default), where thirty Chromium pages would take the cores the
server needs, and for the test that proves this driver reads the page right.

A ``WsSession`` connects to ``/_stcore/stream`` as the browser does (subprotocol ``streamlit``; behind nginx, a
route cookie) and asks for a run of the home page with a share link's query string (model, prompt, comparison). It
reads the ``ForwardMsg`` protobufs of each run: the buttons (widget id and fragment), the markdown (the status line,
the token stream), alerts and exceptions. A click is what the browser sends for a button: a rerun of the button's
fragment with the button's trigger value. Its latency runs from sending the click to the run's ``script_finished``
message; a browser would add only its own drawing of the elements.

Like ``classroom_driver``, it asserts nothing itself: the callers decide what must hold.
"""

from __future__ import annotations

import html
import re
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from app_driver import Status, parse_status
from classroom_driver import cross_talk, link, student_marker, student_prompt
from streamlit.proto.BackMsg_pb2 import BackMsg
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
from websockets.sync.client import ClientConnection, connect

RUN_TIMEOUT_S = 300.0
MAX_MESSAGE_BYTES = 256 * 1024 * 1024  # Streamlit's own default limit is 200 MB
_CHIP = re.compile(r'<span class="kvviz-chip ([^"]*)"[^>]*>(.*?)</span>', re.DOTALL)
_STREAM = '<div class="kvviz-stream">'  # the chips after it; the legend's samples come before
_NOT_ERRORS = ("end-of-sequence",)  # a random model may choose its end-of-sequence token; the page says so


@dataclass
class Run:
    """What one run of the page (or of one fragment) sent."""

    fragments: dict[str, list] = field(default_factory=dict)  # fragment id ("" outside fragments) → elements
    status: int | None = None  # script_finished's status
    seconds: float = 0.0


@dataclass
class WsSession:
    """One student's Streamlit session on the home page, driven over the websocket."""

    index: int
    prompt: str
    socket: ClientConnection
    query_string: str
    page_hash: str = ""
    scopes: dict[str, list] = field(default_factory=dict)  # what the page shows: fragment id → its elements
    buttons: dict[str, tuple[str, str]] = field(default_factory=dict)  # label → (widget id, fragment id)
    target: int = -1  # the step the last click asked for; -1 before the prefill
    client_ms: list[float] = field(default_factory=list)

    @classmethod
    def open(cls, url: str, index: int, model: str, compare: bool, route: str | None = None) -> WsSession:
        """Connect to the server at ``url`` (http://host:port) and run the home page with this student's link."""
        parts = urlsplit(url)
        headers = {"Cookie": f"kvviz_route={route}"} if route else None
        socket = connect(f"ws://{parts.netloc}/_stcore/stream", subprotocols=["streamlit"],
                         additional_headers=headers, max_size=MAX_MESSAGE_BYTES, open_timeout=60)
        prompt = student_prompt(index)
        session = cls(index, prompt, socket, urlsplit(link(model, prompt, compare)).query)
        session.run()
        return session

    def close(self) -> None:
        self.socket.close()

    def marker(self) -> str:
        return student_marker(self.index)

    def run(self, button: str | None = None, timeout_s: float = RUN_TIMEOUT_S) -> Run:
        """Ask for a run (the whole page, or a button's click) and read its messages until it finishes."""
        message = BackMsg()
        state = message.rerun_script
        state.query_string = self.query_string
        state.page_script_hash = self.page_hash
        if button is not None:
            widget_id, fragment_id = self.buttons[button]
            widget = state.widget_states.widgets.add()
            widget.id, widget.trigger_value = widget_id, True
            state.fragment_id = fragment_id
        start = time.monotonic()
        self.socket.send(message.SerializeToString())
        run = Run()
        while run.status is None:
            left = timeout_s - (time.monotonic() - start)
            if left <= 0:
                raise TimeoutError(f"session {self.index}: the run did not finish within {timeout_s:.0f} s")
            reply = ForwardMsg()
            reply.ParseFromString(self.socket.recv(timeout=left))
            kind = reply.WhichOneof("type")
            if kind == "new_session":
                self.page_hash = reply.new_session.page_script_hash
            elif kind == "page_info_changed":
                self.query_string = reply.page_info_changed.query_string  # the page wrote its link
            elif kind == "delta" and reply.delta.WhichOneof("type") == "new_element":
                run.fragments.setdefault(reply.delta.fragment_id, []).append(reply.delta.new_element)
            elif kind == "script_finished":
                run.status = reply.script_finished
        run.seconds = time.monotonic() - start
        if button is None:
            self.scopes = run.fragments  # a whole run redraws the page
        else:
            self.scopes.update(run.fragments)  # a fragment's run redraws only that fragment
        self.buttons = {element.button.label: (element.button.id, fragment_id)
                        for fragment_id, elements in self.scopes.items() for element in elements
                        if element.WhichOneof("type") == "button"}
        return run

    def click(self, timeout_s: float = RUN_TIMEOUT_S) -> float:
        """Prefill first, Next token after; the click's latency in ms (sent → finished)."""
        self.target += 1
        run = self.run("Prefill" if self.target == 0 else "Next token", timeout_s)
        self.client_ms.append(run.seconds * 1000)
        return self.client_ms[-1]

    def elements(self, kind: str) -> list:
        return [getattr(element, kind) for elements in self.scopes.values() for element in elements
                if element.WhichOneof("type") == kind]

    def status(self) -> Status | None:
        texts = (markdown.body.replace("**", "") for markdown in self.elements("markdown"))
        return next((status for status in map(parse_status, texts) if status is not None), None)

    def chips(self) -> list[str]:
        """The token stream's chips (the legend's samples left out), as the browser shows their text."""
        return [html.unescape(text) for block in self.elements("html") if _STREAM in block.body
                for _classes, text in _CHIP.findall(block.body.split(_STREAM, 1)[1])]

    def problems(self, markers: list[str]) -> list[str]:
        """What is wrong with this session's page: an exception, an error, a wrong step, another's tokens."""
        found = [f"session {self.index}: exception on the page: {exception.message}"
                 for exception in self.elements("exception")]
        messages = [alert.body for alert in self.elements("alert")
                    if alert.format in (alert.ERROR, alert.WARNING)
                    and not any(text in alert.body for text in _NOT_ERRORS)]
        if messages:
            found.append(f"session {self.index}: messages {messages}")
        status = self.status()
        if status is None or status.step != self.target:
            found.append(f"session {self.index}: shows {status}, expected step {self.target}")
        return found + self.cross_talk(markers)

    def cross_talk(self, markers: list[str]) -> list[str]:
        return cross_talk(self.index, "".join(self.chips()), markers)
