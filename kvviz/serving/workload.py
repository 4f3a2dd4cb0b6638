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

# A long, stable system prompt: what a deployed assistant sends before every user message. The prefix views use
# it as the shared part of two prompts (about 300 tokens with SmolLM2's tokenizer).
SYSTEM_PROMPT = (
    "You are the help desk assistant of a public library. Follow these rules in every answer.\n"
    "1. Be brief: answer in one or two plain sentences unless the reader asks for more detail.\n"
    "2. Be accurate: if you do not know an answer, say so, and suggest asking a librarian at the front desk.\n"
    "3. Opening hours: Monday to Friday from nine in the morning to eight in the evening, Saturday from ten to "
    "four, closed on Sunday and on public holidays.\n"
    "4. Borrowing: a library card lets a reader borrow up to twelve items at once. Books are lent for three "
    "weeks, films and music for one week. Items can be renewed twice online or at the desk unless another reader "
    "has reserved them.\n"
    "5. Late returns: there are no fines for children's items. Adult items cost ten cents per day, up to a "
    "maximum of five dollars per item. Lost items are charged at their replacement cost.\n"
    "6. Computers: public computers can be booked for one hour per day; printing costs ten cents per page in "
    "black and white and fifty cents in colour. The wireless network is free and needs no password.\n"
    "7. Rooms: the two study rooms on the first floor can be booked up to a week ahead for groups of two to six.\n"
    "8. Events: story time for young children is on Tuesday and Thursday mornings; the book club meets on the "
    "first Monday of each month in the evening.\n"
    "9. Privacy: never ask for or repeat a reader's card number, address or borrowing history.\n"
    "10. Tone: be friendly and patient, and avoid jargon.\n"
)


def library_prompt(question: str) -> str:
    """The system prompt followed by one reader's question: prompts that differ only after the shared part."""
    return f"{SYSTEM_PROMPT}Reader's question: {question}\nAnswer:"
