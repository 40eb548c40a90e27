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
    "beyond_readings": {  # not_in_knowledge after rule sentences: what the readings say stands, nothing is added
        "en": "Beyond what the readings show, I have no verified information to answer that. Please ask {contact}.",
        "ko": "측정값으로 알 수 있는 것 외에는 답할 수 있는 확인된 정보가 없습니다. {contact}에 문의하세요.",
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
# Pest and virus names that contain another crop's name are tomato topics (potato aphid, cucumber mosaic virus)
_CROP_IN_NAMES = re.compile(r"potato aphids?|potato (?:tuber moth|psyllids?)|cucumber mosaic|tobacco (?:mosaic|whitefl\w*)|"
                            r"감자수염진딧물|감자뿔나방|오이모자이크|담배가루이|담배모자이크|담배장님노린재", re.I)
_IGNORE = re.compile(  # requests to set the readings, warnings or rules aside, or to reveal or replace them
    r"\b(ignore|disregard|forget|skip|bypass|override|disable|turn off|switch off|shut off)\b.{0,40}\b(sensors?|readings?|"
    r"rules?|warnings?|alarms?|instructions?|status|system|checks?|limits?|meter)\b|\bpretend\b|\bact (like|as if)\b|"
    r"\bwithout (looking at |the )?(any )?(warnings?|sensors?|sensor data|readings?)\b|\b(system|secret|hidden) "
    r"(prompt|instructions?)\b|\byour (instructions|configuration|settings|rules|prompt)\b|\bdeveloper mode\b|"
    r"\bno (limits|restrictions)\b|\b(stop|quit) (warning|showing|mentioning)\b|\bnever mention\b|\bleave (all )?"
    r"the warnings out\b|\bjust (say|tell me|guess)\b|\brepeat everything\b|\bmake (it|something) up\b|"
    r"\b(say|tell me) (that )?(the |it |everything )?.{0,30}\b(is|are|was|were) (normal|fine|ok|okay|wrong)\b|"
    r"\b(change|set|raise|move)\b.{0,30}\b(alarm|warning|threshold|limit|rule)s?\b.{0,30}\b(only|to|at)\b|"
    r"(센서|측정값|경고|경보|규칙|지시|알람|명령)[^.?!]{0,20}(무시|빼고|상관없이|없다고|치고|말고|신경 ?쓰지|잊|해제|끄|꺼)|"
    r"무시하고|(프롬프트|설정 파일|받은 규칙|주어진 규칙|규칙 전부|지시문)|(개발자|관리자) ?모드|제한 없는|없던 걸로|"
    r"(꺼내지|띄우지|말하지) 마|(정상|괜찮다|문제없다|틀린 거)(이었|였)?다?고 (써|해|말해)|지어내|그대로 (복사|출력)|"
    r"(경보|경고|알람) ?(기준|설정)을?[^.?!]{0,15}(바꿔|바꾸|올려|변경)", re.I)
# Questions that are about tomatoes or the farm but not about growing them: health, law, money, trade, cooking
_OFF_TOPIC = re.compile(
    r"\b(medicine|painkillers?|ibuprofen|tetanus|pills?|eye ?drops?|cream|doctor|hospital|symptoms? of (a|my)|sue|"
    r"lawsuit|court|lawyer|landlord|deposit|divorce|write a will|contract|visa|passport|tax(es)?|loan|interest rate|"
    r"invest\w*|stock market|bitcoin|insurance|wholesale|auction|prices?|market(ing)?|advertis\w*|sell\w*|shop|brand(?! new)|"
    r"logo|instagram|business plan|profit|margin|wages?|overtime|salary|certification|paperwork|grant|"
    r"recipe for|sauce|cook\w*|salad|juice|ketchup|jam|can(ning)? (whole )?tomatoes|tastier|tastiest|seed compan\w*)\b"
    r"|진통제|해열제|수면제|영양제|파상풍|병원|안약|약 ?먹|소송|변호사|계약서?|보증금|상속|이혼|세금|소득세|대출|이자|주식|"
    r"펀드|비트코인|보험금|보험|경락가|경매|시세|가격|값이 오|판매|팔려면|스마트스토어|마케팅|홍보|브랜드|사업계획서|창업|마진|"
    r"최저임금|시급|주휴수당|근로계약|인증|서류|지원금|레시피|소스|요리|볶음|잼|주스|케첩|마리네이드|맛있|종자 회사|종묘회사",
    re.I)
FEATURES = ("bias", "log_top_score", "top_coverage", "log_gap", "domain_terms", "tomato", "other_crop", "off_topic")


def _other_crop(question: str) -> float:
    """1: another crop and no tomato; 0.5: both (a neighbouring crop may be the subject); 0: no other crop."""
    if not _OTHER_CROP.search(_CROP_IN_NAMES.sub(" ", question)):
        return 0.0
    return 0.5 if _TOMATO.search(question) else 1.0


def features(question: str, lang: str, hits: list) -> dict[str, float]:
    """What the decision looks at: retrieval strength, how much of the question the top fact covers,
    and whether the question is about tomato growing at all."""
    from farmslm.domain import terms

    top = hits[0].score if hits else 0.0
    second = hits[1].score if len(hits) > 1 else 0.0
    n_terms = len(terms.find_term_ids(question))
    return {"bias": 1.0, "log_top_score": math.log1p(top), "top_coverage": hits[0].coverage if hits else 0.0,
            "log_gap": math.log1p(max(0.0, top - second)), "domain_terms": min(n_terms, 3) / 3,
            "tomato": float(bool(_TOMATO.search(question))),
            "other_crop": _other_crop(question),
            "off_topic": min(sum(1 for _ in _OFF_TOPIC.finditer(question)), 2) / 2}


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
    feats = features(question, lang, hits)
    p = probability(feats, model)
    out = {"abstain": False, "reason": "", "p": None if p is None else round(p, 4), "features": feats}
    if _IGNORE.search(question):
        return {**out, "abstain": True, "reason": "ignore_request"}
    if feats["other_crop"] == 1.0 or not hits:
        return {**out, "abstain": True, "reason": "out_of_domain" if feats["other_crop"] else "not_in_knowledge"}
    if p is not None and p < model.get("threshold", 0.5):
        off_domain = feats["domain_terms"] == 0 and not feats["tomato"]
        return {**out, "abstain": True, "reason": "out_of_domain" if off_domain else "not_in_knowledge"}
    return out


# ---- calibration (build time; needs scikit-learn, not the edge) ------------------------------------

def _vector(feats: dict[str, float]) -> list[float]:
    return [feats[k] for k in FEATURES]


def calibrate(index, fit_pos: list[tuple[str, str]], fit_neg: list[tuple[str, str]], dev_pos: list[tuple[str, str]],
              dev_neg: list[tuple[str, str]], max_false_abstain: float = 0.03, k: int = 2,
              dev_grower: list[tuple[str, str]] | None = None, max_false_abstain_grower: float = 0.05) -> dict:
    """Fit the answerability model on (question, lang) pairs and pick its threshold on the dev pairs.

    fit: answerable questions (training rows) vs questions to decline (abstain_train.yaml); dev: validation
    rows (dev_pos) and questions in growers' own words (dev_grower: the paraphrase set's dev half) vs the
    out-of-scope set's dev half. The threshold is the highest whose false abstention stays within its cap on
    each answerable group (abstaining more costs answers a grower needs; growers' wording is capped apart
    because the dataset's templated questions are easier); the hard rules (other crops, ignore-requests)
    apply regardless.
    """
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    def matrix(pairs):
        return np.array([_vector(features(q, lang, index.search(q, lang, k))) for q, lang in pairs])

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

    groups = [(scored(dev_pos), max_false_abstain)] + ([(scored(dev_grower), max_false_abstain_grower)]
                                                       if dev_grower else [])
    neg_s = scored(dev_neg)

    def rate(s, threshold: float) -> float:
        return sum(hard or p < threshold for hard, p in s) / max(1, len(s))

    best = (0.0, [rate(s, 0.0) for s, _ in groups], rate(neg_s, 0.0))
    for threshold in [round(t, 3) for t in np.arange(0.05, 0.96, 0.025)]:
        fas, ab = [rate(s, threshold) for s, _ in groups], rate(neg_s, threshold)
        if all(fa <= cap for fa, (_, cap) in zip(fas, groups)) and ab >= best[2]:
            best = (threshold, fas, ab)
    model["threshold"] = best[0]
    model["fit"] = {"n_pos": len(fit_pos), "n_neg": len(fit_neg), "n_dev_pos": len(dev_pos),
                    "n_dev_grower": len(dev_grower or []), "n_dev_neg": len(dev_neg),
                    "dev_false_abstention": round(best[1][0], 4),
                    "dev_grower_false_abstention": round(best[1][1], 4) if dev_grower else None,
                    "dev_abstention": round(best[2], 4), "max_false_abstain": max_false_abstain,
                    "max_false_abstain_grower": max_false_abstain_grower}
    return model


class _Holder:
    """An index stand-in carrying another abstention model (threshold search)."""

    def __init__(self, index, model: dict):
        self.abstain, self.analyzer = model, index.analyzer
