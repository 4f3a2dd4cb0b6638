"""Prompt design measured with the real tokenizer and the real prefix cache: the same requests written two ways.

Each scenario in ``PROMPT_DESIGN_SCENARIOS`` has a cache-friendly and a cache-hostile variant, each a few prompts
sent in order. ``run_prompt_design`` renders every prompt with the tokenizer's chat template (plain "role: text"
lines for tokenizers without one), runs each variant through ``prefix.run_prefix`` on a fresh pool with sharing
on, and reports per prompt its tokens, the tokens found in the prefix cache and its time to first token. The
cache reuses only whole blocks of an identical prefix, so what moves the numbers is where the prompts first differ:

- a stable system prompt first, the user's name and the time after it, or the time first;
- few-shot examples always in one order, or shuffled per request (seeded, so runs repeat);
- a chat resending its history every turn (hits grow with the turns), or the same chat whose system prompt opens
  with the current date and time (nothing after it can hit);
- retrieved documents in a fixed order, or in each question's relevance order.

What it does not do: sample (decoding is greedy and 2 tokens by default: the figures are about the prompts), run
variants against each other's cache (each starts empty, as a fresh server would), or judge answers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from kvviz.errors import InputError
from kvviz.models import LoadedModel
from kvviz.serving.engine import DEFAULT_BLOCK_SIZE
from kvviz.serving.prefix import run_prefix
from kvviz.serving.records import PromptDesignRun, PromptDesignScenarioResult, PromptDesignVariantResult

Message = tuple[str, str]  # (role, text): "system", "user" or "assistant"
Conversation = tuple[Message, ...]  # one prompt: the messages sent in one request


@dataclass(frozen=True)
class PromptDesignScenario:
    """The prompts of one scenario, written a cache-friendly and a cache-hostile way."""

    key: str
    title: str
    lesson: str
    friendly_description: str
    hostile_description: str
    friendly: tuple[Conversation, ...]
    hostile: tuple[Conversation, ...]


# ----- (a) a stable system prompt first -------------------------------------------------------------------------

HELP_DESK = (
    "You are the help desk assistant of Northwind Books, an online bookshop. Answer in one or two short, polite "
    "sentences. Orders ship within two working days; returns are free for thirty days. Never invent order numbers."
)
CUSTOMERS = (("Alice", "09:14:03", "Where is my order?"), ("Bilal", "09:14:41", "Can I return a damaged book?"),
             ("Chen", "09:15:02", "Do you ship to Canada?"), ("Dana", "09:15:37", "How do I change my address?"))

SYSTEM_PROMPT_FIRST = PromptDesignScenario(
    key="system-prompt-first",
    title="A stable system prompt first, or a timestamp first",
    lesson="Put what every request shares at the very start; anything that changes per request (a name, the time) "
           "after it, or the cache can reuse nothing.",
    friendly_description="The shared instructions open every prompt; the customer's name and the time follow.",
    hostile_description="The time and the customer's name open the system prompt, before the shared instructions.",
    friendly=tuple((("system", HELP_DESK), ("user", f"[{clock}] {name}: {question}"))
                   for name, clock, question in CUSTOMERS),
    hostile=tuple((("system", f"Time: {clock}. Customer: {name}.\n{HELP_DESK}"), ("user", question))
                  for name, clock, question in CUSTOMERS),
)


# ----- (b) few-shot examples in a fixed order -------------------------------------------------------------------

FEW_SHOT_INSTRUCTION = "Label the sentiment of each review as positive or negative, as in these examples."
FEW_SHOT_EXAMPLES = (
    ("The plot kept me up all night.", "positive"),
    ("The pages fell out after a week.", "negative"),
    ("A warm, funny and wise little book.", "positive"),
    ("Dull characters and a predictable ending.", "negative"),
    ("I have already bought three more copies as gifts.", "positive"),
)
FEW_SHOT_QUERIES = ("The cover art is stunning.", "It arrived late and water-damaged.",
                    "My children ask for it every night.", "Far too long for what it says.")
FEW_SHOT_SEED = 0


def few_shot_orders(seed: int = FEW_SHOT_SEED, prompts: int = len(FEW_SHOT_QUERIES)) -> list[list[int]]:
    """One order of the examples per prompt, shuffled by a ``numpy`` generator seeded with ``seed``."""
    generator = np.random.default_rng(seed)
    return [[int(i) for i in generator.permutation(len(FEW_SHOT_EXAMPLES))] for _ in range(prompts)]


def _few_shot_prompt(order: Sequence[int], query: str) -> Conversation:
    examples = "\n".join(f"Review: {FEW_SHOT_EXAMPLES[i][0]}\nSentiment: {FEW_SHOT_EXAMPLES[i][1]}" for i in order)
    return (("system", f"{FEW_SHOT_INSTRUCTION}\n{examples}"), ("user", f"Review: {query}\nSentiment:"))


FEW_SHOT_ORDER = PromptDesignScenario(
    key="few-shot-order",
    title="Few-shot examples in a fixed order, or shuffled",
    lesson="Keep examples in one order: the same examples shuffled are, to the cache, a different prompt from the "
           "first example that moved.",
    friendly_description="The five examples in the same order in every request.",
    hostile_description=f"The same five examples, shuffled for every request (numpy seed {FEW_SHOT_SEED}).",
    friendly=tuple(_few_shot_prompt(range(len(FEW_SHOT_EXAMPLES)), query) for query in FEW_SHOT_QUERIES),
    hostile=tuple(_few_shot_prompt(order, query) for order, query in zip(few_shot_orders(), FEW_SHOT_QUERIES)),
)


# ----- (c) a chat resending its history --------------------------------------------------------------------------

TUTOR = "You are a patient cooking tutor. Keep every answer to two short sentences."
CHAT_TURNS = (
    ("How long should I boil an egg for a soft yolk?", "About six minutes from boiling. Cool it in cold water."),
    ("And for a hard yolk?", "Nine to ten minutes. Then cool it the same way."),
    ("Why cool it in cold water?", "It stops the cooking. The shell also peels more easily."),
    ("Can I do the same with duck eggs?", ""),
)
CHAT_TIMES = ("2025-05-06 10:02", "2025-05-06 10:03", "2025-05-06 10:05", "2025-05-06 10:06")


def _chat_prompt(system: str, turn: int) -> Conversation:
    messages: list[Message] = [("system", system)]
    for question, answer in CHAT_TURNS[:turn]:
        messages += [("user", question), ("assistant", answer)]
    messages.append(("user", CHAT_TURNS[turn][0]))
    return tuple(messages)


CHAT_HISTORY = PromptDesignScenario(
    key="chat-history",
    title="A chat resending its history, with a stable or a changing start",
    lesson="Each turn of a chat resends everything before it, so the cache saves more every turn, unless something "
           "near the start (a date, a clock) changes each turn.",
    friendly_description="Every turn resends the same system prompt and the whole conversation so far.",
    hostile_description="The same turns, but the system prompt opens with the current date and time, new each turn.",
    friendly=tuple(_chat_prompt(TUTOR, turn) for turn in range(len(CHAT_TURNS))),
    hostile=tuple(_chat_prompt(f"Now: {CHAT_TIMES[turn]}. {TUTOR}", turn) for turn in range(len(CHAT_TURNS))),
)


# ----- (d) retrieved documents in a stable order ----------------------------------------------------------------

DOCUMENTS = (
    "Returns: books can be returned within thirty days for a full refund; the return label is free.",
    "Shipping: orders leave the warehouse within two working days and reach Europe in three to five days.",
    "Gift cards: gift cards never expire and can be combined with any discount code at checkout.",
)
RAG_QUESTIONS = (("Can I return a book after three weeks?", (0, 1, 2)),
                 ("How fast do orders reach Spain?", (1, 0, 2)),
                 ("Do gift cards expire?", (2, 0, 1)),
                 ("Is the return label free?", (0, 2, 1)))  # each question's documents in relevance order
RAG_INSTRUCTION = "Answer the question from the documents below, in one sentence."


def _rag_prompt(order: Sequence[int], question: str) -> Conversation:
    documents = "\n".join(f"[{i + 1}] {DOCUMENTS[i]}" for i in order)
    return (("system", RAG_INSTRUCTION), ("user", f"Documents:\n{documents}\nQuestion: {question}"))


RETRIEVED_DOCUMENTS = PromptDesignScenario(
    key="retrieved-documents",
    title="Retrieved documents in a stable order, or in relevance order",
    lesson="Put retrieved documents in a stable order (by id, not by score) so requests that retrieve the same "
           "documents share their blocks.",
    friendly_description="The three documents, always in the order of their ids, then the question.",
    hostile_description="The same documents in each question's relevance order, so the order changes.",
    friendly=tuple(_rag_prompt(range(len(DOCUMENTS)), question) for question, _ in RAG_QUESTIONS),
    hostile=tuple(_rag_prompt(order, question) for question, order in RAG_QUESTIONS),
)

PROMPT_DESIGN_SCENARIOS: tuple[PromptDesignScenario, ...] = (
    SYSTEM_PROMPT_FIRST, FEW_SHOT_ORDER, CHAT_HISTORY, RETRIEVED_DOCUMENTS,
)


# ----- running ----------------------------------------------------------------------------------------------------

def render_prompt(loaded: LoadedModel, conversation: Conversation) -> tuple[str, list[int]]:
    """The prompt's text and token ids: the tokenizer's chat template with the assistant's turn opened, or, for a
    tokenizer without one, "role: text" lines ending in "assistant:"."""
    tokenizer = loaded.tokenizer
    if loaded.chat_template_available:
        messages = [{"role": role, "content": text} for role, text in conversation]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                return_dict=True)
        return text, [int(t) for t in encoded["input_ids"]]
    text = "\n".join(f"{role}: {content}" for role, content in conversation) + "\nassistant:"
    return text, [int(t) for t in tokenizer(text)["input_ids"]]


def run_prompt_design(loaded: LoadedModel, *, block_size: int = DEFAULT_BLOCK_SIZE, new_tokens: int = 2,
                      scenarios: Sequence[PromptDesignScenario] = PROMPT_DESIGN_SCENARIOS) -> PromptDesignRun:
    """Run every scenario's two variants, each on a fresh pool, and measure what the prefix cache saved."""
    if not scenarios:
        raise InputError("Choose at least one prompt-design scenario.")
    start = time.perf_counter()
    results = []
    for scenario in scenarios:
        results.append(PromptDesignScenarioResult(
            key=scenario.key, title=scenario.title, lesson=scenario.lesson,
            friendly=_run_variant(loaded, "cache-friendly", scenario.friendly_description, scenario.friendly,
                                  block_size, new_tokens),
            hostile=_run_variant(loaded, "cache-hostile", scenario.hostile_description, scenario.hostile,
                                 block_size, new_tokens),
        ))
    return PromptDesignRun(model=loaded.key, device=str(loaded.device), dtype=loaded.dtype_name,
                           block_size=block_size, new_tokens=new_tokens,
                           chat_template=loaded.chat_template_available, seconds=time.perf_counter() - start,
                           scenarios=tuple(results))


def _run_variant(loaded: LoadedModel, name: str, description: str, conversations: Sequence[Conversation],
                 block_size: int, new_tokens: int) -> PromptDesignVariantResult:
    rendered = [render_prompt(loaded, conversation) for conversation in conversations]
    run = run_prefix(loaded, [ids for _, ids in rendered], block_size=block_size, new_tokens=new_tokens)
    tokens = tuple(p.tokens for p in run.prompts)
    hits = tuple(p.hit_tokens for p in run.prompts)
    return PromptDesignVariantResult(
        name=name, description=description, texts=tuple(text for text, _ in rendered),
        prompt_tokens=tokens, hit_tokens=hits,
        first_divergence=tuple(p.first_divergence for p in run.prompts),
        ttft_ms=tuple(p.ttft_ms for p in run.prompts),
        hit_rate_after_first=sum(hits[1:]) / sum(tokens[1:]) if len(tokens) > 1 else 0.0,
        hit_rate_overall=sum(hits) / sum(tokens),
        prefill_tokens_saved=sum(hits),
    )
