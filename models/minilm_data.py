"""models/minilm's facts and data, for models/build_minilm.py and its checks: the
model's names and shapes, the config.toml it ships, and the reference sentences."""

NAME = "all-MiniLM-L6-v2"
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
OUTPUTS = ("last_hidden_state", "sentence_embedding")
DIM = 384
#: The server's [tokenizer] max_length. The model's own max_seq_length is 256 (its
#: sentence_bert_config.json); the references are computed at 128 so they are what the server
#: computes after its truncation.
MAX_LENGTH = 128

#: The shipped config, verbatim (the server validates it, not this script).
CONFIG_TOML = """\
# all-MiniLM-L6-v2 sentence embeddings (built by models/build_minilm.py; `make text-model`).
max_batch_size = 32
# A request that names no outputs gets the embedding only: last_hidden_state is 384 floats
# per token, and few clients want it.
default_outputs = ["sentence_embedding"]

[padding]
# Requests of different lengths share a batch, padded to the longest with these values;
# outputs with the inputs' "sequence" axis are cut back to each request's own length.
inputs = { input_ids = 0, attention_mask = 0, token_type_ids = 0 }
max_padding_ratio = 0.1       # padded tokens at most this share of a batch's tokens: on a CPU
                              # smaller, tighter batches won (make bench-text: 85% of raw
                              # ideal batches at 0.1, 78% at 0.25)

[tokenizer]
file = "tokenizer.json"       # clients may send raw text instead of token ids
input = "text"                # the BYTES input: one string per sample
max_length = 128              # longer texts are truncated

[version_policy]
all = true                    # v1 fp32, v2 pruned, v3 int8 side by side; no version in
                              # the URL: v3, the int8
"""

#: The reference sentences: 2 to ~120 words, so that batches mix lengths and the longest are
#: truncated at MAX_LENGTH tokens. The first three are the sample request's (two about music,
#: one not: a ranking by cosine puts the pair together).
SENTENCES = (
    "A man is playing a guitar on a quiet street corner.",
    "Someone strums an acoustic instrument for people walking by.",
    "The central bank raised interest rates again this quarter.",
    "Hello world.",
    "Batching saves compute.",
    "Where is the nearest train station?",
    "Fresh bread from the bakery smells wonderful early in the morning.",
    "How do I reset my password if I no longer have access to my email account?",
    "The inference server pads requests of different lengths into one batch.",
    "Solar panels convert sunlight into electricity without any moving parts.",
    "Café owners in Zürich say naïve tourists rarely leave a tip.",
    "Order #4521 shipped on 2024-03-18; expect delivery in 3-5 business days!",
    "Children were building sandcastles on the beach while the tide slowly came in, and their "
    "parents read under a striped umbrella.",
    "Quantized models trade a little accuracy for smaller files and faster matrix products, "
    "which matters most on CPUs where memory bandwidth limits throughput.",
    "The committee postponed its decision on the new bridge until the engineers finish a second "
    "survey of the riverbed, which the spring floods made necessary after they moved several "
    "hundred tonnes of gravel downstream.",
    "To make a simple tomato sauce, warm olive oil in a wide pan, add sliced garlic and let it "
    "turn golden, then pour in crushed tomatoes with a pinch of salt and simmer for twenty "
    "minutes, stirring now and then until it thickens.",
    "Photosynthesis lets plants capture light energy and store it as sugar. Chlorophyll absorbs "
    "mostly blue and red light, which is why leaves look green to us, and the oxygen we breathe "
    "is released as a by-product of splitting water molecules.",
    "The museum's new wing opens next month with an exhibition of maps drawn by sailors over "
    "four centuries, from hand-coloured charts of the Mediterranean to the first printed "
    "atlases of the Pacific coast, along with the instruments that made them possible.",
    "Our support team answers every ticket within one business day. If your issue is urgent, "
    "please mention the order number, the device you use and the exact error message you see, "
    "so that we can reproduce the problem quickly and avoid asking you for the same "
    "information twice.",
    "Long-distance trains across the continent were once the only practical way to travel "
    "between its large cities. Today most travellers fly, yet the night trains are returning: "
    "people like to board in the evening, sleep through the countryside and arrive rested in "
    "the centre of another city the next morning, without airport queues or security checks, "
    "and several operators have ordered new sleeping cars for routes that closed decades ago.",
    "A good code review looks at more than style. It asks whether the change does what its "
    "description says, whether the tests would fail if the change were reverted, whether the "
    "error messages tell a user what to fix, and whether the next person to read the code will "
    "understand why it was written this way. Small, focused changes get better reviews than "
    "large ones, because a reviewer can hold all of them in mind at once and spot what is "
    "missing rather than only what is there. Reviewers should also run the change themselves "
    "when they can, since reading a diff rarely shows how it behaves with real data. Above all, "
    "a review is a conversation, not a gate.",
    "The village sits at the end of a narrow valley where two glacial streams meet. In summer "
    "hikers arrive on the morning bus, fill their bottles at the fountain in front of the "
    "church and set off towards the high pastures, where farmers still make cheese in stone "
    "huts as their grandparents did. In winter the road is often closed for days after heavy "
    "snow, and the hundred or so people who live there all year rely on the small shop, the "
    "school with its single classroom and one another. Visitors who stay the night are welcomed "
    "at the only inn, whose owner has kept the same guest book since nineteen seventy. In "
    "spring the meadows fill with flowers.",
    "Variable-length batching pads every request in a batch to the longest one, so a single "
    "long text can make a batch of short ones several times more expensive than it needs to "
    "be. Grouping requests of similar length keeps the padded share small, but waiting for "
    "similar requests adds latency, so a server has to balance the two: it takes the oldest "
    "request first, adds the others that keep padding under a configured ratio, and runs the "
    "batch as soon as a worker is free, cutting each output back to its own length afterwards "
    "so that every client gets exactly what the model would have returned for it alone. "
    "Measuring the padded share of each batch shows whether the ratio is set well.",
    "Embeddings turn text into vectors so that similar meanings end up close together. A search "
    "engine embeds every document once, stores the vectors in an index and, for each query, "
    "embeds the query and looks up its nearest neighbours by cosine similarity. The quality of "
    "the results depends on the model, on how the documents are split into passages, and on "
    "whether the passages fit within the model's maximum sequence length, since anything "
    "beyond it is silently truncated and never influences the vector at all, which surprises "
    "people who paste in whole chapters and expect every paragraph to count. Splitting long "
    "documents into overlapping passages avoids that problem.",
)
