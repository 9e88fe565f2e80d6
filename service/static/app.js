"use strict";
// The page's only script: upload, ask for the token once if the server wants one, show results.
// What each answer shows comes from the server's field list (/api/v1/fields), which is made
// from the prediction record's declarations: a new field appears here without a change.
(function () {
  const $ = (id) => document.getElementById(id);
  const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
  const fmt = (p) => (p === null || p === undefined ? "" : p.toFixed(3));
  const HEADLINE = new Set(["answer", "label", "p_covid", "error", "study", "name"]);  // shown in the card's headline
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
    return `Answer <span class="${cls}">${esc(answer)}</span> <span class="detail">P(COVID) ${fmt(item.p_covid)} (threshold ${threshold})</span>`;
  }

  // A value as a person reads it: the field's declared scale and unit (a share shown as %), its label beside it.
  function shown(field, value) {
    if (value === null || value === undefined || value === "") return "–";
    if (field.type === "number") {
      const v = Number(value) * (field.scale || 1);
      const unit = field.unit || "";
      return (unit === "%" || unit.trim() === "mm²" || unit.trim() === "mm" ? v.toFixed(1) : v.toFixed(3)) + (unit.trim() === "mm²" ? " " : "") + esc(unit);
    }
    if (field.type === "boolean") return value ? "yes" : "no";
    if (field.type === "list") return value.length ? value.map(esc).join("; ") : "–";
    return esc(value) + esc(field.unit || "");
  }

  function field(kind, name) {
    return fields[kind].find((f) => f.name === name) || {name, label: name, type: "text"};
  }

  function labelled(kind, item, name) {
    const f = field(kind, name);
    return `<span class="pair" data-field="${esc(name)}" title="${esc(f.help || "")}">${esc(f.label || name)}: <b>${shown(f, item[name])}</b></span>`;
  }

  function details(kind, item, skip) {
    const rows = fields[kind].filter((f) => !HEADLINE.has(f.name) && !(skip || new Set()).has(f.name))
      .map((f) => `<dt title="${esc(f.help)}">${esc(f.label || f.name)}</dt><dd data-field="${esc(f.name)}">${shown(f, item[f.name])}</dd>`);
    return rows.length ? `<details><summary>All fields</summary><dl class="fields">${rows.join("")}</dl></details>` : "";
  }

  function involved(share) {
    return share === null || share === undefined ? "no lung found" : `lesion ${(100 * share).toFixed(1)}% of the lungs`;
  }

  function ood(flag) {
    return flag === false ? ' <span class="warn">out of distribution: unlike the training images</span>' : "";
  }

  // Where a PACS finds a slice: its InstanceNumber and position.
  function place(t) {
    const number = t.instance_number !== null && t.instance_number !== undefined ? `#${t.instance_number}` : `slice ${t.slice}`;
    return number + (t.slice_z_mm !== null && t.slice_z_mm !== undefined ? ` (z ${Number(t.slice_z_mm).toFixed(1)} mm)` : "");
  }

  function zoneTable(zones) {
    if (!zones || !zones.length) return "";
    const thirds = ["upper third", "middle third", "lower third"];
    const row = (lung) => `<tr><th scope="row">${esc(lung)} lung</th>` + thirds.map((z) => {
      const cell = zones.find((c) => c.lung === lung && c.zone === z);
      const pct = cell && cell.opacity_percent !== null ? `${cell.opacity_percent.toFixed(1)}%` : "–";
      return `<td data-zone="${esc(lung + " " + z)}">${pct} <span class="score">(${cell && cell.score !== null ? cell.score : "–"})</span></td>`;
    }).join("") + "</tr>";
    return `<table class="zones" aria-label="opacity by zone"><caption>Opacity by zone (score 0-5)</caption>`
      + `<tr><td></td>${thirds.map((z) => `<th scope="col">${z}</th>`).join("")}</tr>${row("right")}${row("left")}</table>`;
  }

  const DOWNLOADS = {csv: "study row (CSV)", slices_csv: "slices (CSV)", nifti: "label volume (NIfTI)",
    slicer_colours: "3D Slicer colours", itksnap_labels: "ITK-SNAP labels", seg: "DICOM SEG"};

  function downloads(links) {
    const items = Object.entries(links || {}).map(([what, url]) => `<a class="download" data-file="${esc(what)}" href="${esc(url)}" download>${esc(DOWNLOADS[what] || what)}</a>`);
    return items.length ? `<p class="downloads">Download: ${items.join(" · ")}</p>` : "";
  }

  function studyCard(s, threshold) {
    const assessable = s.answer !== "not assessable";  // a model without thresholds still shows P(COVID)
    const lesions = (s.lesion_slices || []).map((t) => `<figure><img class="lesion" src="${t.lesion || t.image || ""}" alt="lungs and lesion of ${esc(place(t))}"><figcaption>${esc(place(t))}: ${involved(t.lesion_fraction)}</figcaption></figure>`).join("");
    const pcovid = assessable ? (s.top_slices || []).map((t) => `<figure><img class="${t.heatmap ? "heatmap" : "slice"}" src="${t.heatmap || t.image || ""}" alt="${esc(place(t))}, P(COVID) ${fmt(t.p_covid)}"><figcaption>${esc(place(t))}: P(COVID) ${fmt(t.p_covid)}</figcaption></figure>`).join("") : "";
    return `<article class="card study" aria-label="study ${esc(s.study)}"><div class="summary"><h3>study ${esc(s.study)}</h3>`
      + (s.error ? `<p class="error">${esc(s.error)}</p>` : `<p class="headline">${verdict(s, threshold)}${ood(s.in_distribution)}</p>`
        + `<p class="headline">${labelled("study", s, "finding")} ${labelled("study", s, "severity_score")} ${labelled("study", s, "opacity_percent")}</p>`
        + `<p>${labelled("study", s, "opacity_right")} ${labelled("study", s, "opacity_left")}</p>`
        + `<p class="note">${esc(s.answer_note || "")}</p>`)
      + zoneTable(s.zones) + downloads(s.downloads) + details("study", s, new Set(["finding", "severity_score", "opacity_percent", "opacity_right", "opacity_left", "answer_note"]))
      + `</div>`
      + (lesions ? `<div class="strip" aria-label="slices with the most lesion"><h4>Slices with the most lesion</h4>${lesions}</div>` : "")
      + (pcovid ? `<div class="strip" aria-label="slices with the highest P(COVID)"><h4>What raised P(COVID), in the lungs</h4>${pcovid}</div>` : "")
      + `</article>`;
  }

  function imageCard(image, threshold) {
    return `<article class="card" aria-label="image ${esc(image.name)}"><div class="summary"><h3>${esc(image.name)}</h3>`
      + (image.error ? `<p class="error">error: ${esc(image.error)}</p>` : `<p class="headline">${verdict(image, threshold)}${ood(image.in_distribution)}</p><p class="headline">${labelled("image", image, "finding")} ${labelled("image", image, "lesion_fraction")}</p><p class="note">${esc(image.answer_note || "")}</p>${details("image", image, new Set(["finding", "lesion_fraction", "answer_note"]))}`)
      + `</div>`
      + (image.lesion ? `<figure><img class="lesion" src="${image.lesion}" alt="lungs and lesion of ${esc(image.name)}"><figcaption>${involved(image.lesion_fraction)}</figcaption></figure>` : "")
      + (image.heatmap ? `<figure><img class="heatmap" src="${image.heatmap}" alt="heatmap of ${esc(image.name)}"><figcaption>what raised P(COVID), in the lungs</figcaption></figure>` : "")
      + (image.image && !image.lesion ? `<figure><img src="${image.image}" alt="slice ${esc(image.name)}"><figcaption>slice</figcaption></figure>` : "")
      + `</article>`;
  }

  function render(result) {
    const out = result.images.map((image) => imageCard(image, result.threshold));
    for (const upload of result.studies) {
      if (upload.error) out.push(`<article class="card"><h3>${esc(upload.upload)}</h3><p class="error">${esc(upload.error)}</p></article>`);
      for (const note of upload.notes || []) out.push(`<p class="warn note">${esc(note)}</p>`);
      for (const s of upload.studies) out.push(studyCard(s, result.threshold));
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
