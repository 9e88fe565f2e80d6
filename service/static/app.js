"use strict";
// The page's only script: upload, ask for the token once if the server wants one, show results.
// What each answer shows comes from the server's field list (/api/v1/fields), which is made
// from the prediction record's declarations: a new field appears here without a change.
(function () {
  const $ = (id) => document.getElementById(id);
  const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
  const fmt = (p) => (p === null || p === undefined ? "" : p.toFixed(3));
  const HEADLINE = new Set(["answer", "label", "p_covid", "error", "study", "name"]);
  let fields = {image: [], study: []};
  let dropped = null;

  function headers() {
    const token = sessionStorage.getItem("covidct-token");
    return token ? {Authorization: "Bearer " + token} : {};
  }

  async function call(url, options) {
    let response = await fetch(url, {...options, headers: headers()});
    if (response.status === 401) {
      const token = window.prompt("This server needs its access token:");
      if (!token) throw new Error("no token given");
      sessionStorage.setItem("covidct-token", token.trim());
      response = await fetch(url, {...options, headers: headers()});
    }
    const body = await response.json().catch(() => ({detail: response.statusText}));
    if (!response.ok) throw new Error(body.detail || response.statusText);
    return body;
  }

  // The headline: the answer (COVID in red, NonCOVID in green, anything else neutral), P(COVID) beside it.
  function verdict(item, threshold) {
    const answer = item.answer ?? item.label;
    if (answer === null || answer === undefined) return "";
    const cls = {COVID: "covid", NonCOVID: "noncovid"}[answer] || "neutral";
    return `<span class="${cls}">${esc(answer)}</span> P(COVID) ${fmt(item.p_covid)} (threshold ${threshold})`;
  }

  function shown(field, value) {
    if (value === null || value === undefined || value === "") return "–";
    if (field.type === "number") return Number(value).toFixed(3);
    if (field.type === "boolean") return value ? "yes" : "no";
    if (field.type === "list") return value.length ? value.map(esc).join("; ") : "–";
    return esc(value);
  }

  function details(kind, item) {
    const rows = fields[kind].filter((f) => !HEADLINE.has(f.name))
      .map((f) => `<dt title="${esc(f.help)}">${esc(f.name)}</dt><dd data-field="${esc(f.name)}">${shown(f, item[f.name])}</dd>`);
    return rows.length ? `<dl class="fields">${rows.join("")}</dl>` : "";
  }

  function involved(share) {
    return share === null || share === undefined ? "no lung found" : `${(100 * share).toFixed(1)}% of lung involved`;
  }

  function ood(flag) {
    return flag === false ? ' <span class="warn">out of distribution: unlike the training images</span>' : "";
  }

  function render(result) {
    const out = [];
    for (const image of result.images) {
      out.push(`<article class="card" aria-label="image ${esc(image.name)}"><div><h3>${esc(image.name)}</h3>`
        + (image.error ? `<p class="error">error: ${esc(image.error)}</p>` : `<p>${verdict(image, result.threshold)}${ood(image.in_distribution)}</p>${details("image", image)}`)
        + `</div>`
        + (image.image ? `<figure><img src="${image.image}" alt="slice ${esc(image.name)}"><figcaption>slice</figcaption></figure>` : "")
        + (image.heatmap ? `<figure><img class="heatmap" src="${image.heatmap}" alt="heatmap of ${esc(image.name)}"><figcaption>what raised P(COVID)</figcaption></figure>` : "")
        + (image.lesion ? `<figure><img class="lesion" src="${image.lesion}" alt="lesion map of ${esc(image.name)}"><figcaption>lesion map: ${involved(image.lesion_fraction)}</figcaption></figure>` : "")
        + `</article>`);
    }
    for (const upload of result.studies) {
      if (upload.error) out.push(`<article class="card"><h3>${esc(upload.upload)}</h3><p class="error">${esc(upload.error)}</p></article>`);
      for (const s of upload.studies) {
        const strip = s.top_slices.map((t) => `<figure><img src="${t.heatmap || t.lesion || t.image || ""}" alt="slice ${t.slice}, P(COVID) ${fmt(t.p_covid)}"><figcaption>slice ${t.slice}: ${fmt(t.p_covid)}${t.lesion ? "; " + involved(t.lesion_fraction) : ""}</figcaption></figure>`).join("");
        out.push(`<article class="card" aria-label="study ${esc(s.study)}"><div><h3>study ${esc(s.study)}</h3>`
          + (s.error ? `<p class="error">${esc(s.error)}</p>` : `<p>${verdict(s, result.threshold)}${ood(s.in_distribution)}</p>`)
          + `<p>${esc(s.aggregation)} of slice probabilities</p>`
          + details("study", s)
          + `</div><div class="strip">${strip}</div></article>`);
      }
    }
    $("results").innerHTML = out.join("") || "<p>No files.</p>";
  }

  async function send(event) {
    event.preventDefault();
    const files = dropped || $("files").files;
    if (!files || !files.length) { $("status").textContent = "Choose or drop files first."; return; }
    const form = new FormData();
    for (const f of files) form.append("files", f, f.name);
    form.append("heatmaps", $("heatmaps").checked ? "true" : "false");
    $("send").disabled = true;
    $("status").textContent = `Sending ${files.length} file(s)...`;
    try {
      if (!fields.image.length) fields = await call("/api/v1/fields", {});
      render(await call("/api/v1/predict", {method: "POST", body: form}));
      $("status").textContent = "Done.";
    } catch (error) {
      $("status").textContent = "Error: " + error.message;
    } finally {
      $("send").disabled = false;
      dropped = null;
    }
  }

  async function loadModel() {
    try {
      const card = await call("/api/v1/model", {});
      fields = await call("/api/v1/fields", {});
      $("model").textContent = `Model ${card.model} (${card.classifier}; ${card.backbones.map((b) => b.backbone).join(", ")}), threshold ${card.threshold}.`;
    } catch (error) {
      $("model").textContent = "Model card unavailable: " + error.message;
    }
  }

  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); dropped = e.dataTransfer.files; $("status").textContent = `${dropped.length} file(s) ready.`; });
  drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); $("files").click(); } });
  $("upload").addEventListener("submit", send);
  loadModel();
})();
