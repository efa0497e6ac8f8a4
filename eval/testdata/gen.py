# Makes the lines of sacrebleu_random.json (see README.md); the expected
# values were then computed with sacreBLEU 2.6.0.
import json
import random

random.seed(7)
chars = list("abcXYZ0123456789 .,-;:!?'\"()[]{}<>/\\&$%#@^*_+=~`|") + [
    "é", "ü", "—", "…", "«", "»", "\u00a0", "\t", "\u2009", "€", "中", "文", "\u001c"]
words = ["the", "cat", "3.5", "1,000", "U.S.", "e.g.", "&amp;", "&quot;", "<skipped>", "well-known",
         "1990-2000", "co-op", "x,y", "a.b", "5.", "-5", ",5", "'s", "don't"]
lines = []
for i in range(400):
    toks = []
    for j in range(random.randint(0, 14)):
        if random.random() < 0.5:
            toks.append(random.choice(words))
        else:
            toks.append("".join(random.choice(chars) for _ in range(random.randint(1, 5))))
    lines.append(" ".join(toks))
hyps = lines[:200]
refs = []
for h in hyps:
    t = h.split(" ")
    random.shuffle(t) if random.random() < 0.3 else None
    if random.random() < 0.5 and t:
        t = t[:-1]
    refs.append(" ".join(t) + random.choice(["", " ", "  x", "-\nend"]))
print(json.dumps({"lines": lines, "hyps": hyps, "refs": refs}))
