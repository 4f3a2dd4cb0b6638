"""Demo workloads for the serving engine: N short questions behind one shared instruction, arriving in turn.

The shared instruction gives prefix caching something to find; the different questions give requests different
lengths, so blocks fill unevenly. What it does not do: run anything (``engine.py``).
"""

from __future__ import annotations

from kvviz.errors import InputError
from kvviz.models import LoadedModel
from kvviz.serving.records import ServingRequest

INSTRUCTION = (
    "You are a helpful, careful assistant running on a small language model. Answer the question below in one "
    "short, plain sentence, and do not add anything else.\n"
)
QUESTIONS = (
    "What is the capital of France?",
    "Why is the sky blue?",
    "How many legs does a spider have?",
    "What does a KV cache store in a transformer?",
    "Name a prime number larger than ten.",
    "What is the boiling point of water at sea level?",
    "Who wrote the play Hamlet?",
    "What colour do you get by mixing blue and yellow?",
    "How many minutes are in a day?",
    "What is the largest planet in the solar system?",
    "Which gas do plants take in from the air?",
    "What is the square root of one hundred and forty-four?",
)


def demo_requests(loaded: LoadedModel, count: int, new_tokens: int, arrive_every: int = 1) -> list[ServingRequest]:
    """``count`` requests, request i arriving at step ``i * arrive_every``; the questions repeat after 12."""
    if count < 1:
        raise InputError(f"Ask for at least one request (got {count}).")
    if arrive_every < 0:
        raise InputError(f"Arrival spacing must be 0 steps or more (got {arrive_every}).")
    requests = []
    for index in range(count):
        text = f"{INSTRUCTION}Question {index + 1}: {QUESTIONS[index % len(QUESTIONS)]}\nAnswer:"
        ids = tuple(int(t) for t in loaded.tokenizer(text)["input_ids"])
        requests.append(ServingRequest(f"r{index}", ids, new_tokens, arrival_step=index * arrive_every))
    return requests
