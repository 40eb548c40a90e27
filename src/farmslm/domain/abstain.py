"""Abstention: when the knowledge base cannot answer, say so plainly and point to a person.

question + retrieval hits -> features -> P(the top facts answer it) with a logistic model calibrated at
build time on train/val questions and out-of-scope dev questions (never the test halves); below the
threshold, or for a question that is plainly not about growing tomatoes, the engine writes the
abstaining answer itself (after the rule sentences, which stay): nothing is invented.

Example: python -c "from farmslm.domain.abstain import abstain_text; print(abstain_text('ko'))"
"""

from __future__ import annotations

from farmslm.domain.lang import check_lang

DEFAULT_CONTACT = {"en": "your local agricultural extension office",
                   "ko": "가까운 농업기술센터"}
_TEXT = {
    "not_in_knowledge": {
        "en": "I have no verified information to answer that. Please ask {contact}.",
        "ko": "이 질문에 답할 수 있는 확인된 정보가 없습니다. {contact}에 문의하세요.",
    },
    "out_of_domain": {
        "en": "I can only answer questions about growing tomatoes in the greenhouse. Please ask {contact}.",
        "ko": "온실 토마토 재배에 관한 질문에만 답할 수 있습니다. {contact}에 문의하세요.",
    },
    "ignore_request": {
        "en": "I cannot set the sensor readings aside: the warnings come from them. If a sensor looks wrong, "
              "check it, or ask {contact}.",
        "ko": "센서 측정값을 빼고 답할 수는 없습니다. 경고는 측정값에서 나옵니다. 센서가 이상하면 점검하거나 {contact}에 문의하세요.",
    },
}
REASONS = tuple(_TEXT)


def abstain_text(lang: str, reason: str = "not_in_knowledge", contact: dict | None = None) -> str:
    """The abstaining sentence in the question's language, naming who to ask."""
    check_lang(lang)
    if reason not in _TEXT:
        raise ValueError(f"reason: got {reason!r}; expected one of {'|'.join(REASONS)}")
    who = (contact or {}).get(lang) or DEFAULT_CONTACT[lang]
    return _TEXT[reason][lang].format(contact=who)


def is_abstention(text: str) -> bool:
    """Whether an answer (model-written or not) is one of the abstaining sentences, whatever the contact."""
    head = text.strip()
    for by_lang in _TEXT.values():
        for template in by_lang.values():
            if head.startswith(template.split("{contact}")[0].split(". ")[0]):
                return True
    return False


# ---- the decision ----------------------------------------------------------------------------------

import math  # noqa: E402
import re  # noqa: E402

_TOMATO = re.compile(r"tomato|토마토", re.I)
# Other crops a grower might ask about (Korean words that are also everyday words, e.g. 가지, 배, 감, 파, are left out)
_OTHER_CROP = re.compile(
    r"\b(cucumbers?|strawberr(?:y|ies)|peppers?|paprika|capsicum|lettuce|rice|paddy|apples?|grapes?|potato(?:es)?|"
    r"melons?|watermelons?|cabbages?|onions?|garlic|spinach|ginseng|blueberr(?:y|ies)|citrus|tangerines?|peach(?:es)?|"
    r"wheat|maize|corn|soybeans?|cannabis|hemp|roses?|orchids?|mushrooms?|chrysanthemums?|zucchini|pumpkins?|"
    r"eggplants?|aubergines?|bananas?|mangoes|avocados?|cattle|cows?|pigs?|chickens?|bees? honey)\b"
    r"|오이|딸기|고추|파프리카|상추|벼농사|논|사과|포도|감자|멜론|수박|배추|양파|마늘|참외|애호박|호박|시금치|깻잎|인삼|블루베리|감귤|"
    r"복숭아|밀|옥수수|콩|장미|난초|버섯|국화|가지 재배|바나나|망고|한우|돼지|닭|양봉", re.I)
_IGNORE = re.compile(
    r"\b(ignore|disregard|forget|skip|bypass|override)\b.{0,40}\b(sensors?|readings?|rules?|warnings?|alarms?|"
    r"instructions?|status|system)\b|\bpretend\b|\bact as if\b|\bwithout (the )?(warnings?|sensors?)\b"
    r"|(센서|측정값|경고|규칙|지시|알람)[^.?!]{0,20}(무시|빼고|상관없이|없다고|치고|말고)|무시하고", re.I)
FEATURES = ("bias", "log_top_score", "top_coverage", "log_gap", "domain_terms", "tomato", "other_crop", "log_query_len")


