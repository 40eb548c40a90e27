"""Faithfulness of the model-written part of a guarded answer: flags a grower would act on wrongly.

(model text, lang, readings, fired codes, prompt facts [, gold fact]) -> flags + fact recall/precision:
- unsupported_number: a number that is in neither the readings, the thresholds of the fired codes for
  this period/stage, nor the prompt's facts and actions ("15~18도" = "15–18 °C", "1,000" = "1000");
- contradiction: an action against a fired code (rules.yaml `opposite`, and the code's own action negated:
  "환기하지 마세요"), a "too high/too low"/disease-risk claim for a code that did not fire, a false
  comparison ("39 °C > 40 °C"), or "normal/fine" while a code fired;
- invented_reading: a current sensor value stated that is not in STATUS ("your pH of 6.0", "(EC 4 < 1.5)");
- fact recall / precision against the row's gold fact: which of its numbers and dictionary terms the
  answer carries, and how much of what the answer says the prompt's facts support.
The rule-written sentences are prefilled and never scored: they would inflate every figure.
Validated on tests/data/faithfulness_labelled.jsonl (hand-labelled, ko + en).

Example: python -c "from farmslm.evaluate.faithful import check; print(check('Heat the house.', 'en', {'temp_c': 33, 'period': 'day'}, ['HIGH_TEMP'], []))"
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

from farmslm.domain import rules
from farmslm.domain.sensors import format_value

FLAGS = ("unsupported_number", "contradiction", "invented_reading")

# ---- numbers -----------------------------------------------------------------------------------

# names with digits that are not quantities: CO2, TYLCV-IL, KS X 3265, Fe-DTPA, Mi-1.2, RFC 8428, F1
_NAME_DIGITS = re.compile(r"\b(?:KS\s?[A-Z]\s?\d{3,5}(?:\s?/\s?\d{3,5})*|RFC\s?\d+|ISO\s?\d+|Mi-?\d(?:\.\d)?|"
                          r"[A-Za-z]+\d+[A-Za-z]*|[A-Z]{1,4}-\d+|\d+(?:st|nd|rd|th)\b)", re.I)
_NUM = re.compile(r"(?<![\w.])(\d{1,3}(?:,\d{3})+|\d+(?:\.\d+)?)(?![\w])|(?<![\w.])(\d+(?:\.\d+)?)(?=\s*(?:도|%|°|배|개|일|주|시간|분|초|cm|mm|m|kPa|ppm|µmol|dS|mS|klux|lux|kg|g|L|ml|mL|J|W|MJ|mol|cm²|m²|ha|톤|주차|마디|화방|장|회|번))")


def _norm(x: str) -> str:
    x = x.replace(",", "") if re.fullmatch(r"\d{1,3}(?:,\d{3})+", x) else x
    return f"{float(x):g}"


def numbers(text: str) -> list[str]:
    """Quantities written in a text, normalised, in order (names such as CO2 or KS X 3265 left out)."""
    text = _NAME_DIGITS.sub(" ", text)
    return [_norm(a or b) for a, b in _NUM.findall(text)]


def applicable_thresholds(readings: dict, codes: list[str]) -> set[str]:
    """The numbers the fired codes judged by, for this period and stage."""
    period, stage = readings.get("period", "day"), readings.get("growth_stage")
    out = set()
    for code in codes:
        for cond in rules.rule_for(code).conditions:
            limit = cond.limits(period, stage)
            if limit is None:
                continue
            out |= {f"{float(v):g}" for v in (limit if isinstance(limit, tuple) else (limit,))}
    return out


def reading_numbers(readings: dict) -> set[str]:
    out = set()
    for k, v in readings.items():
        if isinstance(v, (int, float)):
            out.add(_norm(format_value(k, v)))
    if "temp_c" in readings and "humidity_pct" in readings:
        out.add(_norm(f"{rules.vpd_kpa(readings['temp_c'], readings['humidity_pct']):.2f}"))
    return out


def fact_numbers(facts: list[dict]) -> set[str]:
    return {n for f in facts for n in numbers(" ".join([f.get("text", ""), *f.get("do", [])]))}


# ---- sensors, claims and actions -------------------------------------------------------------

SENSOR_RE = {
    "temp_c": {"en": r"(?:air |night |day |greenhouse )?(?:temperature|temp)\b|\bthe air\b|\bthe (?:green)?house\b|\bthe night\b",
               "ko": r"(?:야간 |주간 |낮 |밤 )?(?:기온|온도|실온|온실 온도)"},
    "humidity_pct": {"en": r"\b(?:relative )?humidity\b|\bRH\b", "ko": r"(?:상대)?습도"},
    "co2_ppm": {"en": r"\bCO2\b|carbon dioxide", "ko": r"CO2|이산화탄소|탄산가스"},
    "light_umol": {"en": r"\blight(?: level| intensity)?\b|\bPPFD\b", "ko": r"광량|일사량|빛"},
    "ec_ds_m": {"en": r"\b(?:drain |feed |slab |root-zone )?EC\b", "ko": r"(?:배액 |급액 |배지 |근권 )?EC"},
    "ph": {"en": r"\bpH\b", "ko": r"pH"},
    "root_temp_c": {"en": r"\broot[- ]zone(?: temperature)?\b|\broot temp(?:erature)?\b", "ko": r"근권(?: 온도)?|뿌리 온도"},
    "substrate_moisture_pct": {"en": r"\b(?:substrate|slab) (?:moisture|water content)\b|\bwater content\b|\bmoisture\b",
                               "ko": r"배지 수분|배지 함수율|함수율|배지"},
    "vpd_kpa": {"en": r"\bVPD\b", "ko": r"VPD|포차"},
}
UNIT_RE = r"\s*(?:°\s*C|도|%|ppm|µmol(?:\s*m⁻²\s*s⁻¹)?|dS/m|mS/cm|kPa|klux)?"
# (sensor, direction) -> the code a claim of that direction means
CLAIM_CODE = {("temp_c", "high"): "HIGH_TEMP", ("temp_c", "low"): "LOW_TEMP",
              ("humidity_pct", "high"): "HIGH_HUMIDITY", ("humidity_pct", "low"): "LOW_HUMIDITY",
              ("co2_ppm", "high"): "HIGH_CO2", ("co2_ppm", "low"): "LOW_CO2", ("light_umol", "low"): "LOW_LIGHT",
              ("ec_ds_m", "high"): "HIGH_EC", ("ec_ds_m", "low"): "LOW_EC", ("ph", "high"): "HIGH_PH",
              ("ph", "low"): "LOW_PH", ("root_temp_c", "high"): "HIGH_ROOT_TEMP",
              ("root_temp_c", "low"): "LOW_ROOT_TEMP", ("substrate_moisture_pct", "low"): "LOW_MOISTURE",
              ("substrate_moisture_pct", "high"): "HIGH_MOISTURE", ("vpd_kpa", "low"): "CONDENSATION_RISK"}
# Codes that also make a claim true: a humid, mouldy night is "humidity too high" under a disease code too.
SUPPORTS = {"HIGH_HUMIDITY": ("GRAY_MOLD_RISK", "LEAF_MOLD_RISK", "LATE_BLIGHT_RISK", "CONDENSATION_RISK"),
            "LOW_HUMIDITY": ("POWDERY_MILDEW_RISK",), "HIGH_EC": ("BLOSSOM_END_ROT_RISK",),
            "LOW_MOISTURE": ("BLOSSOM_END_ROT_RISK",), "CONDENSATION_RISK": ("HIGH_HUMIDITY",)}
# A stated (not conditional) claim that a value is too high / too low.
CLAIM = {
    "en": {"high": r"\s*(?:is|are|'s|looks?|seems?|stays?|remains?|gets?|getting|runs?|running)?\s*(?:too|very|far too|quite|dangerously|so)?\s*(?:high|hot|excessive|elevated|too wet|waterlogged)\b",
           "low": r"\s*(?:is|are|'s|looks?|seems?|stays?|remains?|gets?|getting|runs?|running)?\s*(?:too|very|far too|quite|dangerously|so)?\s*(?:low|cold|insufficient|deficient|too dry|dry)\b"},
    "ko": {"high": r"(?:가|이|는|은)?\s*(?:너무|매우|많이|꽤)?\s*(?:높(?:습니다|아요|네요|다|고|아서|아|으니|으므로|음)|과다|과습|덥(?:습니다|네요)|뜨겁)",
           "low": r"(?:가|이|는|은)?\s*(?:너무|매우|많이|꽤)?\s*(?:낮(?:습니다|아요|네요|다|고|아서|아|으니|으므로|음)|부족(?:합니다|해요|하니|하고|해)|건조(?:합니다|해요|하니|해|하고)|춥|차갑|모자)"},
}
_CONDITIONAL_EN = re.compile(r"\b(?:if|when|whenever|once|unless|should|in case|before|after)\b[^.;:]*$", re.I)
_CONDITIONAL_KO = re.compile(r"(?:면|으면|할 때|일 때|경우|때는|때에는|때|수록|려면)\s*$")
DISEASE_CLAIM = {
    "GRAY_MOLD_RISK": {"en": r"gr[ae]y mou?ld|botrytis", "ko": r"잿빛곰팡이"},
    "LEAF_MOLD_RISK": {"en": r"leaf mou?ld", "ko": r"잎곰팡이"},
    "LATE_BLIGHT_RISK": {"en": r"late blight", "ko": r"역병"},
    "POWDERY_MILDEW_RISK": {"en": r"powdery mildew", "ko": r"흰가루병"},
    "BLOSSOM_END_ROT_RISK": {"en": r"blossom[- ]end rot", "ko": r"배꼽썩음"},
}
RISK_EN = r"(?:\s+(?:and|or)\s+[a-z ]+?)?\s+(?:is|are)\s+(?:both\s+)?(?:likely|probable|a risk|a danger|coming|high risk|at high risk)|(?:risk|danger)\s+(?:is\s+)?(?:high|rising)"
RISK_KO = r"[^.?!]{0,12}(?:위험이 (?:높|큽|있)|생기기 (?:쉽|쉬우|쉬워)|발생하기 (?:쉽|쉬우|쉬워)|우려가 (?:큽|높))"
NORMAL_CLAIM = {
    "en": r"\b(?:all (?:sensor )?(?:values|readings) (?:are )?(?:within range|normal|fine|ok)|(?:readings?|values?|conditions?|"
          r"climate|everything|all|it|temperature|humidity|RH|EC|pH|CO2|light|(?:green)?house|air|night|root zone|VPD)"
          r"\s+(?:is|are|'s|looks?|seems?|stays?)\s+(?:well\s+|still\s+)?(?:fine|ok|okay|normal|ideal|good|acceptable|"
          r"warm enough|cool enough|within (?:the )?(?:normal )?range)\b|no (?:action|heating|cooling) is needed|"
          r"nothing to worry|no problem|the best combination|is fine for tomatoes)",
    "ko": r"(?:정상 범위입니다|정상입니다|적당합니다|괜찮습니다|문제(?:가)? ?없습니다|양호합니다|최적 상태|적정 범위(?:입니다|라|이니|이므로)|"
          r"문제없|적당하니|괜찮아요|적정합니다)",
}
_STATE_KO = re.compile(r"(?:현재|지금)")


@lru_cache(maxsize=None)
def _opposites(code: str, lang: str) -> tuple[re.Pattern, ...]:
    rule = rules.rule_for(code)
    return tuple(re.compile(p, re.I) for p in rule.opposite.get(lang, ()))


@lru_cache(maxsize=None)
def _negated_actions(code: str, lang: str) -> tuple[re.Pattern, ...]:
    """The code's own action, negated: "환기하지 마세요", "do not ventilate"."""
    rule = rules.rule_for(code)
    out = []
    for verb in rule.action_verbs.get(lang, ()):
        if lang == "ko":
            out.append(re.compile(rf"(?:{verb})[^.!?]{{0,6}}(?:지 마|지 말|는 멈추|을 멈추|를 멈추|을 중단|를 중단|지 않)"))
        else:
            out.append(re.compile(rf"\b(?:do not|don't|never|avoid|stop|no need to)\s+(?:\w+\s+){{0,2}}(?:{verb})", re.I))
    return tuple(out)


