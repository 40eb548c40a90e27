"""Abstention: when the knowledge base cannot answer, say so plainly and point to a person.

question + retrieval hits -> features (retrieval strength, how much of the question the facts and their question
cores cover, words the knowledge base never uses, domain/crop/off-topic cues) + the question's words -> P(the
top facts answer it) with a logistic model calibrated at build time on training and grower questions against
questions to decline, thresholded on validation and dev halves (never the test halves); below the threshold, or
for a question that is plainly not about growing tomatoes, the engine writes the abstaining answer itself (after
the rule sentences, which stay): nothing is invented.

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
from collections import Counter  # noqa: E402

_TOMATO = re.compile(r"tomato|토마토", re.I)
# Other crops and livestock a grower might ask about (Korean words that are also everyday words or parts of tomato
# words, e.g. 가지 branch, 배 belly, 밀 in 밀폐, 오리 in 꽃봉오리, 염소 chlorine, only in unambiguous phrases)
_OTHER_CROP = re.compile(
    r"\b(cucumbers?|strawberr(?:y|ies)|peppers?|paprika|capsicum|lettuce|rice|paddy|apples?|grapes?|potato(?:es)?|"
    r"melons?|watermelons?|cabbages?|onions?|garlic|spinach|ginseng|blueberr(?:y|ies)|citrus|tangerines?|peach(?:es)?|"
    r"wheat|maize|corn|soybeans?|cannabis|hemp|roses?|orchids?|mushrooms?|chrysanthemums?|zucchini|pumpkins?|"
    r"eggplants?|aubergines?|bananas?|mangoes|avocados?|cattle|cows?|pigs?|chickens?|bees? honey|honey ?bees?|"
    r"beekeep\w*|varroa|goats?|sheep|ducks?|horses?|hens?|broilers?|shrimps?|catfish|shiitake|microgreens|basil|"
    r"herbs?|kiwis?|persimmons?|plums?|tea (?:plants?|bushes|leaves)|coffee (?:plants?|trees?)|hops|"
    r"sweet ?potato(?:es)?|carrots?|radish(?:es)?|beans?|kale|broccoli|cauliflower|celery|leeks?|okra|"
    r"gerbera|carnations?|tulips?|lil(?:y|ies)|succulents?|olive (?:trees?|oil|groves?)|olives|pea (?:plants?|crops?)|"
    r"cact(?:us|i)|fish ?ponds?|aquaculture)\b"
    r"|오이|딸기|고추|파프리카|상추|벼농사|논|사과|포도|감자|멜론|수박|배추|양파|마늘|참외|애호박|호박|시금치|깻잎|인삼|블루베리|감귤|"
    r"복숭아|밀(?:밭|농사| 재배| 농사| 수확)|옥수수|콩(?:밭|농사|나물| 재배| 농사)|대두|장미|난초|버섯|국화|바나나|망고|"
    r"한우|돼지|닭|양봉|꿀벌|흑염소|염소 ?(?:사육|농장|키우|새끼)|(?<!봉)오리(?:농법| 사육|고기|알)|젖소|(?<![동서])양계|산란계|"
    r"(?<![곁잔원새큰])가지 ?(?:잎|꽃|열매|모종|재배|농사|묘)|배나무|배 과수원|고구마|당근|대파|쪽파|생강|들깨|참깨|보리|"
    r"표고|느타리|새싹채소|허브|바질|키위|한라봉|자두|카네이션|다육|선인장|양식장|새우", re.I)
# Pest and virus names that contain another crop's name are tomato topics (potato aphid, cucumber mosaic virus)
_CROP_IN_NAMES = re.compile(r"potato aphids?|potato (?:tuber moth|psyllids?)|cucumber mosaic|tobacco (?:mosaic|whitefl\w*)|"
                            r"sweet ?potato whitefl\w*|감자수염진딧물|감자뿔나방|오이이리응애|오이모자이크|담배가루이|"
                            r"담배모자이크|담배장님노린재", re.I)
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
    r"(경보|경고|알람) ?(기준|설정)을?[^.?!]{0,15}(바꿔|바꾸|올려|변경)|(경보|경고|알람|문자)[^.?!]{0,25}"
    r"(안 ?울리게|울리지 않게|안 ?오게|오지 않게|안 ?뜨게|끄게|꺼 ?줘|꺼 ?놔)|(정상|괜찮)[^.?!]{0,12}(기록|적어|써 ?줘|써 ?놔)|"
    r"\bassume (it'?s|it is|everything|all|they'?re)\b.{0,20}\b(fine|ok|okay|normal)\b", re.I)
# Questions that are about tomatoes or the farm but not about growing them: health, law, money, trade, cooking
_OFF_TOPIC = re.compile(
    r"\b(refinanc\w*|mortgage|credit cards?|medicine|painkillers?|ibuprofen|tetanus|pills?|eye ?drops?|cream|doctor|"
    r"hospital|symptoms? of (a|my)|sue|"
    r"lawsuit|court|lawyer|landlord|deposit|divorce|write a will|contract|visa|passport|tax(es)?|loan|interest rate|"
    r"invest\w*|stock market|bitcoin|insurance|wholesale|auction|prices?|market(ing)?|advertis\w*|sell\w*|shop|brand(?! new)|"
    r"logo|instagram|business plan|profit|margin|wages?|overtime|salary|certification|paperwork|grant|"
    r"recipe for|sauce|cook\w*|salad|juice|ketchup|jam|can(ning)? (whole )?tomatoes|tastier|tastiest|seed compan\w*)\b"
    r"|진통제|해열제|수면제|영양제|파상풍|병원|안약|약 ?먹|소송|변호사|계약서?|보증금|상속|이혼|세금|소득세|대출|이자|주식|"
    r"펀드|비트코인|보험금|보험|경락가|경매|시세|가격|값이 오|판매|팔려면|스마트스토어|마케팅|홍보|브랜드|사업계획서|창업|마진|"
    r"최저임금|시급|주휴수당|근로계약|인증|서류|지원금|레시피|소스|요리|볶음|잼|주스|케첩|마리네이드|맛있|종자 회사|종묘회사",
    re.I)
FEATURES = ("bias", "log_top_score", "top_coverage", "log_gap", "domain_terms", "tomato", "other_crop", "off_topic",
            "unknown_words", "top_weighted_coverage", "core_overlap")


def _other_crop(question: str) -> float:
    """1: another crop and no tomato; 0.5: both (a neighbouring crop may be the subject); 0: no other crop."""
    if not _OTHER_CROP.search(_CROP_IN_NAMES.sub(" ", question)):
        return 0.0
    return 0.5 if _TOMATO.search(question) else 1.0


_UNKNOWN = "\x00unknown"  # the idf table's entry for words the knowledge base never uses


def _kb_idf(index, lang: str) -> dict[str, float]:
    """Inverse document frequency of every token the knowledge base's documents use in one language (cached)."""
    cache = index.__dict__.setdefault("_kb_idf", {})
    if lang not in cache:
        docs = (getattr(index, "docs", None) or {}).get(lang, [])
        df = Counter(t for doc in docs for t in set(doc))
        idf = {t: math.log((1 + len(docs)) / (1 + n)) + 1 for t, n in df.items()}
        cache[lang] = idf | {_UNKNOWN: max(idf.values(), default=1.0) + 1}  # a word no document uses weighs most
    return cache[lang]


