"""Nothing assumed silently: period inference, readings close in time, and the rule-written sentences."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from typer.testing import CliRunner

from farmslm.domain import explain, rules
from farmslm.domain.judge import JudgeConfig, check_config, judge
from farmslm.domain.sensors import NO_READINGS, parse_tag

NIGHT = dt.datetime(2026, 11, 30, 23, 30)
NOON = dt.datetime(2026, 11, 30, 12, 0)


def test_light_zero_at_night_is_not_low_light():
    """The README's MQTT example has no period: at 23:30, 0 µmol is night, not a LOW_LIGHT warning."""
    j = judge({"light_umol": 0}, at=NIGHT)
    assert j.warnings == [] and j.readings["period"] == "night"
    assert j.assumptions[0]["basis"] == "clock" and "23:30" in j.assumptions[0]["en"]
    day = judge({"light_umol": 0}, at=NOON)
    assert day.warnings == ["LOW_LIGHT"] and "suggests otherwise" in day.assumptions[0]["en"]


def test_period_inference_order_clock_then_light_then_day():
    assert judge({"light_umol": 400}).assumptions[0]["basis"] == "light"
    assert judge({"light_umol": 1}).readings["period"] == "night"
    default = judge({"temp_c": 18})
    assert default.readings["period"] == "day" and default.assumptions[0]["basis"] == "default"
    given = judge({"temp_c": 18, "period": "night"}, at=NOON)
    assert given.assumptions == [] and given.readings["period"] == "night"
    cfg = JudgeConfig(sunrise="07:30", sunset="17:00")
    assert judge({"temp_c": 18}, at=dt.datetime(2026, 1, 1, 7, 0), cfg=cfg).readings["period"] == "night"
    with pytest.raises(ValueError, match="sunrise"):
        check_config(JudgeConfig(sunrise="19:00", sunset="06:00"))
    with pytest.raises(ValueError, match="HH:MM"):
        check_config(JudgeConfig(sunrise="7am"))


def test_multi_sensor_rules_only_on_readings_close_in_time():
    humid = {"temp_c": 18.0, "humidity_pct": 95.0, "period": "night"}
    together = judge(humid, times={"temp_c": 1000.0, "humidity_pct": 1010.0})
    assert "GRAY_MOLD_RISK" in together.warnings and together.not_judged == []
    apart = judge(humid, times={"temp_c": 1000.0, "humidity_pct": 1300.0}, cfg=JudgeConfig(window_s=120))
    assert "GRAY_MOLD_RISK" not in apart.warnings and "CONDENSATION_RISK" not in apart.warnings
    assert "HIGH_HUMIDITY" in apart.warnings  # a one-sensor rule needs no partner
    assert apart.not_judged[0]["gap_s"] == 300 and "GRAY_MOLD_RISK" in apart.not_judged[0]["codes"]
    assert "not judged" in explain.rule_text(apart.readings, "en", apart.warnings, apart.not_judged)


def _reading_for(code: str, period: str) -> dict | None:
    """A reading that fires `code` in `period` (None when the code is off in that period)."""
    samples = {"HIGH_TEMP": {"temp_c": 35.0}, "LOW_TEMP": {"temp_c": 8.0}, "HIGH_HUMIDITY": {"humidity_pct": 97.0},
               "LOW_HUMIDITY": {"humidity_pct": 40.0}, "HIGH_CO2": {"co2_ppm": 2500.0}, "LOW_CO2": {"co2_ppm": 300.0},
               "LOW_LIGHT": {"light_umol": 50.0}, "HIGH_EC": {"ec_ds_m": 5.0}, "LOW_EC": {"ec_ds_m": 0.8},
               "HIGH_PH": {"ph": 7.2}, "LOW_PH": {"ph": 4.2}, "HIGH_ROOT_TEMP": {"root_temp_c": 31.0},
               "LOW_ROOT_TEMP": {"root_temp_c": 10.0}, "LOW_MOISTURE": {"substrate_moisture_pct": 25.0},
               "HIGH_MOISTURE": {"substrate_moisture_pct": 95.0},
               "GRAY_MOLD_RISK": {"temp_c": 18.0, "humidity_pct": 95.0}, "LEAF_MOLD_RISK": {"temp_c": 25.0, "humidity_pct": 95.0},
               "LATE_BLIGHT_RISK": {"temp_c": 18.0, "humidity_pct": 97.0},
               "POWDERY_MILDEW_RISK": {"temp_c": 25.0, "humidity_pct": 50.0},
               "BLOSSOM_END_ROT_RISK": {"ec_ds_m": 5.0, "growth_stage": "fruiting"},
               "CONDENSATION_RISK": {"temp_c": 14.0, "humidity_pct": 99.0}}
    readings = {**samples[code], "period": period}
    return readings if code in rules.evaluate(readings) else None