def _sentence_at(text: str, pos: int) -> str:
    starts = [m.end() for m in re.finditer(r"[.!?](?!\d)\s*", text[:pos])]
    start = starts[-1] if starts else 0
    end = re.search(r"[.!?](?!\d)", text[pos:])
    return text[start:pos + (end.end() if end else len(text) - pos)]


def _past(text: str, pos: int, lang: str) -> bool:
    """A sentence that reports a trial or what happened (past tense), not the greenhouse now."""
    sentence = _sentence_at(text, pos)
    if lang == "ko":
        return bool(re.search(r"(?:았|었|였)(?:습니다|다|으며|고|지만)", sentence))
    return bool(re.search(r"\b(?:trial|study|studies|experiment|tests?|found|showed|reported|were|was)\b", sentence, re.I)) \
        and not re.search(r"\b(?:your|current|now)\b", sentence, re.I)


def _norm_statement(text: str, m: re.Match) -> bool:
    """'야간 기온은 15~18도가 적당합니다': a target band, not a verdict on the readings."""
    return bool(re.search(r"\d\s*(?:~|–|-|to)\s*\d[\d.,]*\s*(?:°\s*C|도|%|ppm|dS/m)?\s*(?:가|이|is|are)?\s*$", text[:m.start()]))


def _negated(text: str, m: re.Match, lang: str) -> bool:
    """Whether an action match is itself negated ("do not irrigate with cold water", "차가운 물로 관수하지 마세요")."""
    if lang == "ko":
        return bool(re.match(r"[^.,;!?]{0,6}?(?:지 마|지 말|지 않|는 피하|을 피하|를 피하|금지)", text[m.end():]))
    return bool(re.search(r"\b(?:do not|don't|never|avoid|no need to|without)\s+(?:\w+\s+){0,2}$", text[:m.start()], re.I))


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.!?;])\s+|(?<=다\.)|(?<=요\.)", text) if s.strip()]