def _weighted_coverage(index, lang: str, fact_id: str, words: set[str], idf: dict[str, float]) -> float:
    """Share of the question's words, weighted by rarity (unknown words weigh most), the fact's document holds."""
    if not words or fact_id not in getattr(index, "by_id", {}):
        return 0.0
    docs = index.__dict__.setdefault("_doc_sets", {}).setdefault(lang, {})
    if fact_id not in docs:
        docs[fact_id] = frozenset(index.docs[lang][[f["id"] for f in index.facts].index(fact_id)])
    weight = {t: idf.get(t, idf[_UNKNOWN]) for t in words}
    return sum(w for t, w in weight.items() if t in docs[fact_id]) / sum(weight.values())


def _core_overlap(index, lang: str, hits: list, words: set[str], idf: dict[str, float]) -> float:
    """How close the question comes to one of the retrieved facts' stored question cores: the best rarity-
    weighted Jaccard overlap (a question the facts answer usually asks what some core asks, in other words)."""
    if not words or not hits:
        return 0.0
    cores = index.__dict__.setdefault("_core_tokens", {}).setdefault(lang, {})
    top = idf[_UNKNOWN]
    best = 0.0
    for h in hits:
        if h.fact_id not in cores:
            cores[h.fact_id] = [frozenset(query_tokens(c, lang, index)) for c in index.by_id[h.fact_id][lang]["q"]]
        for core in cores[h.fact_id]:  # words is not empty, so neither is the union
            best = max(best, sum(idf.get(t, top) for t in words & core) / sum(idf.get(t, top) for t in words | core))
    return best


