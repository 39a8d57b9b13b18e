"""LLM-like replies for the scale benchmark: templated reviews with realistic overlap.

Real generations of one task are homogeneous: the same openers, the same praise and complaints,
the same closers, so most pairs share 10-30% of their character 5-grams; a few percent are
near-copies of an earlier reply (one phrase changed) and about one percent are exact repeats.
The corpus below reproduces that: each reply is drawn, deterministically in (prompt, seed), from
the phrase lists below; 3% re-use another seed's reply with one phrase swapped, 1% repeat one.
The chat scaffolding ("Sure! Here is a review:") appears as an LLM would add it.
"""

from __future__ import annotations

import hashlib
import random

OPENERS = [
    "I recently {visited} {subject} and", "We {visited} {subject} last {when} and", "My family {visited} {subject} and",
    "After reading the reviews I {visited} {subject} and", "I have {visited} {subject} twice now and",
    "Our group {visited} {subject} for {occasion} and", "I finally {visited} {subject} and honestly",
    "We decided to try {subject} on a {when} and", "A friend recommended {subject}, so I {visited} it and",
    "I {visited} {subject} with my {company} and",
]
VISITED = ["visited", "went to", "stayed at", "tried", "checked out", "booked", "spent a weekend at", "ate at"]
SUBJECTS = [
    "the new hotel downtown", "a small cafe near the station", "the city museum", "the riverside restaurant",
    "the local cinema", "this phone", "the budget airline", "the beach resort", "the book shop on the corner",
    "the Italian place", "the night market", "the mountain lodge", "the old theatre", "the sushi bar",
    "the electronics store", "the art gallery", "the food festival", "the train to the coast", "the spa",
    "the guesthouse by the lake", "the bakery", "the rooftop bar", "the car rental office", "the zoo",
]
WHEN = ["weekend", "Friday", "summer", "winter", "holiday", "month", "Sunday", "evening"]
OCCASIONS = ["a birthday", "an anniversary", "a work trip", "a short break", "a family dinner", "a conference"]
COMPANY = ["partner", "kids", "parents", "colleagues", "best friend", "sister", "team"]
POSITIVE = [
    "the staff were friendly and helpful", "everything was spotless", "the food was delicious and fresh",
    "the service was quick and attentive", "the view from the room was stunning", "the price was very fair",
    "the atmosphere was warm and relaxed", "the location could not be better", "the quality exceeded my expectations",
    "the battery lasts all day", "the seats were comfortable", "the portions were generous",
    "the guide knew every detail", "check-in took two minutes", "the music was just right",
]
NEGATIVE = [
    "the staff seemed rude and uninterested", "the room was dirty and smelled of smoke",
    "the food arrived cold and bland", "we waited almost an hour for service", "the noise kept us awake all night",
    "it was far too expensive for what you get", "the place felt crowded and chaotic", "the screen cracked in a week",
    "the bathroom was not cleaned", "the booking was lost and nobody helped", "the portions were tiny",
    "the air conditioning did not work", "the tickets were overpriced", "the wifi kept dropping",
]
NEUTRAL = [
    "it was about what I expected", "some things were good and some were not", "the menu was fairly standard",
    "the room was average for the price", "nothing really stood out", "the service was fine but slow at times",
    "it did the job", "the location was convenient enough", "the experience was ordinary",
]
DETAILS = [
    "The {thing} was {quality}.", "I especially noticed that the {thing} was {quality}.",
    "On top of that, the {thing} was {quality}.", "Also worth mentioning: the {thing} was {quality}.",
    "The {thing}, however, was {quality}.", "",
]
THINGS = ["breakfast", "parking", "lobby", "coffee", "pool", "bed", "dessert", "manager", "decor", "checkout",
          "lighting", "menu", "terrace", "camera", "delivery", "music", "bathroom", "reception"]
QUALITIES = {"positive": ["excellent", "lovely", "better than expected", "really impressive", "great value"],
             "negative": ["disappointing", "a mess", "worse than expected", "really poor", "overpriced"],
             "neutral": ["okay", "nothing special", "as expected", "fine", "average"]}