_CLAUSE_END = re.compile(r"[.;!?](?!\d)|,\s*(?:and|but|so|then)\b|\b(?:so|but|then)\b|하고\s|하며\s|니\s|므로\s|세요")
_VALUE = {"en": rf"\s*(?:(?:is|are|was)\s+(?:only\s+|now\s+|at\s+|currently\s+)?|at\s+|of\s+|:\s*|has (?:dropped|risen|fallen|climbed) to\s+|reads\s+)?(\d[\d,.]*)(?={UNIT_RE})",
          "ko": rf"\s*(?:가|이|는|은|도)?\s*(?:현재\s*|지금\s*)?(\d[\d,.]*)(?={UNIT_RE})"}
_RELATIVE = {"en": {"low": r"^\W{0,3}(?:which is\s+)?(?:well\s+|far\s+|just\s+)?(?:below|under|less than|short of)\b",
                    "high": r"^\W{0,3}(?:which is\s+)?(?:well\s+|far\s+|just\s+)?(?:above|over|more than|exceeding)\b"},
             "ko": {"low": r"^\W{0,3}(?:로|으로)?\s*[^.]{0,12}?(?:보다 낮|미만|밑돌)",
                    "high": r"^\W{0,3}(?:로|으로)?\s*[^.]{0,12}?(?:보다 높|를 넘|을 넘|초과|웃돌)"}}