def features(question: str, lang: str, hits: list, index=None, query: list[str] | None = None) -> dict[str, float]:
    """What the decision looks at: retrieval strength, how much of the question the top fact covers, how many
    of its words the knowledge base never uses, and whether the question is about tomato growing at all."""
    from farmslm.domain import terms

    top = hits[0].score if hits else 0.0
    second = hits[1].score if len(hits) > 1 else 0.0
    # concept tokens of the question (retrieve.tokens) name its dictionary terms, already matched once
    n_terms = sum(t.startswith("#") for t in query) if query is not None else len(terms.find_term_ids(question))
    idf = _kb_idf(index, lang) if index is not None else {}
    words = set(query or []) if idf else set()
    return {"bias": 1.0, "log_top_score": math.log1p(top), "top_coverage": hits[0].coverage if hits else 0.0,
            "log_gap": math.log1p(max(0.0, top - second)), "domain_terms": min(n_terms, 3) / 3,
            "tomato": float(bool(_TOMATO.search(question))),
            "other_crop": _other_crop(question),
            "off_topic": min(sum(1 for _ in _OFF_TOPIC.finditer(question)), 2) / 2,
            "unknown_words": sum(t not in idf for t in words) / len(words) if words else 0.0,
            "top_weighted_coverage": _weighted_coverage(index, lang, hits[0].fact_id, words, idf) if hits else 0.0,
            "core_overlap": _core_overlap(index, lang, hits, words, idf)}


def query_tokens(question: str, lang: str, index) -> list[str]:
    """The question's tokens as the index reads them (words the lexical weights are keyed by)."""
    from farmslm.domain.retrieve import DEFAULT_ANALYZER, tokens

    return tokens(question, lang, getattr(index, "analyzer", DEFAULT_ANALYZER))


def probability(feats: dict[str, float], model: dict, query: list[str] | None = None) -> float | None:
    """P(the retrieved facts answer the question) from the calibrated logistic model; None if uncalibrated.
    Words of the question the model learned weights for (`lexicon`) add theirs, each word once."""
    weights = model.get("weights")
    if not weights:
        return None
    z = sum(weights.get(k, 0.0) * v for k, v in feats.items())
    lexicon = model.get("lexicon") or {}
    z += sum(lexicon.get(t, 0.0) for t in set(query or []))
    return 1.0 / (1.0 + math.exp(-max(-40.0, min(40.0, z))))


