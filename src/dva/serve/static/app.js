// The search page: upload a photo, show the top-k gallery images with labels and scores.
// All data comes from the JSON API; with an API key set on the server, the key typed
// here is kept for this browser tab (sessionStorage) and sent as X-API-Key on every call,
// gallery images included (fetched, then shown from blob URLs).
"use strict";

const $ = (id) => document.getElementById(id);
const KEY_STORAGE = "dva-api-key";
let currentFile = null;
let objectUrls = [];

class Unauthorized extends Error {}

async function api(path, options = {}) {
  const key = sessionStorage.getItem(KEY_STORAGE);
  const headers = new Headers(options.headers || {});
  if (key) headers.set("X-API-Key", key);
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401) {
    $("key-form").hidden = false;
    throw new Unauthorized(key ? "The API key was refused." : "Enter the server's API key.");
  }
  if (!response.ok) {
    let detail = response.statusText;
    try {
      const body = await response.json();
      detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    } catch (_) { /* not JSON */ }
    throw new Error(`${response.status}: ${detail}`);
  }
  return response;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

async function loadStatus() {
  try {
    const info = await (await api("/healthz")).json();
    $("key-form").hidden = true;
    $("status").textContent =
      `${info.images.toLocaleString()} images · ${info.backbone} (${info.method}, ${info.img_size}px) · ${info.index} index`;
    showError("");
    return true;
  } catch (error) {
    $("status").textContent = "not connected";
    showError(error.message);
    return false;
  }
}

function clearResults() {
  objectUrls.forEach((url) => URL.revokeObjectURL(url));
  objectUrls = [];
  $("results").replaceChildren();
}

function resultCard(match) {
  const card = document.createElement("figure");
  card.className = "result";
  card.dataset.label = match.label ?? "";
  card.dataset.score = match.score;
  const img = document.createElement("img");
  img.alt = match.label ?? match.name;
  img.title = `${match.name} (id ${match.id})`;
  api(match.image_url)
    .then((r) => r.blob())
    .then((blob) => {
      const url = URL.createObjectURL(blob);
      objectUrls.push(url);
      img.src = url;
    })
    .catch(() => card.classList.add("missing"));
  const caption = document.createElement("figcaption");
  const rank = document.createElement("span");
  rank.className = "rank";
  rank.textContent = `#${match.rank}`;
  const label = document.createElement("span");
  label.className = "label";
  label.textContent = match.label ?? "(no label)";
  const score = document.createElement("span");
  score.className = "score";
  score.textContent = match.score.toFixed(3);
  const bar = document.createElement("meter");
  bar.min = 0;
  bar.max = 1;
  bar.value = Math.max(0, match.score);
  caption.append(label, rank, score, bar);
  if (match.is_match !== null && match.is_match !== undefined) {  // the index is calibrated
    const badge = document.createElement("span");
    badge.className = `badge ${match.is_match ? "same" : "other"}`;
    badge.textContent = match.is_match ? "same item" : "different";
    caption.append(badge);
  }
  card.append(img, caption);
  return card;
}

async function search() {
  if (!currentFile) return;
  const form = new FormData();
  form.append("file", currentFile);
  form.append("k", $("k").value || "10");
  // Filters are separated by ';' (a set's values are separated by ','); each is one form field: AND.
  for (const filter of $("filter").value.split(";").map((f) => f.trim()).filter(Boolean)) {
    form.append("filter", filter);
  }
  if ($("rerank").value) form.append("rerank", $("rerank").value);
  $("results").classList.add("busy");
  try {
    const body = await (await api("/search", { method: "POST", body: form })).json();
    showError("");
    clearResults();
    $("results").append(...body.results.map(resultCard));
    $("timing").textContent = `${body.results.length} of ${body.gallery_size.toLocaleString()} in ${body.took_ms.toFixed(0)} ms`;
  } catch (error) {
    showError(error.message);
  } finally {
    $("results").classList.remove("busy");
  }
}

function setQuery(file) {
  if (!file) return;
  currentFile = file;
  const preview = $("preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
  $("drop-text").hidden = true;
  $("query-name").textContent = file.name;
  search();
}

function init() {
  const drop = $("drop");
  $("file").addEventListener("change", (e) => setQuery(e.target.files[0]));
  ["dragenter", "dragover"].forEach((type) =>
    drop.addEventListener(type, (e) => { e.preventDefault(); drop.classList.add("over"); }));
  ["dragleave", "drop"].forEach((type) =>
    drop.addEventListener(type, (e) => { e.preventDefault(); drop.classList.remove("over"); }));
  drop.addEventListener("drop", (e) => setQuery(e.dataTransfer.files[0]));
  $("k").addEventListener("change", search);
  $("filter").addEventListener("change", search);
  $("rerank").addEventListener("change", search);
  $("key-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    sessionStorage.setItem(KEY_STORAGE, $("api-key").value);
    if (await loadStatus()) search();
  });
  loadStatus();
}

init();