# A sentence that states a general rule, a cause or a trial, not the greenhouse now.
_GENERIC_EN = re.compile(r"\b(?:usually|often|typically|generally|tends? to|can|may|might|means?|because|such as|in (?:a|one) "
                         r"(?:trial|study)|for example)\b", re.I)
_GENERIC_KO = re.compile(r"(?:하면|으면|되면|오래 하면|경우|때는|때에는|일반적으로|보통|흔히|연구|시험|실험|에서는|곳은|곳에서는?)\s")
_AMBIENT_LOW = re.compile(r"below (?:the )?(?:ambient|outdoor|outside)|외기(?:보다| 수준보다| 농도보다) 낮", re.I)
_POOR = re.compile(r"\b(?:growth|yield|fruit set) (?:is|will be) poor\b", re.I)


def _claims(text: str, lang: str) -> list[tuple[str, str, int]]:
    """(sensor, high|low, position) of stated claims about the greenhouse now, skipping conditional ones
    ("if it is too hot", "기온이 높으면") and general statements without a value or a judgement."""
    out = []
    for sensor, names in SENSOR_RE.items():
        for m in re.finditer(names[lang], text, re.I):
            before = text[:m.start()]
            sentence_before = re.split(r"[.!?](?!\d)", before)[-1]
            if lang == "en" and (_CONDITIONAL_EN.search(before[-60:]) or _GENERIC_EN.search(sentence_before)):
                continue
            if lang == "ko" and _GENERIC_KO.search(sentence_before):
                continue
            end = _CLAUSE_END.search(text, m.end())
            clause = text[m.end():end.end() if end else len(text)]
            val = re.match(_VALUE[lang], clause)
            rest = clause[val.end():] if val else clause
            rest = re.sub(rf"^{UNIT_RE}", "", rest)
            if lang == "ko" and re.match(r"\s*(?:로|으로)", rest):
                rest = re.sub(r"^\s*(?:로|으로)", "", rest)
            for direction in ("high", "low"):
                hit = re.match(CLAIM[lang][direction], rest, re.I)
                judged = hit if hit and hit.group(0).strip() and re.search(
                    r"too|너무|높|낮|부족|건조|과|덥|춥|high|low|hot|cold|dry|wet|excess|insuff|defic", hit.group(0), re.I) else None
                if not judged and val:  # "CO2 at 350 ppm is below the 400 ppm ...", "Light is only 8 klux, below 10"
                    judged = re.search(_RELATIVE[lang][direction], rest, re.I)
                    judged = judged or re.search(rf"(?:which is|so (?:it is|it's)?)\s*(?:too|very)\s*"
                                                 rf"{'(?:low|cold|dry)' if direction == 'low' else '(?:high|hot|wet)'}", rest, re.I)
                    if not judged and direction == "low":
                        judged = _AMBIENT_LOW.search(clause) or _POOR.search(text[m.end():m.end() + 80])
                if not judged:
                    continue
                if lang == "ko":
                    where = rest if judged.string is rest else clause
                    if re.match(r"[^.,]{0,4}?(?:면|으면|을 때|ㄹ 때|는 경우|경우|지 않|지 말|기지|은 |는 |의 |에서|었|았|였|이어야|여야|야 |지고|지면|진 |져)",
                                where[judged.end():]) or re.search(r"(?:은|는) ?$", where[:judged.end()]) \
                            or re.search(r"(?:에서는|인 경우|일 때|곳은)", clause) or _past(text, m.start(), "ko"):
                        continue
                out.append((sensor, direction, m.start()))
    return out