def decide(question: str, lang: str, hits: list, index, model: dict | None = None) -> dict:
    """{abstain, reason, p, features}: decline requests to ignore the sensors, questions about other crops,
    questions nothing was retrieved for, and those the calibrated model scores below its threshold.
    model: another abstention model than the index's (calibration)."""
    model = (getattr(index, "abstain", None) or {}) if model is None else model
    query = query_tokens(question, lang, index) if index is not None else None
    feats = features(question, lang, hits, index, query)
    p = probability(feats, model, query)
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
              dev_grower: list[tuple[str, str]] | None = None, max_false_abstain_grower: float = 0.05,
              c: float = 1.0, min_df: int = 3) -> dict:
    """Fit the answerability model on (question, lang) pairs and pick its threshold on the dev pairs.

    fit: answerable questions (training rows and growers' questions written from the facts) vs questions to
    decline (abstain_train.yaml); dev: validation rows (dev_pos) and questions in growers' own words
    (dev_grower: the paraphrase set's dev half) vs the out-of-scope set's dev half. The model is one logistic
    regression over the retrieval features and the question's words (those in >= min_df fit questions; a word
    the fit never saw adds nothing, but counts in `unknown_words` when the knowledge base never uses it). The
    threshold declines the most dev out-of-scope questions while false abstention stays within its cap on each
    answerable group (growers' wording is capped apart because the dataset's templated questions are easier),
    the lowest such threshold on ties; the hard rules (other crops, ignore-requests) apply regardless.
    """
    import numpy as np
    from scipy import sparse
    from sklearn.linear_model import LogisticRegression

    pairs = list(fit_pos) + list(fit_neg)
    queries = [set(query_tokens(q, lang, index)) for q, lang in pairs]
    df = Counter(t for qs in queries for t in qs)
    words = sorted(t for t, n in df.items() if n >= min_df)
    col = {t: i for i, t in enumerate(words)}
    dense = np.array([_vector(features(q, lang, index.search(q, lang, k), index, list(qs)))
                      for (q, lang), qs in zip(pairs, queries)])
    cells = [(r, col[t]) for r, qs in enumerate(queries) for t in qs if t in col]
    lex = sparse.csr_matrix((np.ones(len(cells)), ([r for r, _ in cells], [j for _, j in cells])),
                            shape=(len(pairs), len(words)))
    x = sparse.hstack([sparse.csr_matrix(dense), lex]).tocsr()
    y = np.array([1] * len(fit_pos) + [0] * len(fit_neg))
    clf = LogisticRegression(C=c, class_weight="balanced", fit_intercept=False, max_iter=5000).fit(x, y)
    coef = clf.coef_[0]
    model = {"weights": dict(zip(FEATURES, (round(float(w), 5) for w in coef[:len(FEATURES)]))),
             "lexicon": {t: round(float(w), 4) for t, w in zip(words, coef[len(FEATURES):]) if abs(w) >= 1e-3},
             "threshold": 0.5}

    def scored(pairs):  # (hard rule abstains, P(answerable)) per pair, computed once
        out = []
        for q, lang in pairs:
            d = decide(q, lang, index.search(q, lang, k), index, {**model, "threshold": 0.0})
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
        if all(fa <= cap for fa, (_, cap) in zip(fas, groups)) and ab > best[2]:  # ties: the lower threshold,
            best = (threshold, fas, ab)  # which declines the same dev questions and fewer answerable ones
    model["threshold"] = best[0]
    model["fit"] = {"n_pos": len(fit_pos), "n_neg": len(fit_neg), "n_words": len(model["lexicon"]), "c": c,
                    "min_df": min_df, "n_dev_pos": len(dev_pos),
                    "n_dev_grower": len(dev_grower or []), "n_dev_neg": len(dev_neg),
                    "dev_false_abstention": round(best[1][0], 4),
                    "dev_grower_false_abstention": round(best[1][1], 4) if dev_grower else None,
                    "dev_abstention": round(best[2], 4), "max_false_abstain": max_false_abstain,
                    "max_false_abstain_grower": max_false_abstain_grower}
    return model
