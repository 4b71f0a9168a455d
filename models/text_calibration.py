"""Calibration sentences for the text model: representative English that is not the
reference set the pruned and quantized versions are judged on.

Two sources, both on every machine with no download: a few dozen everyday sentences written
for this file, and the first paragraphs of the docstrings of a fixed list of Python standard
library modules (prose of many lengths; they differ a little between Python versions, which
changes the calibration slightly but never its kind). Short fragments and runs of several
paragraphs are added, so that lengths from a few tokens to the 128-token cut are all seen:
pruning calibrated on mid-length sentences alone reconstructed "Hello world." worst.
build_minilm.py writes them, tokenized, to models/minilm/calibration.npz.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Iterable
from pathlib import Path

import numpy as np

EVERYDAY = (
    "The bus was late again, so I walked the last mile in the rain.",
    "Could you send me the slides from this morning's meeting?",
    "Our team won the match in the final minute of extra time.",
    "Add two cups of flour and a teaspoon of baking powder, then stir gently.",
    "The hotel room had a view of the harbour and the old lighthouse.",
    "Prices at the supermarket have gone up by almost ten percent this year.",
    "She learned to play the violin when she was seven years old.",
    "Please restart the router if the connection drops more than twice a day.",
    "The river flooded the fields after three days of heavy storms.",
    "My flight to Lisbon leaves at six tomorrow morning.",
    "The doctor recommended more sleep, less coffee and a walk every evening.",
    "Volunteers planted four hundred trees along the new cycle path.",
    "Is there a pharmacy open on Sunday afternoons near the station?",
    "The novel follows three sisters who inherit a vineyard in the south of France.",
    "Engineers inspect the bridge's steel cables every spring.",
    "I forgot my umbrella at the cafe where we had lunch.",
    "The startup raised money to build cheaper batteries for electric scooters.",
    "Our cat sleeps on the windowsill whenever the sun comes out.",
    "The library extended its opening hours during the exam period.",
    "A strong earthquake shook the coastal town shortly after midnight.",
    "He fixed the leaking tap with a new washer and a little patience.",
    "The orchestra rehearsed the symphony for six weeks before the premiere.",
    "Refunds are processed within five working days of receiving the returned item.",
    "Farmers worry that the dry summer will ruin this year's wheat harvest.",
    "The museum offers free entry on the first Sunday of every month.",
    "Can I change my seat to one by the window?",
    "The children built a treehouse out of old pallets and rope.",
    "Scientists tracked the migration of whales along the Atlantic coast.",
    "Tickets for the concert sold out in less than an hour.",
    "The recipe calls for fresh basil, but dried oregano works too.",
    "Traffic on the motorway was slow because of roadworks near the exit.",
    "The new phone has a larger screen and a battery that lasts two days.",
    "Our neighbours are painting their house a bright shade of yellow.",
    "The council voted to turn the empty car park into a community garden.",
    "I need to renew my passport before the summer holidays.",
    "The professor explained the theory with a simple drawing on the board.",
    "Snow closed the mountain pass for most of the week.",
    "This software update fixes a bug that drained the battery overnight.",
    "The bakery on the corner sells the best croissants in town.",
    "After the interview, she waited nervously for the phone to ring.",
)

#: Standard library modules whose docstrings supply the rest of the sentences.
MODULES = (
    "argparse", "asyncio", "base64", "bisect", "calendar", "collections", "contextlib",
    "csv", "dataclasses", "datetime", "decimal", "difflib", "email", "enum", "fractions",
    "functools", "gzip", "hashlib", "heapq", "html", "http.client", "inspect", "ipaddress",
    "itertools", "json", "logging", "mailbox", "math", "mimetypes", "os", "pathlib",
    "pickle", "queue", "random", "re", "sched", "secrets", "shutil", "smtplib", "socket",
    "sqlite3", "statistics", "string", "subprocess", "tarfile", "tempfile", "textwrap",
    "threading", "timeit", "tokenize", "typing", "unittest", "urllib.parse", "uuid",
    "warnings", "wave", "weakref", "zipfile",
)  # fmt: skip


def _paragraphs(text: str | None) -> Iterable[str]:
    for block in (text or "").split("\n\n"):
        line = " ".join(block.split())
        if 40 <= len(line) <= 600 and line[0].isupper() and not line.startswith((">>>", "..")):
            yield line


def docstring_sentences(limit: int) -> list[str]:
    """First docstring paragraphs of the public members of MODULES, in a fixed order."""
    found: list[str] = []
    seen: set[str] = set()
    for name in MODULES:
        module = importlib.import_module(name)
        members = [module] + [
            value
            for key, value in sorted(vars(module).items())
            if not key.startswith("_") and (inspect.isfunction(value) or inspect.isclass(value))
        ]
        for member in members:
            for paragraph in list(_paragraphs(inspect.getdoc(member)))[:1]:
                if paragraph not in seen:
                    seen.add(paragraph)
                    found.append(paragraph)
                    if len(found) >= limit:
                        return found
    return found


def calibration_sentences(exclude: Iterable[str] = (), limit: int = 512) -> list[str]:
    """EVERYDAY and docstring paragraphs, `limit` in all, none of `exclude`."""
    excluded = set(exclude)
    everyday = [s for s in EVERYDAY if s not in excluded]
    others = [s for s in docstring_sentences(limit) if s not in excluded]
    return (everyday + others)[:limit]


def calibration_texts(exclude: Iterable[str] = (), sentences: int = 512) -> list[str]:
    """The sentences, a 2-4 word fragment of every other one, and runs of four joined."""
    base = calibration_sentences(exclude, sentences)
    fragments = []
    for i, text in enumerate(base[::2]):
        words = text.split()[: 2 + i % 3]
        fragments.append(" ".join(words).rstrip(",;:") + ".")
    runs = [" ".join(base[i : i + 4]) for i in range(0, len(base) - 3, 8)]
    return base + fragments + runs


def write_calibration(
    tokenizer_file: Path, out: Path, exclude: Iterable[str], max_length: int
) -> int:
    """Tokenize calibration_texts() into an .npz of the model's inputs (right-padded with
    0, as the server pads); returns the number of texts."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    tokenizer.enable_truncation(max_length)
    encoded = tokenizer.encode_batch(calibration_texts(exclude))
    width = max(len(e.ids) for e in encoded)
    ids = np.zeros((len(encoded), width), dtype=np.int64)
    for row, encoding in enumerate(encoded):
        ids[row, : len(encoding.ids)] = encoding.ids
    np.savez(
        out,
        input_ids=ids,
        attention_mask=(ids != 0).astype(np.int64),
        token_type_ids=np.zeros_like(ids),
    )
    return len(encoded)