_CMP = re.compile(rf"(\d[\d,.]*){UNIT_RE}\s*(?:(>|<|≥|≤|is (?:above|below|over|under)|(?:는|은)?\s*[^.]{{0,12}}?(?:보다 높|보다 낮|를 넘|을 넘|초과|미만|이상|이하)))\s*(?:the\s+)?(?:[a-z ]{{0,30}}?)?(\d[\d,.]*)?")


def _false_comparisons(text: str) -> list[str]:
    out = []
    for m in re.finditer(r"(\d[\d,.]*)" + UNIT_RE + r"\s*([<>])\s*(\d[\d,.]*)", text):
        a, op, b = float(_norm(m.group(1).rstrip(".,"))), m.group(2), float(_norm(m.group(3).rstrip(".,")))
        if (op == ">" and not a > b) or (op == "<" and not a < b):
            out.append(m.group(0))
    for m in re.finditer(r"(\d[\d,.]*)" + UNIT_RE + r"\s*(?:는|은)\s*[^.\d]{0,15}?(\d[\d,.]*)" + UNIT_RE +
                         r"\s*(?:보다|를|을)\s*(높|낮|넘)", text):
        a, b = float(_norm(m.group(1).rstrip(".,"))), float(_norm(m.group(2).rstrip(".,")))
        if (m.group(3) in "높넘" and not a > b) or (m.group(3) == "낮" and not a < b):
            out.append(m.group(0))
    for m in re.finditer(r"(\d[\d,.]*)" + UNIT_RE + r"\s*is\s+(?:well\s+|far\s+|just\s+)?(above|below|over|under)\s+the\s+"
                         r"(?:[a-z]+\s+){0,3}?(\d[\d,.]*)", text, re.I):
        a, b = float(_norm(m.group(1).rstrip(".,"))), float(_norm(m.group(3).rstrip(".,")))
        if (m.group(2) in ("above", "over") and not a > b) or (m.group(2) in ("below", "under") and not a < b):
            out.append(m.group(0))
    return out