def features(question: str, lang: str, hits: list, analyzer: str | None = None) -> dict[str, float]:
    """What the decision looks at: retrieval strength, how much of the question the top fact covers,
    and whether the question is about tomato growing at all."""
    from farmslm.domain import retrieve, terms

    top = hits[0].score if hits else 0.0
    second = hits[1].score if len(hits) > 1 else 0.0
    n_terms = len(terms.find_term_ids(question))
    return {"bias": 1.0, "log_top_score": math.log1p(top), "top_coverage": hits[0].coverage if hits else 0.0,
            "log_gap": math.log1p(max(0.0, top - second)), "domain_terms": min(n_terms, 3) / 3,
            "tomato": float(bool(_TOMATO.search(question))),
            "other_crop": float(bool(_OTHER_CROP.search(question)) and not _TOMATO.search(question)),
            "log_query_len": math.log1p(len(retrieve.tokens(question, lang, analyzer or retrieve.DEFAULT_ANALYZER)))}


def probability(feats: dict[str, float], model: dict) -> float | None:
    """P(the retrieved facts answer the question) from the calibrated logistic model; None if uncalibrated."""
    weights = model.get("weights")
    if not weights:
        return None
    z = sum(weights.get(k, 0.0) * v for k, v in feats.items())
    return 1.0 / (1.0 + math.exp(-max(-40.0, min(40.0, z))))


def decide(question: str, lang: str, hits: list, index) -> dict:
    """{abstain, reason, p, features}: decline requests to ignore the sensors, questions about other crops,
    questions nothing was retrieved for, and those the calibrated model scores below its threshold."""
    model = getattr(index, "abstain", None) or {}
    feats = features(question, lang, hits, getattr(index, "analyzer", None))
    p = probability(feats, model)
    out = {"abstain": False, "reason": "", "p": None if p is None else round(p, 4), "features": feats}
    if _IGNORE.search(question):
        return {**out, "abstain": True, "reason": "ignore_request"}
    if feats["other_crop"] or not hits:
        return {**out, "abstain": True, "reason": "out_of_domain" if feats["other_crop"] else "not_in_knowledge"}
    if p is not None and p < model.get("threshold", 0.5):
        off_domain = feats["domain_terms"] == 0 and not feats["tomato"]
        return {**out, "abstain": True, "reason": "out_of_domain" if off_domain else "not_in_knowledge"}
    return out


# ---- calibration (build time; needs scikit-learn, not the edge) ------------------------------------

def _vector(feats: dict[str, float]) -> list[float]:
    return [feats[k] for k in FEATURES]


def calibrate(index, fit_pos: list[tuple[str, str]], fit_neg: list[tuple[str, str]], dev_pos: list[tuple[str, str]],
              dev_neg: list[tuple[str, str]], max_false_abstain: float = 0.03, k: int = 2) -> dict:
    """Fit the answerability model on (question, lang) pairs and pick its threshold on the dev pairs.

    fit: answerable questions (training rows) vs questions to decline (abstain_train.yaml); dev: validation
    rows + the paraphrase set's dev half vs the out-of-scope set's dev half. The threshold is the highest
    whose false abstention on dev_pos stays <= max_false_abstain (abstaining more costs answers a grower
    needs; the hard rules for other crops and ignore-requests apply regardless).
    """
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    def matrix(pairs):
        return np.array([_vector(features(q, lang, index.search(q, lang, k), index.analyzer)) for q, lang in pairs])

    x = np.vstack([matrix(fit_pos), matrix(fit_neg)])
    y = np.array([1] * len(fit_pos) + [0] * len(fit_neg))
    clf = LogisticRegression(C=1.0, class_weight="balanced", fit_intercept=False, max_iter=2000).fit(x, y)
    model = {"weights": dict(zip(FEATURES, (round(float(w), 5) for w in clf.coef_[0]))), "threshold": 0.5}

    def scored(pairs):  # (hard rule abstains, P(answerable)) per pair, computed once
        out = []
        for q, lang in pairs:
            d = decide(q, lang, index.search(q, lang, k), _Holder(index, {**model, "threshold": 0.0}))
            out.append((d["abstain"], d["p"]))
        return out

    pos_s, neg_s = scored(dev_pos), scored(dev_neg)

    def rates(threshold: float) -> tuple[float, float]:
        fa = sum(hard or p < threshold for hard, p in pos_s)
        ab = sum(hard or p < threshold for hard, p in neg_s)
        return fa / max(1, len(pos_s)), ab / max(1, len(neg_s))

    best = (0.0, *rates(0.0))
    for threshold in [round(t, 3) for t in np.arange(0.05, 0.96, 0.025)]:
        fa, ab = rates(threshold)
        if fa <= max_false_abstain and ab >= best[2]:
            best = (threshold, fa, ab)
    model["threshold"] = best[0]
    model["fit"] = {"n_pos": len(fit_pos), "n_neg": len(fit_neg), "n_dev_pos": len(dev_pos), "n_dev_neg": len(dev_neg),
                    "dev_false_abstention": round(best[1], 4), "dev_abstention": round(best[2], 4),
                    "max_false_abstain": max_false_abstain}
    return model


class _Holder:
    """An index stand-in carrying another abstention model (threshold search)."""

    def __init__(self, index, model: dict):
        self.abstain, self.analyzer = model, index.analyzer