@pytest.mark.parametrize("code", rules.CODES)
@pytest.mark.parametrize("period", ["day", "night"])
@pytest.mark.parametrize("lang", ["en", "ko"])
def test_rule_sentence_for_each_code_period_and_language(code, period, lang):
    readings = _reading_for(code, period)
    if readings is None:
        pytest.skip(f"{code} is off at {period}")
    sentence = explain.warning_sentence(code, readings, lang)
    rule = rules.rule_for(code)
    for cond in rule.conditions:
        if cond.holds(readings, period, readings.get("growth_stage")):
            limit = cond.limits(period, readings.get("growth_stage"))
            for v in (limit if isinstance(limit, tuple) else (limit,)):
                assert explain.num(v) in sentence, (code, period, sentence)  # the threshold for this period
    by_period = any(c.op != "band" and c.values["day"] != c.values["night"] for c in rule.conditions)
    if by_period:
        assert (explain.PERIOD[lang][period] in sentence), sentence
    msg = rule.night_message if period == "night" and rule.night_message else rule.message
    action = explain._split_message(msg[lang], lang)[1]
    assert action in sentence  # the direction of the action comes from rules.yaml, never from the model
    assert sentence == explain.warning_sentence(code, readings, lang)  # deterministic


def test_night_uses_the_night_threshold_and_action():
    s = explain.warning_sentence("HIGH_TEMP", {"temp_c": 21.4, "period": "night"}, "en")
    assert s == "Air temperature too high at night (21.4 °C > 20 °C): open the vents and lower the heating set point."
    k = explain.warning_sentence("LOW_TEMP", {"temp_c": 12.5, "period": "night", "growth_stage": "flowering"}, "ko")
    assert k.startswith("개화기 밤 기온이 너무 낮습니다(12.5 °C < 13 °C).")


def test_tags_normal_and_no_readings():
    assert explain.prefill({"temp_c": 24.0, "period": "day"}, "en").startswith("[NORMAL] Readings within range for day")
    assert explain.prefill(None, "ko") == "[NO_READINGS] " + explain.NO_READINGS_TEXT["ko"]
    assert parse_tag("[NO_READINGS] x") == ([NO_READINGS], "x")


def test_rules_cli_json_reports_assumptions():
    from farmslm.cli import app

    result = CliRunner().invoke(app, ["rules", "--sensors", '{"light_umol": 0}', "--at", "23:30", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["warnings"] == [] and out["readings"]["period"] == "night" and out["assumptions"][0]["basis"] == "clock"
    plain = CliRunner().invoke(app, ["rules", "--sensors", '{"temp_c": 21.4}', "--at", "23:30", "--lang", "ko"])
    assert plain.exit_code == 0 and "밤 기온이 너무 높습니다(21.4 °C > 20 °C)" in plain.stdout
    bad = CliRunner().invoke(app, ["rules", "--sensors", '{"temp_c": 20}', "--at", "noon"])
    assert bad.exit_code == 2 and "--at" in bad.output
