// The grower's page: live readings (abnormal highlighted), warnings, and a streamed answer.
// Plain JS, no build step. Language: ko|en (saved in localStorage). Zone: ?zone=NAME or the picker.
"use strict";

const TEXT = {
  ko: { title: "토마토 온실 도우미", zone: "구역", readings: "현재 측정값", warnings: "경고", ask: "질문하기",
        send: "보내기", other: "English", normal: "이상 없음", noReadings: "이 구역의 실시간 측정값이 없습니다.",
        stale: "오래됨", ago: "초 전", placeholder: "예: 잎 끝이 마르는데 왜 그런가요?", waiting: "답변 생성 중…",
        key: "API 키", feedOff: "실시간 센서 연결 없음", feedOn: "실시간 센서 연결됨", feedDown: "센서 브로커 연결 끊김",
        used: "사용한 측정값", tokens: "토큰", staleNote: "오래된 측정값은 사용하지 않았습니다",
        period: "주간/야간", growth_stage: "생육 단계", sources: "출처", assumed: "가정", notJudged: "판단 보류",
        abstained: "답할 수 있는 확인된 정보가 없어 사람에게 문의하도록 안내했습니다" },
  en: { title: "Tomato greenhouse assistant", zone: "Zone", readings: "Current readings", warnings: "Warnings",
        ask: "Ask a question", send: "Send", other: "한국어", normal: "All readings normal",
        noReadings: "No live readings for this zone.", stale: "stale", ago: "s ago",
        placeholder: "e.g. Why are the leaf tips drying?", waiting: "Generating the answer…", key: "API key",
        feedOff: "No live sensor feed", feedOn: "Live sensor feed connected", feedDown: "Sensor broker disconnected",
        used: "Readings used", tokens: "tokens", staleNote: "Stale readings were not used",
        period: "Day / night", growth_stage: "Growth stage", sources: "Sources", assumed: "Assumed",
        notJudged: "Not judged", abstained: "No verified information: the answer points to a person" },
};
const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
let lang = localStorage.getItem("farmslm.lang") || ((navigator.language || "").startsWith("ko") ? "ko" : "en");
let zone = params.get("zone") || "";
let apiKey = localStorage.getItem("farmslm.key") || "";

function t(key) { return TEXT[lang][key]; }

function headers() {
  const h = { "Content-Type": "application/json" };
  if (apiKey) h.Authorization = "Bearer " + apiKey;
  return h;
}

function needKey() {
  const input = $("api-key");
  input.hidden = false;
  input.placeholder = t("key");
  input.focus();
}

function applyLang() {
  document.documentElement.lang = lang;
  document.querySelectorAll("[data-i18n]").forEach((el) => { el.textContent = t(el.dataset.i18n); });
  $("lang").textContent = t("other");
  $("question").placeholder = t("placeholder");
  refresh();
}

function el(tag, attrs, text) {
  const node = document.createElement(tag);
  Object.assign(node, attrs || {});
  if (text !== undefined) node.textContent = text;
  return node;
}

function renderZone(data, z) {
  const body = $("readings").tBodies[0];
  body.replaceChildren();
  const labels = data.sensors;
  const rows = Object.entries(z.readings).map(([k, v]) => [k, v, z.age_s[k], false])
    .concat(Object.entries(z.stale).map(([k, s]) => [k, s.value, s.age_s, true]));
  for (const [key, value, age, stale] of rows) {
    const info = labels[key];
    const tr = el("tr", { className: stale ? "stale" : (z.abnormal.includes(key) ? "abnormal" : "") });
    tr.dataset.key = key;
    tr.append(el("td", {}, info ? info.label : (t(key) || key)),
              el("td", { className: "value" }, info ? `${value} ${info.unit}`.trim() : String(value)),
              el("td", { className: "age" }, stale ? t("stale") : `${Math.round(age)}${t("ago")}`));
    body.append(tr);
  }
  if (!rows.length) {  // append() returns nothing: build the row first, then add it
    const tr = el("tr", {});
    tr.append(el("td", { colSpan: 3 }, t("noReadings")));
    body.append(tr);
  }
  const list = $("warnings");
  list.replaceChildren();
  for (const m of z.messages) list.append(el("li", { className: "warning" }, `${m.message}`));
  if (!z.messages.length && Object.keys(z.readings).length) list.append(el("li", { className: "ok" }, t("normal")));
  for (const a of z.assumptions || []) list.append(el("li", { className: "assumed" }, `${t("assumed")}: ${a[lang]}`));
  for (const n of z.not_judged || []) list.append(el("li", { className: "assumed" }, `${t("notJudged")}: ${n[lang]}`));
  const feed = data.feed;
  $("feed-status").textContent = !feed.enabled ? t("feedOff") : (feed.connected ? t("feedOn") : t("feedDown"));
}