CLOSERS = {
    "positive": ["I would definitely come back.", "Highly recommended!", "Five stars from me.",
                 "Can't wait to return.", "Worth every penny.", "We will be back soon.", ""],
    "negative": ["I would not recommend it.", "Never again.", "Avoid this place.", "Save your money.",
                 "Very disappointing overall.", "One star is generous.", ""],
    "neutral": ["It was okay overall.", "Maybe I will try it again.", "Decent, but not memorable.",
                "Fine for a quick visit.", "Three stars.", ""],
}
SCAFFOLDS = ["", "", "", "", "Sure! Here is a review:\n", "Review: ", "Here is the review: ", '"']
HYPOTHESES = {
    "entailment": ["The reviewer {visited} {subject}.", "Someone went to {subject}.", "The visit took place."],
    "neutral": ["The reviewer went there alone.", "It was the reviewer's first trip abroad.",
                "The reviewer paid with a credit card."],
    "contradiction": ["The reviewer never went to {subject}.", "Nobody visited {subject}.",
                      "The place was closed the whole time."],
}


def _rng(prompt: str, seed: int | None) -> random.Random:
    return random.Random(int(hashlib.sha256(f"{seed}|{prompt}".encode()).hexdigest()[:12], 16))


def _sentiment(prompt: str) -> str:
    p = prompt.lower()
    if "negative" in p:
        return "negative"
    if "neutral" in p or "fact-based" in p:
        return "neutral"
    return "positive"


def _review(rng: random.Random, sentiment: str) -> list[str]:
    subject = rng.choice(SUBJECTS)
    opener = rng.choice(OPENERS).format(visited=rng.choice(VISITED), subject=subject, when=rng.choice(WHEN),
                                        occasion=rng.choice(OCCASIONS), company=rng.choice(COMPANY))
    pool = {"positive": POSITIVE, "negative": NEGATIVE, "neutral": NEUTRAL}[sentiment]
    first, second = rng.sample(pool, 2)
    detail = rng.choice(DETAILS).format(thing=rng.choice(THINGS), quality=rng.choice(QUALITIES[sentiment]))
    parts = [f"{opener} {first}, and {second}.", detail, rng.choice(CLOSERS[sentiment])]
    return [p for p in parts if p]


def review_for(prompt: str, seed: int | None) -> str:
    """One LLM-like reply to a generation prompt (a review, a premise, or a hypothesis)."""
    rng = _rng(prompt, seed)
    lower = prompt.lower()
    if "sentence:" in lower:  # an NLI hypothesis for a premise
        label = ("entailment" if "implied" in lower else "contradiction" if "contradict" in lower
                 else "neutral")
        return rng.choice(HYPOTHESES[label]).format(visited=rng.choice(VISITED), subject=rng.choice(SUBJECTS))
    if "single sentence" in lower:  # an NLI premise: the first sentence of a review
        return _review(rng, rng.choice(("positive", "negative", "neutral")))[0]
    sentiment = _sentiment(prompt)
    draw = rng.random()
    if draw < 0.01:  # an exact repeat of a small pool of replies
        parts = _review(_rng(sentiment, (seed or 0) % 500), sentiment)
    elif draw < 0.04:  # a near-copy of another reply: one phrase swapped
        parts = _review(_rng(sentiment, (seed or 0) % 2000), sentiment)
        parts[-1] = rng.choice(CLOSERS[sentiment]) or "That is all."
    else:
        parts = _review(rng, sentiment)
    text = " ".join(parts)
    scaffold = rng.choice(SCAFFOLDS)
    return f'{scaffold}{text}"' if scaffold == '"' else scaffold + text


def corpus(n: int, seed: int = 0) -> list[str]:
    """n replies as the generate stage would receive them (mixed sentiments)."""
    labels = ("positive", "negative", "neutral")
    return [review_for(f"Write a {labels[i % 3]} review.", seed * 10_000_000 + i) for i in range(n)]
