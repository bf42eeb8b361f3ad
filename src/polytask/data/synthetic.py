"""The built-in demo data: four small tasks generated from templates, with no files needed.

It lets ``polytask`` run end to end offline (quick start, tests, CI). Each task is built so a
single keyword is not enough: sentiment has negation and "X, but Y" contrasts, topic sentences
carry a distractor word from another topic, similarity scores come from word overlap across
differently worded templates, and some entity names (e.g. "Jordan") are a person in one
template and a place in another. Everything comes from ``random.Random`` seeded with a string,
so output is identical across runs, platforms and ``PYTHONHASHSEED``.
"""

from __future__ import annotations

import random

from polytask.data.base import Record

SYNTHETIC_TASKS = ("sentiment", "topic", "similarity", "entities")
SPLITS = ("train", "dev", "test")

POSITIVE = ["good", "great", "excellent", "wonderful", "delightful", "superb", "reliable",
            "charming"]
NEGATIVE = ["bad", "awful", "terrible", "boring", "disappointing", "flimsy", "clumsy", "dull"]
SUBJECTS = ["the film", "this phone", "the plot", "the battery", "the acting", "this blender",
            "the soundtrack", "the camera", "the ending", "this jacket"]
INTENSIFIERS = ["", "really ", "quite ", "very ", "truly "]

TOPICS = {
    "sports": ["match", "goal", "coach", "team", "league", "stadium", "referee", "season"],
    "tech": ["laptop", "software", "server", "chip", "app", "network", "robot", "update"],
    "food": ["recipe", "pasta", "chef", "dessert", "kitchen", "soup", "bakery", "menu"],
    "travel": ["flight", "hotel", "passport", "beach", "museum", "train", "luggage", "tour"],
}
TOPIC_TEMPLATES = ["we talked about the {0} and the {1} after the {2} .",
                   "the {0} was late , so the {1} had to wait despite the {2} .",
                   "everyone near the {0} kept asking about the {1} and its {2} .",
                   "my friend reviewed the {0} , the {1} and , briefly , the {2} ."]

PAIR_TEMPLATES = ["the {0} {1} saw the {2} near the {3} .",
                  "near the {3} , a {0} {1} noticed the {2} .",
                  "a {2} was spotted by the {0} {1} close to the {3} ."]
PAIR_WORDS = [["old", "young", "tall", "quiet", "happy", "tired"],
              ["man", "woman", "dog", "child", "farmer", "pilot"],
              ["car", "bird", "boat", "horse", "kite", "train"],
              ["river", "bridge", "market", "school", "park", "station"]]

PEOPLE = [["Anna", "Berg"], ["Omar", "Haddad"], ["Li", "Wei"], ["Maria", "Lopez"],
          ["Michael", "Jordan"], ["George", "Washington"], ["Priya", "Nair"]]
PLACES = [["Paris"], ["Nairobi"], ["New", "York"], ["Jordan"], ["Washington"], ["Oslo"],
          ["Buenos", "Aires"]]
ORGS = [["Acme", "Corp"], ["Blue", "River", "Bank"], ["Nordic", "Air"], ["Unicef"],
        ["Globex"], ["Red", "Cross"]]
ENTITY_TEMPLATES = ["{PER} visited {LOC} last week .", "{PER} joined {ORG} in {LOC} .",
                    "{ORG} opened an office in {LOC} .", "yesterday {PER} met {PER} in {LOC} .",
                    "in {LOC} , {ORG} hired {PER} .", "the trip to {LOC} was paid by {ORG} ."]


def synthetic_records(task: str, split: str, n: int, seed: int = 0) -> list[Record]:
    """``n`` records of ``task`` for ``split``; each (task, split, seed) has its own stream."""
    if task not in SYNTHETIC_TASKS:
        raise ValueError(f"unknown synthetic task '{task}'; known: {', '.join(SYNTHETIC_TASKS)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split '{split}'; known: {', '.join(SPLITS)}")
    rng = random.Random(f"polytask:{task}:{split}:{seed}")
    make = {"sentiment": _sentiment, "topic": _topic, "similarity": _similarity,
            "entities": _entities}[task]
    source = f"synthetic:{task}:{split}"
    examples = [make(rng, i) for i in range(n)]
    rng.shuffle(examples)  # labels are assigned round-robin for balance; hide that order
    return [Record(fields, source, i + 1) for i, fields in enumerate(examples)]


def _sentiment(rng: random.Random, i: int) -> dict:
    """Labels alternate (exact balance); the words alone do not give the label away."""
    label = "positive" if i % 2 == 0 else "negative"
    same, other = (POSITIVE, NEGATIVE) if label == "positive" else (NEGATIVE, POSITIVE)
    subject, very = rng.choice(SUBJECTS), rng.choice(INTENSIFIERS)
    style = rng.randrange(3)
    if style == 0:
        text = f"{subject} was {very}{rng.choice(same)} ."
    elif style == 1:  # negation flips the polarity of the adjective
        text = f"{subject} was not {very}{rng.choice(other)} at all ."
    else:  # the clause after "but" decides
        first, then = rng.choice(other), rng.choice(same)
        text = f"{subject} seemed {first} at first , but it was {very}{then} ."
    return {"text": text, "label": label}


def _topic(rng: random.Random, i: int) -> dict:
    """Two words of the topic plus one distractor from another topic, in random slots:
    the majority decides, not any single word or position."""
    label = list(TOPICS)[i % len(TOPICS)]
    words = rng.sample(TOPICS[label], 2)
    words.append(rng.choice(TOPICS[rng.choice([t for t in TOPICS if t != label])]))
    rng.shuffle(words)
    text = rng.choice(TOPIC_TEMPLATES).format(*words)
    return {"text": text, "label": label}


def _similarity(rng: random.Random, i: int) -> dict:
    """Score = 5 * (shared slot words / 4) + noise, with the two sentences in different wordings."""
    a = [rng.choice(words) for words in PAIR_WORDS]
    shared = set(rng.sample(range(4), i % 5))
    b = [a[k] if k in shared else rng.choice([w for w in PAIR_WORDS[k] if w != a[k]])
         for k in range(4)]
    ta, tb = rng.sample(PAIR_TEMPLATES, 2)
    score = min(5.0, max(0.0, 5 * len(shared) / 4 + rng.gauss(0, 0.3)))
    return {"text_a": ta.format(*a), "text_b": tb.format(*b), "score": round(score, 2)}


def _entities(rng: random.Random, i: int) -> dict:
    """IOB2 tags; multi-word names give I- tags, shared names force use of context."""
    template = ENTITY_TEMPLATES[i % len(ENTITY_TEMPLATES)]
    pools = {"PER": PEOPLE, "LOC": PLACES, "ORG": ORGS}
    tokens: list[str] = []
    tags: list[str] = []
    for word in template.split():
        kind = word.strip("{}") if word.startswith("{") else None
        if kind is None:
            tokens.append(word)
            tags.append("O")
            continue
        name = rng.choice(pools[kind])
        tokens += name
        tags += [f"B-{kind}"] + [f"I-{kind}"] * (len(name) - 1)
    if tokens[0].islower():
        tokens[0] = tokens[0].capitalize()
    return {"tokens": tokens, "tags": tags}