# A stated current value: "your pH of 6.2", "the temperature is 25 °C", "현재 습도가 65 %", "(pH 6.0 < 5)".
_CURRENT_EN = re.compile(r"\b(?:your|current(?:ly)?|now|today|measured|reading|at the moment)\b(?:[^.;]|\.(?=\d)){0,25}$"
                         r"|(?:^|[.;:]\s*)at\s+(?:[\w.]+\s+){0,3}$|\bwith\s+(?:the\s+)?$"
                         r"|\bwith\b(?:[^.;]|\.(?=\d)){0,40}\band\s+(?:the\s+)?$", re.I)
_GENERAL_EN = re.compile(r"\b(?:base|target|optimum|optimal|ideal|recommended|best|maximum|minimum|limit|standard|typical|"
                         r"feed|set ?point|keep|aim|around|near)\b[\w\s-]{0,12}$", re.I)
UNITS = {"temp_c": ("°C", "도", "℃"), "humidity_pct": ("%",), "co2_ppm": ("ppm",), "light_umol": ("µmol", "klux", "lux"),
         "ec_ds_m": ("dS/m", "mS/cm"), "ph": (), "root_temp_c": ("°C", "도", "℃"), "substrate_moisture_pct": ("%",)}


def _unit_ok(sensor: str, after: str) -> bool:
    """The number's unit (if any) fits the sensor: "the light is 40 % short" is not a light reading."""
    unit = re.match(r"\s*(°\s*C|℃|도|%|ppm|µmol|klux|lux|dS/m|mS/cm|kPa)", after)
    if unit is None:
        return True
    return unit.group(1).replace(" ", "") in UNITS[sensor]


def _stated_values(text: str, lang: str) -> list[tuple[str, str]]:
    """(sensor, number) pairs the text states as the greenhouse's current value."""
    out = []
    for sensor, names in SENSOR_RE.items():
        if sensor == "vpd_kpa":
            continue
        for m in re.finditer(names[lang], text, re.I):
            tail = text[m.end():m.end() + 40]
            before = text[max(0, m.start() - 40):m.start()]
            if lang == "en":
                cmp_ = re.match(rf"\s*(\d[\d,.]*){UNIT_RE}\s*[<>]", tail)
                v = re.match(r"\s*(?:(?:is|was)\s+(?:only\s+|now\s+|at\s+|currently\s+)?|at\s+|of\s+|"
                             r"has (?:dropped|risen|fallen|climbed) to\s+|reads\s+)?(\d[\d,.]*)", tail)
                if cmp_:
                    out.append((sensor, _norm(cmp_.group(1).rstrip(".,"))))
                    continue
                if not v or not _unit_ok(sensor, tail[v.end():]) or _GENERAL_EN.search(before) or \
                        re.match(rf"{UNIT_RE}\s*(?:–|-|~|to)\s*\d", tail[v.end():]) or _past(text, m.start(), "en"):
                    continue
                said = re.match(r"\s*(?:is|was|has|reads)\b", tail)
                if _CURRENT_EN.search(before) or (said and re.match(r"\s*(?:the|your|our)?\s*$", before[-12:], re.I)):
                    out.append((sensor, _norm(v.group(1).rstrip(".,"))))
            else:
                v = re.match(rf"\s*(?:가|이|는|은)?\s*(?:현재\s*|지금\s*)?(\d[\d,.]*)", tail)
                if not v or not _unit_ok(sensor, tail[v.end():]):
                    continue
                after = tail[v.end():]
                after = re.sub(rf"^{UNIT_RE}", "", after)
                if _past(text, m.start(), "ko") or re.search(r"(?:기본|적정|목표|권장|알맞은|최적|기준|설정|급액)\s*$", before) or \
                        re.match(r"\s*(?:의|,\s*pH|,\s*EC)|\s*(?:로|으로)\s*(?:희석|데우|데워|올리|낮추|높이|내리|맞추|조절|조정|관리)", after):
                    continue
                if re.match(r"\s*(?:이상|이하|미만|초과|까지|부터|~|-|–|아래|위|를 넘|을 넘|에서|가 되|이 되|로 유지|으로 유지|로 맞|으로 맞|로 설정|으로 설정|가 적|이 적)", after):
                    continue
                state = _STATE_KO.search(before[-12:]) or re.match(r"\s*(?:로|으로|이므로|이니|라서|라|인데|이고|,|<|>|입니다|이에요)", after)
                if state:
                    out.append((sensor, _norm(v.group(1).rstrip(".,"))))
    return out