async function refresh() {
  try {
    const res = await fetch("/v1/sensors?lang=" + lang, { headers: headers() });
    if (res.status === 401) return needKey();
    if (!res.ok) return;
    const data = await res.json();
    const names = data.zones.map((z) => z.zone);
    if (zone && !names.includes(zone)) names.push(zone);
    zone = zone || names[0];
    const picker = $("zone");
    if ([...picker.options].map((o) => o.value).join() !== names.join()) {
      picker.replaceChildren(...names.map((n) => el("option", { value: n }, n)));
    }
    picker.value = zone;
    const empty = { zone, readings: {}, age_s: {}, stale: {}, warnings: [], messages: [], abnormal: [],
                    assumptions: [], not_judged: [] };
    renderZone(data, data.zones.find((z) => z.zone === zone) || empty);
  } catch (err) {
    $("feed-status").textContent = String(err);
  }
}

async function ask(event) {
  event.preventDefault();
  const question = $("question").value.trim();
  if (!question) return;
  if (!$("api-key").hidden && $("api-key").value) {
    apiKey = $("api-key").value;
    localStorage.setItem("farmslm.key", apiKey);
  }
  const answer = $("answer"), meta = $("answer-meta"), sources = $("answer-sources");
  answer.textContent = "";
  answer.classList.remove("error");
  meta.textContent = t("waiting");
  sources.replaceChildren();
  $("ask-button").disabled = true;
  try {
    const res = await fetch("/v1/ask", { method: "POST", headers: headers(),
      body: JSON.stringify({ question, zone: zone || undefined, stream: true }) });
    if (res.status === 401) { needKey(); throw new Error(t("key")); }
    if (!res.ok) {
      const body = await res.json().catch(() => ({}));
      throw new Error((body.error && body.error.message) || res.statusText);
    }
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        const kind = (block.match(/^event: (.*)$/m) || [])[1];
        const data = JSON.parse((block.match(/^data: (.*)$/m) || [])[1] || "null");
        if (kind === "token") answer.textContent += data.text;
        else if (kind === "error") throw new Error(data.message);
        else if (kind === "done") {
          answer.textContent = data.answer;
          const used = Object.keys(data.sensors.used).length;
          const staleKeys = Object.keys(data.sensors.stale);
          const notes = (data.assumptions || []).map((a) => `${t("assumed")}: ${a[lang] || a.en}`);
          meta.textContent = `${t("used")}: ${used} (${data.sensors.source}) · ${data.timings.gen_tokens} ${t("tokens")}, `
            + `${data.timings.tok_s} tok/s` + (staleKeys.length ? ` · ${t("staleNote")}: ${staleKeys.join(", ")}` : "")
            + (data.abstained ? ` · ${t("abstained")}` : "") + (notes.length ? " · " + notes.join(" · ") : "");
          for (const s of data.sources || []) {
            const li = el("li", {});
            li.append(s.url ? el("a", { href: s.url, target: "_blank", rel: "noopener" }, s.source || s.id)
                            : el("span", {}, s.source || s.id));
            sources.append(li);
          }
          if ((data.sources || []).length) sources.prepend(el("li", { className: "muted" }, t("sources")));
        }
      }
    }
  } catch (err) {
    answer.classList.add("error");
    answer.textContent = String(err.message || err);
    meta.textContent = "";
  } finally {
    $("ask-button").disabled = false;
  }
}

$("lang").addEventListener("click", () => {
  lang = lang === "ko" ? "en" : "ko";
  localStorage.setItem("farmslm.lang", lang);
  applyLang();
});
$("zone").addEventListener("change", (e) => { zone = e.target.value; refresh(); });
$("ask-form").addEventListener("submit", ask);
applyLang();
setInterval(refresh, 5000);