# ---- the check ---------------------------------------------------------------------------------

@dataclass
class Verdict:
    flags: dict[str, bool]
    reasons: list[str] = field(default_factory=list)

    @property
    def faithful(self) -> bool:
        return not any(self.flags.values())


def check(text: str, lang: str, readings: dict, codes: list[str], facts: list[dict]) -> Verdict:
    """Flags of one model-written part. facts: [{text, do}] as the prompt showed them."""
    readings = readings or {}
    reasons: list[str] = []
    supported = reading_numbers(readings) | applicable_thresholds(readings, codes) | fact_numbers(facts)
    unsupported = [n for n in numbers(text) if n not in supported]
    if unsupported:
        reasons.append(f"unsupported numbers {sorted(set(unsupported))}")
    contradiction = []
    fired = set(codes)
    for code in codes:
        hit = next((m for p in _opposites(code, lang) for m in p.finditer(text) if not _negated(text, m, lang)), None)
        hit = hit or next((m for p in _negated_actions(code, lang) for m in p.finditer(text)), None)
        if hit:
            contradiction.append(f"'{hit.group(0)}' goes against {code}")
    for sensor, direction, _ in _claims(text, lang):
        code = CLAIM_CODE.get((sensor, direction))
        if code and code not in fired and not (set(SUPPORTS.get(code, ())) & fired):
            contradiction.append(f"claims {sensor} {direction} but {code} did not fire")
    for code, pats in DISEASE_CLAIM.items():
        risk = RISK_KO if lang == "ko" else RISK_EN
        for m in re.finditer(rf"(?:{pats[lang]})(?:{risk})", text, re.I):
            head = re.split(r"[.!?](?!\d)", text[:m.start()])[-1]
            generic = (_GENERIC_KO.search(head) or re.search(r"(?:면|으면)\s", head)) if lang == "ko" else \
                (_GENERIC_EN.search(head) or _CONDITIONAL_EN.search(head))
            if code not in fired and not generic:
                contradiction.append(f"claims {code} but it did not fire")
                break
    contradiction += [f"false comparison '{c}'" for c in _false_comparisons(text)]
    if fired and any(not _norm_statement(text, m) for m in re.finditer(NORMAL_CLAIM[lang], text, re.I)):
        contradiction.append("says normal while " + ", ".join(codes) + " fired")
    reasons += contradiction
    invented = []
    for sensor, value in _stated_values(text, lang):
        real = readings.get(sensor)
        if real is None or _norm(format_value(sensor, real)) != value:
            invented.append(f"{sensor} {value} stated, readings have {real}")
    reasons += invented
    return Verdict({"unsupported_number": bool(unsupported), "contradiction": bool(contradiction),
                    "invented_reading": bool(invented)}, reasons)


def fact_scores(text: str, lang: str, gold: dict | None, facts: list[dict]) -> dict:
    """Recall: share of the gold fact's numbers and dictionary terms the answer carries. Precision: share of
    the answer's numbers and terms that the prompt's facts hold (what it adds that no fact says lowers it)."""
    from farmslm.domain import terms

    def units(t: str) -> set[str]:
        return set(numbers(t)) | {f"term:{i}" for i in terms.find_term_ids(t)}

    said = units(text)
    out = {"fact_recall": None, "fact_precision": None}
    if gold is not None:
        key = units(gold.get("text", ""))
        out["fact_recall"] = round(len(key & said) / len(key), 4) if key else None
    if said:
        known = set().union(*(units(" ".join([f.get("text", ""), *f.get("do", [])])) for f in facts)) if facts else set()
        out["fact_precision"] = round(len(said & known) / len(said), 4)
    return out
